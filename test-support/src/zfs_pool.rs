//! A ZFS pool on an image file, through zfs-fuse (or a ZFS kernel module).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::{installed, is_root, run, skip};

/// One pool at a time: zfs-fuse wedged (all its mounts hung) when tests
/// created and destroyed pools in parallel.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The same across processes (two test binaries, or a test and a bench, on
/// one daemon wedged it too): an exclusive `flock` on a file every process
/// of the machine finds, held with the pool.
fn machine_wide_turn() -> Result<Flock<File>, String> {
    let dir = if Path::new("/run/lock").is_dir() { Path::new("/run/lock") } else { Path::new("/tmp") };
    let path = dir.join("snapstore-test-zfs-pools.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

/// A pool named `name`, mounted at `mount`; destroyed on drop, with the
/// zfs-fuse daemon if [`stop_daemon_on_drop`](Self::stop_daemon_on_drop)
/// was asked and this pool started it.
pub struct ZfsPool {
    pub name: String,
    pub mount: PathBuf,
    /// Set when this pool started the daemon.
    daemon_pidfile: Option<PathBuf>,
    stop_daemon: bool,
    /// Holds the image; kept if the pool cannot be destroyed.
    work: Option<tempfile::TempDir>,
    _serial: MutexGuard<'static, ()>,
    _machine_wide: Flock<File>,
}

/// Whether ZFS answers (a daemon or a kernel module); a stuck zfs-fuse
/// would hang us, hence the timeout.
fn zpool_works() -> bool {
    Command::new("timeout")
        .args(["10", "zpool", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl ZfsPool {
    /// A pool of `size` ("512M"); `None`, after a loud skip, where this
    /// machine cannot make one. With CI=true that is a failure.
    pub fn new(size: &str) -> Option<ZfsPool> {
        if !is_root() {
            skip("ZFS pools need root");
            return None;
        }
        if !installed("zpool") || !installed("zfs") {
            skip("the zfs tools are missing (apt-get install zfs-fuse)");
            return None;
        }
        match Self::create("snapstoretest", size) {
            Ok(pool) => Some(pool),
            Err(why) => {
                skip(&format!("cannot make a ZFS pool: {why}"));
                None
            }
        }
    }

    /// A pool named `prefix` + a unique number, on an image of `size`;
    /// starts zfs-fuse first if ZFS does not answer.
    pub fn create(prefix: &str, size: &str) -> Result<ZfsPool, String> {
        Self::create_in(&std::env::temp_dir(), prefix, size)
    }

    /// Like [`create`](Self::create), with the image in a new directory
    /// under `parent` (e.g. on a disk rather than a tmpfs).
    pub fn create_in(parent: &Path, prefix: &str, size: &str) -> Result<ZfsPool, String> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let machine_wide = machine_wide_turn()?;
        let work = tempfile::Builder::new()
            .prefix("snapstore-zfs-")
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let daemon_pidfile = if zpool_works() { None } else { Some(start_daemon(work.path())?) };
        let image = work.path().join("pool.img");
        let mount = work.path().join("mnt");
        run(Command::new("truncate").args(["-s", size]).arg(&image))?;
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 1000)
            .unwrap_or(0);
        let name = format!("{prefix}{}", u64::from(std::process::id()) * 1000 + u64::from(unique));
        // The daemon may take a moment to accept commands after starting.
        let mut last = String::new();
        for _ in 0..50 {
            match run(Command::new("zpool").args(["create", "-m"]).arg(&mount).arg(&name).arg(&image)) {
                Ok(_) => {
                    return Ok(ZfsPool {
                        name,
                        mount,
                        daemon_pidfile,
                        stop_daemon: false,
                        work: Some(work),
                        _serial: serial,
                        _machine_wide: machine_wide,
                    })
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("cannot create pool {name}: {last}"))
    }

    /// Stops the zfs-fuse daemon on drop if this pool started it.
    pub fn stop_daemon_on_drop(mut self) -> ZfsPool {
        self.stop_daemon = true;
        self
    }
}

/// Starts zfs-fuse; returns its pid file once it answers.
fn start_daemon(work: &Path) -> Result<PathBuf, String> {
    let pidfile = work.join("zfs-fuse.pid");
    if run(Command::new("pgrep").args(["-x", "zfs-fuse"])).is_ok() {
        return Err("zfs-fuse is running but does not answer".into());
    }
    run(Command::new("zfs-fuse").arg("--pidfile").arg(&pidfile))?;
    let started = Instant::now();
    while !zpool_works() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("zfs-fuse did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pidfile)
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        // zfs-fuse hangs for good if a mount goes while the kernel still
        // holds requests for it (the last closes of the test): wait.
        wait_for_fuse_requests();
        // Unmount deepest first, then destroy; zfs-fuse often reports a
        // dataset or pool busy for a moment after use, so retry (~30 s).
        if let Ok(tree) = run(Command::new("zfs").args(["list", "-H", "-o", "name", "-r", &self.name])) {
            for dataset in tree.lines().rev() {
                let _ = run(Command::new("zfs").args(["umount", dataset]));
            }
        }
        let mut last = String::new();
        let destroyed =
            (0..150).any(|_| match run(Command::new("zpool").args(["destroy", "-f", &self.name])) {
                Ok(_) => true,
                Err(e) if e.contains("no such pool") => true,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(200));
                    false
                }
            });
        if !destroyed {
            // Keep the image: the pool still uses it.
            let kept = self.work.take().map(|work| work.keep());
            eprintln!(
                "\n!!! cannot destroy zfs pool {} ({last}); zfs-fuse holds it: restart the zfs-fuse \
                 daemon, then `zpool destroy {}` and remove {} !!!\n",
                self.name,
                self.name,
                kept.unwrap_or_default().display()
            );
        }
        let pid = self.daemon_pidfile.as_ref().and_then(|f| std::fs::read_to_string(f).ok());
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()).filter(|_| self.stop_daemon) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// Waits (at most 10 s) until no FUSE connection has a request the daemon
/// has not answered: unmounting one that has makes zfs-fuse hang (see the
/// zfs backend's `fuse` module). Mounts `fusectl`, which shows them, if
/// needed.
fn wait_for_fuse_requests() {
    let connections = Path::new("/sys/fs/fuse/connections");
    if std::fs::read_dir(connections).is_ok_and(|mut d| d.next().is_none()) {
        let _ = run(Command::new("mount").args(["-t", "fusectl", "fusectl"]).arg(connections));
    }
    let busy =
        || {
            std::fs::read_dir(connections).into_iter().flatten().flatten().any(|conn| {
                std::fs::read_to_string(conn.path().join("waiting")).is_ok_and(|n| n.trim() != "0")
            })
        };
    let start = Instant::now();
    while busy() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
}
