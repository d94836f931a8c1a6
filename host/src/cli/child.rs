//! Running the command of `build` and `cache run` in a tree.

use std::path::Path;
use std::process::Command;

use snapstore::StoreError;

/// Runs `command` in `dir`, returning the exit status to report: the
/// command's own, 128+N if signal N killed it, 126/127 if it cannot start.
pub fn run_command(command: &[String], dir: &Path) -> Result<u8, StoreError> {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).current_dir(dir).env("SNAPSTORE_DIR", dir);
    // If snapstore dies, its tree will never be committed: take the command
    // down with it rather than let it write into a tree being recovered.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    let parent = nix::unistd::getpid();
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                // The parent died before the line above took effect.
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL)?;
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("error: cannot run `{}`: {err}", command[0]);
            return Ok(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    // Like system(3): a Ctrl-C goes to the command, and we stay to clean up.
    let _ignore = IgnoreInterrupts::new();
    let status = child.wait().map_err(|e| StoreError::io("cannot wait for the command", &e))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        _ => 1,
    })
}

struct IgnoreInterrupts(Vec<(nix::sys::signal::Signal, nix::sys::signal::SigAction)>);

impl IgnoreInterrupts {
    fn new() -> Self {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        let saved = [Signal::SIGINT, Signal::SIGQUIT]
            .into_iter()
            // SAFETY: installs SIG_IGN, which runs no code in the handler.
            .filter_map(|sig| unsafe { sigaction(sig, &ignore) }.ok().map(|old| (sig, old)))
            .collect();
        IgnoreInterrupts(saved)
    }
}

impl Drop for IgnoreInterrupts {
    fn drop(&mut self) {
        for (sig, old) in &self.0 {
            // SAFETY: restores the disposition saved above.
            let _ = unsafe { nix::sys::signal::sigaction(*sig, old) };
        }
    }
}
