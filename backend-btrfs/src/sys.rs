//! The btrfs ioctls the backend uses, with safe wrappers.
//!
//! Layouts and numbers follow the kernel's `include/uapi/linux/btrfs.h`;
//! every struct is 4096 bytes or a plain `u64`, as the kernel expects.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;

const MAGIC: u8 = 0x94;

/// `BTRFS_SUBVOL_RDONLY`: the subvolume flag (and snapshot flag) for read-only.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = 256;
/// The root tree, where subvolumes are recorded.
const ROOT_TREE_ID: u64 = 1;
/// Deleted subvolumes waiting for the cleaner are orphan items of this
/// object id (-5) with the subvolume id as offset.
const ORPHAN_OBJECTID: u64 = -5i64 as u64;
const ORPHAN_ITEM_KEY: u32 = 48;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (the union of `size`/`qgroup_inherit`
/// with `unused[4]` is the `unused` field; the name union is `name`).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

/// `struct btrfs_ioctl_search_args`.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - 104],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_ino_lookup_user_args`.
#[repr(C)]
struct InoLookupUserArgs {
    dirid: u64,
    treeid: u64,
    name: [u8; 256],
    path: [u8; 4080 - 256],
}

/// One entry of `struct btrfs_ioctl_get_subvol_rootref_args`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RootRef {
    treeid: u64,
    dirid: u64,
}

/// `struct btrfs_ioctl_get_subvol_rootref_args`.
#[repr(C)]
struct RootRefArgs {
    min_treeid: u64,
    rootref: [RootRef; 255],
    num_items: u8,
    align: [u8; 7],
}

nix::ioctl_none!(ioc_sync, MAGIC, 8);
nix::ioctl_write_ptr!(ioc_snap_destroy, MAGIC, 15, VolArgs);
nix::ioctl_readwrite!(ioc_tree_search, MAGIC, 17, SearchArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, MAGIC, 18, InoLookupArgs);
nix::ioctl_write_ptr!(ioc_wait_sync, MAGIC, 22, u64);
nix::ioctl_write_ptr!(ioc_snap_create_v2, MAGIC, 23, VolArgsV2);
nix::ioctl_write_ptr!(ioc_subvol_create_v2, MAGIC, 24, VolArgsV2);
nix::ioctl_read!(ioc_start_sync, MAGIC, 24, u64);
nix::ioctl_read!(ioc_subvol_getflags, MAGIC, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, MAGIC, 26, u64);
nix::ioctl_readwrite!(ioc_get_subvol_rootref, MAGIC, 61, RootRefArgs);
nix::ioctl_readwrite!(ioc_ino_lookup_user, MAGIC, 62, InoLookupUserArgs);

// The kernel reads and writes exactly these sizes; a wrong layout would
// corrupt memory, so check them at compile time.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<SearchKey>() == 104);
const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<RootRefArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupUserArgs>() == 4096);

/// Copies a single path component into a NUL-terminated name buffer.
fn fill_name(buf: &mut [u8], name: &OsStr) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= buf.len() || bytes.contains(&0) || bytes.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad subvolume name {name:?}")));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn vol_args_v2(fd: i64, flags: u64, name: &OsStr) -> io::Result<Box<VolArgsV2>> {
    let mut args = Box::new(VolArgsV2 { fd, transid: 0, flags, unused: [0; 4], name: [0; 4040] });
    fill_name(&mut args.name, name)?;
    Ok(args)
}

fn check(res: nix::Result<i32>) -> io::Result<()> {
    res.map(drop).map_err(io::Error::from)
}

/// Creates an empty subvolume `name` in directory `dir`.
pub fn subvol_create(dir: &File, name: &OsStr) -> io::Result<()> {
    let args = vol_args_v2(0, 0, name)?;
    check(unsafe { ioc_subvol_create_v2(dir.as_raw_fd(), &*args) })
}

/// Snapshots the subvolume open as `src` to `name` in directory `dir`.
pub fn snapshot(src: &File, dir: &File, name: &OsStr, readonly: bool) -> io::Result<()> {
    let flags = if readonly { SUBVOL_RDONLY } else { 0 };
    let args = vol_args_v2(i64::from(src.as_raw_fd()), flags, name)?;
    check(unsafe { ioc_snap_create_v2(dir.as_raw_fd(), &*args) })
}

/// Deletes subvolume `name` of directory `dir`. Fails with `ENOTEMPTY` if
/// it holds other subvolumes, `EINVAL` if it is a plain directory,
/// `ENOTDIR` if it is not a directory.
pub fn snap_destroy(dir: &File, name: &OsStr) -> io::Result<()> {
    let mut args = Box::new(VolArgs { fd: 0, name: [0; 4088] });
    fill_name(&mut args.name, name)?;
    check(unsafe { ioc_snap_destroy(dir.as_raw_fd(), &*args) })
}

/// Flips the read-only flag of the subvolume open as `subvol`. The kernel
/// commits a transaction for it, so the flag is durable on return.
pub fn set_readonly(subvol: &File, readonly: bool) -> io::Result<()> {
    let flags = subvol_flags(subvol)?;
    let new = if readonly { flags | SUBVOL_RDONLY } else { flags & !SUBVOL_RDONLY };
    if new == flags {
        return Ok(());
    }
    check(unsafe { ioc_subvol_setflags(subvol.as_raw_fd(), &new) })
}

/// Whether the subvolume open as `subvol` is read-only.
pub fn is_readonly(subvol: &File) -> io::Result<bool> {
    Ok(subvol_flags(subvol)? & SUBVOL_RDONLY != 0)
}

fn subvol_flags(subvol: &File) -> io::Result<u64> {
    let mut flags = 0u64;
    check(unsafe { ioc_subvol_getflags(subvol.as_raw_fd(), &mut flags) })?;
    Ok(flags)
}

/// `BTRFS_IOC_SYNC`: writes out dirty data, commits the transaction and
/// wakes the transaction thread, which in turn wakes the cleaner.
pub fn sync(fd: &File) -> io::Result<()> {
    check(unsafe { ioc_sync(fd.as_raw_fd()) })
}

/// Commits the running transaction (metadata only) and waits for it.
pub fn commit_transaction(fd: &File) -> io::Result<()> {
    let mut transid = 0u64;
    check(unsafe { ioc_start_sync(fd.as_raw_fd(), &mut transid) })?;
    check(unsafe { ioc_wait_sync(fd.as_raw_fd(), &transid) })
}

/// The subvolumes directly inside the subvolume open as `subvol`, as
/// (subvolume id, inode number of the directory that holds it).
pub fn child_subvolumes(subvol: &File) -> io::Result<Vec<(u64, u64)>> {
    let mut children = Vec::new();
    let mut min_treeid = 0;
    loop {
        let mut args = Box::new(RootRefArgs {
            min_treeid,
            rootref: [RootRef::default(); 255],
            num_items: 0,
            align: [0; 7],
        });
        // EOVERFLOW means "buffer full, call again from min_treeid".
        let more = match unsafe { ioc_get_subvol_rootref(subvol.as_raw_fd(), &mut *args) } {
            Ok(_) => false,
            Err(Errno::EOVERFLOW) => true,
            Err(err) => return Err(err.into()),
        };
        let found = &args.rootref[..usize::from(args.num_items).min(255)];
        children.extend(found.iter().map(|r| (r.treeid, r.dirid)));
        if !more || found.is_empty() {
            return Ok(children);
        }
        min_treeid = args.min_treeid;
    }
}

/// The id of the subvolume whose root is open as `dir`; `None` if `dir` is
/// not the root of a subvolume.
pub fn subvolume_id(dir: &File) -> io::Result<Option<u64>> {
    if dir.metadata()?.ino() != SUBVOL_ROOT_INO {
        return Ok(None);
    }
    // With tree id 0 the kernel fills in the tree of the descriptor.
    let mut args = Box::new(InoLookupArgs { treeid: 0, objectid: SUBVOL_ROOT_INO, name: [0; 4080] });
    check(unsafe { ioc_ino_lookup(dir.as_raw_fd(), &mut *args) })?;
    Ok(Some(args.treeid))
}

/// Where the child subvolume `treeid` of the subvolume open as `subvol`
/// sits, as recorded by the filesystem (mounts play no part): the path
/// of its holding directory `dirid` relative to the subvolume's root ("" for
/// the root itself, else "a/b/"), and its name in that directory.
pub fn child_location(subvol: &File, treeid: u64, dirid: u64) -> io::Result<(Vec<u8>, OsString)> {
    let mut args = Box::new(InoLookupUserArgs { dirid, treeid, name: [0; 256], path: [0; 4080 - 256] });
    check(unsafe { ioc_ino_lookup_user(subvol.as_raw_fd(), &mut *args) })?;
    let until_nul = |buf: &[u8]| buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())].to_vec();
    Ok((until_nul(&args.path), OsString::from_vec(until_nul(&args.name))))
}

/// The ids of deleted subvolumes whose space the cleaner has not freed yet
/// (in the whole filesystem that `fd` is on).
pub fn deleted_subvolumes(fd: &File) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut min_offset = 0u64;
    loop {
        let key = SearchKey {
            tree_id: ROOT_TREE_ID,
            min_objectid: ORPHAN_OBJECTID,
            max_objectid: ORPHAN_OBJECTID,
            min_offset,
            max_offset: u64::MAX,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: ORPHAN_ITEM_KEY,
            max_type: ORPHAN_ITEM_KEY,
            nr_items: 4096,
            ..SearchKey::default()
        };
        let mut args = Box::new(SearchArgs { key, buf: [0; 4096 - 104] });
        check(unsafe { ioc_tree_search(fd.as_raw_fd(), &mut *args) })?;
        let count = args.key.nr_items;
        if count == 0 {
            return Ok(ids);
        }
        // Each result is a 32-byte header (transid, objectid, offset: u64;
        // type, len: u32) followed by `len` bytes of item data.
        let mut pos = 0usize;
        for _ in 0..count {
            let Some(header) = args.buf.get(pos..pos + 32) else {
                break;
            };
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&header[i * 8..i * 8 + 8]);
                u64::from_ne_bytes(b)
            };
            let (objectid, offset) = (word(1), word(2));
            let mut len = [0u8; 4];
            len.copy_from_slice(&header[28..32]);
            pos += 32 + u32::from_ne_bytes(len) as usize;
            if objectid == ORPHAN_OBJECTID {
                ids.push(offset);
            }
            min_offset = offset.saturating_add(1);
        }
        if min_offset == u64::MAX {
            return Ok(ids);
        }
    }
}
