//! Results as OCI images: image references, transports, export and import.

pub mod reference;
pub mod transport;

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
    let _ = options;
    match r {
        ImageRef::Oci { .. } | ImageRef::OciArchive { .. } => {
            Err(StoreError::unsupported("oci: transports are being written"))
        }
        ImageRef::Docker { .. } => Err(StoreError::unsupported(
            "docker:// needs the registry transport, which this build does not have",
        )),
    }
}
