//! Applying one layer onto a build tree, safely against hostile layers:
//! every path is resolved beneath the tree by fd (`openat2` with
//! RESOLVE_BENEATH for parents, O_NOFOLLOW / AT_SYMLINK_NOFOLLOW for the
//! last component), an existing entry is replaced (unlinked, or removed
//! with `remove_tree` when a directory), never written through.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use store_api::{IoContext, StoreError};

use super::compress::{decoder, Hashing};
use super::tarread::{read_error, RawEntry, TarReader};
use crate::oci::pipe;

/// Applies one layer (a blob of `media_type`: OCI or Docker v2 tar,
/// tar+gzip or tar+zstd) onto `tree`, a writable build tree, and checks the
/// uncompressed tar's sha256 against `diff_id` at the end.
///
/// Hostile content is refused with an INVALID_INPUT error (`..` or absolute
/// paths, parents or hard link targets through symlinks that leave the
/// tree, whiteouts of `.`/`..`, unknown `.wh.` names, a truncated or
/// corrupt stream, a diff_id mismatch) and nothing is ever written outside
/// `tree`; on any error the tree is half-applied and the caller discards it.
/// Whiteouts remove only what lower layers had, not entries this layer
/// wrote. Each entry gets its content, then owner, then mode, then xattrs,
/// then times; directories get their times at the end.
pub fn apply_layer(
    tree: &Path,
    media_type: &str,
    blob: &mut dyn Read,
    diff_id: &str,
) -> Result<(), StoreError> {
    let expected = diff_id
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .ok_or_else(|| {
            StoreError::invalid(format!("diff_id {diff_id:?} is not sha256:<64 lower-case hex digits>"))
        })?;
    let root = rustix::fs::open(tree, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .context(format_args!("cannot open {}", tree.display()))?;
    let mut stream = Hashing::new(decoder(media_type, blob)?);
    // Two threads: this one downloads, checks, decompresses and hashes the
    // stream; the other creates the entries (system calls, mostly).
    let (tx, rx) = pipe::pipe();
    std::thread::scope(|scope| {
        let applier = scope.spawn(|| apply_tar(root, rx));
        feed(&mut stream, tx);
        applier.join().unwrap_or_else(|_| Err(StoreError::other("the layer applier panicked")))
    })?;
    let actual = stream.digest();
    if actual.strip_prefix("sha256:") != Some(expected) {
        return Err(StoreError::invalid(format!(
            "layer content does not match its diff_id: expected {diff_id}, got {actual}; the layer is corrupt"
        )));
    }
    Ok(())
}

/// The whole uncompressed stream into the pipe, to its end (the diff_id
/// covers the padding after the tar's end marker too); a read error goes
/// to the applier, which reports it. Stops early only when the applier did.
fn feed(stream: &mut impl Read, mut tx: pipe::ChunkWriter) {
    // (A stop without `finish` is a cut stream to the applier.)
    loop {
        let mut chunk = vec![0u8; pipe::CHUNK];
        let mut n = 0;
        while n < chunk.len() {
            match stream.read(&mut chunk[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return tx.fail(e),
            }
        }
        if n == 0 {
            let _ = tx.finish();
            return;
        }
        chunk.truncate(n);
        if tx.send(chunk).is_err() {
            return;
        }
    }
}

/// Applies the tar read from `rx` beneath `root`, then reads the stream to
/// its end (so that the feeder hashes all of it).
fn apply_tar(root: OwnedFd, rx: pipe::ChunkReader) -> Result<(), StoreError> {
    let mut tar = TarReader::new(rx);
    let mut applier = Applier {
        root,
        written: HashSet::new(),
        dir_times: Vec::new(),
        parent: None,
        buf: vec![0u8; 1 << 18],
    };
    while let Some(entry) = tar.next_entry()? {
        applier.entry(entry, &mut tar.data())?;
    }
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_error)?;
    applier.set_dir_times()
}

fn invalid(path: &[u8], what: &str) -> StoreError {
    StoreError::invalid(format!("refusing layer entry {:?}: {what}", String::from_utf8_lossy(path)))
}

fn ts(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    Timestamps { last_access: t, last_modification: t }
}

/// A path's components (raw bytes).
type Comps = Vec<Vec<u8>>;
/// Seconds and nanoseconds.
type Time = (i64, u32);

/// What a tar entry says about its entry, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Time,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Applier {
    root: OwnedFd,
    /// Paths (`a/b`) this layer wrote: whiteouts and opaque markers leave them.
    written: HashSet<Vec<u8>>,
    /// Directories and their mtimes, set at the end (their content changes them).
    dir_times: Vec<(Comps, Time)>,
    /// The last parent directory resolved, kept while nothing is removed.
    parent: Option<(Comps, Arc<OwnedFd>)>,
    /// For file data: fewer, larger writes than `io::copy`'s 8 KiB.
    buf: Vec<u8>,
}

/// The components of an entry's path: `.` and empty ones dropped, `..` and
/// absolute paths refused.
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    if path.starts_with(b"/") {
        return Err(invalid(path, "absolute path"));
    }
    if path.contains(&0) {
        return Err(invalid(path, "NUL byte in the path"));
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(invalid(path, "`..` component")),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// A directory's times, to put back after a whiteout removed an entry of
/// it: a layer that does not name the directory leaves its times alone
/// (a directory the layer names gets its own at the end anyway).
fn times_of(dir: &OwnedFd, comps: &[Vec<u8>]) -> Result<Timestamps, StoreError> {
    let st = rustix::fs::fstat(dir).context(format_args!("cannot stat {}", rel_path(comps).display()))?;
    let at = |sec: i64, nsec: i64| Timespec { tv_sec: sec, tv_nsec: nsec as _ };
    Ok(Timestamps {
        last_access: at(st.st_atime as i64, st.st_atime_nsec as i64),
        last_modification: at(st.st_mtime as i64, st.st_mtime_nsec as i64),
    })
}

fn restore_times(dir: &OwnedFd, comps: &[Vec<u8>], times: &Timestamps) -> Result<(), StoreError> {
    // `dir` is an O_PATH descriptor, which futimens refuses: through its
    // /proc link, which names that very directory.
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
    rustix::fs::utimensat(rustix::fs::CWD, link.as_str(), times, AtFlags::empty())
        .context(format_args!("cannot set the times of {}", rel_path(comps).display()))
}

fn rel_path(comps: &[Vec<u8>]) -> PathBuf {
    if comps.is_empty() {
        return PathBuf::from(".");
    }
    PathBuf::from(OsStr::from_bytes(&comps.join(&b'/')))
}

impl Applier {
    fn entry(&mut self, e: RawEntry, data: &mut impl Read) -> Result<(), StoreError> {
        let mut path = e.path;
        let mut meta = Meta {
            mode: e.mode,
            uid: u32::try_from(e.uid).map_err(|_| invalid(&path, "uid out of range"))?,
            gid: u32::try_from(e.gid).map_err(|_| invalid(&path, "gid out of range"))?,
            mtime: e.mtime,
            xattrs: Vec::new(),
        };
        let (mut major, mut real_size) = (None, None);
        for (key, value) in e.records {
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push((name.to_vec(), value));
            } else if key == b"GNU.sparse.major" {
                major = Some(value);
            } else if key == b"GNU.sparse.name" {
                path = value;
            } else if key == b"GNU.sparse.realsize" {
                real_size = std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u64>().ok());
            } else if key == b"GNU.sparse.size" || key == b"GNU.sparse.map" || key == b"GNU.sparse.offset" {
                return Err(invalid(&path, "PAX sparse formats 0.x are not supported (only 1.0)"));
            }
        }
        let mut sparse = None;
        if let Some(major) = major {
            if major != b"1" {
                return Err(invalid(&path, "unsupported PAX sparse format (only 1.0)"));
            }
            let size = real_size
                .ok_or_else(|| invalid(&path, "PAX sparse entry without a valid GNU.sparse.realsize"))?;
            sparse = Some(size);
        }
        let (dev, link) = (e.dev, e.link);
        let comps = components(&path)?;
        let kind = e.kind;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself: only a directory entry makes sense.
            if kind != b'5' {
                return Err(invalid(&path, "the root of the tree must be a directory"));
            }
            let fd = rustix::fs::openat(
                &self.root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .context("cannot open the root of the tree")?;
            self.set_meta_fd(&fd, &meta, &path)?;
            self.dir_times.push((comps, meta.mtime));
            return Ok(());
        };
        if let Some(target) = name.strip_prefix(b".wh.") {
            return self.whiteout(&path, parent, target);
        }
        let key = comps.join(&b'/');
        match kind {
            b'0' | b'\0' | b'7' | b'S' => {
                let parent_fd = self.parent_dir(parent, &path)?;
                let create = || {
                    rustix::fs::openat(
                        &parent_fd,
                        name.as_slice(),
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                };
                let fd = self
                    .making_room(&parent_fd, parent, name, false, create)?
                    .context(format_args!("cannot create {}", rel_path(&comps).display()))?;
                let file = File::from(fd);
                let declared = e.size;
                if let Some(real_size) = sparse {
                    let (segments, map_len) = read_sparse_map(data, declared, &path)?;
                    write_segments(data, &file, &segments, real_size, declared - map_len, &path)?;
                } else if let Some((segments, real_size)) = e.gnu_sparse {
                    write_segments(data, &file, &segments, real_size, declared, &path)?;
                } else {
                    let copied =
                        copy_data(data, &file, &mut self.buf).map_err(|err| read_or_write(err, &comps))?;
                    if copied != declared {
                        return Err(invalid(&path, "the layer is truncated (file data ends early)"));
                    }
                }
                self.set_meta_fd(file.as_fd(), &meta, &path)?;
                rustix::fs::futimens(&file, &ts(meta.mtime.0, meta.mtime.1))
                    .context(format_args!("cannot set the times of {}", rel_path(&comps).display()))?;
            }
            b'1' => {
                let target = link;
                let tcomps = components(&target)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(invalid(&path, "hard link to the root"));
                };
                if tcomps == comps {
                    return Err(invalid(&path, "hard link to itself"));
                }
                let tparent_fd =
                    self.beneath(tparent, ResolveFlags::NO_SYMLINKS).map_err(|err| match err {
                        Errno::NOENT => invalid(&path, "hard link target does not exist"),
                        _ => invalid(&path, "hard link target outside the tree or through a symlink"),
                    })?;
                match rustix::fs::statat(&tparent_fd, tname.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(invalid(&path, "hard link to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => return Err(invalid(&path, "hard link target does not exist")),
                }
                let parent_fd = self.parent_dir(parent, &path)?;
                // The target may have been removed with the slot (a link
                // replacing its own parent): then linkat fails, nothing escapes.
                let link = || {
                    rustix::fs::linkat(
                        &tparent_fd,
                        tname.as_slice(),
                        &parent_fd,
                        name.as_slice(),
                        AtFlags::empty(),
                    )
                };
                self.making_room(&parent_fd, parent, name, false, link)?
                    .context(format_args!("cannot link {}", rel_path(&comps).display()))?;
            }
            b'2' => {
                let target = link;
                if target.is_empty() {
                    return Err(invalid(&path, "symlink without a target"));
                }
                if target.contains(&0) {
                    return Err(invalid(&path, "NUL byte in the symlink target"));
                }
                let parent_fd = self.parent_dir(parent, &path)?;
                let symlink = || rustix::fs::symlinkat(target.as_slice(), &parent_fd, name.as_slice());
                self.making_room(&parent_fd, parent, name, false, symlink)?
                    .context(format_args!("cannot create the symlink {}", rel_path(&comps).display()))?;
                self.set_meta_at(&parent_fd, name, &meta, false, &comps)?;
            }
            b'3' | b'4' | b'6' => {
                let ftype = match kind {
                    b'3' => FileType::CharacterDevice,
                    b'4' => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let (major, minor) = match (u32::try_from(dev.0), u32::try_from(dev.1)) {
                    (Ok(major), Ok(minor)) => (major, minor),
                    _ => return Err(invalid(&path, "device number out of range")),
                };
                let parent_fd = self.parent_dir(parent, &path)?;
                let rdev = rustix::fs::makedev(major, minor);
                let node = || {
                    rustix::fs::mknodat(&parent_fd, name.as_slice(), ftype, Mode::from_raw_mode(0o600), rdev)
                };
                self.making_room(&parent_fd, parent, name, false, node)?
                    .context(format_args!("cannot create the node {}", rel_path(&comps).display()))?;
                self.set_meta_at(&parent_fd, name, &meta, true, &comps)?;
            }
            b'5' => {
                let parent_fd = self.parent_dir(parent, &path)?;
                let mkdir = || rustix::fs::mkdirat(&parent_fd, name.as_slice(), Mode::from_raw_mode(0o700));
                // A directory stays (its content with it); anything else goes.
                match self.making_room(&parent_fd, parent, name, true, mkdir)? {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => {
                        return Err(err).context(format_args!(
                            "cannot create the directory {}",
                            rel_path(&comps).display()
                        ))
                    }
                }
                let fd = rustix::fs::openat(
                    &parent_fd,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .context(format_args!("cannot open the directory {}", rel_path(&comps).display()))?;
                self.set_meta_fd(&fd, &meta, &path)?;
                self.dir_times.push((comps.clone(), meta.mtime));
            }
            other => {
                return Err(invalid(&path, &format!("unsupported tar entry type {:?}", other as char)));
            }
        }
        self.written.insert(key);
        Ok(())
    }

    /// `.wh.NAME` removes NAME of the lower layers; `.wh..wh..opq` all of
    /// the directory's lower entries.
    fn whiteout(&mut self, path: &[u8], parent: &[Vec<u8>], target: &[u8]) -> Result<(), StoreError> {
        if target == b".wh..opq" {
            let parent_fd = self.parent_dir(parent, path)?;
            let dir = rustix::fs::openat(
                &parent_fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .context(format_args!("cannot open {}", rel_path(parent).display()))?;
            let mut names = Vec::new();
            for entry in rustix::fs::Dir::read_from(&dir).context("cannot list a directory")? {
                let entry = entry.context(format_args!("cannot list {}", rel_path(parent).display()))?;
                let name = entry.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
            }
            let times = times_of(&parent_fd, parent)?;
            for name in names {
                let mut key = parent.join(&b'/');
                if !key.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(&name);
                if !self.written.contains(&key) {
                    self.remove(&parent_fd, parent, &name)?;
                }
            }
            return restore_times(&parent_fd, parent, &times);
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(invalid(path, "whiteout of nothing, `.` or `..`"));
        }
        if target.starts_with(b".wh.") {
            return Err(invalid(path, "unknown whiteout (only .wh.NAME and .wh..wh..opq exist)"));
        }
        let mut key = parent.join(&b'/');
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend_from_slice(target);
        if self.written.contains(&key) {
            return Ok(());
        }
        let parent_fd = match self.beneath(parent, ResolveFlags::empty()) {
            Ok(fd) => fd,
            // Nothing below a missing parent to remove.
            Err(Errno::NOENT) => return Ok(()),
            Err(err) => return Err(resolve_error(err, path)),
        };
        let times = times_of(&parent_fd, parent)?;
        self.remove(&parent_fd, parent, target)?;
        restore_times(&parent_fd, parent, &times)
    }

    /// Opens `comps` beneath the root: symlinks may be followed only while
    /// they stay inside the tree (and never magic links).
    fn beneath(&self, comps: &[Vec<u8>], extra: ResolveFlags) -> Result<OwnedFd, Errno> {
        rustix::fs::openat2(
            &self.root,
            rel_path(comps),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | extra,
        )
    }

    /// The parent directory of an entry, with missing ones created (0755,
    /// root-owned, as other tools do).
    fn parent_dir(&mut self, comps: &[Vec<u8>], path: &[u8]) -> Result<Arc<OwnedFd>, StoreError> {
        if let Some((cached, fd)) = &self.parent {
            if cached == comps {
                return Ok(fd.clone());
            }
        }
        let fd = match self.beneath(comps, ResolveFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let mut fd = self.root.try_clone().context("cannot duplicate a descriptor")?;
                for n in 1..=comps.len() {
                    fd = match self.beneath(&comps[..n], ResolveFlags::empty()) {
                        Ok(next) => next,
                        Err(Errno::NOENT) => {
                            match rustix::fs::mkdirat(
                                &fd,
                                comps[n - 1].as_slice(),
                                Mode::from_raw_mode(0o755),
                            ) {
                                Ok(()) | Err(Errno::EXIST) => {}
                                Err(err) => {
                                    return Err(err).context(format_args!(
                                        "cannot create the directory {}",
                                        rel_path(&comps[..n]).display()
                                    ))
                                }
                            }
                            self.beneath(&comps[..n], ResolveFlags::empty())
                                .map_err(|e| resolve_error(e, path))?
                        }
                        Err(err) => return Err(resolve_error(err, path)),
                    };
                }
                fd
            }
            Err(err) => return Err(resolve_error(err, path)),
        };
        let fd = Arc::new(fd);
        self.parent = Some((comps.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Runs `create` (an `*at` call that makes `name` in `parent_fd`, and
    /// fails with EEXIST when the name is taken); when the name is taken,
    /// makes room with [`Self::clear_slot`] (`dir`: a directory comes, an
    /// existing one stays) and runs it again. Trying first spares a stat
    /// per entry of a fresh tree. The outer error is the clearing's, the
    /// inner one `create`'s.
    fn making_room<T>(
        &mut self,
        parent_fd: &OwnedFd,
        parent: &[Vec<u8>],
        name: &[u8],
        dir: bool,
        create: impl Fn() -> Result<T, Errno>,
    ) -> Result<Result<T, Errno>, StoreError> {
        match create() {
            Err(Errno::EXIST) => {
                self.clear_slot(parent_fd, parent, name, dir)?;
                Ok(create())
            }
            made => Ok(made),
        }
    }

    /// Makes room for a new entry `name`: an existing non-directory is
    /// unlinked, an existing directory removed unless a directory comes.
    fn clear_slot(
        &mut self,
        parent_fd: &OwnedFd,
        parent: &[Vec<u8>],
        name: &[u8],
        dir: bool,
    ) -> Result<(), StoreError> {
        match rustix::fs::statat(parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(err).context(format_args!(
                "cannot stat {}",
                rel_path(parent).join(OsStr::from_bytes(name)).display()
            )),
            Ok(st) if dir && FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(()),
            Ok(_) => self.remove(parent_fd, parent, name),
        }
    }

    /// Removes `name` in `parent_fd` (a directory with `remove_tree`, which
    /// never follows symlinks nor enters mounts).
    fn remove(&mut self, parent_fd: &OwnedFd, parent: &[Vec<u8>], name: &[u8]) -> Result<(), StoreError> {
        let shown = || rel_path(parent).join(OsStr::from_bytes(name));
        let st = match rustix::fs::statat(parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(()),
            Err(err) => return Err(err).context(format_args!("cannot stat {}", shown().display())),
            Ok(st) => st,
        };
        // Cached parents may lie below what goes.
        self.parent = None;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // The real path of the parent, as the kernel resolved it beneath the tree.
            let real =
                std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(parent_fd)))
                    .context("cannot find the path of a directory")?;
            store_api::util::remove_tree(&real.join(OsStr::from_bytes(name)))
        } else {
            rustix::fs::unlinkat(parent_fd, name, AtFlags::empty())
                .context(format_args!("cannot remove {}", shown().display()))
        }
    }

    /// Owner, then mode, then xattrs, on an open file or directory. First
    /// go the xattrs the entry does not have: those of a directory that
    /// already existed, or ACLs inherited from a parent's default ACL.
    fn set_meta_fd(&self, fd: impl AsFd, meta: &Meta, path: &[u8]) -> Result<(), StoreError> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        remove_other_xattrs(
            meta,
            |buf| rustix::fs::flistxattr(&fd, buf),
            |name| rustix::fs::fremovexattr(&fd, name),
        )
        .context(format_args!("cannot remove the xattrs {} should not have", shown()))?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .context(format_args!("cannot chown {}", shown()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .context(format_args!("cannot chmod {}", shown()))?;
        for (key, value) in &meta.xattrs {
            rustix::fs::fsetxattr(&fd, key.as_slice(), value, rustix::fs::XattrFlags::empty()).context(
                format_args!("cannot set the xattr {} of {}", String::from_utf8_lossy(key), shown()),
            )?;
        }
        Ok(())
    }

    /// The same for an entry that cannot be opened (a symlink, a device
    /// node): by name in its parent, without following it.
    fn set_meta_at(
        &self,
        parent_fd: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        chmod: bool,
        comps: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let shown = || rel_path(comps).display().to_string();
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(parent_fd)))
            .join(OsStr::from_bytes(name));
        remove_other_xattrs(
            meta,
            |buf| rustix::fs::llistxattr(&via_fd, buf),
            |name| rustix::fs::lremovexattr(&via_fd, name),
        )
        .context(format_args!("cannot remove the xattrs {} should not have", shown()))?;
        rustix::fs::chownat(
            parent_fd,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .context(format_args!("cannot chown {}", shown()))?;
        if chmod {
            // Just created by mknodat: a node, not a symlink to follow.
            rustix::fs::chmodat(parent_fd, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .context(format_args!("cannot chmod {}", shown()))?;
        }
        for (key, value) in &meta.xattrs {
            rustix::fs::lsetxattr(&via_fd, key.as_slice(), value, rustix::fs::XattrFlags::empty()).context(
                format_args!("cannot set the xattr {} of {}", String::from_utf8_lossy(key), shown()),
            )?;
        }
        rustix::fs::utimensat(parent_fd, name, &ts(meta.mtime.0, meta.mtime.1), AtFlags::SYMLINK_NOFOLLOW)
            .context(format_args!("cannot set the times of {}", shown()))
    }

    /// Directory times, last: writing their content changed them.
    fn set_dir_times(&mut self) -> Result<(), StoreError> {
        self.parent = None;
        for (comps, (sec, nsec)) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let times = ts(sec, nsec);
            let Some((name, parent)) = comps.split_last() else {
                rustix::fs::futimens(&self.root, &times)
                    .context("cannot set the times of the tree's root")?;
                continue;
            };
            // A later entry may have replaced or removed it.
            let Ok(parent_fd) = self.beneath(parent, ResolveFlags::empty()) else { continue };
            match rustix::fs::statat(&parent_fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                _ => continue,
            }
            rustix::fs::utimensat(&parent_fd, name.as_slice(), &times, AtFlags::SYMLINK_NOFOLLOW)
                .context(format_args!("cannot set the times of {}", rel_path(&comps).display()))?;
        }
        Ok(())
    }
}

/// The most a list of xattr names can take on Linux.
const XATTR_LIST_MAX: usize = 65536;

/// Removes the xattrs an entry has and `meta` does not list (those of a
/// directory that already existed, or ACLs inherited from a parent's
/// default ACL), through `list` and `remove` of that entry.
fn remove_other_xattrs(
    meta: &Meta,
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    remove: impl Fn(&[u8]) -> rustix::io::Result<()>,
) -> rustix::io::Result<()> {
    // Most entries have none: a buffer on the stack, and one on the heap
    // only for a longer list.
    let mut small = [0u8; 1024];
    let mut large = Vec::new();
    let names = match list(&mut small) {
        Ok(n) => &small[..n],
        Err(Errno::RANGE) => {
            large.resize(XATTR_LIST_MAX, 0);
            let n = list(&mut large)?;
            &large[..n]
        }
        // A filesystem without xattrs (zfs-fuse) has none to remove.
        Err(Errno::NOTSUP) => return Ok(()),
        Err(err) => return Err(err),
    };
    for old in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !meta.xattrs.iter().any(|(k, _)| k == old) {
            // Already gone: another name of the same inode (a hard link)
            // was set a moment ago.
            match remove(old) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

fn resolve_error(err: Errno, path: &[u8]) -> StoreError {
    match err {
        Errno::XDEV | Errno::LOOP => invalid(path, "its parent leaves the tree through a symlink"),
        Errno::NOTDIR => invalid(path, "its parent is not a directory"),
        _ => StoreError::errno(
            format_args!("cannot resolve the parent of {}", String::from_utf8_lossy(path)),
            nix::errno::Errno::from_raw(err.raw_os_error()),
        ),
    }
}

/// Errors while copying entry data: the stream's (corrupt) or the disk's.
fn read_or_write(err: io::Error, comps: &[Vec<u8>]) -> StoreError {
    match err.raw_os_error() {
        Some(_) => StoreError::io(format_args!("cannot write {}", rel_path(comps).display()), &err),
        None => read_error(err),
    }
}

/// Copies an entry's data into a new file; returns the bytes copied.
fn copy_data(data: &mut impl Read, file: &File, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        std::io::Write::write_all(&mut &*file, &buf[..n])?;
        total += n as u64;
    }
}

fn read_exact_entry(r: &mut impl Read, buf: &mut [u8], path: &[u8]) -> Result<(), StoreError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid(path, "the layer is truncated (file data ends early)"),
        _ => read_error(e),
    })
}

/// The map at the start of a PAX 1.0 sparse entry's data: decimal lines
/// (count, then offset and length of each segment), padded to a block.
/// Returns the segments and the bytes the map took.
fn read_sparse_map(
    r: &mut impl Read,
    declared: u64,
    path: &[u8],
) -> Result<(Vec<(u64, u64)>, u64), StoreError> {
    let bad = |what: &str| invalid(path, &format!("bad sparse map: {what}"));
    let mut consumed = 0u64;
    let mut block = [0u8; 512];
    let mut text = Vec::new();
    let mut parsed = 0usize;
    let mut numbers: Vec<u64> = Vec::new();
    // Blocks until the count and 2 * count numbers are there; each line
    // parsed once (a hostile map may be long).
    loop {
        if let Some(&n) = numbers.first() {
            if n > 1_000_000 {
                return Err(bad("too many segments"));
            }
            if numbers.len() as u64 > 2 * n {
                break;
            }
        }
        if consumed + 512 > declared {
            return Err(bad("ends early"));
        }
        read_exact_entry(r, &mut block, path)?;
        consumed += 512;
        text.extend_from_slice(&block);
        while let Some(end) = text[parsed..].iter().position(|b| *b == b'\n') {
            let line = &text[parsed..parsed + end];
            let s = std::str::from_utf8(line).map_err(|_| bad("not decimal"))?;
            numbers.push(s.parse::<u64>().map_err(|_| bad("not decimal"))?);
            parsed += end + 1;
        }
    }
    let n = numbers[0] as usize;
    let segments = numbers[1..1 + 2 * n].chunks(2).map(|p| (p[0], p[1])).collect();
    Ok((segments, consumed))
}

/// The data of a sparse file: each segment's bytes, in order, written at
/// its offset; the holes between stay holes.
fn write_segments(
    r: &mut impl Read,
    file: &File,
    segments: &[(u64, u64)],
    real_size: u64,
    data_len: u64,
    path: &[u8],
) -> Result<(), StoreError> {
    let bad = |what: &str| invalid(path, &format!("bad sparse map: {what}"));
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in segments {
        let stop = off.checked_add(len).ok_or_else(|| bad("overflow"))?;
        if off < end || stop > real_size {
            return Err(bad("segments overlap, go backwards or past the file's size"));
        }
        end = stop;
        total += len;
    }
    if total != data_len {
        return Err(bad("the segments do not add up to the entry's size"));
    }
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in segments {
        let mut done = 0u64;
        while done < len {
            let k = (len - done).min(buf.len() as u64) as usize;
            read_exact_entry(r, &mut buf[..k], path)?;
            file.write_all_at(&buf[..k], off + done)
                .map_err(|e| StoreError::io("cannot write a sparse file", &e))?;
            done += k as u64;
        }
    }
    file.set_len(real_size).map_err(|e| StoreError::io("cannot size a sparse file", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_split_and_checked() {
        assert_eq!(components(b"./a//b/./c/").unwrap(), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(components(b"./").unwrap().is_empty());
        for bad in [&b"../a"[..], b"a/../../b", b"/etc/passwd", b"a/\0b"] {
            let err = components(bad).unwrap_err();
            assert_eq!(err.kind(), store_api::ErrorKind::INVALID_INPUT);
        }
    }
}
