//! The `oci-archive:FILE` transport: a tar of an OCI image layout.
//!
//! Read in place (see [`Layout::open_tar`]). Written into a layout staged in a
//! temporary directory beside FILE, then tarred at `finish` into a temporary
//! file that is renamed over FILE: a reader sees the old archive or the new one.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use store_api::{IoContext, StoreError};
use tempfile::TempDir;

use super::layout::Layout;
use super::transport::ImageTransport;

/// An archive being written.
pub struct ArchiveWriter {
    file: PathBuf,
    staging: Option<TempDir>,
    layout: Layout,
}

impl ArchiveWriter {
    pub fn create(file: &Path, name: String) -> Result<ArchiveWriter, StoreError> {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if file.is_dir() {
            return Err(StoreError::invalid(format!(
                "{name}: {} is a directory; name a file",
                file.display()
            )));
        }
        let staging = tempfile::Builder::new()
            .prefix(".oci-archive-")
            .tempdir_in(parent)
            .context(format_args!("{name}: cannot write into {}", parent.display()))?;
        let layout = Layout::create(staging.path(), name)?;
        Ok(ArchiveWriter { file: file.to_path_buf(), staging: Some(staging), layout })
    }
}

impl ImageTransport for ArchiveWriter {
    fn describe(&self) -> String {
        self.layout.describe()
    }

    fn has_blob(&mut self, digest: &str) -> Result<bool, StoreError> {
        self.layout.has_blob(digest)
    }

    fn put_blob(&mut self, desc: &Descriptor, file: &Path) -> Result<(), StoreError> {
        self.layout.put_blob(desc, file)
    }

    fn get_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, StoreError> {
        self.layout.get_blob(desc)
    }

    fn put_manifest(&mut self, tag: &str, media_type: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.layout.put_manifest(tag, media_type, bytes)
    }

    fn get_manifest(&mut self, reference: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.layout.get_manifest(reference)
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let Some(staging) = self.staging.take() else { return Ok(()) };
        let name = self.layout.describe();
        let parent = staging.path().parent().expect("staging has a parent").to_path_buf();
        let tmp = tempfile::Builder::new()
            .prefix(".oci-archive-")
            .tempfile_in(&parent)
            .context(format_args!("{name}: cannot write into {}", parent.display()))?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        append_tree(&mut builder, staging.path(), Path::new(""))
            .and_then(|()| builder.into_inner())
            .and_then(|mut w| w.flush())
            .and_then(|()| tmp.as_file().sync_all())
            .context(format_args!("{name}: cannot write {}", self.file.display()))?;
        tmp.persist(&self.file).map_err(|e| {
            StoreError::io(format_args!("{name}: cannot write {}", self.file.display()), &e.error)
        })?;
        Ok(())
    }
}

/// Appends `dir`'s files under `prefix`, sorted, with fixed owners, modes and times
/// so that the same layout gives the same archive.
fn append_tree(builder: &mut tar::Builder<impl Write>, dir: &Path, prefix: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let inner = prefix.join(&name);
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if path.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &inner, std::io::empty())?;
            append_tree(builder, &path, &inner)?;
        } else {
            let file = File::open(&path)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(file.metadata()?.len());
            builder.append_data(&mut header, &inner, file)?;
        }
    }
    Ok(())
}
