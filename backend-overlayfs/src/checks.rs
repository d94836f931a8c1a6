//! What overlayfs needs from the machine and the store's filesystem, found
//! by trying it: root, the overlay filesystem, an upper filesystem that is
//! neither tmpfs nor an overlay, with `d_type` and `trusted.*` xattrs.

use std::fs;
use std::path::Path;

use rustix::fs::{lsetxattr, statfs, Dir, FileType, Mode, OFlags, XattrFlags};
use store_api::util::mounts::detach_mounts_under;
use store_api::util::{remove_tree, unique_name};
use store_api::{ErrorKind, IoContext, StoreError};

use crate::layers::TRASH;
use crate::mount;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const OVERLAY_MAGIC: i64 = 0x794c_7630;
const XFS_MAGIC: i64 = 0x5846_5342;
const EXT4_MAGIC: i64 = 0xef53;

/// The lines `snapstore check` prints, or the first thing that is wrong.
pub fn check(
    root: &Path,
    max_depth: usize,
    cache_max_depth: usize,
    sync: bool,
) -> Result<Vec<String>, StoreError> {
    let mut lines = probe(root)?;
    lines.push(format!(
        "chains are flattened beyond {max_depth} layers ({cache_max_depth} for caches); sync on commit: {sync}"
    ));
    Ok(lines)
}

/// How long a probe may run: an older one in the trash is a killed
/// process's, and goes with the rest.
const PROBE_LIFE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the trash entry `entry` is the probe of a check running now
/// (another process's: `complete_deletes` must leave it).
pub fn is_running_probe(entry: &fs::DirEntry) -> bool {
    let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
    let probe =
        entry.file_name().to_string_lossy().strip_prefix(PROBE).is_some_and(|rest| rest.starts_with('-'));
    probe && age.is_some_and(|age| age < PROBE_LIFE)
}

/// What probes are named after (`probe-XXXX`, in the trash).
const PROBE: &str = "probe";

/// Tries everything the backend needs in a probe directory under
/// `ROOT/trash`, removed afterwards (a crash leaves it to complete_deletes,
/// once it is [`PROBE_LIFE`] old).
pub fn probe(root: &Path) -> Result<Vec<String>, StoreError> {
    if !rustix::process::geteuid().is_root() {
        return Err(StoreError::new(
            ErrorKind::PERMISSION,
            "the overlayfs backend needs root (overlay mounts, trusted.* xattrs): run snapstore as root",
        ));
    }
    let shown = root.display();
    let fs_type = statfs(root).context(format!("cannot statfs {shown}"))?.f_type as i64;
    let refuse = |why: &str| Err(StoreError::unsupported(format!("store root {shown} is on {why}")));
    match fs_type {
        TMPFS_MAGIC => {
            return refuse(
                "tmpfs, which loses every result at reboot; put the root on ext4 or XFS \
                 (or use the rsync backend)",
            )
        }
        OVERLAY_MAGIC => {
            return refuse(
                "an overlay, which cannot hold the layers of another overlay; put the root on ext4 or XFS \
                 (e.g. a volume mounted into the container)",
            )
        }
        _ => {}
    }
    let fs_name = match fs_type {
        XFS_MAGIC => "xfs".to_string(),
        EXT4_MAGIC => "ext2/3/4".to_string(),
        other => format!("a filesystem of type {other:#x}"),
    };
    let mut lines = vec![format!("root {shown} is on {fs_name}; running as root")];
    let trash = root.join(TRASH);
    let trash_made = !trash.exists();
    fs::create_dir_all(&trash).context(format!("cannot create {}", trash.display()))?;
    let dir = trash.join(unique_name(PROBE));
    fs::create_dir(&dir).context(format!("cannot create {}", dir.display()))?;
    let result = probe_in(&dir, &fs_name, &mut lines);
    let _ = detach_mounts_under(&dir);
    let _ = remove_tree(&dir);
    if result.is_err() && trash_made {
        // A refused root is left as it was found (empty, or absent).
        let _ = fs::remove_dir(&trash);
    }
    result.map(|()| lines)
}

fn probe_in(dir: &Path, fs_name: &str, lines: &mut Vec<String>) -> Result<(), StoreError> {
    for sub in ["lower", "upper", "work", "tree"] {
        fs::create_dir(dir.join(sub)).context(format!("cannot create {}/{sub}", dir.display()))?;
    }
    // d_type: XFS made with ftype=0 has none, and overlayfs needs it.
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(format!("cannot open {}", dir.display()))?;
    let mut types = Dir::read_from(&fd).context(format!("cannot read {}", dir.display()))?;
    let unknown = types.by_ref().flatten().any(|e| e.file_type() == FileType::Unknown);
    if unknown {
        return Err(StoreError::unsupported(format!(
            "{} is on {fs_name} without file types in directories (d_type), which overlayfs \
             needs; use a filesystem made with them (`mkfs.xfs -n ftype=1`, or ext4's default \
             `filetype` feature)",
            dir.display()
        )));
    }
    match lsetxattr(dir.join("upper"), "trusted.snapstore-probe", b"1", XattrFlags::empty()) {
        Ok(()) => lines.push("trusted.* xattrs work".into()),
        Err(e) => {
            return Err(StoreError::unsupported(format!(
                "{} is on {fs_name}, which cannot store trusted.* xattrs ({}); overlayfs needs them: \
                 use ext4 or XFS (with xattrs enabled) for the store root",
                dir.display(),
                std::io::Error::from(e)
            )))
        }
    }
    fs::write(dir.join("lower/probe"), b"lower").context(format!("cannot write in {}", dir.display()))?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    mount::mount_overlay(
        &dir.join("tree"),
        &[&dir.join("lower")],
        Some(mount::Upper { upper: &upper, work: &work }),
    )?;
    let written = fs::write(dir.join("tree/probe"), b"upper");
    detach_mounts_under(&dir.join("tree"))?;
    written.context(format!("cannot write through an overlay in {}", dir.display()))?;
    if fs::read(upper.join("probe")).ok().as_deref() != Some(b"upper") {
        return Err(StoreError::unsupported(format!(
            "an overlay in {} did not write its upper layer",
            dir.display()
        )));
    }
    lines.push("overlayfs: a writable overlay mounts (new mount API, lowerdir+)".into());
    Ok(())
}
