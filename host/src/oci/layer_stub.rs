//! Stand-in for the layer module (branch wlayer) until it is merged: the same
//! API, refusing every call.

use std::io::{Read, Write};
use std::path::Path;

use store_api::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub media_type: String,
}

pub struct Change;

pub fn write_layer(
    _tree: &Path,
    _base: Option<&Path>,
    _changes: Option<Vec<Change>>,
    _compression: Compression,
    _out: &mut dyn Write,
) -> Result<LayerBlob, StoreError> {
    Err(StoreError::unsupported("image layers need the layer module, not merged yet"))
}

pub fn apply_layer(
    _tree: &Path,
    _media_type: &str,
    _blob: &mut dyn Read,
    _diff_id: &str,
) -> Result<(), StoreError> {
    Err(StoreError::unsupported("image layers need the layer module, not merged yet"))
}
