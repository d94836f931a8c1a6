//! Import: an OCI (or Docker v2) image as results, through the store's own builds.
//!
//! An image snapstore made names each layer's step: the deepest step the store
//! already holds is the base, and each missing step is built on the one before
//! by applying its layer. Another image imports as a chain of results named by
//! the layers' ChainIDs (`chain-sha256-<hex>`, see [`tags`](super::tags)).
//! Result ID itself is then (when it is not the last step's name) an empty
//! build on the last step. Every blob is checked as it streams (size and
//! sha256) and each layer's diff_id after decompression; a failure discards the
//! build in progress, so an import leaves complete results or none.

use serde::Serialize;
use store_api::{ErrorKind, StoreError};
use tracing::{debug, info};

use super::image::{read_image, ImageToImport};
use super::layer::apply_layer;
use super::reference::ImageRef;
use super::tags::{chain_ids, chain_result_id, tag_for_id};
use super::transfer::{Counting, Transfer};
use super::verify::Verifying;
use super::{open_transport, TransportOptions};
use crate::names::check_id;
use crate::store::BlockingStore;

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub id: String,
    pub reference: String,
    /// The digest of the manifest imported.
    pub digest: String,
    /// The results of the image's chain, first base first (the last is `id`).
    pub results: Vec<String>,
    /// Layers applied (results made).
    pub layers_applied: usize,
    /// Layers whose step the store already held.
    pub layers_skipped: usize,
    /// Bytes of layer blobs read.
    pub bytes_read: u64,
}

/// Imports `image` (the tag of `id` when it names none) as result `id`.
pub fn import(store: &BlockingStore, id: &str, image: &ImageRef) -> Result<ImportReport, StoreError> {
    check_id(id)?;
    if store.result(id)?.is_some() {
        return Err(StoreError::already_exists(format!(
            "result `{id}` already exists; delete it first to import it again"
        )));
    }
    let image = image.with_default_tag(&tag_for_id(id));
    let tag = image.tag().expect("a default tag was given").to_string();
    let mut transport = open_transport(&image, &TransportOptions { write: false })?;
    let name = transport.describe();
    let found = read_image(transport.as_mut(), &tag)?;
    let steps = step_names(&found, &name)?;
    let mut report = ImportReport {
        id: id.to_string(),
        reference: image.to_string(),
        digest: found.digest.clone(),
        results: steps.clone(),
        layers_applied: 0,
        layers_skipped: 0,
        bytes_read: 0,
    };
    // The deepest step already held.
    let mut held = None;
    for (i, step) in steps.iter().enumerate().rev() {
        if store.result(step)?.is_some() {
            held = Some(i);
            break;
        }
    }
    report.layers_skipped = held.map_or(0, |i| i + 1);
    let first = report.layers_skipped;
    // A missing blob is found before anything is made.
    for layer in &found.layers[first..] {
        if !transport.has_blob(layer.desc.digest().as_ref())? {
            return Err(StoreError::invalid(format!(
                "{name}: the image names layer {} but does not hold it",
                layer.desc.digest()
            )));
        }
    }
    let mut made = Vec::new();
    let applied =
        apply_missing(store, transport.as_mut(), &found, &steps, first, id, &image, &mut report, &mut made);
    if let Err(err) = applied {
        // A failed import leaves nothing: the results it made go too.
        for step in made.iter().rev() {
            if let Err(e) = store.delete(step) {
                tracing::warn!(step, "cannot remove a result of a failed import: {e}");
            }
        }
        return Err(err);
    }
    info!(id, image = %image, applied = report.layers_applied, "imported");
    Ok(report)
}

/// Builds each missing step on the one before it; `made` lists what was committed.
#[allow(clippy::too_many_arguments)]
fn apply_missing(
    store: &BlockingStore,
    transport: &mut dyn super::ImageTransport,
    found: &ImageToImport,
    steps: &[String],
    first: usize,
    id: &str,
    image: &ImageRef,
    report: &mut ImportReport,
    made: &mut Vec<String>,
) -> Result<(), StoreError> {
    let name = transport.describe();
    let mut transfer = Transfer::new(format!("importing `{id}` from {image}"), steps.len() - first);
    for i in first..steps.len() {
        let base = i.checked_sub(1).map(|b| steps[b].as_str());
        let step = &steps[i];
        let layer = &found.layers[i];
        let build = match store.begin_build(base, step) {
            Ok(build) => build,
            // Made meanwhile by another import of the same chain.
            Err(e) if e.kind() == ErrorKind::ALREADY_EXISTS => {
                report.layers_skipped += 1;
                continue;
            }
            // The step below was deleted meanwhile: the image is there, so
            // not "not found" (a pull on a miss would take it for absent).
            Err(e) if e.kind() == ErrorKind::NOT_FOUND => {
                return Err(StoreError::busy(format!(
                    "{}; it was deleted during the import: run it again",
                    e.message()
                )))
            }
            Err(e) => return Err(e),
        };
        let what = format!("{name}: layer {}", layer.desc.digest());
        let blob = transport.get_blob(&layer.desc)?;
        let mut verifying =
            Verifying::new(Counting { inner: blob, transfer: &mut transfer }, &layer.desc, &what)?;
        let applied = apply_layer(build.path(), &layer.media_type, &mut verifying, &layer.diff_id);
        // The blob's own digest is checked even when applying failed: a corrupt
        // blob is named as such rather than by the tar error it caused.
        let checked = verifying.finish();
        checked.and(applied.map_err(|e| e.context(&what)))?;
        crate::fault::point(&format!("import:applied-{}", i + 1));
        build.commit()?;
        made.push(step.clone());
        super::export::remember_layer(
            store,
            step,
            base,
            super::image::LayerDesc {
                digest: layer.desc.digest().to_string(),
                size: layer.desc.size(),
                diff_id: layer.diff_id.clone(),
                media_type: layer.media_type.clone(),
            },
        );
        debug!(step, "layer applied");
        report.layers_applied += 1;
        report.bytes_read += layer.desc.size();
        transfer.layer_done();
    }
    match steps.last() {
        Some(last) if last == id => {}
        last => {
            // The image's last step under another name: an empty build on it.
            store.begin_build(last.map(String::as_str), id)?.commit()?;
            report.results.push(id.to_string());
        }
    }
    Ok(())
}

/// The result id of each layer: the steps an image snapstore made names, else
/// the layers' ChainIDs.
fn step_names(image: &ImageToImport, name: &str) -> Result<Vec<String>, StoreError> {
    let named: Option<Vec<String>> = image.layers.iter().map(|l| l.step.clone()).collect();
    match named {
        Some(steps) if image.id.is_some() => {
            for step in &steps {
                check_id(step).map_err(|e| {
                    e.context(format_args!("{name}: a layer's {}", super::image::STEP_ANNOTATION))
                })?;
            }
            let mut unique = steps.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != steps.len() {
                return Err(StoreError::invalid(format!("{name}: two layers name the same snapstore step")));
            }
            Ok(steps)
        }
        _ => {
            let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
            Ok(chain_ids(&diff_ids).iter().map(|c| chain_result_id(c)).collect())
        }
    }
}
