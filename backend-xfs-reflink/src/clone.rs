//! Cloning a tree: the shared parallel tree copy of `store-api`
//! ([`store_api::util::copy`]), sharing the data of regular files with
//! FICLONE. Every entry, owner, mode, xattr (ACLs included) and ns time is
//! kept; a mount point inside the tree is refused, never entered; a
//! filesystem that cannot clone a file is an error, never a silent copy.

use std::path::Path;

use store_api::util::copy::{copy_tree, FileData};
use store_api::StoreError;

/// Clones the directory `src` to the new directory `dst` (which must not
/// exist), on the current rayon pool. On error a partial `dst` may remain;
/// the caller removes it.
pub fn clone_tree(src: &Path, dst: &Path) -> Result<(), StoreError> {
    copy_tree(src, dst, FileData::Clone)
}
