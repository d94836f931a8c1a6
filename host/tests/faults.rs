//! Crashes, many processes and full disks, on every backend where the
//! fault applies: rsync always; btrfs and xfs-reflink on loop filesystems.

mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use snapstore::internal::FAULT_POINTS as POINTS;
use support::*;
use test_support::sandbox::Outside;

fn killed(out: &Output) -> bool {
    out.status.signal() == Some(9)
}

/// A run of `args` that dies at `point` (or finishes if it never gets there).
fn run_killed_at(f: &Fixture, point: &str, args: &[&str]) -> Output {
    f.command(args).env("SNAPSTORE_KILL_AT", point).output().unwrap()
}

/// What the store must look like whatever was killed: every result listed
/// is complete, the cache is one published state (a == b), and once
/// recovered no temporary tree is left but those of held leases.
fn check_invariants(f: &Fixture, context: &str) {
    f.wait_until_unlocked();
    let listing = f.json(&["list"]);
    for r in listing["results"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let copy = fs::read_to_string(f.result(id).unwrap().join("copy"));
        if id.starts_with('x') {
            assert_eq!(copy.unwrap(), "ok\n", "{context}: result {id} is torn");
        }
    }
    let cache = f.ok(&["cache", "run", "c", "--", "sh", "-c", "test \"$(cat a)\" = \"$(cat b)\" && cat a"]);
    assert!(!cache.is_empty(), "{context}: the cache is torn or empty");
    f.ok(&["complete-deletes"]);
    let tmp = fs::read_dir(f.root.join("result-tmp")).unwrap().count();
    assert_eq!(tmp, 0, "{context}: build trees left after recovery");
    let held: Vec<String> = f.json(&["list"])["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lease"].as_str().unwrap().to_string())
        .collect();
    let copies = fs::read_dir(f.root.join("cache-tmp")).unwrap().count();
    assert!(copies <= held.len(), "{context}: {copies} cache copies for {} held leases", held.len());
    for lease in held {
        f.ok(&["cache", "release", "--discard", &lease]);
    }
}

fn crash_at_every_point(f: &Fixture) {
    f.ok(&["build", "base", "--", "sh", "-c", "echo ok > output; seq 1 500 > numbers"]);
    f.ok(&["cache", "run", "c", "--", "sh", "-c", "echo v0 > a; echo v0 > b"]);
    for (n, point) in POINTS.iter().enumerate() {
        let mut deaths = 0;
        let id = format!("x{n}");
        let context = format!("killed at {point}");
        // A build.
        let out =
            run_killed_at(f, point, &["build", &id, "--base", "base", "--", "sh", "-c", "cat output > copy"]);
        deaths += killed(&out) as usize;
        check_invariants(f, &context);
        if f.result(&id).is_none() {
            f.ok(&["build", &id, "--base", "base", "--", "sh", "-c", "cat output > copy"]);
        }
        // Its delete.
        let out = run_killed_at(f, point, &["delete", &id]);
        deaths += killed(&out) as usize;
        check_invariants(f, &context);
        f.ok(&["delete", &id]);
        assert_eq!(f.result(&id), None);
        // A cache run, and an acquire + release by hand.
        let value = format!("v{}", n + 1);
        let script = format!("echo {value} > a; echo {value} > b");
        let out = run_killed_at(f, point, &["cache", "run", "c", "--", "sh", "-c", &script]);
        deaths += killed(&out) as usize;
        check_invariants(f, &context);
        let out = run_killed_at(f, point, &["--json", "cache", "acquire", "c"]);
        deaths += killed(&out) as usize;
        if out.status.success() {
            let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let path = std::path::Path::new(lease["path"].as_str().unwrap());
            fs::write(path.join("a"), "vw\n").unwrap();
            fs::write(path.join("b"), "vw\n").unwrap();
            let out = run_killed_at(f, point, &["cache", "release", lease["lease"].as_str().unwrap()]);
            deaths += killed(&out) as usize;
        }
        check_invariants(f, &context);
        assert!(deaths > 0, "no operation was killed at {point}");
    }
}

/// Kills at random moments, inside the backend's work too.
fn crash_at_random_moments(f: &Fixture) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut delay = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(seed % 80)
    };
    for i in 0..15 {
        let id = format!("x-random{i}");
        let args =
            ["build", id.as_str(), "--base", "base", "--", "sh", "-c", "cat output > copy; sleep 0.02"];
        let mut child = f.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay());
        let _ = child.kill();
        let _ = child.wait();
        let script = format!("echo r{i} > a; sleep 0.01; echo r{i} > b");
        let mut child = f
            .command(&["cache", "run", "c", "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay());
        let _ = child.kill();
        let _ = child.wait();
        check_invariants(f, &format!("random kill {i}"));
    }
}

fn crashes(f: &Fixture) {
    crash_at_every_point(f);
    crash_at_random_moments(f);
}

#[test]
fn crashes_on_rsync() {
    crashes(&Fixture::rsync());
}

#[test]
fn crashes_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else { return };
    crashes(&f);
}

#[test]
fn crashes_on_xfs_reflink() {
    let Some((_fs, f)) = loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "1G", "xfs-reflink", "") else {
        return;
    };
    crashes(&f);
}

/// Ten processes at once, a few hundred operations with random
/// interleavings: builds on shared bases, deletes, lookups, cache runs on
/// one cache, cache deletes. Nothing that should succeed fails, nothing is
/// torn, nothing deadlocks.
fn many_processes(f: &Fixture) {
    for b in 0..3 {
        f.ok(&["build", &format!("base{b}"), "--", "sh", "-c", &format!("echo base{b} > output")]);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    std::thread::scope(|scope| {
        for worker in 0..10u64 {
            scope.spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (worker + 1).wrapping_mul(0x1000_0000_01b3);
                let mut next = move |n: u64| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % n
                };
                for op in 0..30 {
                    assert!(Instant::now() < deadline, "worker {worker} is stuck (deadlock?)");
                    let id = format!("w{worker}-{op}");
                    match next(6) {
                        0 | 1 => {
                            let base = format!("base{}", next(3));
                            let script = format!("cat output > copy; echo {id} > mine");
                            f.ok(&["build", &id, "--base", &base, "--", "sh", "-c", &script]);
                            let path = f.result(&id).unwrap();
                            assert_eq!(fs::read_to_string(path.join("copy")).unwrap(), format!("{base}\n"));
                            if next(2) == 0 {
                                f.ok(&["delete", &id]);
                            }
                        }
                        2 => {
                            let base = format!("base{}", next(3));
                            let path = f.result(&base).expect("a base vanished");
                            assert_eq!(fs::read_to_string(path.join("output")).unwrap(), format!("{base}\n"));
                        }
                        3 | 4 => {
                            let script = format!(
                                "if [ -e a ]; then test \"$(cat a)\" = \"$(cat b)\" || exit 9; fi; \
                                 echo {id} > a; echo {id} > b"
                            );
                            f.ok(&["cache", "run", "shared", "--", "sh", "-c", &script]);
                        }
                        _ => {
                            if next(4) == 0 {
                                f.ok(&["cache", "delete", "shared"]);
                            } else {
                                f.ok(&["list"]);
                            }
                        }
                    }
                }
            });
        }
    });
    f.ok(&["complete-deletes"]);
    assert_eq!(fs::read_dir(f.root.join("result-tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(f.root.join("cache-tmp")).unwrap().count(), 0);
    assert!(f.json(&["list"])["leases"].as_array().unwrap().is_empty());
}

#[test]
fn many_processes_on_rsync() {
    many_processes(&Fixture::rsync());
}

#[test]
fn many_processes_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else { return };
    many_processes(&f);
}

/// A build or a cache copy that does not fit fails clearly, leaves
/// nothing behind, and the store works again once space is freed.
/// `copies_share_data`: a clone costs (almost) no space, so only the
/// command's own writes can fill the disk.
fn full_disk(f: &Fixture, size_mb: u32, copies_share_data: bool) {
    let fill = format!("head -c {size_mb}000000 /dev/urandom > blob");
    f.ok(&["build", "base", "--", "sh", "-c", &fill]);
    f.ok(&["cache", "run", "c", "--", "sh", "-c", &fill]);
    // The command's own writes fail: its status passes through.
    let out = f.run(&["build", "huge", "--", "sh", "-c", "head -c 900000000 /dev/zero > blob"]);
    assert!(!out.status.success());
    assert_eq!(f.result("huge"), None);
    f.ok(&["complete-deletes"]);
    assert_eq!(fs::read_dir(f.root.join("result-tmp")).unwrap().count(), 0, "a failed build left a tree");
    // The store's own copies (rsync copies the base) run out of space: a clear error.
    let mut copies = 0;
    let mut failed_copy = false;
    while copies < 6 && !failed_copy {
        let out = f.run(&["build", &format!("copy{copies}"), "--base", "base", "--", "true"]);
        if out.status.success() {
            copies += 1;
            continue;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{err}");
        let last = err.lines().last().unwrap();
        assert!(last.starts_with("error: ") && last.contains("No space left"), "{err}");
        failed_copy = true;
    }
    assert_eq!(failed_copy, !copies_share_data, "after {copies} copies of the base");
    if failed_copy {
        // A cache copy that does not fit either.
        let out = f.run(&["cache", "run", "c", "--", "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{err}");
        assert!(err.contains("No space left"), "{err}");
    }
    f.ok(&["complete-deletes"]);
    assert_eq!(fs::read_dir(f.root.join("result-tmp")).unwrap().count(), 0, "a failed copy left a tree");
    assert_eq!(fs::read_dir(f.root.join("cache-tmp")).unwrap().count(), 0, "a failed cache copy left a tree");
    // Freeing space makes everything work again.
    for i in 0..copies {
        f.ok(&["delete", &format!("copy{i}")]);
    }
    f.ok(&["complete-deletes"]);
    f.ok(&["build", "again", "--base", "base", "--", "true"]);
    // The cache kept its last published state.
    assert_eq!(
        f.ok(&["cache", "run", "c", "--", "sh", "-c", "wc -c < blob"]).trim(),
        format!("{size_mb}000000")
    );
    f.ok(&["cache", "run", "c", "--", "sh", "-c", "echo more > more"]);
}

#[test]
fn full_disk_on_rsync() {
    let Some((_fs, f)) = loop_store(&["mkfs.ext4", "-q"], "200M", "rsync", "") else { return };
    full_disk(&f, 40, false);
}

#[test]
fn full_disk_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "300M", "btrfs", "") else { return };
    full_disk(&f, 60, true);
}

/// Detaches whatever a failed test left mounted in the store.
struct DetachOnDrop(std::path::PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = store_api::util::mounts::detach_mounts_under(&self.0);
        }
    }
}

/// Builds and cache runs that bind-mount an outside directory, killed at
/// every injection point and in the middle of their command: the outside
/// directory never changes, and no mount is left in the store.
fn mounts_survive_crashes(f: &Fixture) {
    if !is_root() {
        skip("bind mounts need root");
        return;
    }
    let outside_tmp = tempfile::tempdir().unwrap();
    let outside = Outside::new(outside_tmp.path());
    let out_dir = outside.path.display().to_string();
    f.ok(&["build", "base", "--", "sh", "-c", "echo ok > output"]);
    let _guard = DetachOnDrop(f.root.clone());
    let mount = format!("mkdir -p mnt && mount --bind {out_dir} mnt");
    for (n, point) in POINTS.iter().enumerate() {
        let mut deaths = 0;
        let id = format!("m{n}");
        let build = format!("{mount} && cat output > copy");
        let out = run_killed_at(f, point, &["build", &id, "--base", "base", "--", "sh", "-c", &build]);
        deaths += killed(&out) as usize;
        let out = run_killed_at(f, point, &["cache", "run", "c", "--", "sh", "-c", &mount]);
        deaths += killed(&out) as usize;
        f.ok(&["complete-deletes"]);
        if f.result(&id).is_some() {
            let out = run_killed_at(f, point, &["delete", &id]);
            deaths += killed(&out) as usize;
        }
        f.ok(&["complete-deletes"]);
        outside.assert_intact(&format!("killed at {point}"));
        assert!(deaths > 0, "no operation was killed at {point}");
    }
    // Killed while the command runs, its mount in place and a writer behind.
    for (n, args) in [&["build", "running"][..], &["cache", "run", "c"][..]].iter().enumerate() {
        let script = format!(
            "{mount} && touch mnt/mounted-{n}; (while true; do date >> w; sleep 0.01; done) & sleep 100"
        );
        let mut args = args.to_vec();
        args.extend(["--", "sh", "-c", &script]);
        let mut child = f.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_dir(&outside.path).unwrap().any(|e| e.unwrap().file_name() == *format!("mounted-{n}"))
        {
            assert!(Instant::now() < deadline, "the command never mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::remove_file(outside.path.join(format!("mounted-{n}"))).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        f.ok(&["complete-deletes"]);
        // What the background writer may have added before the kill is not
        // the store's to remove: only the mount is the store's concern.
        let _ = fs::remove_file(outside.path.join("w"));
        outside.assert_intact("killed mid-command");
    }
    f.ok(&["cache", "delete", "c"]);
    f.ok(&["complete-deletes"]);
    assert!(
        store_api::util::mounts::mounts_under(&f.root).unwrap().is_empty(),
        "a mount is left in the store"
    );
    outside.assert_intact("after the last recovery");
}

#[test]
fn mounts_survive_crashes_on_rsync() {
    mounts_survive_crashes(&Fixture::rsync());
}

#[test]
fn mounts_survive_crashes_on_rsync_hardlink() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[backend]\nmode = \"hardlink\"\n";
    mounts_survive_crashes(&Fixture::with_config(dir, &root, text));
}

#[test]
fn mounts_survive_crashes_on_xfs_reflink() {
    let Some((_fs, f)) = loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "1G", "xfs-reflink", "") else {
        return;
    };
    mounts_survive_crashes(&f);
}

#[test]
fn mounts_survive_crashes_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else { return };
    mounts_survive_crashes(&f);
}

// overlayfs (issue 17): crashes, many processes and mounts, on a loop
// ext4; then the leak check: once everything is deleted and
// complete-deletes has run, no layer, trash entry or mount is left.

fn overlayfs_store() -> Option<(LoopFs, Fixture)> {
    loop_store(&["mkfs.ext4", "-q"], "1G", "overlayfs", "")
}

fn overlayfs_leaves_nothing(f: &Fixture) {
    for r in f.json(&["list"])["results"].as_array().unwrap() {
        f.ok(&["delete", r["id"].as_str().unwrap()]);
    }
    for lease in f.json(&["list"])["leases"].as_array().unwrap() {
        f.ok(&["cache", "release", "--discard", lease["lease"].as_str().unwrap()]);
    }
    for c in f.json(&["list"])["caches"].as_array().unwrap() {
        f.ok(&["cache", "delete", c["name"].as_str().unwrap()]);
    }
    f.ok(&["complete-deletes"]);
    for dir in ["result", "result-tmp", "cache", "cache-tmp", "layers", "trash"] {
        let left: Vec<_> = fs::read_dir(f.root.join(dir)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{dir} holds {left:?}");
    }
    let mounts = store_api::util::mounts::mounts_under(&f.root).unwrap();
    assert!(mounts.is_empty(), "mounts left in the store: {mounts:?}");
}

#[test]
fn crashes_on_overlayfs() {
    let Some((_fs, f)) = overlayfs_store() else { return };
    crashes(&f);
    overlayfs_leaves_nothing(&f);
}

#[test]
fn many_processes_on_overlayfs() {
    let Some((_fs, f)) = overlayfs_store() else { return };
    many_processes(&f);
    overlayfs_leaves_nothing(&f);
}

#[test]
fn mounts_survive_crashes_on_overlayfs() {
    let Some((_fs, f)) = overlayfs_store() else { return };
    mounts_survive_crashes(&f);
    overlayfs_leaves_nothing(&f);
}
