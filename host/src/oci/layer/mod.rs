//! One OCI image layer: the changes of a tree against its base as a
//! deterministic tar stream (with OCI whiteouts), compressed with zstd or
//! gzip ([`write_layer`]), and the safe application of such a layer onto a
//! build tree ([`apply_layer`]). [`diff_trees`] computes the changes by
//! walking both trees when the backend cannot tell them.
//!
//! What a layer holds, and why:
//! * Every changed entry (see [`Change`]), in path order, with numeric
//!   owners, modes incl. setuid/setgid/sticky, nanosecond mtimes (PAX),
//!   xattrs (`SCHILY.xattr.*`, incl. `security.capability` and POSIX ACLs),
//!   symlinks, devices, fifos, hard links (all names of a changed inode with
//!   several names, the first as the file, the others as links to it), and
//!   sparse files as PAX 1.0 sparse entries (read by GNU tar and Go's
//!   archive/tar, i.e. umoci and skopeo).
//! * Deleted entries as `.wh.NAME`; a directory replaced by a new one as its
//!   entry followed by `.wh..wh..opq`.
//! * The unchanged parent directories of changed entries too (not the root):
//!   a layer then describes every directory it writes into, so tools that
//!   do not create missing parents, or create them with default metadata,
//!   extract the same tree; they cost one header each and apply as no-ops.
//! * No wall-clock field (no atime, ctime, user/group names, PAX header
//!   times are 0): the same step gives the same digest.
//! * Sockets are skipped: tar has no type for them (GNU tar and Go's
//!   archive/tar skip them too).

mod apply;
mod compress;
mod diff;
mod meta;
mod tarball;
mod write;

use std::path::PathBuf;

pub use apply::apply_layer;
pub use compress::Compression;
pub use diff::diff_trees;
pub use write::write_layer;

/// A written layer: its blob's digest and size, the digest of its
/// uncompressed tar (the image config's `diff_id`), both `sha256:<hex>`,
/// and its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub media_type: String,
}

/// How an entry differs between a tree and its base (containerd's
/// `fs.Changes` kinds; see store-api's `Change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed path, relative to the root of the tree (raw bytes; the
/// root itself is the empty path).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: PathBuf,
}
