//! Every backend available on this machine, on its real filesystem, against
//! the command sequence obuilder runs for the same work: medians of one run
//! in which the sides alternate, printed as one Markdown table (see
//! BENCHMARKS.md).
//!
//! Needs root (loop devices, mounts). Builds nothing itself:
//!
//!     cargo build --release --workspace
//!     cargo bench -p snapstore --bench backends [-- KEY=VALUE ...]
//!
//! Settings, as arguments or as `SNAPSTORE_BENCH_<KEY>` variables:
//!
//! * `backends=rsync,btrfs,xfs-reflink,zfs` — what to run (`rsync-xfs` is
//!   the rsync backend on XFS instead of ext4);
//! * `iters=11` — iterations of the small operations;
//! * `big=5` — iterations of the 10 000-file clone and cache;
//! * `zfs_iters=3` — iterations of everything on zfs-fuse, which is slow;
//! * `scale=10000`, `scale_iters=5`, `scale_backends=rsync,btrfs` — the
//!   scale test (`scale=0` skips it).
//!
//! Everything it makes (image files, loop devices, mounts, a zfs pool, a
//! zfs-fuse daemon if none was running) is removed by Drop guards, also on
//! a panic or Ctrl-C.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use snapstore::{BlockingStore, Config, LeaseKind};
use store_api::plugin::RemoteBackend;
use store_api::{Key, Namespace, SnapshotBackend};

// ----- settings -----

struct Settings {
    backends: Vec<String>,
    iters: usize,
    big: usize,
    zfs_iters: usize,
    scale: usize,
    scale_iters: usize,
    scale_backends: Vec<String>,
}

impl Settings {
    fn load() -> Settings {
        // `cargo bench` passes `--bench`; our settings are KEY=VALUE.
        let args: Vec<(String, String)> = std::env::args()
            .skip(1)
            .filter_map(|a| a.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let get = |key: &str, default: &str| -> String {
            args.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(format!("SNAPSTORE_BENCH_{}", key.to_uppercase())).ok())
                .unwrap_or_else(|| default.to_string())
        };
        let number = |key: &str, default: &str| -> usize {
            get(key, default).parse().unwrap_or_else(|_| panic!("setting {key} must be a number"))
        };
        let list = |key: &str, default: &str| -> Vec<String> {
            get(key, default)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        Settings {
            backends: list("backends", "rsync,btrfs,xfs-reflink,zfs"),
            iters: number("iters", "11"),
            big: number("big", "5"),
            zfs_iters: number("zfs_iters", "3"),
            scale: number("scale", "10000"),
            scale_iters: number("scale_iters", "5"),
            scale_backends: list("scale_backends", "rsync,btrfs"),
        }
    }
}

// ----- small helpers -----

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C becomes a panic at the next step, so that the guards clean up.
fn catch_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(on_interrupt)) }.expect("signal handler");
    }
}

fn check_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted; cleaning up");
    }
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    check_interrupted();
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(program: &str, args: &[&str]) -> String {
    run(Command::new(program).args(args))
}

/// Runs `true` in `dir`: the build command of every variant that builds.
fn build_command(dir: &Path) {
    run(Command::new("true").current_dir(dir));
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Writes data out before a timed step, so that one side's writeback is
/// not charged to the next.
fn sync_fs(path: &Path) {
    if let Ok(dir) = fs::File::open(path) {
        let _ = nix::unistd::syncfs(dir.as_raw_fd());
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name never used before in this run.
fn fresh(prefix: &str) -> String {
    format!("{prefix}{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn key(ns: Namespace, name: &str) -> Key {
    Key::new(ns, name).expect("valid key")
}

// ----- trees -----

/// 20 directories of 100 small files: the base of a typical build step.
fn fill_2k(dir: &Path) -> io::Result<()> {
    for d in 0..20 {
        let sub = dir.join(format!("d{d:02}"));
        fs::create_dir(&sub)?;
        for f in 0..100 {
            fs::write(sub.join(format!("f{f:03}")), format!("{d}/{f}\n").repeat(20))?;
        }
    }
    Ok(())
}

/// 100 directories of 100 small files of varied sizes, plus one 50 MB file.
fn fill_10k(dir: &Path) -> io::Result<()> {
    for d in 0..100 {
        let sub = dir.join(format!("dir{d:03}"));
        fs::create_dir(&sub)?;
        for f in 0..100 {
            let body = format!("file {d}/{f}\n").repeat(1 + (d * 7 + f * 13) % 200);
            fs::write(sub.join(format!("file{f:03}.txt")), body)?;
        }
    }
    // Pseudo-random bytes, so that no filesystem can compress them away.
    let big: Vec<u8> = (0..50_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(dir.join("big.bin"), big)
}

fn fill_small(dir: &Path) -> io::Result<()> {
    (0..10).try_for_each(|f| fs::write(dir.join(format!("f{f}")), "x\n"))
}

// ----- guards: whatever is made here is unmade on drop -----

/// A loop device with a fresh filesystem, mounted; unmounted and detached
/// on drop.
struct LoopFs {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
    mounted: bool,
}

impl LoopFs {
    fn new(work: &Path, name: &str, mkfs: &[&str]) -> LoopFs {
        let image = work.join(format!("{name}.img"));
        let mnt = work.join(name);
        fs::create_dir_all(&mnt).expect("mkdir");
        // Sparse: only what is written takes space.
        fs::File::create(&image).and_then(|f| f.set_len(3 << 30)).expect("image file");
        // mkfs on the file, not the device: on a device, mkfs.xfs stats every
        // mount point, and hangs on a FUSE mount whose daemon is stuck.
        let (program, args) = mkfs.split_first().expect("mkfs command");
        let made = Command::new(program).args(args).arg(&image).status();
        if !made.is_ok_and(|s| s.success()) {
            let _ = fs::remove_file(&image);
            panic!("{program} {} failed", image.display());
        }
        let dev = cmd("losetup", &["--find", "--show", s(&image)]).trim().to_string();
        let mut lfs = LoopFs { image, dev, mnt, mounted: false };
        cmd("mount", &[&lfs.dev, s(&lfs.mnt)]);
        lfs.mounted = true;
        lfs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
            if !ok {
                // Busy (e.g. a process still inside): detach it from view anyway.
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = fs::remove_file(&self.image);
    }
}

/// A zfs-fuse pool on an image file; destroyed on drop, along with the
/// zfs-fuse daemon if this run started it.
struct ZfsPool {
    name: String,
    image: PathBuf,
    daemon_pidfile: Option<PathBuf>,
}

impl ZfsPool {
    /// Whether a zfs-fuse daemon answers (a stuck one would hang us).
    fn zpool_works() -> bool {
        Command::new("timeout")
            .args(["10", "zpool", "list"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn new(work: &Path, mnt: &Path) -> Option<ZfsPool> {
        let mut pool = ZfsPool {
            name: format!("snapbench{}", std::process::id()),
            image: work.join("zfs.img"),
            daemon_pidfile: None,
        };
        let running = Command::new("pgrep").args(["-x", "zfs-fuse"]).stdout(Stdio::null()).status();
        if running.is_ok_and(|s| s.success()) {
            if !Self::zpool_works() {
                eprintln!("zfs-fuse is running but does not answer: skipping zfs");
                return None;
            }
        } else {
            let pidfile = work.join("zfs-fuse.pid");
            cmd("zfs-fuse", &["--pidfile", s(&pidfile)]);
            pool.daemon_pidfile = Some(pidfile);
            let started = Instant::now();
            while !Self::zpool_works() {
                if started.elapsed() > Duration::from_secs(20) {
                    eprintln!("zfs-fuse did not start: skipping zfs");
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        fs::File::create(&pool.image).and_then(|f| f.set_len(3 << 30)).expect("image file");
        cmd("zpool", &["create", "-m", s(mnt), &pool.name, s(&pool.image)]);
        Some(pool)
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        // zfs-fuse may call the pool busy for a while after its last use.
        for _ in 0..30 {
            let destroyed = Command::new("zpool").args(["destroy", "-f", &self.name]).status();
            if destroyed.is_ok_and(|s| s.success()) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = fs::remove_file(&self.image);
        if let Some(pid) = self
            .daemon_pidfile
            .as_ref()
            .and_then(|f| fs::read_to_string(f).ok())
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

// ----- the sides: obuilder's commands, our CLI, our API, the backend -----

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rsync,
    Btrfs,
    Xfs,
    Zfs,
}

/// obuilder's command sequences, on trees under `dir` (for zfs: datasets
/// under `dataset`, mounted at `dir`).
struct Reference {
    kind: Kind,
    dir: PathBuf,
    dataset: String,
}

impl Reference {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ds(&self, name: &str) -> String {
        format!("{}/{name}", self.dataset)
    }

    /// A committed tree `name` filled by `fill` (untimed).
    fn make_base(&self, name: &str, fill: fn(&Path) -> io::Result<()>) {
        let path = self.path(name);
        match self.kind {
            Kind::Btrfs => {
                let tmp = self.path(&format!("{name}-tmp"));
                cmd("btrfs", &["-q", "subvolume", "create", s(&tmp)]);
                fill(&tmp).expect("fill");
                cmd("btrfs", &["-q", "subvolume", "snapshot", "-r", s(&tmp), s(&path)]);
                cmd("btrfs", &["-q", "subvolume", "delete", s(&tmp)]);
            }
            Kind::Zfs => {
                cmd("zfs", &["create", &self.ds(name)]);
                fill(&path).expect("fill");
                cmd("zfs", &["snapshot", &format!("{}@snap", self.ds(name))]);
            }
            Kind::Rsync | Kind::Xfs => {
                fs::create_dir(&path).expect("mkdir");
                fill(&path).expect("fill");
            }
        }
    }

    /// Clones `base` into a temporary tree, runs the build command in it
    /// and commits it as `name`.
    fn build(&self, base: &str, name: &str) {
        let (base, result) = (self.path(base), self.path(name));
        let tmp = self.path(&format!("{name}-tmp"));
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "snapshot", s(&base), s(&tmp)]);
                build_command(&tmp);
                cmd("btrfs", &["subvolume", "snapshot", "-r", s(&tmp), s(&result)]);
                cmd("btrfs", &["subvolume", "delete", s(&tmp)]);
            }
            Kind::Xfs => {
                cmd("cp", &["-pRduT", "--reflink=always", s(&base), s(&tmp)]);
                build_command(&tmp);
                cmd("mv", &[s(&tmp), s(&result)]);
            }
            Kind::Rsync => {
                cmd("rsync", &["-aHq", &format!("{}/", s(&base)), &format!("{}/", s(&tmp))]);
                build_command(&tmp);
                cmd("mv", &[s(&tmp), s(&result)]);
            }
            Kind::Zfs => {
                // obuilder builds in the result's own dataset, a clone.
                let base_ds = self.path_ds(&base);
                let ds = self.ds(name);
                cmd("zfs", &["clone", &format!("{base_ds}@snap"), &ds]);
                build_command(&result);
                cmd("zfs", &["snapshot", &format!("{ds}@snap")]);
            }
        }
    }

    fn path_ds(&self, path: &Path) -> String {
        self.ds(path.file_name().and_then(|n| n.to_str()).expect("name"))
    }

    fn delete(&self, name: &str) {
        let path = self.path(name);
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "delete", s(&path)]);
            }
            Kind::Zfs => {
                // zfs-fuse often calls a dataset just used busy for a moment;
                // the retries are part of the cost.
                let ds = self.ds(name);
                for _ in 0..50 {
                    let out = Command::new("zfs").args(["destroy", "-r", &ds]).output().expect("zfs");
                    if out.status.success() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                cmd("zfs", &["destroy", "-r", &ds]);
            }
            Kind::Rsync | Kind::Xfs => {
                cmd("rm", &["-rf", s(&path)]);
            }
        }
    }

    /// obuilder's cache acquire: a writable copy `copy` of cache `cache`.
    fn acquire(&self, cache: &str, copy: &str) -> bool {
        let (cache, copy) = (self.path(cache), self.path(copy));
        match self.kind {
            Kind::Btrfs => cmd("btrfs", &["subvolume", "snapshot", s(&cache), s(&copy)]),
            Kind::Xfs => cmd("cp", &["-pRduT", "--reflink=always", s(&cache), s(&copy)]),
            Kind::Rsync => cmd("rsync", &["-aHq", &format!("{}/", s(&cache)), &format!("{}/", s(&copy))]),
            Kind::Zfs => return false, // see BENCHMARKS.md: no simple equivalent
        };
        true
    }

    /// obuilder's cache release: the copy replaces the cache.
    fn release(&self, cache: &str, copy: &str) {
        let (cache, copy) = (self.path(cache), self.path(copy));
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "delete", s(&cache)]);
                cmd("btrfs", &["subvolume", "snapshot", "-r", s(&copy), s(&cache)]);
                cmd("btrfs", &["subvolume", "delete", s(&copy)]);
            }
            Kind::Xfs | Kind::Rsync => {
                cmd("rm", &["-rf", s(&cache)]);
                cmd("mv", &[s(&copy), s(&cache)]);
            }
            Kind::Zfs => {}
        }
    }
}

/// The `snapstore` command on one config.
struct Cli {
    bin: PathBuf,
    config: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> String {
        run(Command::new(&self.bin).arg("--config").arg(&self.config).args(args).env_remove("SNAPSTORE_LOG"))
    }
}

/// One backend on one filesystem, ready to measure.
struct Target {
    label: String,
    kind: Kind,
    /// The filesystem to sync between steps.
    mnt: PathBuf,
    cli: Cli,
    api: BlockingStore,
    backend: RemoteBackend,
    reference: Reference,
    iters: usize,
    big: usize,
}

/// Writes a config for `backend` at `root` and opens it through the API.
fn open_store(
    bin: &Path,
    work: &Path,
    name: &str,
    backend: &str,
    root: &Path,
    options: &str,
) -> (Cli, BlockingStore, Config) {
    let config = work.join(format!("{name}.toml"));
    let plugins = bin.parent().expect("bin dir");
    // plugin_dirs: the bench runs from target/release/deps, not beside the plugins.
    let text = format!(
        "[store]\nbackend = \"{backend}\"\nroot = \"{}\"\nplugin_dirs = [\"{}\"]\n{options}",
        s(root),
        s(plugins)
    );
    fs::write(&config, text).expect("write config");
    let loaded = Config::load(&config).expect("config");
    let api = BlockingStore::open(&loaded).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let cli = Cli { bin: bin.to_path_buf(), config };
    (cli, api, loaded)
}

// ----- measuring -----

/// Times of the two phases of one iteration (build and delete, acquire and
/// release, ...); the second is zero for one-phase work.
type Phases = [Duration; 2];

/// A way of doing the work, given a fresh name.
type Variant<'a> = Box<dyn FnMut(&str) -> Phases + 'a>;

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Runs each variant `iters` times, interleaved, rotating their order each
/// iteration so that none always runs first (on warmer or colder caches);
/// one more round first warms up and is not counted. Returns, per variant,
/// the samples of each phase and of their sum.
fn interleave(mnt: &Path, iters: usize, variants: &mut [Variant]) -> Vec<[Vec<Duration>; 3]> {
    let n = variants.len();
    let mut samples: Vec<[Vec<Duration>; 3]> = (0..n).map(|_| Default::default()).collect();
    for i in 0..=iters {
        for k in 0..n {
            let v = (i + k) % n;
            sync_fs(mnt);
            check_interrupted();
            let [a, b] = (variants[v])(&fresh("n"));
            if i > 0 {
                samples[v][0].push(a);
                samples[v][1].push(b);
                samples[v][2].push(a + b);
            }
        }
    }
    samples
}

fn median_ms(samples: &[Duration]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).map(|d| d.as_secs_f64() * 1000.0)
}

/// One line of the table. Times are median milliseconds.
struct Row {
    backend: String,
    op: String,
    reference: Option<f64>,
    cli: f64,
    api: Option<f64>,
    backend_calls: Option<f64>,
    /// A ratio goal (CLI/reference at most this), or an absolute one in ms.
    goal: Goal,
}

enum Goal {
    None,
    Ratio(f64),
    Ms(f64),
}

impl Row {
    fn goal_text(&self) -> String {
        match self.goal {
            Goal::None => String::new(),
            Goal::Ratio(goal) => match self.reference {
                Some(r) if self.cli / r <= goal => format!("≤ {goal}: met"),
                Some(_) => format!("≤ {goal}: **missed**"),
                None => String::new(),
            },
            Goal::Ms(goal) if self.cli < goal => format!("< {goal} ms: met"),
            Goal::Ms(goal) => format!("< {goal} ms: **missed**"),
        }
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    }
}

fn print_table(rows: &[Row]) -> String {
    let mut t = String::new();
    t += "| backend | operation | obuilder's commands | snapstore CLI | CLI / obuilder | in-process API | backend calls | goal |\n";
    t += "|---|---|---:|---:|---:|---:|---:|---|\n";
    for r in rows {
        let ratio = r.reference.map(|x| format!("{:.2}", r.cli / x)).unwrap_or("—".into());
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.op,
            ms(r.reference),
            ms(Some(r.cli)),
            ratio,
            ms(r.api),
            ms(r.backend_calls),
            r.goal_text()
        );
    }
    t
}

// ----- the measurements -----

/// Build on `base` (`ref_base` for obuilder) then delete, four ways.
/// Returns per way [build, delete, both].
fn build_and_delete(t: &Target, base: &str, ref_base: &str, iters: usize) -> Vec<[Option<f64>; 3]> {
    let base_key = key(Namespace::Result, base);
    let mut variants: Vec<Variant> = vec![
        Box::new(|name| {
            let a = timed(|| t.reference.build(ref_base, name));
            let b = timed(|| t.reference.delete(name));
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                t.cli.run(&["build", name, "--base", base, "--", "true"]);
            });
            let b = timed(|| {
                t.cli.run(&["delete", name]);
            });
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                t.api
                    .build(Some(base), name, |dir| {
                        build_command(dir);
                        Ok::<(), io::Error>(())
                    })
                    .expect("api build")
                    .expect("build command");
            });
            let b = timed(|| t.api.delete(name).expect("api delete"));
            [a, b]
        }),
        // The floor: the backend's primitives alone, no command, no locks.
        Box::new(|name| {
            let (tmp, result) = (key(Namespace::ResultTmp, name), key(Namespace::Result, name));
            let a = timed(|| {
                t.backend.clone_tree(&base_key, &tmp).expect("clone");
                t.backend.commit(&tmp, &result, Some(&base_key)).expect("commit");
            });
            let b = timed(|| t.backend.remove(&result).expect("remove"));
            [a, b]
        }),
    ];
    interleave(&t.mnt, iters, &mut variants)
        .iter()
        .map(|s| [median_ms(&s[0]), median_ms(&s[1]), median_ms(&s[2])])
        .collect()
}

/// Acquire + release of cache `name` (obuilder: `ref_cache`), three ways.
fn cache_cycle(t: &Target, name: &str, ref_cache: &str, iters: usize) -> Vec<Option<f64>> {
    let has_reference = t.reference.kind != Kind::Zfs;
    let mut variants: Vec<Variant> = vec![
        Box::new(|_| {
            let a = timed(|| {
                let out = t.cli.run(&["cache", "acquire", name]);
                let lease = out.split_whitespace().next().expect("lease").to_string();
                t.cli.run(&["cache", "release", &lease]);
            });
            [a, Duration::ZERO]
        }),
        Box::new(|_| {
            let a = timed(|| {
                let lease = t.api.acquire_cache(name, None, LeaseKind::BoundToProcess).expect("acquire");
                t.api.release(lease).expect("release");
            });
            [a, Duration::ZERO]
        }),
    ];
    if has_reference {
        variants.push(Box::new(|copy| {
            let a = timed(|| {
                t.reference.acquire(ref_cache, copy);
                t.reference.release(ref_cache, copy);
            });
            [a, Duration::ZERO]
        }));
    }
    let samples = interleave(&t.mnt, iters, &mut variants);
    let mut medians: Vec<Option<f64>> = samples.iter().map(|s| median_ms(&s[2])).collect();
    medians.resize(3, None);
    medians
}

/// The CLI's fixed cost and a lookup, against a bare process spawn.
fn fixed_costs(t: &Target, id: &str, iters: usize) -> Vec<Option<f64>> {
    let one = |d: Duration| [d, Duration::ZERO];
    let mut variants: Vec<Variant> = vec![
        Box::new(|_| {
            one(timed(|| {
                cmd("true", &[]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.cli.run(&["root"]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.cli.run(&["result", id]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.api.result(id).expect("result").expect("present");
            }))
        }),
    ];
    interleave(&t.mnt, iters, &mut variants).iter().map(|s| median_ms(&s[2])).collect()
}

fn measure(t: &Target, rows: &mut Vec<Row>) {
    let iters = t.iters;
    let row = |op: &str, reference, cli: Option<f64>, api, backend_calls, goal| Row {
        backend: t.label.clone(),
        op: op.into(),
        reference,
        cli: cli.unwrap_or(f64::NAN),
        api,
        backend_calls,
        goal,
    };
    eprintln!("[{}] bases", t.label);
    t.api.build(None, "base2k", fill_2k).expect("store").expect("fill");
    t.reference.make_base("base2k", fill_2k);
    t.api.build(None, "tree10k", fill_10k).expect("store").expect("fill");
    t.reference.make_base("tree10k", fill_10k);

    eprintln!("[{}] build + delete on 2000 files, {iters} iterations", t.label);
    let m = build_and_delete(t, "base2k", "base2k", iters);
    // The goals of issues 3, 4 and 8, CLI against obuilder in the same run.
    let build_goal = match t.kind {
        Kind::Btrfs => Goal::Ratio(0.5),
        Kind::Rsync => Goal::Ratio(1.1),
        _ => Goal::None,
    };
    let clone_goal = match t.kind {
        Kind::Xfs => Goal::Ratio(0.8),
        Kind::Rsync => Goal::Ratio(1.1),
        _ => Goal::None,
    };
    rows.push(row("build on 2000 files", m[0][0], m[1][0], m[2][0], m[3][0], Goal::None));
    rows.push(row("delete it", m[0][1], m[1][1], m[2][1], m[3][1], Goal::None));
    rows.push(row("**build + delete**", m[0][2], m[1][2], m[2][2], m[3][2], build_goal));

    eprintln!("[{}] clone of 10 000 files + 50 MB, {} iterations", t.label, t.big);
    let m = build_and_delete(t, "tree10k", "tree10k", t.big);
    rows.push(row("**clone 10 000 files** (build)", m[0][0], m[1][0], m[2][0], m[3][0], clone_goal));
    rows.push(row("delete it", m[0][1], m[1][1], m[2][1], m[3][1], Goal::None));

    eprintln!("[{}] cache of 10 000 files, {} iterations", t.label, t.big);
    let lease = t.api.acquire_cache("cache10k", None, LeaseKind::BoundToProcess).expect("acquire");
    fill_10k(&lease.path).expect("fill cache");
    t.api.release(lease).expect("release");
    t.reference.make_base("cache10k", fill_10k);
    let c = cache_cycle(t, "cache10k", "cache10k", t.big);
    rows.push(row("cache acquire + release, 10 000 files", c[2], c[0], c[1], None, Goal::None));

    eprintln!("[{}] fixed costs, {} iterations", t.label, iters * 2);
    let f = fixed_costs(t, "base2k", iters * 2);
    rows.push(row("**CLI fixed cost** (`root`; ref: spawn `true`)", f[0], f[1], None, None, Goal::Ms(5.0)));
    rows.push(row("`result` lookup (ref: spawn `true`)", f[0], f[2], f[3], None, Goal::None));
}

// ----- scale -----

struct ScaleRow {
    backend: String,
    op: &'static str,
    small: Option<f64>,
    large: Option<f64>,
}

/// `result`, `build`, `delete`, `list` and `complete-deletes` through the
/// CLI in a store of 10 results, then of `n`.
fn scale(t: &Target, bin: &Path, work: &Path, n: usize, iters: usize, rows: &mut Vec<ScaleRow>) {
    let root = t.mnt.join("scale-store");
    let (cli, api, _) = open_store(bin, work, &format!("{}-scale", t.kind_name()), t.kind_name(), &root, "");
    api.build(None, "s-base", fill_small).expect("store").expect("fill");
    let empty = |_: &Path| Ok::<(), io::Error>(());
    let mut have = 1;
    let mut grow = |to: usize| {
        let start = Instant::now();
        while have < to {
            api.build(None, &format!("s-{have}"), empty).expect("store").expect("build");
            have += 1;
        }
        start.elapsed()
    };
    let measure_at = || {
        let mut variants: Vec<Variant> = vec![
            Box::new(|_| {
                [
                    timed(|| {
                        cli.run(&["result", "s-5"]);
                    }),
                    Duration::ZERO,
                ]
            }),
            Box::new(|name| {
                let a = timed(|| {
                    cli.run(&["build", name, "--base", "s-base", "--", "true"]);
                });
                let b = timed(|| {
                    cli.run(&["delete", name]);
                });
                [a, b]
            }),
            Box::new(|_| {
                let a = timed(|| {
                    cli.run(&["list"]);
                });
                let b = timed(|| {
                    cli.run(&["complete-deletes"]);
                });
                [a, b]
            }),
        ];
        let m = interleave(&t.mnt, iters, &mut variants);
        [
            median_ms(&m[0][0]),
            median_ms(&m[1][0]),
            median_ms(&m[1][1]),
            median_ms(&m[2][0]),
            median_ms(&m[2][1]),
        ]
    };
    grow(10);
    eprintln!("[{}] scale: 10 results, {iters} iterations", t.label);
    let small = measure_at();
    eprintln!("[{}] scale: adding {} results through the API", t.label, n - 10);
    let took = grow(n);
    eprintln!(
        "[{}] scale: {} results added in {:.0} s ({:.1} ms each)",
        t.label,
        n - 10,
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / (n - 10) as f64
    );
    let large = measure_at();
    let ops = ["`result`", "`build --base` (10 files)", "`delete`", "`list`", "`complete-deletes`"];
    for (i, op) in ops.into_iter().enumerate() {
        rows.push(ScaleRow { backend: t.label.clone(), op, small: small[i], large: large[i] });
    }
}

fn print_scale_table(rows: &[ScaleRow], n: usize) -> String {
    let mut t =
        format!("| backend | operation | 10 results | {n} results | ratio |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        let ratio = match (r.small, r.large) {
            (Some(a), Some(b)) => format!("{:.2}", b / a),
            _ => "—".into(),
        };
        let _ = writeln!(t, "| {} | {} | {} | {} | {ratio} |", r.backend, r.op, ms(r.small), ms(r.large));
    }
    t
}

impl Target {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Rsync => "rsync",
            Kind::Btrfs => "btrfs",
            Kind::Xfs => "xfs-reflink",
            Kind::Zfs => "zfs",
        }
    }
}

// ----- main -----

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the backends benchmark needs root (loop devices and mounts): skipped");
        return;
    }
    catch_interrupts();
    let settings = Settings::load();
    // Cargo builds the CLI for benches; the plugins come from `cargo build
    // --release --workspace` and must sit beside it.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_snapstore"));
    let plugin_dir = bin.parent().expect("bin dir").to_path_buf();
    let work =
        tempfile::Builder::new().prefix("snapstore-bench.").tempdir_in("/var/tmp").expect("scratch dir");
    let work_path = work.path().to_path_buf();

    let mut rows = Vec::new();
    let mut scale_rows = Vec::new();
    let started = Instant::now();
    for name in &settings.backends {
        let (kind, plugin) = match name.as_str() {
            "rsync" | "rsync-xfs" => (Kind::Rsync, "rsync"),
            "btrfs" => (Kind::Btrfs, "btrfs"),
            "xfs-reflink" => (Kind::Xfs, "xfs_reflink"),
            "zfs" => (Kind::Zfs, "zfs"),
            other => panic!("unknown backend `{other}` in backends="),
        };
        if !plugin_dir.join(format!("libsnapstore_{plugin}.so")).is_file() {
            eprintln!(
                "[{name}] skipped: no libsnapstore_{plugin}.so beside {} (cargo build --release --workspace)",
                bin.display()
            );
            continue;
        }
        let tool = match kind {
            Kind::Rsync => "rsync",
            Kind::Btrfs => "mkfs.btrfs",
            Kind::Xfs => "mkfs.xfs",
            Kind::Zfs => "zfs-fuse",
        };
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            eprintln!("[{name}] skipped: `{tool}` is not installed");
            continue;
        }
        // Guards first, so that they outlive the stores opened on them.
        let mut loop_fs = None;
        let mut pool = None;
        let (label, mnt) = match name.as_str() {
            "rsync" => {
                let dir = work_path.join("ext4");
                fs::create_dir(&dir).expect("mkdir");
                ("rsync (ext4)".to_string(), dir)
            }
            "rsync-xfs" | "xfs-reflink" => {
                let fs =
                    loop_fs.insert(LoopFs::new(&work_path, name, &["mkfs.xfs", "-q", "-m", "reflink=1"]));
                let label = if kind == Kind::Rsync { "rsync (xfs)" } else { "xfs-reflink (xfs)" };
                (label.to_string(), fs.mnt.clone())
            }
            "btrfs" => {
                let fs = loop_fs.insert(LoopFs::new(&work_path, name, &["mkfs.btrfs", "-q"]));
                ("btrfs".to_string(), fs.mnt.clone())
            }
            _ => {
                let mnt = work_path.join("zfs");
                match ZfsPool::new(&work_path, &mnt) {
                    Some(p) => pool = Some(p),
                    None => continue,
                }
                ("zfs (zfs-fuse)".to_string(), mnt)
            }
        };
        let (root, reference_dir, options, dataset) = if kind == Kind::Zfs {
            let pool_name = pool.as_ref().expect("pool").name.clone();
            cmd("zfs", &["create", &format!("{pool_name}/store")]);
            cmd("zfs", &["create", &format!("{pool_name}/ref")]);
            let options = format!("[backend]\ndataset = \"{pool_name}/store\"\n");
            (mnt.join("store"), mnt.join("ref"), options, format!("{pool_name}/ref"))
        } else {
            fs::create_dir(mnt.join("ref")).expect("mkdir");
            (mnt.join("store"), mnt.join("ref"), String::new(), String::new())
        };
        let (cli, api, config) =
            open_store(&bin, &work_path, name, plugin.replace('_', "-").as_str(), &root, &options);
        let backend = snapstore::internal::Plugin::for_config(&config)
            .and_then(|p| p.open(&config.root, &config.backend_options))
            .expect("backend");
        let (iters, big) = if kind == Kind::Zfs {
            (settings.zfs_iters, settings.zfs_iters)
        } else {
            (settings.iters, settings.big)
        };
        let target = Target {
            label,
            kind,
            mnt: mnt.clone(),
            cli,
            api,
            backend,
            reference: Reference { kind, dir: reference_dir, dataset },
            iters,
            big,
        };
        measure(&target, &mut rows);
        if settings.scale > 10 && settings.scale_backends.contains(name) && kind != Kind::Zfs {
            scale(&target, &bin, &work_path, settings.scale, settings.scale_iters, &mut scale_rows);
        }
        // The table so far, in case a later backend fails.
        eprintln!("[{name}] done after {:.0} s\n{}", started.elapsed().as_secs_f64(), print_table(&rows));
        if !scale_rows.is_empty() {
            eprintln!("{}", print_scale_table(&scale_rows, settings.scale));
        }
        // Stores close before their filesystem goes.
        drop(target);
        drop(loop_fs);
        drop(pool);
    }

    println!("\nMedian milliseconds per operation (one run, sides alternating):\n");
    println!("{}", print_table(&rows));
    if !scale_rows.is_empty() {
        println!("Scale: median milliseconds through the CLI, {} results against 10:\n", settings.scale);
        println!("{}", print_scale_table(&scale_rows, settings.scale));
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
}
