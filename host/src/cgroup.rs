//! One cgroup (v2) per command run in a tree, so that every process the
//! command started can be found and killed, even after snapstore itself
//! died: the cgroup is named after the tree, and the recovery that removes
//! a dead owner's tree kills what is left in it first.
//!
//! The cgroups live in `snapstore/` under the cgroup2 mount (found in
//! `/proc/self/mountinfo`). Where there is no cgroup2 mount, or it cannot be
//! written (no root, a read-only container), commands run without one: the
//! process group and the subreaper still end them while snapstore lives,
//! but leftovers of a snapstore killed with SIGKILL are out of reach.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use store_api::Key;
use tracing::{debug, warn};

/// The directory under the cgroup2 mount that holds snapstore's cgroups.
const PARENT: &str = "snapstore";
/// How long to wait for killed processes to leave their cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The cgroup of a command run in one tree.
#[derive(Debug)]
pub struct TreeCgroup {
    dir: PathBuf,
}

/// The cgroup name for `tree`: its namespace and name, unique to the tree.
fn name_of(tree: &Key) -> String {
    format!("{}.{}", tree.namespace(), tree.name())
}

/// Where snapstore's cgroups go: `snapstore/` under the cgroup2 mount, or
/// `None` where the machine has no cgroup2 (or tests turn it off).
fn parent_dir() -> Option<PathBuf> {
    if std::env::var_os("SNAPSTORE_NO_CGROUP").is_some_and(|v| v == "1") {
        return None;
    }
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = table.lines().find_map(|line| {
        let (fields, fstype) = line.split_once(" - ")?;
        (fstype.split(' ').next() == Some("cgroup2")).then(|| fields.split(' ').nth(4))?
    })?;
    // Mount points with spaces are escaped; such a cgroup2 mount is not used.
    (!mount.contains('\\')).then(|| Path::new(mount).join(PARENT))
}

impl TreeCgroup {
    /// Makes the cgroup for a command run in `tree`; `None` where cgroups
    /// cannot be used here.
    pub fn create(tree: &Key) -> Option<TreeCgroup> {
        let dir = parent_dir()?.join(name_of(tree));
        match fs::create_dir_all(&dir) {
            Ok(()) => Some(TreeCgroup { dir }),
            Err(e) => {
                debug!(cgroup = %dir.display(), "no cgroup for the command: {e}");
                None
            }
        }
    }

    /// The existing cgroup of `tree`, left by a command whose snapstore died.
    pub fn existing(tree: &Key) -> Option<TreeCgroup> {
        let dir = parent_dir()?.join(name_of(tree));
        dir.is_dir().then_some(TreeCgroup { dir })
    }

    /// The cgroup's directory, opened for `clone3`'s `CLONE_INTO_CGROUP`.
    pub fn open_dir(&self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_DIRECTORY).open(&self.dir)?;
        Ok(dir.into())
    }

    /// `cgroup.procs`, opened to move a process in where `clone3` cannot
    /// start it there: the forked child writes `0` to it (moving itself)
    /// before it runs the command.
    pub fn procs_file(&self) -> io::Result<fs::File> {
        fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.procs"))
    }

    /// Kills every process in the cgroup (those forked meanwhile too).
    pub fn kill_all(&self) {
        // cgroup.kill (Linux 5.14) kills atomically, forks included.
        if let Ok(mut file) = fs::OpenOptions::new().write(true).open(self.dir.join("cgroup.kill")) {
            if file.write_all(b"1").is_ok() {
                return;
            }
        }
        // Older kernels: kill what is listed until nothing is.
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn pids(&self) -> Vec<nix::unistd::Pid> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(nix::unistd::Pid::from_raw)
            .collect()
    }

    fn is_empty(&self) -> bool {
        match fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l == "populated 0"),
            Err(_) => self.pids().is_empty(),
        }
    }

    /// Kills everything in the cgroup, waits until it is empty and removes
    /// it. Returns `false` if processes were still there at the timeout.
    pub fn end(self) -> bool {
        let start = Instant::now();
        loop {
            if self.is_empty() {
                break;
            }
            if start.elapsed() > DRAIN_TIMEOUT {
                warn!(cgroup = %self.dir.display(), "processes survive SIGKILL (stuck in the kernel?)");
                return false;
            }
            self.kill_all();
            std::thread::sleep(Duration::from_millis(5));
        }
        // An empty cgroup may still be busy for a moment after its last exit.
        for _ in 0..100 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        debug!(cgroup = %self.dir.display(), "cannot remove the empty cgroup");
        true
    }
}
