//! What an earlier command learnt about the store's plugin file, kept in
//! the store's meta directory so that later commands skip work:
//!
//! * abi_stable's layout check of the plugin's interface, which is half of
//!   a command's start-up: it is done once per plugin file;
//! * for `result ID`, loading the plugin at all, when the backend keeps its
//!   results in one directory ([`store_api::SnapshotBackend::key_dir`]).
//!
//! A verdict holds only for the exact plugin file and the exact snapstore
//! executable it was reached with (device, inode, size, change times): a
//! rebuilt, replaced or touched file of either makes it void, and the next
//! command checks again. The file is an aid: unreadable or stale, it is
//! ignored and rewritten.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const FILE: &str = "plugin-verdict";

/// Which interface the plugin was loaded through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Current,
    V1_0,
    V1_1,
}

impl Interface {
    fn as_str(self) -> &'static str {
        match self {
            Interface::Current => "current",
            Interface::V1_0 => "1.0",
            Interface::V1_1 => "1.1",
        }
    }

    fn parse(text: &str) -> Option<Interface> {
        [Interface::Current, Interface::V1_0, Interface::V1_1].into_iter().find(|i| i.as_str() == text)
    }
}

/// What a plugin file was found to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The backend's name, as the plugin declares it.
    pub name: String,
    /// Its layout passed the check, for this interface.
    pub interface: Interface,
    /// Where its backend keeps committed results, if in one directory.
    pub result_dir: Option<PathBuf>,
}

fn file_identity(meta: &Metadata) -> String {
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// The plugin file's and this executable's identities, and the interface
/// version this executable speaks.
fn identity(plugin: &Metadata) -> Option<String> {
    let exe = fs::metadata("/proc/self/exe").ok()?;
    Some(format!(
        "plugin {} exe {} api {}",
        file_identity(plugin),
        file_identity(&exe),
        store_api::API_VERSION
    ))
}

/// The verdict kept in `meta_dir` for the plugin file whose metadata is
/// `plugin`, if there is one for exactly that file.
pub fn read(meta_dir: &Path, plugin: &Metadata) -> Option<Verdict> {
    let text = fs::read_to_string(meta_dir.join(FILE)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != identity(plugin)? {
        return None;
    }
    let name = lines.next()?.to_string();
    let interface = Interface::parse(lines.next()?)?;
    let result_dir = match lines.next()? {
        "" => None,
        dir => Some(PathBuf::from(dir)),
    };
    Some(Verdict { name, interface, result_dir })
}

/// Keeps `verdict` for the plugin file whose metadata is `plugin`,
/// replacing the file atomically; failures are ignored (it is an aid).
pub fn write(meta_dir: &Path, plugin: &Metadata, verdict: &Verdict) {
    let Some(identity) = identity(plugin) else {
        return;
    };
    let dir = verdict.result_dir.as_deref().and_then(Path::to_str).unwrap_or("");
    if dir.contains('\n') || verdict.name.contains('\n') {
        return;
    }
    let text = format!("{identity}\n{}\n{}\n{dir}\n", verdict.name, verdict.interface.as_str());
    // Staged as every meta file is, so that a killed writer's is cleaned up.
    let _ = crate::store::write_atomic(&meta_dir.join(FILE), text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_holds_for_its_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("libsnapstore_x.so");
        fs::write(&plugin, "one").unwrap();
        let verdict = Verdict {
            name: "x".into(),
            interface: Interface::Current,
            result_dir: Some("/store/result".into()),
        };
        write(dir.path(), &fs::metadata(&plugin).unwrap(), &verdict);
        assert_eq!(read(dir.path(), &fs::metadata(&plugin).unwrap()), Some(verdict));

        // Rewritten (a new size and change time): void.
        fs::write(&plugin, "other").unwrap();
        assert_eq!(read(dir.path(), &fs::metadata(&plugin).unwrap()), None);

        // Another file: void.
        let other = dir.path().join("libsnapstore_y.so");
        fs::write(&other, "one").unwrap();
        assert_eq!(read(dir.path(), &fs::metadata(&other).unwrap()), None);
    }

    #[test]
    fn a_damaged_verdict_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("p.so");
        fs::write(&plugin, "x").unwrap();
        let meta = fs::metadata(&plugin).unwrap();
        fs::write(dir.path().join(FILE), format!("{}\nx\nbogus\n\n", identity(&meta).unwrap())).unwrap();
        assert_eq!(read(dir.path(), &meta), None);
        let verdict = Verdict { name: "x".into(), interface: Interface::V1_0, result_dir: None };
        write(dir.path(), &meta, &verdict);
        assert_eq!(read(dir.path(), &meta), Some(verdict));
    }
}
