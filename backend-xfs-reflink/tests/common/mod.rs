//! Loop-mounted filesystems for the tests, from the workspace's
//! `test-support` crate (always unmounted and detached).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use snapstore_xfs_reflink::XfsReflink;

/// Skips a test loudly, or fails it when `CI=true`.
pub fn skip(test: &str, why: &str) {
    test_support::skip(&format!("{test}: {why}"));
}

/// A filesystem in an image file on a loop device, mounted at `mnt`.
pub struct LoopFs {
    fs: test_support::LoopFs,
    pub mnt: PathBuf,
}

impl LoopFs {
    /// `fs` is "xfs", "xfs-noreflink" or "btrfs"; `mount_opts` e.g. "noatime".
    /// None (after a loud message) when the test cannot run here.
    pub fn new(test: &str, fs: &str, size: u64, mount_opts: &str) -> Option<LoopFs> {
        let mkfs: &[&str] = match fs {
            "xfs" => &["mkfs.xfs", "-q", "-m", "reflink=1"],
            "xfs-noreflink" => &["mkfs.xfs", "-q", "-m", "reflink=0"],
            "btrfs" => &["mkfs.btrfs", "-q"],
            other => panic!("{test}: unknown filesystem {other}"),
        };
        eprintln!("{test}: on a loop-mounted {fs}");
        let fs = test_support::LoopFs::new(mkfs, &size.to_string(), mount_opts)?;
        Some(LoopFs { mnt: fs.mount.clone(), fs })
    }

    /// The store root: a subdirectory, as a real deployment would use.
    pub fn root(&self) -> PathBuf {
        self.fs.root()
    }

    pub fn open(&self, options: &str) -> XfsReflink {
        snapstore_xfs_reflink::open(&self.root(), options).expect("open store")
    }

    /// Bytes in use, after flushing so that the count is current.
    pub fn used_bytes(&self) -> u64 {
        self.fs.used_bytes()
    }
}

pub fn sync(path: &Path) {
    test_support::sync(path);
}
