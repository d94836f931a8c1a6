//! Trash entries that cannot be deleted.
//!
//! A backend that deletes removed trees in a trash directory must not let
//! one tree it cannot delete (e.g. files of another user in a store not run
//! as root) block the others, every later `complete_deletes`, or fill the
//! log at each call. [`remove_or_set_aside`] renames such an entry
//! `stuck-TOKEN`, so the failure is reported once; [`retry_stuck`] retries
//! those quietly, so that an entry whose cause is gone (e.g. after running
//! the store as root) is still deleted.

use std::fs;
use std::path::Path;

use super::{remove_tree, unique_name};
use crate::StoreError;

const STUCK: &str = "stuck-";

/// Deletes the trash entry `entry` with [`remove_tree`]. If that fails,
/// renames it `stuck-TOKEN` in the same directory and returns the error,
/// which then says where the entry was left: report it once.
pub fn remove_or_set_aside(entry: &Path) -> Result<(), StoreError> {
    let Err(error) = remove_tree(entry) else {
        return Ok(());
    };
    let aside = entry.with_file_name(unique_name(STUCK.trim_end_matches('-')));
    match fs::rename(entry, &aside) {
        Ok(()) => {
            Err(error
                .context(format_args!("left in {} (retried by later complete-deletes)", aside.display())))
        }
        Err(_) => Err(error),
    }
}

/// Whether a trash entry is one [`remove_or_set_aside`] set aside.
pub fn is_stuck(name: &str) -> bool {
    name.starts_with(STUCK)
}

/// Tries again, quietly, to delete the entries of `trash` that were set
/// aside; those that still fail stay.
pub fn retry_stuck(trash: &Path) {
    let Ok(entries) = fs::read_dir(trash) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stuck(&entry.file_name().to_string_lossy()) {
            let _ = remove_tree(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_entry_is_set_aside_and_retried() {
        let trash = std::env::temp_dir().join(unique_name("snapstore-trash"));
        fs::create_dir(&trash).unwrap();
        // Below a file: removal fails, and so does setting it aside.
        fs::write(trash.join("file"), b"").unwrap();
        let err = remove_or_set_aside(&trash.join("file/x")).unwrap_err();
        assert!(err.message().starts_with("cannot remove "), "{err}");
        fs::remove_file(trash.join("file")).unwrap();
        fs::create_dir_all(trash.join("stuck-1/a")).unwrap();
        fs::create_dir(trash.join("del-2")).unwrap();
        retry_stuck(&trash);
        let left: Vec<_> = fs::read_dir(&trash).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["del-2"], "only the stuck entry is retried");
        remove_or_set_aside(&trash.join("del-2")).unwrap();
        assert!(is_stuck("stuck-x") && !is_stuck("del-x"));
        fs::remove_dir(&trash).unwrap();
    }
}
