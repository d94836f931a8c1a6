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
//! * The parent directories of changed entries too, unchanged ones and the
//!   root (`./`) included: applying an entry changes its directory's mtime,
//!   which the directory's own entry then sets back (applied last); and a
//!   layer describes every directory it writes into, so tools that do not
//!   create missing parents, or create them with default metadata, extract
//!   the same tree. They cost one header each.
//! * No wall-clock field (no atime, ctime, user/group names, PAX header
//!   times are 0): the same step gives the same digest.
//! * Sockets are skipped: tar has no type for them (GNU tar and Go's
//!   archive/tar skip them too).

mod apply;
mod compress;
mod diff;
mod meta;
mod tarball;
mod tarread;
mod write;

pub use apply::apply_layer;
pub use compress::Compression;
pub use diff::{diff_trees, diff_trees_after_clone};
/// The changes a layer is written from (store-api 1.2).
pub use store_api::{Change, ChangeKind};
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
