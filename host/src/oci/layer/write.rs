//! Writing one layer: the plan of entries (changes, whiteouts, hard link
//! siblings, parents) in path order, then each entry as tar, compressed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use store_api::{IoContext, StoreError};

use super::compress::{Compression, Encoder, Hashing};
use super::diff::{diff_trees, walk_tree};
use super::meta::{self, join};
use super::tarball::{kind, Header, TarWriter, BLOCK};
use super::{Change, ChangeKind, LayerBlob};
use crate::oci::pipe;

/// What the layer says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The entry as it is in the tree.
    Entry,
    /// The entry (a directory) and `.wh..wh..opq` in it: it replaced the base's.
    OpaqueDir,
    /// `.wh.NAME`: the base's entry is gone.
    Whiteout,
}

/// A path as its components, so that a map orders a directory right
/// before its content (`a`, `a/b`, `a.txt`: not `a`, `a.txt`, `a/b`).
type Key = Vec<Vec<u8>>;

fn key_of(path: &Path) -> Result<Key, StoreError> {
    let mut key = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => key.push(name.as_bytes().to_vec()),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(StoreError::invalid(format!(
                    "change {:?} is not a path inside the tree",
                    path.display()
                )))
            }
        }
    }
    Ok(key)
}

fn path_of(key: &[Vec<u8>]) -> PathBuf {
    key.iter().map(|c| OsStr::from_bytes(c)).collect()
}

/// Writes the layer of `tree` against `base` (None: the whole tree) to
/// `out`, compressed, using `changes` when given (from the backend) and
/// [`diff_trees`](super::diff_trees) otherwise. Returns the blob's digest
/// and size and the uncompressed tar's diff_id. The output is the same for
/// the same trees (see the module documentation for what a layer holds).
pub fn write_layer(
    tree: &Path,
    base: Option<&Path>,
    changes: Option<Vec<Change>>,
    compression: Compression,
    out: &mut dyn Write,
) -> Result<LayerBlob, StoreError> {
    let plan = match (changes, base) {
        (Some(changes), _) => plan_from_changes(tree, changes)?,
        (None, Some(base)) => plan_from_changes(tree, diff_trees(tree, base)?)?,
        (None, None) => {
            let mut plan: BTreeMap<Key, Action> = walk_tree(tree, Path::new(""))?
                .into_iter()
                .map(|(p, _)| Ok((key_of(&p)?, Action::Entry)))
                .collect::<Result<_, StoreError>>()?;
            plan.insert(Vec::new(), Action::Entry);
            plan
        }
    };

    // Two threads: this one compresses (zstd's workers besides) and hashes
    // the blob; the other walks the plan, reads the files and hashes the tar.
    let (tx, mut rx) = pipe::pipe();
    let (diff_id, blob) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| write_tar(tree, &plan, tx));
        let compressed = compress(compression, &mut rx, out);
        // A failed compression stopped the producer (its pipe broke):
        // the compression's error is the one to tell.
        drop(rx);
        let produced =
            producer.join().unwrap_or_else(|_| Err(StoreError::other("the layer writer panicked")));
        let blob = compressed?;
        Ok::<_, StoreError>((produced?, blob))
    })?;
    Ok(LayerBlob {
        digest: blob.digest(),
        size: blob.count,
        diff_id,
        media_type: compression.media_type().to_string(),
    })
}

/// The tar of `plan`, into the pipe; returns its diff_id (the tar's sha256).
fn write_tar(tree: &Path, plan: &BTreeMap<Key, Action>, tx: pipe::ChunkWriter) -> Result<String, StoreError> {
    let write_err = |e: io::Error| StoreError::io("cannot write the layer", &e);
    let mut tar = TarWriter::new(Hashing::new(tx));
    let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // One buffer for all file data.
    let mut buf = vec![0u8; 1 << 20];
    for (key, action) in plan {
        write_entry(&mut tar, tree, key, *action, &mut first_names, &mut buf)?;
    }
    let diff = tar.finish().map_err(write_err)?;
    let diff_id = diff.digest();
    diff.inner.finish().map_err(write_err)?;
    Ok(diff_id)
}

/// Compresses the chunks of `rx` into `out`; returns the blob's digest and size.
fn compress<'o>(
    compression: Compression,
    rx: &mut pipe::ChunkReader,
    out: &'o mut dyn Write,
) -> Result<Hashing<&'o mut dyn Write>, StoreError> {
    let write_err = |e: io::Error| StoreError::io("cannot write the layer", &e);
    let mut encoder = Encoder::new(compression, Hashing::new(out)).map_err(write_err)?;
    while let Some(chunk) = rx.next_chunk() {
        // The producer's own error is told by the producer.
        let Ok(chunk) = chunk else { break };
        encoder.write_all(&chunk).map_err(write_err)?;
    }
    encoder.finish().map_err(write_err)
}

fn plan_from_changes(tree: &Path, changes: Vec<Change>) -> Result<BTreeMap<Key, Action>, StoreError> {
    let mut deleted = std::collections::BTreeSet::new();
    let mut present = std::collections::BTreeSet::new();
    for change in &changes {
        let key = key_of(&change.path)?;
        match change.kind {
            ChangeKind::Deleted => deleted.insert(key),
            ChangeKind::Added | ChangeKind::Modified => present.insert(key),
        };
    }
    let mut plan = BTreeMap::new();
    for key in &present {
        let path = join(tree, &path_of(key));
        let m = fs::symlink_metadata(&path)
            .context(format_args!("cannot stat {} (listed as changed)", path.display()))?;
        let replaced_dir = m.is_dir() && deleted.contains(key) && !key.is_empty();
        plan.insert(key.clone(), if replaced_dir { Action::OpaqueDir } else { Action::Entry });
    }
    for key in &deleted {
        // Below a deleted path, the whiteout or opaque marker of that path
        // covers it already.
        let covered = (1..key.len()).any(|n| deleted.contains(&key[..n]));
        if key.is_empty() || present.contains(key) || covered {
            continue;
        }
        let mut whiteout = key.clone();
        let name = whiteout.pop().unwrap_or_default();
        let mut wh = b".wh.".to_vec();
        wh.extend_from_slice(&name);
        whiteout.push(wh);
        plan.insert(whiteout, Action::Whiteout);
    }
    add_link_siblings(tree, &mut plan)?;
    // Parents, the root included (see the module doc).
    let keys: Vec<Key> = plan.keys().cloned().collect();
    for key in keys {
        for n in 0..key.len() {
            plan.entry(key[..n].to_vec()).or_insert(Action::Entry);
        }
    }
    Ok(plan)
}

/// All the names of a changed inode with several names go into the layer,
/// so that they stay one inode when applied.
fn add_link_siblings(tree: &Path, plan: &mut BTreeMap<Key, Action>) -> Result<(), StoreError> {
    let mut wanted: HashMap<(u64, u64), (u64, usize)> = HashMap::new();
    for (key, action) in plan.iter() {
        if *action != Action::Entry || key.is_empty() {
            continue;
        }
        let path = join(tree, &path_of(key));
        let m = fs::symlink_metadata(&path).context(format_args!("cannot stat {}", path.display()))?;
        if !m.is_dir() && m.nlink() > 1 {
            wanted.entry((m.dev(), m.ino())).or_insert((m.nlink(), 0)).1 += 1;
        }
    }
    if wanted.values().all(|(nlink, found)| *found as u64 >= *nlink) {
        return Ok(());
    }
    for (path, m) in walk_tree(tree, Path::new(""))? {
        if !m.is_dir() && wanted.contains_key(&(m.dev(), m.ino())) {
            plan.entry(key_of(&path)?).or_insert(Action::Entry);
        }
    }
    Ok(())
}

/// The name of `key` in the archive: `a/b`, directories `a/b/`, the root `./`.
fn archive_name(key: &[Vec<u8>], is_dir: bool) -> Vec<u8> {
    if key.is_empty() {
        return b"./".to_vec();
    }
    let mut name = key.join(&b'/');
    if is_dir {
        name.push(b'/');
    }
    name
}

fn write_entry<W: Write>(
    tar: &mut TarWriter<W>,
    tree: &Path,
    key: &Key,
    action: Action,
    first_names: &mut HashMap<(u64, u64), Vec<u8>>,
    buf: &mut [u8],
) -> Result<(), StoreError> {
    let write_err = |e: io::Error| StoreError::io("cannot write the layer", &e);
    if action == Action::Whiteout {
        return tar.header(&empty_file(&archive_name(key, false))).map_err(write_err);
    }
    let path = join(tree, &path_of(key));
    if key.last().is_some_and(|name| name.starts_with(b".wh.")) {
        // Every reader would take it for a whiteout.
        return Err(StoreError::invalid(format!(
            "cannot put {} in an image layer: names starting with `.wh.` are OCI whiteouts; rename it",
            path.display()
        )));
    }
    let m = fs::symlink_metadata(&path).context(format_args!("cannot stat {}", path.display()))?;
    if meta::is_socket(&m) {
        return Ok(());
    }
    let name = archive_name(key, m.is_dir());
    let records: Vec<(Vec<u8>, Vec<u8>)> = meta::xattrs(&path)
        .context(format_args!("cannot read the xattrs of {}", path.display()))?
        .into_iter()
        .map(|(k, v)| ([b"SCHILY.xattr.".as_slice(), &k].concat(), v))
        .collect();
    let mut h = Header {
        path: &name,
        kind: kind::FILE,
        mode: m.mode() & 0o7777,
        uid: m.uid() as u64,
        gid: m.gid() as u64,
        size: 0,
        mtime: (m.mtime(), m.mtime_nsec() as u32),
        link: None,
        dev: (0, 0),
        records,
    };
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        h.kind = kind::DIR;
        tar.header(&h).map_err(write_err)?;
        if action == Action::OpaqueDir {
            let mut opq = key.clone();
            opq.push(b".wh..wh..opq".to_vec());
            tar.header(&empty_file(&archive_name(&opq, false))).map_err(write_err)?;
        }
        return Ok(());
    }
    if m.nlink() > 1 {
        if let Some(first) = first_names.get(&(m.dev(), m.ino())) {
            let first = first.clone();
            h.kind = kind::LINK;
            h.link = Some(&first);
            // A link entry carries no data; its metadata is the inode's.
            return tar.header(&h).map_err(write_err);
        }
        first_names.insert((m.dev(), m.ino()), name.clone());
    }
    let target;
    if ft.is_symlink() {
        target = fs::read_link(&path).context(format_args!("cannot read {}", path.display()))?;
        h.kind = kind::SYMLINK;
        h.link = Some(target.as_os_str().as_bytes());
        return tar.header(&h).map_err(write_err);
    }
    if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        h.kind = if ft.is_fifo() {
            kind::FIFO
        } else if ft.is_char_device() {
            kind::CHAR
        } else {
            kind::BLOCK
        };
        let rdev = m.rdev();
        h.dev = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
        return tar.header(&h).map_err(write_err);
    }
    write_file(tar, &path, &m, h, buf)
}

fn empty_file(name: &[u8]) -> Header<'_> {
    Header {
        path: name,
        kind: kind::FILE,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: (0, 0),
        link: None,
        dev: (0, 0),
        records: Vec::new(),
    }
}

/// A regular file: dense, or as a PAX 1.0 sparse entry when it has holes.
fn write_file<W: Write>(
    tar: &mut TarWriter<W>,
    path: &Path,
    m: &Metadata,
    h: Header,
    buf: &mut [u8],
) -> Result<(), StoreError> {
    let read_err = |e: io::Error| StoreError::io(format_args!("cannot read {}", path.display()), &e);
    let write_err = |e: io::Error| StoreError::io("cannot write the layer", &e);
    let file = File::open(path).map_err(read_err)?;
    let size = m.size();
    let segments = data_segments(&file, size).map_err(read_err)?;
    let data: u64 = segments.iter().map(|(_, len)| len).sum();
    let mut sparse_name = Vec::new();
    let mut records = h.records;
    let mut map = Vec::new();
    if data < size {
        // GNU's PAX 1.0 sparse format: the real name and size in records,
        // the map at the start of the data, the header named
        // DIR/GNUSparseFile.0/NAME.
        let mut segs = segments.clone();
        if segs.last().is_none_or(|(off, len)| off + len < size) {
            segs.push((size, 0));
        }
        map.extend_from_slice(format!("{}\n", segs.len()).as_bytes());
        for (off, len) in &segs {
            map.extend_from_slice(format!("{off}\n{len}\n").as_bytes());
        }
        let padded = map.len().div_ceil(BLOCK as usize) * BLOCK as usize;
        map.resize(padded, 0);
        let real = h.path;
        let (dir, base) = match real.iter().rposition(|b| *b == b'/') {
            Some(i) => (&real[..=i], &real[i + 1..]),
            None => (&b""[..], real),
        };
        sparse_name = [dir, b"GNUSparseFile.0/", base].concat();
        records.splice(
            0..0,
            [
                (b"GNU.sparse.major".to_vec(), b"1".to_vec()),
                (b"GNU.sparse.minor".to_vec(), b"0".to_vec()),
                (b"GNU.sparse.name".to_vec(), real.to_vec()),
                (b"GNU.sparse.realsize".to_vec(), size.to_string().into_bytes()),
            ],
        );
    }
    let h = Header {
        path: if sparse_name.is_empty() { h.path } else { &sparse_name },
        size: map.len() as u64 + data,
        records,
        ..h
    };
    tar.header(&h).map_err(write_err)?;
    tar.data(&map).map_err(write_err)?;
    for (off, len) in segments {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], off + done).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    StoreError::new(
                        store_api::ErrorKind::BUSY,
                        format!("{} changed while its layer was written", path.display()),
                    )
                } else {
                    read_err(e)
                }
            })?;
            tar.data(&buf[..n]).map_err(write_err)?;
            done += n as u64;
        }
    }
    tar.pad(h.size).map_err(write_err)
}

/// The (offset, length) ranges of `file` that hold data (SEEK_DATA /
/// SEEK_HOLE); the whole file where the filesystem cannot tell.
fn data_segments(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        let end = seek(file, SeekFrom::Hole(start))?.min(size);
        if end > start {
            out.push((start, end - start));
        }
        pos = end;
    }
    Ok(out)
}
