//! Opening a plugin library so that what is loaded is what was checked.
//!
//! The file is opened once; the checks look at the open descriptor and at
//! every directory on the way to it, and the loader then loads the
//! descriptor (through `/proc/self/fd/N`), never the path again. When
//! snapstore runs as root, a library that anyone else could have written
//! or swapped in is refused (the rule sudo and ssh apply to their files).

use std::fs::{self, File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use store_api::{ErrorKind, StoreError};

const STICKY: u32 = 0o1000;
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// A plugin library, opened and checked. The descriptor is never closed:
/// the dynamic loader knows a library by the name it was loaded by, and a
/// later `/proc/self/fd/N` with the same N must not name another file.
pub struct PluginFile {
    _file: std::mem::ManuallyDrop<File>,
    /// The path to load it by: the descriptor in `/proc/self/fd`.
    pub load_path: PathBuf,
    /// The opened file's metadata.
    pub meta: Metadata,
}

fn refuse(file: &Path, what: &Path, why: &str, fix: &str) -> StoreError {
    StoreError::new(
        ErrorKind::INCOMPATIBLE,
        format!(
            "refusing to load {}: {} is {why} while snapstore runs as root; fix with: {fix}",
            file.display(),
            what.display()
        ),
    )
}

impl PluginFile {
    /// Opens `file` and, when running as root, checks that only root could
    /// have written it or any directory that leads to it.
    pub fn open(file: &Path) -> Result<PluginFile, StoreError> {
        let opened = File::open(file)
            .map_err(|e| StoreError::io(format_args!("cannot open {}", file.display()), &e))?;
        let load_path = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
        let meta = opened.metadata().map_err(|e| StoreError::io("cannot stat the plugin", &e))?;
        if !meta.is_file() {
            return Err(StoreError::invalid(format!("plugin {} is not a regular file", file.display())));
        }
        if nix::unistd::geteuid().is_root() {
            check_library(file, &meta)?;
            let real = fs::read_link(&load_path)
                .map_err(|e| StoreError::io(format_args!("cannot resolve {}", file.display()), &e))?;
            for dir in real.ancestors().skip(1) {
                check_directory(file, dir)?;
            }
            check_symlinks(file)?;
        }
        Ok(PluginFile { _file: std::mem::ManuallyDrop::new(opened), load_path, meta })
    }

    /// Replaces the descriptor path in a loader message by the file's name.
    pub fn explain(&self, message: &str, file: &Path) -> String {
        message.replace(&self.load_path.display().to_string(), &file.display().to_string())
    }
}

/// The library itself: root's, and writable by root only.
fn check_library(file: &Path, meta: &Metadata) -> Result<(), StoreError> {
    let shown = file.display();
    if meta.uid() != 0 {
        return Err(refuse(file, file, "not owned by root", &format!("chown root {shown}")));
    }
    if meta.mode() & GROUP_OR_OTHER_WRITE != 0 {
        return Err(refuse(file, file, "writable by other users", &format!("chmod go-w {shown}")));
    }
    Ok(())
}

/// A directory on the way to the library: root's, and writable by others
/// only if sticky (like /tmp), where nobody can rename what is not theirs.
fn check_directory(file: &Path, dir: &Path) -> Result<(), StoreError> {
    let meta =
        fs::metadata(dir).map_err(|e| StoreError::io(format_args!("cannot read {}", dir.display()), &e))?;
    let shown = dir.display();
    if meta.uid() != 0 {
        return Err(refuse(file, dir, "not owned by root", &format!("chown root {shown}")));
    }
    if meta.mode() & GROUP_OR_OTHER_WRITE != 0 && meta.mode() & STICKY == 0 {
        return Err(refuse(file, dir, "writable by other users", &format!("chmod go-w {shown}")));
    }
    Ok(())
}

/// A symbolic link on the way (`file` as written), which whoever can write
/// its directory could have pointed anywhere: it must be root's, in a
/// directory that nobody else can write, sticky or not.
fn check_symlinks(file: &Path) -> Result<(), StoreError> {
    for path in file.ancestors() {
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        if meta.uid() != 0 {
            return Err(refuse(file, path, "a symlink not owned by root", "use the real path"));
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let dir_mode = fs::metadata(dir).map(|m| m.mode()).unwrap_or(0o777);
        if dir_mode & GROUP_OR_OTHER_WRITE != 0 {
            let why = format!("a symlink in {}, a directory other users can write", dir.display());
            return Err(refuse(file, path, &why, "use the real path, or move the link"));
        }
    }
    Ok(())
}
