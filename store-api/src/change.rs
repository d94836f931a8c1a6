//! What a result changed against its base: the answer of
//! [`crate::SnapshotBackend::changes`], from which an image layer is written.

use std::path::PathBuf;

/// How one entry differs between a tree and its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// In the tree, not in the base.
    Added,
    /// In both, with other content, type or metadata (owner, mode, times,
    /// xattrs; for a directory, its own metadata).
    Modified,
    /// In the base, not in the tree.
    Deleted,
}

/// One changed entry, by its path relative to the tree's root (raw bytes:
/// names need not be UTF-8).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: PathBuf,
}

// Plugins built with the `abi-1-*` features have no `changes` to convert.
#[cfg_attr(any(feature = "abi-1-0", feature = "abi-1-1"), allow(dead_code))]
impl ChangeKind {
    /// The code that crosses the plugin boundary.
    pub(crate) fn code(self) -> u8 {
        match self {
            ChangeKind::Added => 0,
            ChangeKind::Modified => 1,
            ChangeKind::Deleted => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<ChangeKind> {
        match code {
            0 => Some(ChangeKind::Added),
            1 => Some(ChangeKind::Modified),
            2 => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}
