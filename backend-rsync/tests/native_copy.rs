//! The shared tree copy (`store_api::util::copy`, the rsync backend's
//! `copy = "native"`) on what trips tree walkers: hard links across
//! directories, sparse and huge files, fifos and sockets, symlinks out of
//! the tree, mount points inside it, and a target that refuses an xattr.
//! Needs root (owners, mounts); skipped loudly without it, a failure on CI.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{mknod, Mode, SFlag};
use store_api::util::copy::{copy_tree, FileData};
use test_support::sandbox::{bind, Outside, Unmount};

fn can_run(test: &str) -> bool {
    if test_support::is_root() {
        return true;
    }
    test_support::skip(&format!("{test}: needs root (owners, mounts)"));
    false
}

/// Copies with the default pool, as the backend does (in parallel).
fn copy(src: &Path, dst: &Path) -> Result<(), store_api::StoreError> {
    copy_tree(src, dst, FileData::Copy)
}

#[test]
fn hard_links_across_directories_stay_one_inode() {
    if !can_run("hard_links_across_directories_stay_one_inode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in ["a", "b/c", "d/e/f"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("a/one"), b"shared").unwrap();
    fs::hard_link(src.join("a/one"), src.join("b/c/two")).unwrap();
    fs::hard_link(src.join("a/one"), src.join("d/e/f/three")).unwrap();
    // Linked to a name outside the tree: inside, it is one plain file.
    fs::write(dir.path().join("outside"), b"half").unwrap();
    fs::hard_link(dir.path().join("outside"), src.join("b/half")).unwrap();
    // Many linked groups at once, so that threads meet them concurrently.
    for i in 0..200 {
        fs::write(src.join(format!("a/g{i}")), format!("{i}")).unwrap();
        fs::hard_link(src.join(format!("a/g{i}")), src.join(format!("d/g{i}"))).unwrap();
    }
    let dst = dir.path().join("dst");
    copy(&src, &dst).unwrap();
    let meta = |p: &str| fs::metadata(dst.join(p)).unwrap();
    let ino = meta("a/one").ino();
    assert_eq!((meta("b/c/two").ino(), meta("d/e/f/three").ino()), (ino, ino));
    assert_eq!(meta("a/one").nlink(), 3);
    assert_ne!(ino, fs::metadata(src.join("a/one")).unwrap().ino(), "a copy, not a link to the source");
    assert_eq!(meta("b/half").nlink(), 1);
    assert_eq!(fs::read(dst.join("b/half")).unwrap(), b"half");
    for i in 0..200 {
        assert_eq!(meta(&format!("a/g{i}")).ino(), meta(&format!("d/g{i}")).ino(), "group {i}");
        assert_eq!(fs::read(dst.join(format!("d/g{i}"))).unwrap(), format!("{i}").as_bytes());
    }
}

/// A 64 GiB file with 3 small data ranges is copied as such: same size,
/// same data, holes kept (a dense copy would not fit the disk).
#[test]
fn a_huge_sparse_file_keeps_its_holes_and_a_dense_one_its_bytes() {
    if !can_run("a_huge_sparse_file_keeps_its_holes_and_a_dense_one_its_bytes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let size: u64 = 64 << 30;
    let spots = [0, 7 << 30, size - 5];
    let mut huge = File::create(src.join("huge")).unwrap();
    huge.set_len(size).unwrap();
    for (i, at) in spots.iter().enumerate() {
        huge.seek(SeekFrom::Start(*at)).unwrap();
        huge.write_all(format!("spot{i}").as_bytes()[..5].as_ref()).unwrap();
    }
    drop(huge);
    // Dense, not a multiple of a block, bytes that differ everywhere.
    let mut x: u32 = 12345;
    let dense: Vec<u8> = (0..(40 << 20) + 777)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    fs::write(src.join("dense"), &dense).unwrap();
    // A file that ends in a hole.
    let mut tail = File::create(src.join("tail-hole")).unwrap();
    tail.write_all(b"head").unwrap();
    tail.set_len(3 << 20).unwrap();
    drop(tail);

    let dst = dir.path().join("dst");
    copy(&src, &dst).unwrap();
    let meta = fs::metadata(dst.join("huge")).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() < 1024, "the copy is not sparse: {} blocks", meta.blocks());
    let mut copy = File::open(dst.join("huge")).unwrap();
    for (i, at) in spots.iter().enumerate() {
        let mut got = [0u8; 5];
        copy.seek(SeekFrom::Start(*at)).unwrap();
        copy.read_exact(&mut got).unwrap();
        assert_eq!(&got, &format!("spot{i}").as_bytes()[..5], "data at {at}");
    }
    let mut hole = [1u8; 4096];
    copy.seek(SeekFrom::Start(3 << 30)).unwrap();
    copy.read_exact(&mut hole).unwrap();
    assert!(hole.iter().all(|b| *b == 0), "a hole reads as zeros");
    assert_eq!(fs::read(dst.join("dense")).unwrap(), dense);
    let tail = fs::metadata(dst.join("tail-hole")).unwrap();
    assert_eq!(tail.len(), 3 << 20);
    assert!(tail.blocks() < 64, "the trailing hole was written: {} blocks", tail.blocks());
    assert_eq!(&fs::read(dst.join("tail-hole")).unwrap()[..4], b"head");
}

/// Fifos and sockets are recreated, never opened (a fifo would block).
#[test]
fn fifos_and_sockets_are_recreated_not_opened() {
    if !can_run("fifos_and_sockets_are_recreated_not_opened") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    mknod(&src.join("fifo"), SFlag::S_IFIFO, Mode::from_bits_truncate(0o620), 0).unwrap();
    // mknod applies the umask.
    fs::set_permissions(src.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
    // A socket someone is listening on, and one nobody is.
    let _listener = std::os::unix::net::UnixListener::bind(src.join("live.sock")).unwrap();
    mknod(&src.join("dead.sock"), SFlag::S_IFSOCK, Mode::from_bits_truncate(0o700), 0).unwrap();
    let dst = dir.path().join("dst");
    copy(&src, &dst).unwrap();
    let ty = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap().file_type();
    assert!(ty("fifo").is_fifo());
    assert!(ty("live.sock").is_socket() && ty("dead.sock").is_socket());
    assert_eq!(fs::symlink_metadata(dst.join("fifo")).unwrap().mode() & 0o7777, 0o620);
}

/// Symlinks are copied as links, never followed, wherever they point.
#[test]
fn symlinks_out_of_the_tree_are_copied_not_followed() {
    if !can_run("symlinks_out_of_the_tree_are_copied_not_followed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = Outside::new(&dir.path().join("outside"));
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink(&outside.path, src.join("to-dir")).unwrap();
    std::os::unix::fs::symlink("../outside", src.join("relative")).unwrap();
    let dst = dir.path().join("dst");
    copy(&src, &dst).unwrap();
    assert_eq!(fs::read_link(dst.join("to-dir")).unwrap(), outside.path);
    assert_eq!(fs::read_link(dst.join("relative")).unwrap(), Path::new("../outside"));
    outside.assert_intact("after the copy");
    // An existing destination is refused, not merged into.
    let err = copy(&src, &dst).unwrap_err();
    assert!(err.message().contains("cannot create") && !err.message().contains('\n'), "{err}");
}

/// A mount inside the source (a bind mount of a directory or of a file, as
/// a sandbox leaves) is never entered: the copy fails naming it, and
/// nothing of the mounted data is copied.
#[test]
fn a_mount_point_inside_the_source_is_never_entered() {
    if !can_run("a_mount_point_inside_the_source_is_never_entered") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path().to_path_buf());
    let outside = Outside::new(&dir.path().join("outside"));
    for (i, what) in ["dir", "file"].iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        fs::create_dir_all(src.join("deep")).unwrap();
        fs::write(src.join("own"), b"mine").unwrap();
        let point = src.join("deep/mnt");
        if *what == "dir" {
            bind(&outside.path, &point);
        } else {
            fs::write(&point, b"").unwrap();
            let keep = outside.path.join("precious");
            let st = Command::new("mount").arg("--bind").arg(&keep).arg(&point).status().unwrap();
            assert!(st.success(), "bind mount of a file");
        }
        let dst = dir.path().join(format!("dst{i}"));
        let err = copy(&src, &dst).unwrap_err();
        assert!(err.message().contains("mount point") && err.message().contains("deep/mnt"), "{what}: {err}");
        assert!(!err.message().contains('\n'));
        // Nothing of the mount's content reached the copy.
        assert!(!dst.join("deep/mnt/precious").exists() && !dst.join("deep/mnt/sub").exists(), "{what}");
        if dst.join("deep/mnt").is_file() {
            assert_eq!(fs::read(dst.join("deep/mnt")).unwrap(), b"", "{what}: file mount read");
        }
        outside.assert_intact(&format!("{what}: after the refused copy"));
    }
}

/// An xattr the target filesystem refuses fails the copy with one line
/// naming it: metadata is never dropped silently. (ramfs has no xattrs.)
#[test]
fn an_xattr_the_target_refuses_is_an_error_not_a_loss() {
    if !can_run("an_xattr_the_target_refuses_is_an_error_not_a_loss") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path().to_path_buf());
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    xattr::set(src.join("f"), "user.keep", b"me").unwrap();
    let ram = dir.path().join("ram");
    fs::create_dir(&ram).unwrap();
    let st = Command::new("mount").args(["-t", "ramfs", "ramfs"]).arg(&ram).status().unwrap();
    if !st.success() {
        test_support::skip("cannot mount a ramfs");
        return;
    }
    let err = copy(&src, &ram.join("dst")).unwrap_err();
    let text = err.message();
    assert!(text.contains("user.keep") && text.contains("dst/f") && !text.contains('\n'), "{text}");
}
