//! Image manifests and configs: made for export, read (and checked) for import.
//!
//! An exported result's manifest annotates each layer with its step's id
//! ([`STEP_ANNOTATION`]) and itself with the result's id ([`ID_ANNOTATION`]).

use std::collections::HashMap;

use oci_spec::image::{
    Arch, Descriptor, HistoryBuilder, ImageConfigurationBuilder, ImageIndex, ImageManifest,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};
use store_api::StoreError;

use super::layout::{media_type_in, parse_digest};
use super::transport::ImageTransport;
use super::verify::{read_small, sha256_digest, sha256_of, MAX_JSON_BLOB};

/// Layer annotation: the snapstore id of the step the layer is the change of.
pub const STEP_ANNOTATION: &str = "dev.snapstore.step";
/// Manifest annotation: the snapstore id of the exported result.
pub const ID_ANNOTATION: &str = "dev.snapstore.id";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The layer media types import reads (what the layer module applies).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// A layer as written: what the store remembers of it between exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDesc {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub media_type: String,
}

/// One step of an exported chain.
pub struct Step {
    pub id: String,
    /// When the step was made (Unix ns): the history's date, so that exporting
    /// the same result twice gives the same image.
    pub created_ns: i64,
    pub layer: LayerDesc,
}

fn rfc3339(ns: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn spec_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::other(format!("cannot make the image: {e}"))
}

pub fn descriptor(media_type: &str, size: u64, digest: &str) -> Result<Descriptor, StoreError> {
    Ok(Descriptor::new(MediaType::from(media_type), size, parse_digest(digest)?))
}

/// The image config of a chain: the host's platform, one diff_id and one
/// history entry per step.
pub fn config_json(steps: &[Step]) -> Result<Vec<u8>, StoreError> {
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(steps.iter().map(|s| s.layer.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)?;
    let history = steps
        .iter()
        .map(|s| {
            HistoryBuilder::default()
                .created(rfc3339(s.created_ns))
                .created_by(format!("snapstore step {}", s.id))
                .build()
                .map_err(spec_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ImageConfigurationBuilder::default()
        .architecture(Arch::default())
        .os(Os::default())
        .rootfs(rootfs)
        .history(history)
        .build()
        .map_err(spec_error)?;
    if let Some(last) = steps.last() {
        config.set_created(Some(rfc3339(last.created_ns)));
    }
    serde_json::to_vec(&config).map_err(spec_error)
}

/// The manifest of result `id`, whose config blob is `config`.
pub fn manifest_json(id: &str, config: &[u8], steps: &[Step]) -> Result<Vec<u8>, StoreError> {
    let config = descriptor(OCI_CONFIG, config.len() as u64, &sha256_digest(config))?;
    let layers = steps
        .iter()
        .map(|s| {
            let mut desc = descriptor(&s.layer.media_type, s.layer.size, &s.layer.digest)?;
            desc.set_annotations(Some([(STEP_ANNOTATION.to_string(), s.id.clone())].into()));
            Ok(desc)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .annotations(HashMap::from([(ID_ANNOTATION.to_string(), id.to_string())]))
        .build()
        .map_err(spec_error)?;
    serde_json::to_vec(&manifest).map_err(spec_error)
}

/// An image read for import.
pub struct ImageToImport {
    /// The digest of the manifest.
    pub digest: String,
    /// The snapstore id in the manifest's annotations, if snapstore made it.
    pub id: Option<String>,
    pub layers: Vec<LayerToImport>,
}

pub struct LayerToImport {
    pub desc: Descriptor,
    pub media_type: String,
    pub diff_id: String,
    /// The step's id, if snapstore made the image.
    pub step: Option<String>,
}

/// The part of an image config import needs (Docker's and OCI's alike).
#[derive(Deserialize)]
struct ConfigRootFs {
    rootfs: RootFsIds,
}

#[derive(Deserialize)]
struct RootFsIds {
    diff_ids: Vec<String>,
}

/// Reads the manifest `reference` names (a tag or a digest), choosing the
/// host's platform in an index, then its config; checks every media type,
/// digest and size on the way. Layers are only described, not read.
pub fn read_image(transport: &mut dyn ImageTransport, reference: &str) -> Result<ImageToImport, StoreError> {
    let name = transport.describe();
    let Some((media_type, bytes)) = transport.get_manifest(reference)? else {
        return Err(StoreError::not_found(format!("{name} has no image `{reference}`")));
    };
    let mut digest = sha256_digest(&bytes);
    let mut kind = manifest_kind(&media_type, &bytes);
    let mut bytes = bytes;
    if kind == Kind::Index {
        let child = pick_platform(&bytes, &name)?;
        let child_digest = sha256_of(&child)?;
        let Some((child_type, child_bytes)) = transport.get_manifest(&child_digest)? else {
            return Err(StoreError::invalid(format!(
                "{name}: the index names manifest {child_digest}, which is missing"
            )));
        };
        if child.size() != child_bytes.len() as u64 || sha256_digest(&child_bytes) != child_digest {
            return Err(StoreError::invalid(format!(
                "{name}: manifest {child_digest} does not match its descriptor: the image is corrupt"
            )));
        }
        let child_type = if child.media_type().to_string().is_empty() {
            child_type
        } else {
            child.media_type().to_string()
        };
        kind = manifest_kind(&child_type, &child_bytes);
        bytes = child_bytes;
        digest = child_digest;
    }
    if kind != Kind::Manifest {
        return Err(StoreError::unsupported(format!(
            "{name}: `{reference}` is a {media_type}, not an image manifest snapstore reads"
        )));
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::invalid(format!("{name}: the manifest is not valid JSON of an image manifest: {e}"))
    })?;
    let config_type = manifest.config().media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(StoreError::unsupported(format!(
            "{name}: the image config has media type `{}`; snapstore reads OCI and Docker image configs",
            config_type.escape_debug()
        )));
    }
    let config_bytes = {
        let reader = transport.get_blob(manifest.config())?;
        read_small(reader, manifest.config(), &format!("{name}: config {}", manifest.config().digest()))?
    };
    let config: ConfigRootFs = serde_json::from_slice(&config_bytes).map_err(|e| {
        StoreError::invalid(format!("{name}: the image config has no valid rootfs.diff_ids: {e}"))
    })?;
    if config.rootfs.diff_ids.len() != manifest.layers().len() {
        return Err(StoreError::invalid(format!(
            "{name}: the manifest lists {} layers but the config {} diff_ids",
            manifest.layers().len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (desc, diff_id) in manifest.layers().iter().zip(config.rootfs.diff_ids) {
        let media_type = desc.media_type().to_string();
        if !LAYER_TYPES.contains(&media_type.as_str()) {
            return Err(StoreError::unsupported(format!(
                "{name}: layer {} has media type `{}`, which snapstore does not read",
                desc.digest(),
                media_type.escape_debug()
            )));
        }
        sha256_of(desc)?;
        crate::oci::reference::check_digest(&diff_id)
            .map_err(|e| StoreError::invalid(format!("{name}: the config's diff_ids: {}", e.message())))?;
        let step = desc.annotations().as_ref().and_then(|a| a.get(STEP_ANNOTATION)).cloned();
        layers.push(LayerToImport { desc: desc.clone(), media_type, diff_id, step });
    }
    let id = manifest.annotations().as_ref().and_then(|a| a.get(ID_ANNOTATION)).cloned();
    Ok(ImageToImport { digest, id, layers })
}

#[derive(PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
    Other,
}

/// What a manifest is, by its media type (or, when none was given, by its
/// own `mediaType` field or its shape).
fn manifest_kind(media_type: &str, bytes: &[u8]) -> Kind {
    let declared = match media_type {
        "" => media_type_in(bytes).unwrap_or_default(),
        other => other.to_string(),
    };
    match declared.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        "" => {
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            if value.get("layers").is_some() {
                Kind::Manifest
            } else if value.get("manifests").is_some() {
                Kind::Index
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}

/// The manifest of an index for the host's os and architecture.
fn pick_platform(bytes: &[u8], name: &str) -> Result<Descriptor, StoreError> {
    if bytes.len() as u64 > MAX_JSON_BLOB {
        return Err(StoreError::invalid(format!("{name}: the index is larger than {MAX_JSON_BLOB} bytes")));
    }
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| {
        StoreError::invalid(format!("{name}: the index is not valid JSON of an image index: {e}"))
    })?;
    let (os, arch) = (Os::default(), Arch::default());
    let mut seen = Vec::new();
    for desc in index.manifests() {
        match desc.platform() {
            Some(p) if *p.os() == os && *p.architecture() == arch => return Ok(desc.clone()),
            Some(p) => seen.push(format!("{}/{}", p.os(), p.architecture())),
            None => seen.push("(no platform)".into()),
        }
    }
    Err(StoreError::not_found(format!(
        "{name}: the index has no image for {os}/{arch} (it has: {})",
        if seen.is_empty() { "nothing".to_string() } else { seen.join(", ") }
    )))
}
