//! OCI layers on real files (as root): round trips of a tree with every
//! kind of entry against its base and whole, determinism, what GNU tar
//! sees, and hostile layers refused without a byte written outside.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use snapstore::oci::layer::{
    apply_layer, diff_trees, diff_trees_after_clone, write_layer, Change, ChangeKind, Compression, LayerBlob,
};
use snapstore::ErrorKind;
use test_support::fidelity::{assert_same, build_fidelity_tree, manifest, set_times, without_atimes};
use test_support::sandbox::Outside;

fn root_or_skip() -> bool {
    if !test_support::is_root() {
        test_support::skip(
            "the OCI layer tests make files with any owner, devices and trusted xattrs: run as root",
        );
        return false;
    }
    true
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// The fidelity tree with distinct times, without its socket: tar has no
/// type for sockets (GNU tar and Go's archive/tar skip them too).
fn base_tree(dir: &Path) {
    fs::create_dir(dir).unwrap();
    build_fidelity_tree(dir);
    fs::remove_file(dir.join("sock")).unwrap();
    set_times(dir, &mut 0);
}

/// As root: a scratch directory holding the base tree (`base`).
fn base_scene() -> Option<(tempfile::TempDir, PathBuf)> {
    if !root_or_skip() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    base_tree(&base);
    Some((tmp, base))
}

/// The same, with `tree`: the base with every kind of change made to it.
fn changed_scene() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    let (tmp, base) = base_scene()?;
    let tree = tmp.path().join("tree");
    changed_tree(&base, &tree);
    Some((tmp, base, tree))
}

fn write_to(tree: &Path, base: Option<&Path>, compression: Compression, out: &Path) -> LayerBlob {
    let mut file = File::create(out).unwrap();
    let blob = write_layer(tree, base, None, compression, &mut file).unwrap();
    file.flush().unwrap();
    assert_eq!(fs::metadata(out).unwrap().len(), blob.size);
    blob
}

fn apply_from(tree: &Path, layer: &Path, blob: &LayerBlob) -> Result<(), snapstore::StoreError> {
    apply_layer(tree, &blob.media_type, &mut File::open(layer).unwrap(), &blob.diff_id)
}

fn same_tree(want: &Path, got: &Path, what: &str) {
    assert_same(&without_atimes(manifest(want, false)), &without_atimes(manifest(got, false)), what);
}

/// A copy of `base` with every kind of change.
fn changed_tree(base: &Path, tree: &Path) {
    cp_a(base, tree);
    let t = |p: &str| tree.join(p);
    // Added: a file, a directory with content, a sparse file.
    fs::write(t("new-file"), b"new").unwrap();
    // Binary xattr values with newlines (PAX records are read by length).
    xattr::set(t("new-file"), "user.lines", b"one\ntwo\n\0\n").unwrap();
    sh(&format!("setfacl -m u:10:rw-,g:10:r-- {}", t("new-file").display()));
    fs::create_dir_all(t("newdir/inner")).unwrap();
    fs::write(t("newdir/inner/x"), b"x").unwrap();
    let sparse = File::create(t("newdir/sparse2")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"data", 4 << 20).unwrap();
    // Modified content; and content changed with size and mtime put back.
    fs::write(t("many/f1"), b"changed").unwrap();
    fs::write(t("many/f2"), b"X").unwrap(); // was "2": same size
    sh(&format!("touch -r {} {}", base.join("many/f2").display(), t("many/f2").display()));
    // Deleted: a file and a directory with content.
    fs::remove_file(t("many/f3")).unwrap();
    fs::remove_dir_all(t("deep/a/b")).unwrap();
    // A directory replaced by a file, a file by a directory, a directory
    // by a new directory (opaque).
    fs::remove_dir_all(t("ro/d")).unwrap();
    fs::write(t("ro/d"), b"now a file").unwrap();
    fs::remove_file(t("empty")).unwrap();
    fs::create_dir(t("empty")).unwrap();
    fs::write(t("empty/inside"), b"i").unwrap();
    fs::remove_dir_all(t("sticky")).unwrap();
    fs::create_dir(t("sticky")).unwrap();
    fs::write(t("sticky/fresh"), b"f").unwrap();
    // Only an xattr (of a file with three names), only a mode, only an owner.
    xattr::set(t("hard1"), "user.color", b"red").unwrap();
    fs::set_permissions(t("noperm"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(t("many/f4"), Some(42), Some(43)).unwrap();
    // A symlink retargeted (its second name stays the old one).
    fs::remove_file(t("link")).unwrap();
    symlink("hard1", t("link")).unwrap();
}

#[test]
fn diff_finds_every_kind_of_change() {
    let Some((tmp, base, tree)) = changed_scene() else { return };
    let changes = diff_trees(&tree, &base).unwrap();
    let has =
        |kind: ChangeKind, path: &str| changes.iter().any(|c| c.kind == kind && c.path == Path::new(path));
    for path in ["new-file", "newdir", "newdir/inner/x", "newdir/sparse2"] {
        assert!(has(ChangeKind::Added, path), "{path} added: {changes:?}");
    }
    for path in ["many/f1", "many/f2", "hard1", "noperm", "many/f4", "link", "link-hard"] {
        assert!(has(ChangeKind::Modified, path), "{path} modified: {changes:?}");
    }
    for path in ["many/f3", "deep/a/b"] {
        assert!(has(ChangeKind::Deleted, path), "{path} deleted: {changes:?}");
    }
    assert!(!has(ChangeKind::Deleted, "deep/a/b/c"), "only the top of a deleted tree");
    for path in ["ro/d", "empty"] {
        assert!(has(ChangeKind::Deleted, path) && has(ChangeKind::Added, path), "{path} replaced");
    }
    // A directory replaced by a new one cannot be told from one whose
    // content changed when the trees are copies (other inodes anyway).
    assert!(has(ChangeKind::Modified, "sticky") && has(ChangeKind::Deleted, "sticky/inside"));
    assert!(has(ChangeKind::Added, "sticky/fresh"));
    assert!(!changes.iter().any(|c| c.path == Path::new("many/f5") || c.path == Path::new("random")));
    // Identical trees: nothing.
    let copy = tmp.path().join("copy");
    cp_a(&base, &copy);
    assert_eq!(diff_trees(&copy, &base).unwrap(), vec![]);
}

/// A tree cloned from its base, then changed: the walk that trusts the
/// clone still finds a change whose size and mtime were put back, and does
/// not read the files untouched since the clone.
#[test]
fn a_diff_after_a_clone_reads_only_files_changed_since() {
    let Some((tmp, base)) = base_scene() else { return };
    let tree = tmp.path().join("clone");
    cp_a(&base, &tree);
    // Different content, same size and times, before the clone was handed
    // over: only a walk that reads it can tell. (A real clone does not do
    // this; here it shows which files are read.)
    let f5 = fs::read(base.join("many/f5")).unwrap();
    fs::write(tree.join("many/f5"), vec![b'Z'; f5.len()]).unwrap();
    sh(&format!("touch -r {} {}", base.join("many/f5").display(), tree.join("many/f5").display()));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let cloned =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    // The build: a change with size and mtime put back, at once.
    let f2 = fs::read(base.join("many/f2")).unwrap();
    fs::write(tree.join("many/f2"), vec![b'X'; f2.len()]).unwrap();
    sh(&format!("touch -r {} {}", base.join("many/f2").display(), tree.join("many/f2").display()));
    // And an xattr only.
    xattr::set(tree.join("many/f7"), "user.color", b"red").unwrap();
    let modified = |changes: &[Change]| {
        let mut paths: Vec<_> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Modified)
            .map(|c| c.path.display().to_string())
            .collect();
        paths.sort();
        paths
    };
    let trusting = diff_trees_after_clone(&tree, &base, cloned).unwrap();
    assert_eq!(modified(&trusting), ["many/f2", "many/f7"], "{trusting:?}");
    let reading = diff_trees(&tree, &base).unwrap();
    assert_eq!(modified(&reading), ["many/f2", "many/f5", "many/f7"], "{reading:?}");
}

/// Where timestamps keep whole seconds (ext4 with 128-byte inodes, like
/// zfs-fuse), a ctime can read up to a second before the change it records:
/// a change made just after the clone was handed over is still found.
#[test]
fn a_diff_after_a_clone_on_whole_second_timestamps_finds_changes() {
    if !root_or_skip() {
        return;
    }
    let fs = match test_support::LoopFs::create(&["mkfs.ext4", "-q", "-I", "128"], "64M", "") {
        Ok(fs) => fs,
        Err(why) => return test_support::skip(&format!("cannot make an ext4 with 128-byte inodes: {why}")),
    };
    let (base, tree) = (fs.root().join("base"), fs.root().join("tree"));
    fs::create_dir_all(&base).unwrap();
    fs::write(base.join("f"), b"1").unwrap();
    cp_a(&base, &tree);
    // Well into a second, so that the change's ctime, cut to the second,
    // reads half a second or more before the clone was handed over.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    while now().subsec_millis() < 500 || now().subsec_millis() > 800 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let cloned = now().as_nanos() as i64;
    fs::write(tree.join("f"), b"2").unwrap();
    sh(&format!("touch -r {} {}", base.join("f").display(), tree.join("f").display()));
    assert_eq!(fs::symlink_metadata(tree.join("f")).unwrap().ctime_nsec(), 0, "not whole seconds");
    let changes = diff_trees_after_clone(&tree, &base, cloned).unwrap();
    assert!(
        changes.iter().any(|c| c.kind == ChangeKind::Modified && c.path == Path::new("f")),
        "{changes:?}"
    );
}

/// A layer that cannot be written (a full disk) says so, not that the
/// tar's producer lost its reader.
#[test]
fn a_layer_that_cannot_be_written_names_why() {
    if !root_or_skip() {
        return;
    }
    // More than the pipe between the tar's producer and the compression holds.
    let tree = tempfile::tempdir().unwrap();
    sh(&format!("head -c 20000000 /dev/urandom > {}/big", tree.path().display()));
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = write_layer(tree.path(), None, None, Compression::Zstd, &mut Full).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
}

#[test]
fn layer_round_trip_against_base() {
    let Some((tmp, base, tree)) = changed_scene() else { return };
    for compression in [Compression::Zstd, Compression::Gzip] {
        let layer = tmp.path().join("layer");
        let blob = write_to(&tree, Some(&base), compression, &layer);
        assert_eq!(blob.media_type, compression.media_type());
        let out = tmp.path().join("out");
        cp_a(&base, &out);
        apply_from(&out, &layer, &blob).unwrap();
        same_tree(&tree, &out, &format!("{compression:?} layer applied on the base"));
        // The hard links of the changed inode stay one inode.
        let ino = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().ino();
        assert_eq!(ino("hard1"), ino("dir/sub/hard3"));
        fs::remove_dir_all(&out).unwrap();
    }
}

/// Xattrs an entry has and its layer entry does not are removed, also
/// when their names take more room than the applier's first buffer: on a
/// directory (set through a descriptor) and a symlink (by name).
#[test]
fn xattrs_the_layer_does_not_name_are_removed_however_many() {
    let Some((tmp, base)) = base_scene() else { return };
    let many: Vec<String> =
        (0..60).map(|i| format!("trusted.snapstore-test-a-rather-long-xattr-name-{i:02}")).collect();
    for entry in ["many", "link"] {
        for name in many.iter().chain(["trusted.kept".to_string()].iter()) {
            xattr::set(base.join(entry), name, b"v").unwrap();
        }
    }
    let tree = tmp.path().join("tree");
    cp_a(&base, &tree);
    for entry in ["many", "link"] {
        for name in &many {
            xattr::remove(tree.join(entry), name).unwrap();
        }
    }
    let layer = tmp.path().join("layer");
    let blob = write_to(&tree, Some(&base), Compression::Zstd, &layer);
    let out = tmp.path().join("out");
    cp_a(&base, &out);
    apply_from(&out, &layer, &blob).unwrap();
    for entry in ["many", "link"] {
        let left: Vec<_> = xattr::list(out.join(entry)).unwrap().collect();
        assert_eq!(left, ["trusted.kept"], "xattrs of {entry} after the layer");
    }
    same_tree(&tree, &out, "the layer applied on the base");
}

/// A full disk while a layer of many small files is applied is reported
/// as what it is, in one line naming the file, and stops both threads.
#[test]
fn a_full_disk_under_many_small_files_names_the_file() {
    let Some((tmp, _)) = base_scene() else { return };
    let tree = tmp.path().join("small-files");
    fs::create_dir(&tree).unwrap();
    for i in 0..200 {
        fs::write(tree.join(format!("f{i:03}")), vec![b'x'; 64 << 10]).unwrap();
    }
    let layer = tmp.path().join("layer");
    let blob = write_to(&tree, None, Compression::Zstd, &layer);
    let disk = tmp.path().join("disk");
    fs::create_dir(&disk).unwrap();
    sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", disk.display()));
    let applied = apply_from(&disk, &layer, &blob);
    sh(&format!("umount {}", disk.display()));
    let err = applied.unwrap_err().to_string();
    assert!(err.contains("No space left") && err.contains("cannot write f"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn whole_tree_round_trip() {
    let Some((tmp, base)) = base_scene() else { return };
    let layer = tmp.path().join("layer");
    let blob = write_to(&base, None, Compression::Zstd, &layer);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    apply_from(&out, &layer, &blob).unwrap();
    same_tree(&base, &out, "whole tree");
    let sparse = fs::metadata(out.join("sparse")).unwrap();
    assert!(sparse.blocks() < 100, "the sparse file was applied dense: {} blocks", sparse.blocks());
}

#[test]
fn same_tree_same_digest() {
    let Some((tmp, base, tree)) = changed_scene() else { return };
    for compression in [Compression::Zstd, Compression::Gzip] {
        let a = write_to(&tree, Some(&base), compression, &tmp.path().join("a"));
        let b = write_to(&tree, Some(&base), compression, &tmp.path().join("b"));
        assert_eq!(a, b, "{compression:?}");
        assert_eq!(fs::read(tmp.path().join("a")).unwrap(), fs::read(tmp.path().join("b")).unwrap());
    }
    // The same tree elsewhere (another copy: other inodes and ctimes).
    let tree2 = tmp.path().join("tree2");
    cp_a(&tree, &tree2);
    let a = write_to(&tree, Some(&base), Compression::Zstd, &tmp.path().join("a"));
    let c = write_to(&tree2, Some(&base), Compression::Zstd, &tmp.path().join("c"));
    assert_eq!(a.diff_id, c.diff_id);
}

/// Decompresses a zstd layer into a plain tar file.
fn untar_zstd(layer: &Path, tar: &Path) {
    let mut data = Vec::new();
    zstd::stream::read::Decoder::new(File::open(layer).unwrap()).unwrap().read_to_end(&mut data).unwrap();
    fs::write(tar, data).unwrap();
}

#[test]
fn gnu_tar_reads_whiteouts_and_sparse_files() {
    let Some((tmp, base, tree)) = changed_scene() else { return };
    // As a backend that knows `sticky` was replaced would list it.
    let mut changes: Vec<_> = diff_trees(&tree, &base)
        .unwrap()
        .into_iter()
        .filter(|c| c.path != Path::new("sticky/inside"))
        .collect();
    changes.push(Change { kind: ChangeKind::Deleted, path: "sticky".into() });
    changes.push(Change { kind: ChangeKind::Added, path: "sticky".into() });
    let layer = tmp.path().join("layer");
    let blob =
        write_layer(&tree, Some(&base), Some(changes), Compression::Zstd, &mut File::create(&layer).unwrap())
            .unwrap();
    let applied = tmp.path().join("applied");
    cp_a(&base, &applied);
    apply_from(&applied, &layer, &blob).unwrap();
    same_tree(&tree, &applied, "layer with an opaque directory");
    let tar = tmp.path().join("layer.tar");
    untar_zstd(&layer, &tar);
    let out = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    for want in ["many/.wh.f3", "deep/a/.wh.b", "sticky/.wh..wh..opq", "newdir/sparse2"] {
        assert!(listing.lines().any(|l| l.ends_with(want)), "tar -tvf lists {want}:\n{listing}");
    }
    // The opaque marker comes right after its directory.
    let names: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let dir = names.iter().position(|n| *n == "sticky/").unwrap();
    assert_eq!(names[dir + 1], "sticky/.wh..wh..opq");

    let x = tmp.path().join("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&x).status().unwrap();
    assert!(st.success());
    let sparse = fs::metadata(x.join("newdir/sparse2")).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse.blocks() < 100, "GNU tar extracted the sparse file dense: {} blocks", sparse.blocks());
    let data = fs::read(x.join("newdir/sparse2")).unwrap();
    assert_eq!(&data[4 << 20..(4 << 20) + 4], b"data");
}

// ---- Hostile layers ----

enum E<'a> {
    File(&'a [u8], &'a [u8]),
    Dir(&'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    Link(&'a [u8], &'a [u8]),
}

/// A plain tar with raw names (the tar crate's path checks bypassed).
fn raw_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, link, data): (&[u8], tar::EntryType, &[u8], &[u8]) = match e {
            E::File(n, d) => (n, tar::EntryType::Regular, b"", d),
            E::Dir(n) => (n, tar::EntryType::Directory, b"", b""),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, t, b""),
            E::Link(n, t) => (n, tar::EntryType::Link, t, b""),
        };
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name);
        u.linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[test]
fn hostile_layers_are_refused() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = Outside::new(&tmp.path().join("outside"));
    let out_abs = outside.path.to_str().unwrap().as_bytes().to_vec();
    let precious = [out_abs.as_slice(), b"/precious"].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", raw_tar(&[E::File(b"../outside/precious", b"pwned")])),
        ("dot-dot inside", raw_tar(&[E::Dir(b"a"), E::File(b"a/../../outside/precious", b"pwned")])),
        ("absolute", raw_tar(&[E::File(&precious, b"pwned")])),
        (
            "symlink out, then through it",
            raw_tar(&[E::Symlink(b"esc", &out_abs), E::File(b"esc/precious", b"pwned")]),
        ),
        (
            "relative symlink out, then through it",
            raw_tar(&[E::Symlink(b"esc", b"../../../../../../.."), E::File(b"esc/tmp/x", b"pwned")]),
        ),
        ("hard link out", raw_tar(&[E::Link(b"hl", b"../outside/precious")])),
        ("hard link absolute", raw_tar(&[E::Link(b"hl", &precious)])),
        (
            "hard link through a symlink",
            raw_tar(&[E::Symlink(b"esc", &out_abs), E::Link(b"hl", b"esc/precious")]),
        ),
        (
            "hard link through an inner symlink",
            raw_tar(&[E::Dir(b"d"), E::File(b"d/f", b"f"), E::Symlink(b"s", b"d"), E::Link(b"hl", b"s/f")]),
        ),
        ("whiteout of ..", raw_tar(&[E::File(b".wh..", b"")])),
        ("whiteout of .", raw_tar(&[E::File(b"a/.wh..", b"")])),
        ("whiteout of nothing", raw_tar(&[E::File(b".wh.", b"")])),
        ("unknown whiteout", raw_tar(&[E::File(b".wh..wh.foo", b"")])),
        (
            "whiteout through a symlink",
            raw_tar(&[E::Symlink(b"esc", &out_abs), E::File(b"esc/.wh.precious", b"")]),
        ),
        (
            "opaque through a symlink",
            raw_tar(&[E::Symlink(b"esc", &out_abs), E::File(b"esc/.wh..wh..opq", b"")]),
        ),
    ];
    for (what, tar) in cases {
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).unwrap();
        let err = apply_layer(&tree, TAR, &mut &tar[..], &sha(&tar)).expect_err(what);
        assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{what}: {err}");
        assert!(!err.message().contains('\n'), "{what}: one line: {err}");
        outside.assert_intact(what);
        fs::remove_dir_all(&tree).unwrap();
    }

    // An entry over a symlink replaces the symlink, never writes through it.
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let tar = raw_tar(&[E::Symlink(b"p", &precious), E::File(b"p", b"replaced")]);
    apply_layer(&tree, TAR, &mut &tar[..], &sha(&tar)).unwrap();
    outside.assert_intact("file over a symlink");
    assert_eq!(fs::read(tree.join("p")).unwrap(), b"replaced");
    assert!(!fs::symlink_metadata(tree.join("p")).unwrap().is_symlink());
    fs::remove_dir_all(&tree).unwrap();
}

#[test]
fn corrupt_streams_are_refused() {
    let Some((tmp, base)) = base_scene() else { return };
    let layer = tmp.path().join("layer");
    let blob = write_to(&base, None, Compression::Zstd, &layer);
    let bytes = fs::read(&layer).unwrap();
    let plain = tar_of(&layer);
    let try_apply = |media: &str, data: &[u8], diff_id: &str| -> snapstore::StoreError {
        let tree: PathBuf = tmp.path().join("tree");
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir(&tree).unwrap();
        apply_layer(&tree, media, &mut &data[..], diff_id).unwrap_err()
    };
    let cases = [
        ("truncated zstd", try_apply(&blob.media_type, &bytes[..bytes.len() / 2], &blob.diff_id)),
        ("truncated tar in file data", try_apply(TAR, &plain[..plain.len() / 2 + 100], &blob.diff_id)),
        ("truncated tar at a block", try_apply(TAR, &plain[..(plain.len() / 1024) * 512], &blob.diff_id)),
        ("wrong diff_id", try_apply(&blob.media_type, &bytes, &sha(b"other"))),
        ("garbage", try_apply(&blob.media_type, b"not zstd at all", &blob.diff_id)),
        ("bad diff_id", try_apply(&blob.media_type, &bytes, "md5:abc")),
        ("unknown media type", try_apply("text/plain", &bytes, &blob.diff_id)),
    ];
    for (what, err) in cases {
        assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{what}: {err}");
        assert!(!err.message().contains('\n'), "{what}: one line: {err}");
    }
    // Uncompressed, the whole stream applies.
    let tree = tmp.path().join("tree2");
    fs::create_dir(&tree).unwrap();
    apply_layer(&tree, TAR, &mut &plain[..], &blob.diff_id).unwrap();
    same_tree(&base, &tree, "uncompressed layer");
}

fn tar_of(layer: &Path) -> Vec<u8> {
    let mut data = Vec::new();
    zstd::stream::read::Decoder::new(File::open(layer).unwrap()).unwrap().read_to_end(&mut data).unwrap();
    data
}

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success();
    if !found {
        test_support::skip(&format!("{tool} is not installed (scripts/install-test-deps installs it)"));
    }
    found
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Go's archive/tar reads the layers: umoci unpacks a whole-tree layer and
/// a diff layer on it (whiteouts, opaque directory, hard links, sparse,
/// PAX times and xattrs) into the changed tree.
#[test]
fn umoci_unpacks_the_layers() {
    if !root_or_skip() || !have("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (base, tree) = (tmp.path().join("base"), tmp.path().join("tree"));
    base_tree(&base);
    changed_tree(&base, &tree);
    let mut changes: Vec<_> = diff_trees(&tree, &base)
        .unwrap()
        .into_iter()
        .filter(|c| c.path != Path::new("sticky/inside"))
        .collect();
    changes.push(Change { kind: ChangeKind::Deleted, path: "sticky".into() });
    changes.push(Change { kind: ChangeKind::Added, path: "sticky".into() });
    let (l1, l2) = (tmp.path().join("l1"), tmp.path().join("l2"));
    write_to(&base, None, Compression::Zstd, &l1);
    write_layer(&tree, Some(&base), Some(changes), Compression::Zstd, &mut File::create(&l2).unwrap())
        .unwrap();
    let (t1, t2) = (tmp.path().join("l1.tar"), tmp.path().join("l2.tar"));
    untar_zstd(&l1, &t1);
    untar_zstd(&l2, &t2);
    let img = tmp.path().join("img");
    let image = format!("{}:t", img.display());
    run_ok(Command::new("umoci").arg("init").arg("--layout").arg(&img));
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    run_ok(Command::new("umoci").args(["raw", "add-layer", "--image", &image]).arg(&t1));
    run_ok(Command::new("umoci").args(["raw", "add-layer", "--image", &image]).arg(&t2));
    let bundle = tmp.path().join("bundle");
    run_ok(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    // umoci writes sparse files dense (its limitation: Go's archive/tar
    // reads them as data and holes).
    let dense = |entries: Vec<test_support::fidelity::Entry>| -> Vec<_> {
        without_atimes(entries)
            .into_iter()
            .map(|e| test_support::fidelity::Entry { blocks: None, ..e })
            .collect()
    };
    let rootfs = bundle.join("rootfs");
    assert_same(&dense(manifest(&tree, false)), &dense(manifest(&rootfs, false)), "umoci's unpack");
}

/// A micro-benchmark, not a test: write and apply of a whole-tree layer of
/// a copy of parts of /usr (about 7 000 files, 200 MB) against
/// `tar -c | zstd -T0` and `zstd -d | tar -x`, medians of 3 runs, warm
/// page cache. `cargo test --release -p snapstore --test oci_layer -- --ignored bench --nocapture`
/// Measured on a 2-core machine shared with other builds, 9 038 entries,
/// 201 MB, two runs of the same binary (44 MB blob vs 49 MB for tar | zstd):
/// write_layer 2.81 / 2.87 s vs tar | zstd -T0 1.54 / 2.59 s; apply_layer
/// 8.49 / 8.19 s vs zstd -d | tar -x 4.12 / 7.93 s. Both extractions spend
/// most of their time in ext4's inode allocation (`recently_deleted`, perf),
/// so the apply figures swing with the state of the filesystem.
#[test]
#[ignore]
fn bench_layer_vs_tar_zstd() {
    if !root_or_skip() || !have("zstd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    // /usr/include whole, then files of /usr/lib/x86_64-linux-gnu (none over 8 MB) up to 200 MB.
    cp_a(Path::new("/usr/include"), &tree.join("include"));
    let lib = tree.join("lib");
    fs::create_dir(&lib).unwrap();
    let mut total: u64 = du(&tree);
    let mut names: Vec<_> = fs::read_dir("/usr/lib/x86_64-linux-gnu")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false))
        .collect();
    names.sort();
    for path in names {
        if total >= 200 << 20 {
            break;
        }
        // Many files, not one big library.
        let len = fs::metadata(&path).unwrap().len();
        if len > 8 << 20 {
            continue;
        }
        total += len;
        cp_a(&path, &lib.join(path.file_name().unwrap()));
    }
    let files = walk_count(&tree);
    println!("tree: {files} entries, {} MB", total >> 20);

    let time = |f: &mut dyn FnMut()| -> f64 {
        let mut runs: Vec<f64> = (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect();
        runs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        runs[1]
    };
    let layer = tmp.path().join("layer");
    let mut blob = None;
    let write = time(&mut || blob = Some(write_to(&tree, None, Compression::Zstd, &layer)));
    let blob = blob.unwrap();
    let out = tmp.path().join("out");
    let apply = time(&mut || {
        let _ = fs::remove_dir_all(&out);
        fs::create_dir(&out).unwrap();
        apply_from(&out, &layer, &blob).unwrap();
    });
    // Block counts aside: the allocator may lay big files out differently.
    let no_blocks = |root: &Path| -> Vec<_> {
        without_atimes(manifest(root, false))
            .into_iter()
            .map(|e| test_support::fidelity::Entry { blocks: None, ..e })
            .collect()
    };
    assert_same(&no_blocks(&tree), &no_blocks(&out), "benchmark tree");
    let tarzst = tmp.path().join("tree.tar.zst");
    let tar_c = time(&mut || {
        sh(&format!(
            "tar -C {} --numeric-owner --xattrs --acls -cf - . | zstd -q -T0 -3 -f -o {}",
            tree.display(),
            tarzst.display()
        ))
    });
    let x = tmp.path().join("x");
    let tar_x = time(&mut || {
        let _ = fs::remove_dir_all(&x);
        fs::create_dir(&x).unwrap();
        sh(&format!(
            "zstd -q -dc {} | tar -C {} --numeric-owner --xattrs --acls -xpf -",
            tarzst.display(),
            x.display()
        ))
    });
    println!(
        "write_layer {write:.2} s ({} MB blob) | tar -c | zstd -T0: {tar_c:.2} s ({} MB)",
        blob.size >> 20,
        fs::metadata(&tarzst).unwrap().len() >> 20
    );
    println!("apply_layer {apply:.2} s | zstd -d | tar -x: {tar_x:.2} s");
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let m = fs::symlink_metadata(e.as_ref().unwrap().path()).unwrap();
        total += if m.is_dir() { du(&e.unwrap().path()) } else { m.len() };
    }
    total
}

fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        n += 1;
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            n += walk_count(&path);
        }
    }
    n
}

fn file_of(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

/// Whiteouts and opaque markers remove what lower layers had, never what
/// this layer wrote, wherever they come in the stream.
#[test]
fn whiteouts_spare_what_the_layer_wrote() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("a/old-dir")).unwrap();
    fs::write(tree.join("a/old"), b"lower").unwrap();
    fs::write(tree.join("a/old-dir/f"), b"lower").unwrap();
    fs::write(tree.join("gone"), b"lower").unwrap();
    let tar = raw_tar(&[
        E::Dir(b"a"),
        E::File(b"a/new", b"this layer"),
        E::File(b"a/.wh..wh..opq", b""),
        E::File(b"b", b"this layer"),
        E::File(b".wh.b", b""),
        E::File(b".wh.gone", b""),
        E::File(b".wh.never-was", b""),
    ]);
    apply_layer(&tree, TAR, &mut &tar[..], &sha(&tar)).unwrap();
    assert_eq!(file_of(&tree.join("a/new")), b"this layer");
    assert!(
        !tree.join("a/old").exists() && !tree.join("a/old-dir").exists(),
        "opaque removes the lower entries"
    );
    assert_eq!(file_of(&tree.join("b")), b"this layer");
    assert!(!tree.join("gone").exists());
    assert!(!tree.join(".wh.b").exists() && !tree.join("a/.wh..wh..opq").exists(), "markers are not files");
}

/// A change list from a backend that names one name of a changed inode:
/// the layer carries all its names, and they stay one inode.
#[test]
fn backend_changes_bring_every_hard_link_name() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (base, tree) = (tmp.path().join("base"), tmp.path().join("tree"));
    base_tree(&base);
    cp_a(&base, &tree);
    // In place: the same inode, all three names see it.
    fs::OpenOptions::new().write(true).open(tree.join("hard1")).unwrap().write_all(b"LINKED").unwrap();
    let changes = vec![Change { kind: ChangeKind::Modified, path: "hard1".into() }];
    let layer = tmp.path().join("layer");
    let blob =
        write_layer(&tree, Some(&base), Some(changes), Compression::Zstd, &mut File::create(&layer).unwrap())
            .unwrap();
    let out = tmp.path().join("out");
    cp_a(&base, &out);
    apply_from(&out, &layer, &blob).unwrap();
    same_tree(&tree, &out, "hard link names from a backend's list");
    // A path outside the tree in a change list is refused.
    let bad = vec![Change { kind: ChangeKind::Added, path: "../escape".into() }];
    let err = write_layer(&tree, Some(&base), Some(bad), Compression::Zstd, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{err}");
}

/// Layers GNU tar wrote (PAX 1.0 sparse, and old GNU sparse) apply, with
/// their holes kept.
#[test]
fn gnu_tar_sparse_layers_apply_sparse() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = File::create(src.join("s")).unwrap();
    f.set_len(10 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 5 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail", (10 << 20) - 4).unwrap();
    drop(f);
    for format in ["posix", "gnu"] {
        let tar = tmp.path().join(format!("{format}.tar"));
        run_ok(
            Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("--sparse")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("."),
        );
        let data = fs::read(&tar).unwrap();
        let tree = tmp.path().join(format!("tree-{format}"));
        fs::create_dir(&tree).unwrap();
        apply_layer(&tree, TAR, &mut &data[..], &sha(&data)).unwrap();
        let m = fs::metadata(tree.join("s")).unwrap();
        assert_eq!(m.len(), 10 << 20, "{format}");
        assert!(m.blocks() < 100, "{format}: applied dense, {} blocks", m.blocks());
        assert_eq!(file_of(&tree.join("s")), file_of(&src.join("s")), "{format}");
    }
}

/// A name that every reader would take for a whiteout cannot be exported.
#[test]
fn whiteout_names_in_the_tree_are_refused() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join(".wh.victim"), b"").unwrap();
    let err = write_layer(&tree, None, None, Compression::Zstd, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{err}");
    assert!(err.message().contains(".wh."), "{err}");
}
