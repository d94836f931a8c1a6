//! Builds that behave like sandboxes: background processes that outlive
//! the command, bind mounts of outside directories left in the tree, and a
//! snapstore killed while its command's descendants still write.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use store_api::util::mounts::mounts_under;
use support::*;
use test_support::sandbox::Outside;

/// Commands that leave a writer behind in three ways: a plain background
/// job, a new session (`setsid`), and a double fork (reparented away).
const LATE_WRITERS: [(&str, &str); 3] = [
    ("background", "(sleep 2; echo late > late_file) & echo early > early"),
    ("setsid", "setsid sh -c 'sleep 2; echo late > late_file' & echo early > early"),
    ("double-fork", "(sh -c 'sleep 2; echo late > late_file' &) ; echo early > early"),
];

fn late_writers_never_reach_the_result(f: &Fixture, env: &[(&str, &str)]) {
    let start = Instant::now();
    for (id, script) in LATE_WRITERS {
        let out =
            f.command(&["build", id, "--", "sh", "-c", script]).envs(env.iter().copied()).output().unwrap();
        assert!(out.status.success(), "{id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(start.elapsed() < Duration::from_secs(2), "a build waited for its background writer");
    std::thread::sleep(Duration::from_secs(3));
    for (id, _) in LATE_WRITERS {
        let path = f.result(id).unwrap();
        assert_eq!(fs::read_to_string(path.join("early")).unwrap(), "early\n", "{id}");
        assert!(!path.join("late_file").exists(), "{id}: the result changed after its commit");
    }
    // The same for a cache copy: what is published is what the command left.
    let script = "(sleep 2; echo late > late_file) & echo early > early";
    let out = f
        .command(&["cache", "run", "c", "--", "sh", "-c", script])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(3));
    let listed = f.ok(&["cache", "run", "c", "--", "ls"]);
    assert_eq!(listed, "early", "the published cache changed after its release");
}

#[test]
fn late_writers_never_reach_the_result_on_rsync() {
    late_writers_never_reach_the_result(&Fixture::rsync(), &[]);
}

/// Without a cgroup, the process group and the subreaper alone end them.
#[test]
fn late_writers_never_reach_the_result_without_a_cgroup() {
    late_writers_never_reach_the_result(&Fixture::rsync(), &[("SNAPSTORE_NO_CGROUP", "1")]);
}

/// An outside directory with a few files, in a temporary directory.
fn outside_dir() -> (tempfile::TempDir, Outside) {
    let dir = tempfile::tempdir().unwrap();
    let outside = Outside::new(dir.path());
    (dir, outside)
}

#[test]
fn a_bind_mount_left_in_a_build_is_detached_before_commit() {
    a_bind_mount_is_detached_before_commit(&Fixture::rsync());
}

fn a_bind_mount_is_detached_before_commit(f: &Fixture) {
    if !is_root() {
        skip("bind mounts need root");
        return;
    }
    let (_dir, outside) = outside_dir();
    let _guard = DetachOnDrop(f.root.clone());
    let script = format!("mkdir mnt && mount --bind {} mnt && echo built > f", outside.path.display());
    let path = PathBuf::from(f.ok(&["build", "bm", "--", "sh", "-c", &script]));
    assert!(mounts_under(&path).unwrap().is_empty(), "the result holds a mount");
    assert!(fs::read_dir(path.join("mnt")).unwrap().next().is_none(), "the mount's files were copied in");
    assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "built\n");
    f.ok(&["delete", "bm"]);
    // A cache copy with a bind mount: published without it.
    let script = format!("mkdir -p mnt && mount --bind {} mnt", outside.path.display());
    f.ok(&["cache", "run", "c", "--", "sh", "-c", &script]);
    f.ok(&["cache", "run", "c", "--", "true"]);
    f.ok(&["cache", "delete", "c"]);
    // A failed build with a mount: aborted, the outside kept.
    let script = format!("mkdir mnt && mount --bind {} mnt && exit 3", outside.path.display());
    assert_eq!(f.run(&["build", "failed", "--", "sh", "-c", &script]).status.code(), Some(3));
    f.ok(&["complete-deletes"]);
    assert!(mounts_under(&f.root).unwrap().is_empty(), "a mount is left in the store");
    outside.assert_intact("data outside the store");
}

/// A command that swaps its tree for a symlink to an outside directory
/// holding a mount: the symlink is never followed (the mount and the data
/// stay), nothing is committed or published, and the link itself goes.
#[test]
fn a_tree_swapped_for_a_symlink_is_refused_and_never_followed() {
    if !is_root() {
        skip("mounts need root");
        return;
    }
    let f = Fixture::rsync();
    let (_src_dir, src) = outside_dir();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path();
    let _unmount = test_support::sandbox::Unmount(victim.to_path_buf());
    test_support::sandbox::bind(&src.path, &victim.join("m"));
    let outside = Outside::new(victim);
    let swap = format!("d=$(pwd); cd ..; rm -rf \"$d\"; ln -s {} \"$d\"", victim.display());

    let out = f.run(&["build", "swapped", "--", "sh", "-c", &swap]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr
            .trim()
            .ends_with("is no longer a directory (the command replaced or removed it): nothing is committed"),
        "{stderr}"
    );
    assert!(f.result("swapped").is_none());
    // A cache copy swapped so is discarded, whether the run says so or fails.
    f.run(&["cache", "run", "c", "--", "sh", "-c", &swap]);
    assert_eq!(
        f.ok(&["cache", "run", "c", "--", "sh", "-c", "ls -A | wc -l"]),
        "0",
        "the swap was published"
    );

    assert_eq!(test_support::sandbox::mounts_below(victim).len(), 1, "the outside mount was detached");
    outside.assert_intact("the directory the symlink pointed at");
    src.assert_intact("the directory mounted there");
    for tmp in ["result-tmp", "cache-tmp"] {
        assert_eq!(fs::read_dir(f.root.join(tmp)).unwrap().count(), 0, "a tree is left in {tmp}");
    }
}

/// Detaches whatever a failed test left mounted in the store, before the
/// temporary directories are removed (through the mount, otherwise).
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = store_api::util::mounts::detach_mounts_under(&self.0);
        }
    }
}

/// The processes whose working directory is under `dir`.
fn processes_inside(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
        .filter(|e| fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn cgroups_usable() -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    is_root() && table.lines().any(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup2 ")))
}

/// The command starts as a fresh program would: in its tree, with
/// `SNAPSTORE_DIR` naming it, no signal blocked, SIGPIPE not ignored
/// (snapstore ignores it), and, where cgroups can be used, already in the tree's
/// cgroup (it is created there, not moved).
#[test]
fn the_command_starts_in_its_tree_and_its_cgroup() {
    let f = Fixture::rsync();
    let script = "cat /proc/self/cgroup > cgroup; echo \"$SNAPSTORE_DIR\" > dir; pwd -P > pwd; \
                  grep -E '^Sig(Blk|Ign):' /proc/self/status > signals";
    f.ok(&["build", "probe", "--", "sh", "-c", script]);
    let result = f.result("probe").unwrap();
    let read = |name: &str| fs::read_to_string(result.join(name)).unwrap();
    let tree = read("pwd");
    assert!(
        tree.starts_with(&format!("{}/result-tmp/", fs::canonicalize(&f.root).unwrap().display())),
        "{tree}"
    );
    assert_eq!(read("dir"), tree, "SNAPSTORE_DIR is not the tree");
    let signals = read("signals");
    let mask = |name: &str| {
        let line = signals.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "the command starts with signals blocked: {signals}");
    let sigpipe = 1 << (nix::libc::SIGPIPE - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "the command starts with SIGPIPE ignored: {signals}");
    if !cgroups_usable() {
        skip("the command's cgroup needs a writable cgroup2 mount (root)");
        return;
    }
    let tree_name = tree.trim().rsplit('/').next().unwrap().to_string();
    assert!(
        read("cgroup").lines().any(|l| l.starts_with("0::/snapstore/result-tmp.") && l.ends_with(&tree_name)),
        "not in the tree's cgroup: {}",
        read("cgroup")
    );
}

/// A writer that outlives a snapstore killed with SIGKILL is killed by
/// the recovery that removes its tree (through the build's cgroup).
#[test]
fn a_killed_builds_leftovers_are_killed_by_recovery() {
    leftovers_are_killed_by_recovery(&Fixture::rsync());
}

fn leftovers_are_killed_by_recovery(f: &Fixture) {
    if !cgroups_usable() {
        skip("finding a killed snapstore's leftovers needs a writable cgroup2 mount (root)");
        return;
    }
    let (_dir, outside) = outside_dir();
    let _guard = DetachOnDrop(f.root.clone());
    let script = format!(
        "mkdir mnt && mount --bind {} mnt; (while true; do echo x >> w; sleep 0.01; done) & sleep 100",
        outside.path.display()
    );
    let mut child = f
        .command(&["build", "k", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = f.root.join("result-tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_dir(&tmp).is_ok_and(|mut d| d.any(|e| e.unwrap().path().join("w").exists())) {
        assert!(Instant::now() < deadline, "the build never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!processes_inside(&f.root).is_empty(), "the writer should outlive snapstore until recovery");
    f.ok(&["complete-deletes"]);
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "the dead build's tree is left");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(processes_inside(&f.root), Vec::<String>::new(), "processes still run in the store");
    f.ok(&["complete-deletes"]);
    assert!(mounts_under(&f.root).unwrap().is_empty());
    outside.assert_intact("data outside the store");
}

fn all_scenarios(f: &Fixture) {
    late_writers_never_reach_the_result(f, &[]);
    a_bind_mount_is_detached_before_commit(f);
    leftovers_are_killed_by_recovery(f);
}

#[test]
fn sandboxes_on_xfs_reflink() {
    let Some((_fs, f)) = loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "512M", "xfs-reflink", "") else {
        return;
    };
    all_scenarios(&f);
}

#[test]
fn sandboxes_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "512M", "btrfs", "") else { return };
    all_scenarios(&f);
}

#[test]
fn sandboxes_on_rsync_hardlink() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[backend]\nmode = \"hardlink\"\n";
    all_scenarios(&Fixture::with_config(dir, &root, text));
}

/// The command runs in a process group of its own, which takes the
/// terminal while it runs: it can read it, Ctrl-C reaches it, and the
/// terminal is given back afterwards.
#[test]
fn a_command_on_a_terminal_can_read_it_and_gives_it_back() {
    use std::io::Write;
    if std::process::Command::new("script").arg("--version").output().is_err() {
        skip("script (util-linux) is not installed: no pseudo-terminal to test with");
        return;
    }
    let f = Fixture::rsync();
    let snapstore = format!("{} --config {}", snapstore_bin().display(), f.config.display());
    let line = format!(
        "{snapstore} build tty -- sh -c 'read a; echo $a > f' && {snapstore} build int -- sleep 20; \
         echo status=$?; {snapstore} result tty && echo after"
    );
    let mut child = std::process::Command::new("timeout")
        .args(["60", "script", "-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f.root.join("result/tty").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Time for the second build to start its command.
    std::thread::sleep(Duration::from_secs(1));
    stdin.write_all(b"\x03").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status=130") && text.contains("after"), "{text}");
    assert_eq!(f.read_result("tty", "f"), "hello\n");
    assert_eq!(f.result("int"), None);
}
