//! Prerequisites, checked by `open` and `check`: each failure is one line
//! saying what is wrong and how to fix it.

use std::fs;
use std::path::Path;

use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};
use store_api::{ErrorKind, StoreError};

/// Older kernels lack the ioctls used here or hang in subvolume deletion.
const MIN_KERNEL: (u32, u32) = (5, 8);
/// Subvolume deletion, tree search and inode lookup need CAP_SYS_ADMIN.
const CAP_SYS_ADMIN: u32 = 21;

/// Checks that the store root `root` is (or would be made) on btrfs, that
/// the kernel is recent enough and that we have the needed privileges.
/// Returns what was found.
pub fn check_environment(root: &Path) -> Result<Vec<String>, StoreError> {
    // The nearest existing directory: nothing is created on the wrong filesystem.
    let path = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let fs = statfs(path).map_err(|err| {
        StoreError::io(format!("cannot statfs {}", path.display()), &std::io::Error::from(err))
    })?;
    if fs.filesystem_type() != BTRFS_SUPER_MAGIC {
        let (shown, magic) = (root.display(), fs.filesystem_type().0);
        let what = if path == root {
            format!("the store root {shown} is not on a btrfs filesystem (filesystem magic {magic:#x})")
        } else {
            format!(
                "the store root {shown} would not be on btrfs: {}, where it would be created, is on \
                 filesystem magic {magic:#x}",
                path.display()
            )
        };
        return Err(StoreError::unsupported(format!(
            "{what}: set the store root to a directory on btrfs (e.g. `mkfs.btrfs DEVICE && mount DEVICE \
             {shown}`), or choose another backend"
        )));
    }

    let release = nix::sys::utsname::uname()
        .map_err(|err| StoreError::io("cannot run uname", &std::io::Error::from(err)))?
        .release()
        .to_string_lossy()
        .into_owned();
    match parse_kernel(&release) {
        Some(version) if version >= MIN_KERNEL => {}
        _ => {
            return Err(StoreError::unsupported(format!(
                "kernel {release} is too old for the btrfs backend: it needs Linux {}.{} or later \
                 (older kernels can hang deleting subvolumes); upgrade the kernel or choose another backend",
                MIN_KERNEL.0, MIN_KERNEL.1
            )))
        }
    }

    if !has_cap_sys_admin() {
        return Err(StoreError::new(
            ErrorKind::PERMISSION,
            "the btrfs backend needs CAP_SYS_ADMIN to create and delete subvolumes: \
             run snapstore as root (e.g. with sudo) or grant it CAP_SYS_ADMIN",
        ));
    }

    Ok(vec![
        format!("filesystem: btrfs at {}", path.display()),
        format!("kernel: {release} (needs {}.{} or later)", MIN_KERNEL.0, MIN_KERNEL.1),
        "permissions: CAP_SYS_ADMIN".to_string(),
    ])
}

/// "6.1.0-18-amd64" -> (6, 1).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether CAP_SYS_ADMIN is in our effective set (root normally has it;
/// a root in a restricted container may not).
fn has_cap_sys_admin() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return nix::unistd::geteuid().is_root();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel("6.18.44-fc-v782"), Some((6, 18)));
        assert!(parse_kernel("4.19.0").is_some_and(|v| v < MIN_KERNEL));
        assert_eq!(parse_kernel("garbage"), None);
    }
}
