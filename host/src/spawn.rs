//! Starting a build's command: a fork that puts the child straight into
//! its tree's cgroup, then exec.
//!
//! Moving a running process into a cgroup (writing `cgroup.procs`) makes
//! the kernel wait for an RCU grace period: 5–20 ms on this kind of
//! machine, paid by every build, more than the snapshots themselves cost.
//! `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7) creates the child in the
//! cgroup instead, at the cost of a plain fork. Where that is refused (an
//! older kernel, a cgroup that cannot take processes), the child is forked
//! as usual and moves itself, as it did before.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::ptr;

use nix::unistd::Pid;

use crate::cgroup::TreeCgroup;

/// `CLONE_INTO_CGROUP` from linux/sched.h (libc declares it as an `int`,
/// too narrow for it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `command` in `dir`, with `SNAPSTORE_DIR=dir` in its environment,
/// in a process group of its own and, if given, in `cgroup`. `terminal`:
/// the command's group takes the terminal, as a shell's job does. The
/// child gets SIGKILL if snapstore dies. Returns the child's pid once it
/// has exec'd, or why it could not.
pub fn spawn(command: &[String], dir: &Path, cgroup: Option<&TreeCgroup>, terminal: bool) -> io::Result<Pid> {
    let child = Prepared::new(command, dir)?;
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = nix::unistd::getpid().as_raw();
    let cgroup_dir = cgroup.and_then(|c| c.open_dir().ok());
    let mut procs = None;
    let pid = match cgroup_dir.as_ref().map(fork_into) {
        Some(Ok(pid)) => pid,
        _ => {
            procs = cgroup.and_then(|c| c.procs_file().ok());
            // SAFETY: the child only runs `Prepared::exec`.
            unsafe { libc::fork() }
        }
    };
    if pid == 0 {
        let procs = procs.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: in the forked child: exec or exit.
        unsafe { child.exec(parent, procs, terminal, report_write.as_raw_fd()) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(report_write);
    let pid = Pid::from_raw(pid);
    match read_report(&report_read) {
        None => Ok(pid),
        Some(errno) => {
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// A fork whose child starts in the cgroup whose directory is `cgroup`.
fn fork_into(cgroup: &OwnedFd) -> io::Result<libc::pid_t> {
    // SAFETY: clone_args is plain data; zero is "unset" for every field.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    // SAFETY: without CLONE_VM this is a fork; the child only runs
    // `Prepared::exec`, which calls no glibc function that relies on the
    // thread state a raw clone leaves stale (its cached tid).
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &mut args, std::mem::size_of::<libc::clone_args>()) };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid as libc::pid_t)
    }
}

/// The child's errno if it could not exec (it writes it to the pipe);
/// `None` once exec closed the pipe.
fn read_report(pipe: &OwnedFd) -> Option<i32> {
    let mut bytes = [0u8; 4];
    loop {
        match nix::unistd::read(pipe.as_raw_fd(), &mut bytes) {
            Ok(4) => return Some(i32::from_ne_bytes(bytes)),
            Ok(_) => return None,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Everything exec needs, made before the fork: the child must not
/// allocate (another thread may hold the allocator's lock).
struct Prepared {
    /// The program (looked up in `PATH` if it has no slash), then its arguments.
    args: Vec<CString>,
    dir: CString,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Prepared {
    fn new(command: &[String], dir: &Path) -> io::Result<Prepared> {
        let c_string = |bytes: Vec<u8>| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command"))
        };
        let args =
            command.iter().map(|a| c_string(a.clone().into_bytes())).collect::<io::Result<Vec<_>>>()?;
        if args.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
        }
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os().filter(|(k, _)| k != "SNAPSTORE_DIR") {
            env.push(c_string(join_env(key, value))?);
        }
        env.push(c_string(join_env("SNAPSTORE_DIR".into(), dir.as_os_str().to_owned()))?);
        let argv = args.iter().map(|a| a.as_ptr()).chain([ptr::null()]).collect();
        let envp = env.iter().map(|e| e.as_ptr()).chain([ptr::null()]).collect();
        Ok(Prepared { dir: c_string(dir.as_os_str().as_bytes().to_vec())?, args, _env: env, argv, envp })
    }

    /// In the child: sets the process up and execs, or reports its errno
    /// on `report` and exits 127.
    ///
    /// # Safety
    /// Only in a child just forked; calls only async-signal-safe functions.
    unsafe fn exec(&self, parent: libc::pid_t, procs: Option<RawFd>, terminal: bool, report: RawFd) -> ! {
        let fail = || {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            libc::write(report, errno.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(127)
        };
        // Signals as a new program expects them: none blocked, SIGPIPE not
        // ignored (Rust ignores it; an ignored signal stays so across exec).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // If snapstore dies, its tree will never be committed: take the
        // command down with it rather than let it write on.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            fail();
        }
        if libc::getppid() != parent {
            // The parent died before the line above took effect. (Not
            // raise(): it needs the thread id, stale after a raw clone.)
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        if libc::chdir(self.dir.as_ptr()) != 0 || libc::setpgid(0, 0) != 0 {
            fail();
        }
        if let Some(fd) = procs {
            // Moves this process into the cgroup; without it, the run goes
            // on with the process group and the subreaper only.
            libc::write(fd, b"0".as_ptr().cast(), 1);
        }
        if terminal {
            // The command's group takes the terminal: it can read it, and
            // Ctrl-C reaches it directly. SIGTTOU is blocked for the call.
            let mut ttou = none;
            libc::sigaddset(&mut ttou, libc::SIGTTOU);
            libc::pthread_sigmask(libc::SIG_SETMASK, &ttou, ptr::null_mut());
            libc::tcsetpgrp(0, libc::getpid());
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        }
        libc::execvpe(self.args[0].as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        fail()
    }
}

fn join_env(key: OsString, value: OsString) -> Vec<u8> {
    let mut bytes = key.into_vec();
    bytes.push(b'=');
    bytes.extend_from_slice(value.as_bytes());
    bytes
}
