//! The `oci:DIR` transport: an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`).
//!
//! Writes are atomic: a blob is written to a temporary name beside its final
//! one, synced and renamed; `index.json` is replaced the same way, under a
//! `flock` on the directory so that two writers do not lose each other's tags.
//! A blob already present is not written again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use store_api::{IoContext, StoreError};

use super::transport::ImageTransport;
use super::verify::{read_small, sha256_digest, sha256_of, MAX_JSON_BLOB};
use crate::store::write_atomic;

/// The annotation an image layout's index names a tag with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// The regular files of a tar: name -> (offset of the data, size).
type TarEntries = HashMap<String, (u64, u64)>;

/// An image layout, open for reading or writing: a directory, or (read only) a
/// tar of one read in place.
pub struct Layout {
    dir: PathBuf,
    /// How messages name it (`oci:DIR` or `oci-archive:FILE`).
    name: String,
    /// For a tar: where each regular file's bytes are (offset, size).
    tar: Option<(File, TarEntries)>,
}

impl Layout {
    /// Opens an existing layout; a directory that is not one is refused.
    pub fn open(dir: &Path, name: String) -> Result<Layout, StoreError> {
        match fs::read(dir.join(LAYOUT_FILE)) {
            Ok(_) => Ok(Layout { dir: dir.to_path_buf(), name, tar: None }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::not_found(format!(
                "{name}: {} is not an OCI image layout (it has no oci-layout file)",
                dir.display()
            ))),
            Err(e) => Err(StoreError::io(format_args!("{name}: cannot read {}", dir.display()), &e)),
        }
    }

    /// Opens a layout to write into, making the directory and its
    /// `oci-layout` and `index.json` when missing. A directory that holds
    /// other things but no layout is refused, so that nothing is mixed into it.
    pub fn create(dir: &Path, name: String) -> Result<Layout, StoreError> {
        if !dir.join(LAYOUT_FILE).exists() {
            let empty = match fs::read_dir(dir) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(dir)
                        .context(format_args!("{name}: cannot create {}", dir.display()))?;
                    true
                }
                Err(e) => {
                    return Err(StoreError::io(format_args!("{name}: cannot read {}", dir.display()), &e))
                }
            };
            if !empty {
                return Err(StoreError::invalid(format!(
                    "{name}: {} is neither empty nor an OCI image layout; name a new or empty directory",
                    dir.display()
                )));
            }
            write_atomic(&dir.join(LAYOUT_FILE), LAYOUT_CONTENT.as_bytes())?;
        }
        let layout = Layout { dir: dir.to_path_buf(), name, tar: None };
        if !layout.dir.join("index.json").exists() {
            let _lock = layout.lock()?;
            if !layout.dir.join("index.json").exists() {
                layout.write_index(&empty_index()?)?;
            }
        }
        Ok(layout)
    }

    /// Reads a tar of a layout in place: its entries are indexed, nothing is extracted.
    pub fn open_tar(file: &Path, name: String) -> Result<Layout, StoreError> {
        let opened = File::open(file).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                StoreError::not_found(format!("{name}: {} does not exist", file.display()))
            }
            _ => StoreError::io(format_args!("{name}: cannot read {}", file.display()), &e),
        })?;
        let mut entries = HashMap::new();
        let mut archive = tar::Archive::new(&opened);
        let bad = |e: io::Error| {
            StoreError::invalid(format!("{name}: {} is not a readable tar: {e}", file.display()))
        };
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry.path().map_err(bad)?;
            let path = path.to_string_lossy();
            let path = path.trim_start_matches("./").to_string();
            entries.insert(path, (entry.raw_file_position(), entry.size()));
        }
        if !entries.contains_key(LAYOUT_FILE) {
            return Err(StoreError::invalid(format!(
                "{name}: {} is not an OCI image layout archive (it has no oci-layout file)",
                file.display()
            )));
        }
        Ok(Layout { dir: file.to_path_buf(), name, tar: Some((opened, entries)) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_name(&self, digest: &str) -> Result<String, StoreError> {
        crate::oci::reference::check_digest(digest)
            .map_err(|e| StoreError::invalid(format!("{}: {}", self.name, e.message())))?;
        Ok(format!("blobs/sha256/{}", &digest["sha256:".len()..]))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.dir.join(self.blob_name(digest)?))
    }

    /// Opens a file of the layout; Ok(None) when it has none of that name.
    fn open_file(&self, name: &str) -> Result<Option<Box<dyn Read + '_>>, StoreError> {
        match &self.tar {
            Some((file, entries)) => {
                let Some(&(offset, size)) = entries.get(name) else { return Ok(None) };
                let mut file = file;
                file.seek(SeekFrom::Start(offset))
                    .context(format_args!("{}: cannot read {name}", self.name))?;
                Ok(Some(Box::new(io::BufReader::with_capacity(1 << 20, file.take(size)))))
            }
            None => match File::open(self.dir.join(name)) {
                Ok(file) => Ok(Some(Box::new(io::BufReader::with_capacity(1 << 20, file)))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(format_args!("{}: cannot read {name}", self.name), &e)),
            },
        }
    }

    fn has_file(&self, name: &str) -> bool {
        match &self.tar {
            Some((_, entries)) => entries.contains_key(name),
            None => self.dir.join(name).is_file(),
        }
    }

    /// Refuses writes into a layout read from an archive.
    fn writable(&self) -> Result<(), StoreError> {
        match self.tar {
            Some(_) => Err(StoreError::unsupported(format!("{}: opened for reading only", self.name))),
            None => Ok(()),
        }
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let dir = File::open(&self.dir).context(format_args!("{}: cannot open", self.name))?;
        Flock::lock(dir, FlockArg::LockExclusive)
            .map_err(|(_, errno)| StoreError::errno(format_args!("{}: cannot lock", self.name), errno))
    }

    /// The index, read with a cap on its size.
    pub fn read_index(&self) -> Result<ImageIndex, StoreError> {
        let Some(file) = self.open_file("index.json")? else {
            return Err(StoreError::invalid(format!("{}: the layout has no index.json", self.name)));
        };
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .context(format_args!("{}: cannot read index.json", self.name))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(StoreError::invalid(format!(
                "{}: index.json is larger than {MAX_JSON_BLOB} bytes",
                self.name
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::invalid(format!("{}: index.json is not an OCI index: {e}", self.name)))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(index).map_err(|e| StoreError::other(format!("cannot encode index: {e}")))?;
        write_atomic(&self.dir.join("index.json"), &bytes)
    }

    /// The tags the index names.
    pub fn tags(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read_index()?.manifests().iter().filter_map(|d| ref_name(d).map(str::to_string)).collect())
    }
}

fn empty_index() -> Result<ImageIndex, StoreError> {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::<Descriptor>::new())
        .build()
        .map_err(|e| StoreError::other(format!("cannot make an index: {e}")))
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

/// Copies `from` to `path` through a temporary file in its directory.
fn copy_atomically(from: &Path, path: &Path, size: u64) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .context(format_args!("cannot write into {}", dir.display()))?;
    let mut source = File::open(from).context(format_args!("cannot read {}", from.display()))?;
    let copied =
        io::copy(&mut source, tmp.as_file_mut()).context(format_args!("cannot write {}", path.display()))?;
    if copied != size {
        return Err(StoreError::other(format!(
            "{} has {copied} bytes, not the {size} of its descriptor",
            from.display()
        )));
    }
    tmp.as_file().sync_all().context(format_args!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| StoreError::io(format_args!("cannot write {}", path.display()), &e.error))?;
    Ok(())
}

impl ImageTransport for Layout {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn has_blob(&mut self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.has_file(&self.blob_name(digest)?))
    }

    fn put_blob(&mut self, desc: &Descriptor, file: &Path) -> Result<(), StoreError> {
        self.writable()?;
        let path = self.blob_path(&sha256_of(desc)?)?;
        if path.is_file() {
            return Ok(());
        }
        copy_atomically(file, &path, desc.size()).map_err(|e| e.context(&self.name))
    }

    fn get_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, StoreError> {
        let name = self.blob_name(&sha256_of(desc)?)?;
        self.open_file(&name)?.ok_or_else(|| {
            StoreError::invalid(format!(
                "{}: the image names blob {} but the layout does not hold it",
                self.name,
                desc.digest()
            ))
        })
    }

    fn put_manifest(&mut self, tag: &str, media_type: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.writable()?;
        let digest = sha256_digest(bytes);
        let path = self.blob_path(&digest)?;
        if !path.is_file() {
            fs::create_dir_all(path.parent().expect("a blob has a directory"))
                .context(format_args!("{}: cannot create blobs/sha256", self.name))?;
            write_atomic(&path, bytes)?;
        }
        let mut desc =
            Descriptor::new(MediaType::from(media_type), bytes.len() as u64, parse_digest(&digest)?);
        desc.set_annotations(Some([(REF_NAME.to_string(), tag.to_string())].into()));
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let mut manifests: Vec<Descriptor> =
            index.manifests().iter().filter(|d| ref_name(d) != Some(tag)).cloned().collect();
        manifests.push(desc);
        index.set_manifests(manifests);
        self.write_index(&index)
    }

    fn get_manifest(&mut self, reference: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let index = self.read_index()?;
        let desc = if reference.starts_with("sha256:") {
            match index.manifests().iter().find(|d| d.digest().to_string() == reference) {
                Some(desc) => desc.clone(),
                // A manifest an index names (one platform's): its media type is in it.
                None => return self.manifest_by_digest(reference),
            }
        } else {
            match index.manifests().iter().find(|d| ref_name(d) == Some(reference)) {
                Some(desc) => desc.clone(),
                None => return Ok(None),
            }
        };
        let what = format!("{}: manifest {}", self.name, desc.digest());
        let Some(file) = self.open_file(&self.blob_name(&sha256_of(&desc)?)?)? else {
            return Err(StoreError::invalid(format!(
                "{what} is named by the index but the layout does not hold it"
            )));
        };
        let bytes = read_small(file, &desc, &what)?;
        Ok(Some((desc.media_type().to_string(), bytes)))
    }
}

impl Layout {
    /// A manifest found by its digest alone: read with the cap, digest checked.
    fn manifest_by_digest(&self, digest: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let Some(file) = self.open_file(&self.blob_name(digest)?)? else { return Ok(None) };
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .context(format_args!("{}: cannot read", self.name))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(StoreError::invalid(format!(
                "{}: manifest {digest} is larger than {MAX_JSON_BLOB} bytes",
                self.name
            )));
        }
        if sha256_digest(&bytes) != digest {
            return Err(StoreError::invalid(format!(
                "{}: blob {digest} does not have that digest: the layout is corrupt",
                self.name
            )));
        }
        Ok(Some((media_type_in(&bytes).unwrap_or_default(), bytes)))
    }
}

/// The `mediaType` field of a JSON manifest or index.
pub fn media_type_in(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(bytes).ok()?.media_type
}

pub fn parse_digest(digest: &str) -> Result<oci_spec::image::Digest, StoreError> {
    digest
        .parse()
        .map_err(|e| StoreError::invalid(format!("invalid digest `{}`: {e}", digest.escape_debug())))
}
