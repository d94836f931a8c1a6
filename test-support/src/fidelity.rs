//! A tree with every kind of entry and metadata snapstore must keep
//! ([`build_fidelity_tree`]), and its entry-by-entry listing
//! ([`manifest`]) for comparing a copy with it ([`assert_same`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{lstat, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};

fn p(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    fchownat(None, path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn setfacl(args: &[&str], path: &Path) {
    let st = Command::new("setfacl").args(args).arg(path).status().expect("run setfacl");
    assert!(st.success(), "setfacl {args:?} {}", path.display());
}

/// A tree with every kind of entry and metadata the backend must keep.
pub fn build_fidelity_tree(root: &Path) {
    // Regular files: setuid with owner, xattrs and an ACL.
    let file = root.join("file");
    write(&file, b"hello world\n");
    lchown(&file, 1234, 5678);
    xattr::set(&file, "user.color", b"blue").unwrap();
    xattr::set(&file, "security.test", b"sec\0ret").unwrap();
    xattr::set(&file, "trusted.t", b"trusted").unwrap();
    setfacl(&["-m", "u:4321:rw-,g:99:r--"], &file);
    chmod(&file, 0o4755);

    // File capabilities (v2: effective, cap_net_bind_service): chown would
    // drop them, so they must be set after it.
    let cap = root.join("cap");
    write(&cap, b"#!/bin/true\n");
    lchown(&cap, 0, 0);
    let capv2: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(&cap, "security.capability", &capv2).unwrap();
    chmod(&cap, 0o2755);

    write(&root.join("empty"), b"");
    chmod(&root.join("empty"), 0o600);
    let noperm = root.join("noperm");
    write(&noperm, b"secret");
    chmod(&noperm, 0o000);

    // Sparse: a hole, data, a hole, data at the end.
    let mut sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    sparse.seek(SeekFrom::Start(5 << 20)).unwrap();
    sparse.write_all(b"middle").unwrap();
    sparse.seek(SeekFrom::Start((10 << 20) - 4)).unwrap();
    sparse.write_all(b"tail").unwrap();
    drop(sparse);

    // Not block-aligned, data that does not compress.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..(1 << 20) + 123)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write(&root.join("random"), &random);

    // Symlinks: relative, absolute, dangling with its own owner and xattr.
    symlink("file", root.join("link")).unwrap();
    symlink("/etc/passwd", root.join("abs")).unwrap();
    let dangling = root.join("dangling");
    symlink("nowhere/at/all", &dangling).unwrap();
    lchown(&dangling, 77, 88);
    xattr::set(&dangling, "trusted.sym", b"on a symlink").unwrap();

    // Nodes.
    let mode = |m| Mode::from_bits_truncate(m);
    mknod(&root.join("fifo"), SFlag::S_IFIFO, mode(0o640), 0).unwrap();
    lchown(&root.join("fifo"), 5, 6);
    mknod(&root.join("null"), SFlag::S_IFCHR, mode(0o666), nix::sys::stat::makedev(1, 3)).unwrap();
    mknod(&root.join("blk"), SFlag::S_IFBLK, mode(0o660), nix::sys::stat::makedev(7, 99)).unwrap();
    mknod(&root.join("sock"), SFlag::S_IFSOCK, mode(0o755), 0).unwrap();
    for node in ["fifo", "null", "blk", "sock"] {
        // mknod applies the umask.
        let want = [0o640, 0o666, 0o660, 0o755]
            [["fifo", "null", "blk", "sock"].iter().position(|n| *n == node).unwrap()];
        chmod(&root.join(node), want);
    }
    xattr::set(root.join("null"), "trusted.dev", b"yes").unwrap();

    // Directories: setgid with default ACL and binary xattr, sticky,
    // read-only with content, unsearchable with content, deep.
    let dir = root.join("dir");
    fs::create_dir_all(dir.join("sub")).unwrap();
    lchown(&dir, 1000, 1000);
    xattr::set(&dir, "user.bin", b"\0\x01\xff").unwrap();
    setfacl(&["-d", "-m", "u:1234:r-x"], &dir);
    chmod(&dir, 0o2775);
    let sticky = root.join("sticky");
    fs::create_dir(&sticky).unwrap();
    write(&sticky.join("inside"), b"x");
    chmod(&sticky, 0o1777);
    let ro = root.join("ro");
    fs::create_dir(&ro).unwrap();
    write(&ro.join("a"), b"a");
    fs::create_dir(ro.join("d")).unwrap();
    chmod(&ro, 0o555);
    let locked = root.join("locked");
    fs::create_dir(&locked).unwrap();
    write(&locked.join("hidden"), b"h");
    chmod(&locked, 0o000);
    let deep = root.join("deep/a/b/c/d/e/f/g");
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("leaf"), b"leaf");

    // Hard links: a file with three names, a fifo with two, a symlink with two.
    write(&root.join("hard1"), b"linked content");
    fs::hard_link(root.join("hard1"), dir.join("hard2")).unwrap();
    fs::hard_link(root.join("hard1"), dir.join("sub/hard3")).unwrap();
    fs::hard_link(root.join("fifo"), dir.join("fifo-link")).unwrap();
    nix::unistd::linkat(None, &root.join("link"), None, &root.join("link-hard"), AtFlags::empty()).unwrap();

    // Names that are not UTF-8.
    write(&p(root, b"caf\xe9"), b"latin-1 name");
    let odd = p(root, b"\xff\xfe dir");
    fs::create_dir(&odd).unwrap();
    write(&p(&odd, b"x\x01y\n"), b"odd");
    symlink(OsStr::from_bytes(b"caf\xe9"), p(&odd, b"l\xe9")).unwrap();

    // Enough files for the walk to run in parallel.
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..300 {
        write(&many.join(format!("f{i}")), format!("{i}").as_bytes());
    }
}

/// Gives every entry distinct nanosecond times, children before their
/// directory (setting a child's time does not touch its directory's).
pub fn set_times(path: &Path, counter: &mut i64) {
    let st = lstat(path).unwrap();
    if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
        let mut names: Vec<_> = fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names {
            set_times(&path.join(name), counter);
        }
    }
    *counter += 1;
    let i = *counter;
    let atime = TimeSpec::new(1_600_000_000 + i, (i * 7919 + 13) % 1_000_000_000);
    let mtime = TimeSpec::new(1_500_000_000 + i * 3, (i * 104_729 + 1) % 1_000_000_000);
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// What is compared for one entry.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: Option<i64>,
    pub blocks: Option<i64>,
    pub rdev: u64,
    pub atime: Option<(i64, i64)>,
    pub mtime: (i64, i64),
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub target: Option<PathBuf>,
    pub content: Option<Vec<u8>>,
    /// For inodes with several names: the first name of the inode.
    pub same_as: Option<PathBuf>,
}

/// Lists a tree, without touching atimes (O_NOATIME) and with each entry
/// stat'ed before it is read.
pub fn manifest(root: &Path, symlink_atimes: bool) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut inodes = HashMap::new();
    walk(root, Path::new(""), symlink_atimes, &mut inodes, &mut out);
    out
}

fn walk(
    root: &Path,
    rel: &Path,
    symlink_atimes: bool,
    inodes: &mut HashMap<u64, PathBuf>,
    out: &mut Vec<Entry>,
) {
    let path = root.join(rel);
    let st = lstat(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let kind = st.st_mode & SFlag::S_IFMT.bits();
    let is_dir = kind == SFlag::S_IFDIR.bits();
    let is_link = kind == SFlag::S_IFLNK.bits();
    let is_file = kind == SFlag::S_IFREG.bits();
    let mut xattrs = BTreeMap::new();
    // A filesystem without xattrs (zfs-fuse) lists none.
    let names = match xattr::list(&path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
        listed => listed.unwrap().collect(),
    };
    for name in names {
        let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
        xattrs.insert(name.as_bytes().to_vec(), value);
    }
    let content = is_file.then(|| {
        let mut data = Vec::new();
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        data
    });
    let same_as =
        (!is_dir && st.st_nlink > 1).then(|| inodes.entry(st.st_ino).or_insert(rel.to_path_buf()).clone());
    out.push(Entry {
        path: rel.to_path_buf(),
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        // Directory sizes depend on the order entries were added in.
        size: (!is_dir).then_some(st.st_size),
        // Equal block counts: holes stayed holes, nothing was copied.
        blocks: is_file.then_some(st.st_blocks),
        rdev: st.st_rdev,
        atime: (symlink_atimes || !is_link).then_some((st.st_atime, st.st_atime_nsec)),
        mtime: (st.st_mtime, st.st_mtime_nsec),
        xattrs,
        target: is_link.then(|| fs::read_link(&path).unwrap()),
        content,
        same_as,
    });
    if is_dir {
        let mut dir =
            Dir::open(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOATIME, Mode::empty()).unwrap();
        let mut names: Vec<Vec<u8>> = dir
            .iter()
            .map(|e| e.unwrap().file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(OsStr::from_bytes(&name)), symlink_atimes, inodes, out);
        }
    }
}

pub fn assert_same(base: &[Entry], copy: &[Entry], what: &str) {
    for (a, b) in base.iter().zip(copy) {
        assert_eq!(a, b, "{what}: entry differs");
    }
    assert_eq!(base.len(), copy.len(), "{what}: entry count differs");
}

/// The same entries without their atimes, for copies made by tools that
/// do not keep them (an OCI image has none).
pub fn without_atimes(entries: Vec<Entry>) -> Vec<Entry> {
    entries.into_iter().map(|e| Entry { atime: None, ..e }).collect()
}
