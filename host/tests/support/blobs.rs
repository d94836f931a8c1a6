//! Blob files for the image and registry tests.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, DescriptorBuilder, MediaType};
use sha2::{Digest, Sha256};

/// A file in `dir` holding `bytes` (named after their digest), and its
/// descriptor of type `media_type`.
pub fn blob_file(dir: &Path, media_type: &str, bytes: &[u8]) -> (Descriptor, PathBuf) {
    let digest = format!("sha256:{:x}", Sha256::digest(bytes));
    let file = dir.join(digest.replace(':', "-"));
    std::fs::write(&file, bytes).unwrap();
    let desc = DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest.parse::<oci_spec::image::Digest>().unwrap())
        .size(bytes.len() as u64)
        .build()
        .unwrap();
    (desc, file)
}
