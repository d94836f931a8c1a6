//! Export: a result as an OCI image, one layer per step of its chain.
//!
//! The chain comes from the result record (each result's base), from the first
//! base still held to the result. Each step's layer is its change against its
//! base (the whole tree for the first). A step's layer descriptor is
//! remembered in `.snapstore/oci/layers/<step>.json`, keyed by the step's
//! creation time, its base and the compression, so that exporting a child to
//! a target that already holds its bases' blobs computes only its own layer.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use store_api::{IoContext, StoreError};
use tracing::{debug, warn};

use super::image::{config_json, manifest_json, LayerDesc, Step, OCI_MANIFEST};
use super::layer::{diff_trees_after_clone, write_layer, Compression};
use super::layout::parse_digest;
use super::reference::ImageRef;
use super::tags::tag_for_id;
use super::transfer::{Counting, Transfer};
use super::verify::sha256_digest;
use super::{open_transport, TransportOptions};
use crate::names::check_id;
use crate::store::{BlockingStore, META_DIR};

/// The longest chain followed (a guard against a damaged record).
const MAX_CHAIN: usize = 10_000;

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub id: String,
    /// The reference written, with its tag.
    pub reference: String,
    /// The manifest's digest.
    pub digest: String,
    /// Layers whose blob was written to the target.
    pub layers_written: usize,
    /// Layers the target already held.
    pub layers_skipped: usize,
    /// Bytes of blobs written (layers, config and manifest).
    pub bytes_written: u64,
}

/// A step's layer as remembered between exports.
#[derive(Serialize, Deserialize, PartialEq)]
struct CachedLayer {
    created_ns: i64,
    base: Option<String>,
    compression: String,
    layer: LayerDesc,
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
    }
}

/// Exports result `id` to `image` (tagged with the id's tag when it names none).
pub fn export(
    store: &BlockingStore,
    id: &str,
    image: &ImageRef,
    compression: Compression,
) -> Result<ExportReport, StoreError> {
    check_id(id)?;
    let chain = chain(store, id)?;
    let image = image.with_default_tag(&tag_for_id(id));
    let tag = image.tag().expect("a default tag was given").to_string();
    let mut transport = open_transport(&image, &TransportOptions { write: true })?;
    let meta = store.root().join(META_DIR).join("oci");
    let tmp_dir = meta.join("tmp");
    let cache_dir = meta.join("layers");
    for dir in [&tmp_dir, &cache_dir] {
        fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    }
    remove_stale_temporaries(&tmp_dir);
    let mut report = ExportReport {
        id: id.to_string(),
        reference: image.to_string(),
        digest: String::new(),
        layers_written: 0,
        layers_skipped: 0,
        bytes_written: 0,
    };
    let mut transfer = Transfer::new(format!("exporting `{id}` to {image}"), chain.len());
    let mut steps = Vec::with_capacity(chain.len());
    for (i, link) in chain.iter().enumerate() {
        let (step, tree, created_ns) = (&link.step, &link.tree, &link.created);
        let base = i.checked_sub(1).map(|b| &chain[b]);
        let wanted = CachedLayer {
            created_ns: *created_ns,
            base: base.map(|b| b.step.clone()),
            compression: compression_name(compression).to_string(),
            layer: LayerDesc {
                digest: String::new(),
                size: 0,
                diff_id: String::new(),
                media_type: String::new(),
            },
        };
        let cache_file = cache_dir.join(format!("{step}.json"));
        let cached = read_cache(&cache_file).filter(|c| {
            c.created_ns == wanted.created_ns && c.base == wanted.base && c.compression == wanted.compression
        });
        let layer = match cached {
            Some(c) if transport.has_blob(&c.layer.digest)? => {
                debug!(step, digest = c.layer.digest, "layer already in the target");
                report.layers_skipped += 1;
                c.layer
            }
            _ => {
                let tmp = tempfile::Builder::new()
                    .prefix("layer-")
                    .tempfile_in(&tmp_dir)
                    .context(format_args!("cannot write into {}", tmp_dir.display()))?;
                // The backend's own list when it can tell (API 1.2); else a
                // walk of both trees, which trusts the files the build did
                // not touch when the step was cloned from this very base
                // (not from an earlier result of the same id).
                let mut changes = match base {
                    Some(b) => match store.result_changes(step, &b.step)? {
                        Some(changes) => Some(layer_changes(changes)),
                        None => match link.cloned.filter(|cloned| b.created < *cloned) {
                            Some(cloned) => Some(diff_trees_after_clone(tree, &b.tree, cloned)?),
                            None => None,
                        },
                    },
                    None => None,
                };
                // Made into a file and, where the transport can, sent as it
                // is made; the file is what is sent again if that failed.
                let mut made = None;
                let streamed = transport.put_blob_while_made(&mut |upload| {
                    let mut out = Counting {
                        inner: Tee {
                            file: BufWriter::with_capacity(1 << 20, tmp.as_file()),
                            copy: Some(upload),
                        },
                        transfer: &mut transfer,
                    };
                    let blob = write_layer(
                        tree,
                        base.map(|b| b.tree.as_path()),
                        changes.take(),
                        compression,
                        &mut out,
                    )?;
                    out.flush().context("cannot write a layer")?;
                    made = Some(blob);
                    Ok(())
                })?;
                let blob = made.ok_or_else(|| StoreError::other("the layer was not made"))?;
                let layer = LayerDesc {
                    digest: blob.digest,
                    size: blob.size,
                    diff_id: blob.diff_id,
                    media_type: blob.media_type,
                };
                let sent = match streamed {
                    Some((digest, size)) if digest == layer.digest && size == layer.size => true,
                    Some((digest, _)) => {
                        warn!(digest, layer = layer.digest, "the blob sent as it was made is not the layer");
                        false
                    }
                    None => false,
                };
                if sent {
                    report.layers_written += 1;
                    report.bytes_written += layer.size;
                } else if transport.has_blob(&layer.digest)? {
                    report.layers_skipped += 1;
                } else {
                    let desc = super::image::descriptor(&layer.media_type, layer.size, &layer.digest)?;
                    transport.put_blob(&desc, tmp.path())?;
                    report.layers_written += 1;
                    report.bytes_written += layer.size;
                }
                write_cache(&cache_file, &CachedLayer { layer: layer.clone(), ..wanted });
                layer
            }
        };
        transfer.layer_done();
        steps.push(Step { id: step.clone(), created_ns: *created_ns, layer });
    }
    let config = config_json(&steps)?;
    let config_digest = sha256_digest(&config);
    if !transport.has_blob(&config_digest)? {
        let mut tmp = tempfile::Builder::new()
            .prefix("config-")
            .tempfile_in(&tmp_dir)
            .context(format_args!("cannot write into {}", tmp_dir.display()))?;
        tmp.write_all(&config).context("cannot write the image config")?;
        let desc = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::ImageConfig,
            config.len() as u64,
            parse_digest(&config_digest)?,
        );
        transport.put_blob(&desc, tmp.path())?;
        report.bytes_written += config.len() as u64;
    }
    let manifest = manifest_json(id, &config, &steps)?;
    transport.put_manifest(&tag, OCI_MANIFEST, &manifest)?;
    report.bytes_written += manifest.len() as u64;
    transport.finish()?;
    report.digest = sha256_digest(&manifest);
    Ok(report)
}

/// Writes to a file, and to a copy for as long as the copy takes it (an
/// upload that stopped is done again from the file).
struct Tee<'a, F: Write> {
    file: F,
    copy: Option<&'a mut dyn Write>,
}

impl<F: Write> Write for Tee<'_, F> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(bytes)?;
        if let Some(copy) = &mut self.copy {
            if copy.write_all(&bytes[..n]).is_err() {
                self.copy = None;
            }
        }
        Ok(n)
    }

    /// The file only: the copy sends what it holds when it is complete.
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One step of a chain, as its record has it.
struct Link {
    step: String,
    tree: PathBuf,
    /// When it was committed (Unix nanoseconds; 0 if unrecorded).
    created: i64,
    /// When its tree, a clone of its base, was handed to the build.
    cloned: Option<i64>,
}

/// The chain of `id`, first base first.
fn chain(store: &BlockingStore, id: &str) -> Result<Vec<Link>, StoreError> {
    let Some(tree) = store.result(id)? else {
        return Err(StoreError::not_found(format!("no result `{id}` to export")));
    };
    let records = store.records()?;
    let mut chain = Vec::new();
    let mut next = Some((id.to_string(), tree));
    while let Some((step, tree)) = next.take() {
        let record = records.get(&step)?;
        let (created, cloned) = record.as_ref().map_or((0, None), |r| (r.created, r.cloned));
        // A base deleted since: the chain starts at this step, a whole-tree layer.
        if let Some(base) = record.and_then(|r| r.base) {
            if chain.len() < MAX_CHAIN {
                if let Some(base_tree) = store.result(&base)? {
                    next = Some((base, base_tree));
                }
            }
        }
        chain.push(Link { step, tree, created, cloned });
    }
    chain.reverse();
    Ok(chain)
}

/// The backend's changes in the layer module's terms.
fn layer_changes(changes: Vec<store_api::Change>) -> Vec<super::layer::Change> {
    use super::layer::ChangeKind as Kind;
    changes
        .into_iter()
        .map(|c| super::layer::Change {
            kind: match c.kind {
                store_api::ChangeKind::Added => Kind::Added,
                store_api::ChangeKind::Modified => Kind::Modified,
                store_api::ChangeKind::Deleted => Kind::Deleted,
            },
            path: c.path,
        })
        .collect()
}

/// Temporary layers older than a day are a killed export's: a layer is
/// written and handed to the transport within minutes.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if old.is_some_and(|age| age > day) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Remembers that `layer` is step `step`'s layer on `base` (an import
/// applied it), so that exporting a child of an imported step does not
/// make the step's layer again: the blob it was built from is the layer,
/// and the registry it came from holds it. Layers of other media types
/// (plain tar, Docker's) are not remembered.
pub(super) fn remember_layer(store: &BlockingStore, step: &str, base: Option<&str>, layer: LayerDesc) {
    let Some(compression) =
        [Compression::Zstd, Compression::Gzip].into_iter().find(|c| c.media_type() == layer.media_type)
    else {
        return;
    };
    let created_ns = match store.records().and_then(|r| r.get(step)) {
        Ok(Some(record)) => record.created,
        _ => return,
    };
    let dir = store.root().join(META_DIR).join("oci").join("layers");
    if fs::create_dir_all(&dir).is_err() {
        return;
    }
    let cached = CachedLayer {
        created_ns,
        base: base.map(str::to_string),
        compression: compression_name(compression).to_string(),
        layer,
    };
    write_cache(&dir.join(format!("{step}.json")), &cached);
}

fn read_cache(path: &Path) -> Option<CachedLayer> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Remembers a step's layer; failing to is only slower next time.
fn write_cache(path: &Path, cached: &CachedLayer) {
    let written = serde_json::to_vec(cached)
        .map_err(|e| StoreError::other(e.to_string()))
        .and_then(|bytes| crate::store::write_atomic(path, &bytes));
    if let Err(e) = written {
        warn!("cannot remember a layer in {}: {e}", path.display());
    }
}
