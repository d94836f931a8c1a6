//! The image transport trait, shared by the local transports (`oci:`,
//! `oci-archive:`) and the registry (`docker://`).

use std::io::{Read, Write};
use std::path::Path;

use oci_spec::image::Descriptor;
use store_api::StoreError;

/// Where an image's blobs and manifests are read and written: an OCI image layout
/// directory (`oci:`), an archive of one (`oci-archive:`), or a registry (`docker://`).
/// Writers put every blob before the manifest that names it, so a reader never sees a
/// manifest whose blobs are missing.
pub trait ImageTransport {
    /// How the transport is named in messages, e.g. `oci:/srv/images:tag`.
    fn describe(&self) -> String;
    /// True when the target already holds the blob (it is then not written again).
    fn has_blob(&mut self, digest: &str) -> Result<bool, StoreError>;
    /// Stores a blob read from `file`, whose digest and size are `desc`'s.
    fn put_blob(&mut self, desc: &Descriptor, file: &Path) -> Result<(), StoreError>;
    /// Streams a blob. The caller checks size and digest as it reads.
    fn get_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, StoreError>;
    /// Stores a manifest (or index) under `tag`, after all its blobs.
    fn put_manifest(&mut self, tag: &str, media_type: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// Reads the manifest (or index) a tag or a digest (`sha256:…`) names, with its
    /// media type; Ok(None) when there is none.
    fn get_manifest(&mut self, reference: &str) -> Result<Option<(String, Vec<u8>)>, StoreError>;
    /// Runs `make`, which writes a new blob to the writer it is given, and
    /// stores what it writes as it writes it, where the transport can (the
    /// blob's digest is known only at the end). Returns the digest and size
    /// stored, or None when the transport does not store blobs this way or
    /// could not (then the caller stores the blob with [`Self::put_blob`]).
    /// An error of `make` is returned as it is, and nothing is stored.
    fn put_blob_while_made(
        &mut self,
        make: &mut dyn FnMut(&mut dyn Write) -> Result<(), StoreError>,
    ) -> Result<Option<(String, u64)>, StoreError> {
        make(&mut std::io::sink())?;
        Ok(None)
    }
    /// Makes what was written durable and visible (oci-archive writes its file here).
    fn finish(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
