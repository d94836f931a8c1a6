//! A filesystem without reflinks is refused with a clear one-line message.

mod common;

use std::path::Path;

use store_api::ErrorKind;

use common::LoopFs;

fn assert_refused(dir: &Path, what: &str) {
    let root = dir.join(format!("snapstore-refusal-{}", std::process::id()));
    let err = match snapstore_xfs_reflink::open(&root, "") {
        Ok(_) => panic!("{what}: opened a store without reflinks"),
        Err(err) => err,
    };
    let _ = std::fs::remove_dir_all(&root);
    eprintln!("{what}: {err}");
    assert_eq!(err.kind(), ErrorKind::UNSUPPORTED, "{what}: {err:?}");
    assert!(err.message().contains("reflink"), "{what}: {err}");
    assert!(!err.message().contains('\n'));
}

/// What filesystem a directory is on, as `stat -f` says.
fn fs_type(dir: &Path) -> String {
    let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tmpfs_is_refused() {
    let shm = Path::new("/dev/shm");
    if fs_type(shm) != "tmpfs" {
        common::skip("tmpfs_is_refused", "/dev/shm is not a tmpfs");
        return;
    }
    assert_refused(shm, "tmpfs");
}

#[test]
fn ext4_is_refused() {
    // On this kind of machine the temporary directory is on ext4.
    let tmp = std::env::temp_dir();
    let kind = fs_type(&tmp);
    if !kind.starts_with("ext") {
        common::skip("ext4_is_refused", &format!("{} is on {kind}, not ext4", tmp.display()));
        return;
    }
    assert_refused(&tmp, "ext4");
}

#[test]
fn xfs_without_reflink_is_refused() {
    let Some(lfs) = LoopFs::new("xfs_without_reflink_is_refused", "xfs-noreflink", 512 << 20, "") else {
        return;
    };
    assert_refused(&lfs.mnt, "xfs reflink=0");
}
