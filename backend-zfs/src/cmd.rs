//! Running the `zfs` and `zpool` commands and classifying their errors.

use std::io;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use store_api::util::{FileLock, LockMode};
use store_api::{ErrorKind, StoreError};

/// How often a "busy" command is retried, and the first pause (doubled each
/// time, at most `MAX_PAUSE`): about 6 s in all. Busy is usually transient
/// (a FUSE mount releasing its inodes, a process leaving a directory).
const BUSY_ATTEMPTS: u32 = 10;
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Runs `tool args…` and returns its stdout, or an error classified from
/// its stderr.
pub fn run(tool: &str, args: &[&str]) -> Result<String, StoreError> {
    let output = Command::new(tool)
        // Stable, untranslated messages: the error kind is read from them.
        .env("LC_ALL", "C")
        .args(args)
        .output()
        .map_err(|err| spawn_error(tool, &err))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // zfs often adds usage text after the first line; the first lines say it.
    let message: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).take(3).collect();
    let message =
        if message.is_empty() { format!("exited with {}", output.status) } else { message.join("; ") };
    Err(StoreError::new(classify(&message), format!("`{tool} {}`: {message}", args.join(" "))))
}

/// Where `zfs` commands queue, machine-wide.
const ZFS_LOCK: &str = "/run/lock/snapstore-zfs.lock";

/// Holds the machine-wide `zfs` lock. zfs-fuse (the only ZFS on some
/// machines) has hung for good when several commands ran at once, e.g. two
/// clones of one snapshot; a kernel ZFS serializes changes to a pool
/// anyway, so running our commands one at a time costs little.
pub fn one_at_a_time() -> Option<FileLock> {
    let _ = std::fs::create_dir_all("/run/lock");
    // If the lock cannot be had (e.g. no /run), the command runs unserialized.
    FileLock::acquire(std::path::Path::new(ZFS_LOCK), LockMode::Exclusive).ok()
}

/// `zfs args…`, one at a time, retrying while ZFS says the dataset is busy.
pub fn zfs(args: &[&str]) -> Result<String, StoreError> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        let queued = one_at_a_time();
        let result = run("zfs", args);
        drop(queued);
        match result {
            Err(err) if err.kind() == ErrorKind::BUSY && attempt < BUSY_ATTEMPTS => {
                sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `zfs args…` once, even if ZFS says busy: for a quick way that has a
/// careful one to fall back on.
pub fn zfs_once(args: &[&str]) -> Result<String, StoreError> {
    let _queued = one_at_a_time();
    run("zfs", args)
}

/// `zfs list -H -o COLUMNS ARGS…`: one row of `N` fields per dataset.
pub fn zfs_list<const N: usize>(columns: [&str; N], args: &[&str]) -> Result<Vec<[String; N]>, StoreError> {
    let columns = columns.join(",");
    zfs_rows(&[&["list", "-H", "-o", columns.as_str()][..], args].concat())
}

/// `zfs args…` for a command whose output (`-H`) is lines of `N`
/// tab-separated fields, such as `zfs get -H -o name,property,value`.
pub fn zfs_rows<const N: usize>(args: &[&str]) -> Result<Vec<[String; N]>, StoreError> {
    let out = zfs(args)?;
    out.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            split_row(line).ok_or_else(|| {
                StoreError::other(format!("unexpected line from `zfs {}`: {line:?}", args.join(" ")))
            })
        })
        .collect()
}

/// The `N` tab-separated fields of `line`, if it has exactly `N`.
fn split_row<const N: usize>(line: &str) -> Option<[String; N]> {
    let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
    fields.try_into().ok()
}

pub fn zpool(args: &[&str]) -> Result<String, StoreError> {
    run("zpool", args)
}

fn spawn_error(tool: &str, err: &io::Error) -> StoreError {
    if err.kind() == io::ErrorKind::NotFound {
        StoreError::unsupported(format!(
            "`{tool}` command not found: install the ZFS tools \
             (Debian: `apt-get install zfsutils-linux`, or `zfs-fuse`) and make sure `{tool}` is in PATH"
        ))
    } else {
        StoreError::io(format!("cannot run `{tool}`"), err)
    }
}

/// The error kind of a zfs/zpool message.
fn classify(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    if m.contains("permission denied") || m.contains("must be run as root") {
        ErrorKind::PERMISSION
    } else if m.contains("connect:") || m.contains("/dev/zfs") || m.contains("failed to initialize") {
        // No daemon (zfs-fuse) or no kernel module.
        ErrorKind::UNSUPPORTED
    } else if m.contains("busy") {
        ErrorKind::BUSY
    } else if m.contains("does not exist") || m.contains("no such pool") {
        ErrorKind::NOT_FOUND
    } else if m.contains("already exists") {
        ErrorKind::ALREADY_EXISTS
    } else if m.contains("out of space") || m.contains("no space") || m.contains("quota exceeded") {
        ErrorKind::NO_SPACE
    } else {
        ErrorKind::OTHER
    }
}

/// Whether a failed destroy was refused because clones still depend on a
/// snapshot (the deletion then waits for them).
pub fn has_dependent_clones(err: &StoreError) -> bool {
    err.message().contains("dependent clones")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        assert_eq!(classify("cannot destroy 'p/x': dataset is busy"), ErrorKind::BUSY);
        assert_eq!(classify("umount: /x: target is busy."), ErrorKind::BUSY);
        assert_eq!(classify("cannot open 'p/x': dataset does not exist"), ErrorKind::NOT_FOUND);
        assert_eq!(classify("cannot create 'p/x': dataset already exists"), ErrorKind::ALREADY_EXISTS);
        assert_eq!(classify("connect: Permission denied"), ErrorKind::PERMISSION);
        assert_eq!(classify("connect: No such file or directory"), ErrorKind::UNSUPPORTED);
        assert_eq!(classify("cannot destroy: filesystem has dependent clones"), ErrorKind::OTHER);
    }

    #[test]
    fn rows_have_the_fields_asked_for() {
        assert_eq!(split_row::<3>("p/a\t-\tyes"), Some(["p/a".into(), "-".into(), "yes".into()]));
        assert_eq!(split_row::<2>("p/a\t\t"), None);
        assert_eq!(split_row::<2>("p/a"), None);
    }

    #[test]
    fn missing_tool_says_how_to_install() {
        let err = run("zfs-no-such-tool", &[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UNSUPPORTED);
        assert!(err.message().contains("apt-get install"), "{err}");
    }
}
