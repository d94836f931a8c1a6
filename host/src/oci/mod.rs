//! Results as OCI images: image references, transports, export and import.

pub mod archive;
pub mod export;
pub mod image;
pub mod import;
pub mod layer;
pub mod layout;
mod pipe;
pub mod reference;
pub mod registry;
pub mod tags;
mod transfer;
pub mod transport;
pub mod verify;

pub use reference::ImageRef;
pub use transport::ImageTransport;

use store_api::StoreError;

/// How a transport is opened.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// The image is written (export): a missing `oci:` directory is made, an
    /// `oci-archive:` file is (re)written at `finish`.
    pub write: bool,
}

/// Opens the transport an image reference names.
pub fn open_transport(
    r: &ImageRef,
    options: &TransportOptions,
) -> Result<Box<dyn ImageTransport>, StoreError> {
    let name = r.to_string();
    match r {
        ImageRef::Oci { dir, .. } if options.write => Ok(Box::new(layout::Layout::create(dir, name)?)),
        ImageRef::Oci { dir, .. } => Ok(Box::new(layout::Layout::open(dir, name)?)),
        ImageRef::OciArchive { file, .. } if options.write => {
            Ok(Box::new(archive::ArchiveWriter::create(file, name)?))
        }
        ImageRef::OciArchive { file, .. } => Ok(Box::new(layout::Layout::open_tar(file, name)?)),
        ImageRef::Docker { registry, repository, .. } => registry::open(registry, repository, options.write),
    }
}

pub use export::ExportReport;
pub use import::ImportReport;
pub use layer::Compression;

/// How a result is exported.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// The layers' compression (zstd unless asked otherwise).
    pub compression: Compression,
}

impl crate::BlockingStore {
    /// Exports result `id` as an OCI image at `image` (`oci:DIR[:TAG]`,
    /// `oci-archive:FILE[:TAG]`, `docker://…`): one layer per step of its chain,
    /// tagged with the id's tag (see [`tags::tag_for_id`]) when `image` names
    /// none. Blobs the target holds are not written again; the manifest is
    /// written last, so a failed export leaves the target's tags as they were.
    pub fn export(&self, id: &str, image: &str, options: ExportOptions) -> Result<ExportReport, StoreError> {
        export::export(self, id, &ImageRef::parse(image)?, options.compression)
    }

    /// Imports the image at `image` (the id's tag when it names none) as result
    /// `id`, applying only the layers of steps the store lacks. An interrupted
    /// or failed import leaves no partial result (see [`import`](mod@import)).
    pub fn import(&self, id: &str, image: &str) -> Result<ImportReport, StoreError> {
        import::import(self, id, &ImageRef::parse(image)?)
    }
}
