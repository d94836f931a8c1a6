//! Results as OCI images: image references, transports, export and import.

pub mod archive;
pub mod image;
pub mod layout;
pub mod reference;
pub mod tags;
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
        ImageRef::Docker { .. } => Err(StoreError::unsupported(
            "docker:// needs the registry transport, which this build does not have",
        )),
    }
}
