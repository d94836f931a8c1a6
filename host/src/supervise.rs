//! Running a command in a tree, such that the run is over only when every
//! process it started is gone.
//!
//! The command runs in its own process group and, where the machine
//! allows, its own cgroup (see [`crate::cgroup`]; [`crate::spawn`] starts
//! it there); snapstore is a child
//! subreaper, so descendants that double-fork or `setsid` away are
//! reparented to it. When the command exits, whatever it left is killed
//! and reaped: only then is the tree committed, once the mounts it made
//! under the tree are detached ([`detach_mounts`]). If snapstore itself
//! dies, the command gets SIGKILL (`PR_SET_PDEATHSIG`), and the recovery
//! that removes the tree kills the rest through the cgroup
//! ([`end_leftovers`]).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{kill, killpg, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};
use store_api::util::mounts::detach_mounts_under;
use store_api::{Key, StoreError};
use tracing::{debug, info, warn};

use crate::cgroup::TreeCgroup;
use crate::spawn::spawn;

/// Runs `command` in `dir` (a tree whose key is `tree`) and returns the
/// exit status to report: the command's own, 128+N if signal N killed it,
/// 126/127 if it cannot start. Returns once every process the command
/// started is gone. The mounts it left under `dir` are detached by the
/// commit, release or removal that follows.
///
/// Reaps every child of this process: meant for a program that runs one
/// command at a time, like the `snapstore` CLI.
pub fn run(command: &[String], dir: &Path, tree: &Key) -> Result<u8, StoreError> {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!("cannot become a child subreaper ({e}): descendants that detach may outlive the command");
    }
    let cgroup = TreeCgroup::create(tree);
    let terminal = in_terminal_foreground();
    let forwarding = ForwardSignals::install();
    let status = match spawn(command, dir, cgroup.as_ref(), terminal) {
        Ok(group) => {
            COMMAND_GROUP.store(group.as_raw(), Ordering::SeqCst);
            let waited = wait_for(group);
            COMMAND_GROUP.store(0, Ordering::SeqCst);
            end_all(group, cgroup);
            if terminal {
                take_terminal_back();
            }
            match waited
                .map_err(|e| StoreError::io("cannot wait for the command", &std::io::Error::from(e)))?
            {
                WaitStatus::Exited(_, code) => code.clamp(0, 255) as u8,
                WaitStatus::Signaled(_, signal, _) => (128 + signal as i32).clamp(0, 255) as u8,
                _ => 1,
            }
        }
        Err(err) => {
            if let Some(cgroup) = cgroup {
                cgroup.end();
            }
            eprintln!("error: cannot run `{}`: {err}", command.first().map_or("", String::as_str));
            if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    drop(forwarding);
    Ok(status)
}

/// Waits until the command's first process ends.
fn wait_for(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(status),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Kills what is left of a command whose direct child has exited: its
/// process group, its cgroup, and every descendant reparented to us.
fn end_all(group: Pid, cgroup: Option<TreeCgroup>) {
    if let Some(cgroup) = &cgroup {
        cgroup.kill_all();
    }
    let _ = killpg(group, Signal::SIGKILL);
    let mut reaped = 0usize;
    // As a subreaper we inherit the orphans of every descendant that dies:
    // kill our children until none is left to wait for.
    loop {
        match waitpid(None, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                for pid in children_of(getpid()) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                match waitpid(None, Some(WaitPidFlag::__WALL)) {
                    Ok(_) => reaped += 1,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            Ok(_) => reaped += 1,
            Err(nix::errno::Errno::EINTR) => {}
            // ECHILD: nothing left.
            Err(_) => break,
        }
    }
    if reaped > 0 {
        debug!(reaped, "killed the processes the command left behind");
    }
    if let Some(cgroup) = cgroup {
        cgroup.end();
    }
}

/// Whether stdin is a terminal whose foreground process group is ours.
fn in_terminal_foreground() -> bool {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    // SAFETY: tcgetpgrp only reads the terminal's foreground group.
    stdin.is_terminal() && unsafe { nix::libc::tcgetpgrp(0) } == nix::unistd::getpgrp().as_raw()
}

/// Makes our process group the terminal's foreground again. A background
/// group that does so gets SIGTTOU: ignored for the call.
fn take_terminal_back() {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs SIG_IGN, then restores what was there.
    if let Ok(old) = unsafe { nix::sys::signal::sigaction(Signal::SIGTTOU, &ignore) } {
        unsafe {
            nix::libc::tcsetpgrp(0, nix::libc::getpgrp());
            let _ = nix::sys::signal::sigaction(Signal::SIGTTOU, &old);
        }
    }
}

/// Our children: from `/proc/self/task/*/children` where the kernel has
/// it, else from every `/proc/N/stat`.
fn children_of(me: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for task in fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        match fs::read_to_string(task.path().join("children")) {
            Ok(list) => {
                children.extend(list.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw))
            }
            Err(_) => return children_in_proc(me),
        }
    }
    children
}

/// The processes whose parent is `parent`, from `/proc/N/stat`.
fn children_in_proc(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

/// Detaches the mounts under `dir`: a tree is never committed or removed
/// holding a mount of something outside the store.
pub fn detach_mounts(dir: &Path) -> Result<(), StoreError> {
    let detached = detach_mounts_under(dir)?;
    if !detached.is_empty() {
        info!(tree = %dir.display(), ?detached, "detached the mounts left in the tree");
    }
    Ok(())
}

/// Refuses to commit `dir` unless it is still a directory: a command may
/// have swapped its tree for a symlink to something outside the store.
pub fn check_still_a_tree(dir: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        _ => Err(StoreError::invalid(format!(
            "{} is no longer a directory (the command replaced or removed it): nothing is committed",
            dir.display()
        ))),
    }
}

/// Before the tree `tree` of a dead owner is removed: kills the processes
/// its command left (through its cgroup) and detaches the mounts under its
/// `path`. Returns `false` if processes survive SIGKILL (stuck in the
/// kernel): the tree must then be left for a later recovery. Without a
/// cgroup, processes that outlived a killed snapstore cannot be found; see
/// [`crate::cgroup`].
pub fn end_leftovers(tree: &Key, path: Option<&Path>) -> Result<bool, StoreError> {
    if let Some(cgroup) = TreeCgroup::existing(tree) {
        if !cgroup.end() {
            warn!(tree = %tree, "processes left in the tree survive SIGKILL; it is left for a later recovery");
            return Ok(false);
        }
    }
    if let Some(path) = path {
        detach_mounts(path)?;
    }
    Ok(true)
}

/// The process group of the running command, 0 when none runs.
static COMMAND_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: nix::libc::c_int) {
    let group = COMMAND_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { nix::libc::kill(-group, signal) };
    }
}

/// Like system(3), snapstore stays to clean up on Ctrl-C; the command is in
/// a process group of its own, so the terminal's signals (and a SIGTERM or
/// SIGHUP sent to snapstore) are passed on to it.
struct ForwardSignals(Vec<(Signal, SigAction)>);

const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTERM, Signal::SIGHUP];

impl ForwardSignals {
    fn install() -> Self {
        let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
        let saved = FORWARDED
            .into_iter()
            // SAFETY: the handler only reads an atomic and calls kill.
            .filter_map(|sig| unsafe { nix::sys::signal::sigaction(sig, &action) }.ok().map(|old| (sig, old)))
            .collect();
        ForwardSignals(saved)
    }
}

impl Drop for ForwardSignals {
    fn drop(&mut self) {
        for (sig, old) in &self.0 {
            // SAFETY: restores the disposition saved above.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, old) };
        }
    }
}
