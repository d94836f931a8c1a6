//! Sharing results through a registry (the config's `[remote]`): push and
//! pull by id, pull on a miss, push after a build with a "not pushed"
//! marker when that fails, and the remote's housekeeping.
//!
//! A result is the image `REMOTE:TAG`, TAG being the id's tag
//! ([`tag_for_id`]); pushing is an export to it and pulling an import from
//! it, so pulling downloads only the layers of steps this store lacks, and
//! an interrupted pull leaves no result. The registry makes a manifest
//! visible only once complete, so two workers pushing the same id both
//! succeed with one complete image, and a pull sees all of it or nothing.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};
use store_api::{ErrorKind, IoContext, StoreError};
use tracing::warn;

use crate::config::{PullPolicy, PushPolicy, RemoteConfig};
use crate::names::check_id;
use crate::oci::registry::{self, RegistrySettings, RegistryTransport};
use crate::oci::tags::tag_for_id;
use crate::oci::verify::hex;
use crate::oci::{ExportOptions, ExportReport, ImageTransport, ImportReport};
use crate::store::{BlockingStore, META_DIR};

/// Makes the remote's registry settings (insecure, certs_dir) those used
/// for its registry in this process, also by `export` and `import`; blobs
/// the remote's repository holds are mounted into other repositories of
/// its registry rather than uploaded again.
pub fn configure(remote: &RemoteConfig) {
    registry::configure(
        &remote.registry,
        RegistrySettings {
            insecure: remote.insecure,
            certs_dir: remote.certs_dir.clone(),
            // An export to another repository of the remote's registry
            // mounts what the remote already holds.
            mount_from: vec![remote.repository.clone()],
            ..Default::default()
        },
    );
}

/// The image reference of result `id` on the remote.
pub fn image_of(remote: &RemoteConfig, id: &str) -> String {
    format!("{}:{}", remote.url(), tag_for_id(id))
}

/// Pushes result `id` to the remote (only the blobs the registry lacks),
/// and clears its "not pushed" mark. Counts as a use of the result.
pub fn push(store: &BlockingStore, remote: &RemoteConfig, id: &str) -> Result<ExportReport, StoreError> {
    check_id(id)?;
    configure(remote);
    if store.result(id)?.is_none() {
        return Err(StoreError::not_found(format!("no result `{id}` to push")));
    }
    let report = store.export(id, &image_of(remote, id), ExportOptions::default())?;
    clear_pending(store, id)?;
    Ok(report)
}

/// Pulls result `id` from the remote, applying only the layers of the steps
/// this store lacks. Counts as a use of the result.
pub fn pull(store: &BlockingStore, remote: &RemoteConfig, id: &str) -> Result<ImportReport, StoreError> {
    // Checked before it becomes a tag: its error names the id, not the image.
    check_id(id)?;
    configure(remote);
    let report = store.import(id, &image_of(remote, id)).map_err(|e| {
        if e.kind() == ErrorKind::NOT_FOUND {
            StoreError::not_found(format!("no result `{id}` here nor on the remote {}", remote.url()))
        } else {
            e
        }
    })?;
    store.result(id)?;
    Ok(report)
}

/// With `pull = "on-miss"`, pulls `id` when this store lacks it. Ok(true)
/// when it was pulled; Ok(false) when it is here already, pulling is off,
/// or the remote lacks it too. Other failures (unreachable, refused) are
/// errors: the caller would otherwise rebuild without saying why.
pub fn pull_on_miss(
    store: &BlockingStore,
    remote: Option<&RemoteConfig>,
    id: &str,
) -> Result<bool, StoreError> {
    let Some(remote) = remote.filter(|r| r.pull == PullPolicy::OnMiss) else { return Ok(false) };
    if store.result(id)?.is_some() {
        return Ok(false);
    }
    match pull(store, remote, id) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NOT_FOUND => Ok(false),
        // Pulled meanwhile by another process.
        Err(e) if e.kind() == ErrorKind::ALREADY_EXISTS => Ok(true),
        Err(e) => Err(e.context(format_args!("pulling `{id}` from the remote"))),
    }
}

/// The "not pushed" mark a build with `push = "after-build"` writes
/// before it runs: a snapstore killed between the commit and the push
/// leaves the result marked, for `push --pending`.
pub struct MarkBeforeBuild {
    /// Written by this build (not there before), or why it could not be.
    made: Result<bool, StoreError>,
}

/// Marks `id` "not pushed" before its build, when the remote pushes after
/// builds; `None` otherwise.
pub fn mark_before_build(
    store: &BlockingStore,
    remote: Option<&RemoteConfig>,
    id: &str,
) -> Option<MarkBeforeBuild> {
    remote.filter(|r| r.push == PushPolicy::AfterBuild)?;
    // The id names a file: the build refuses a bad one, marked or not.
    check_id(id).ok()?;
    let existed = pending_dir(store).join(id).exists();
    Some(MarkBeforeBuild { made: mark_pending(store, id).map(|()| !existed) })
}

/// After a build that committed nothing: removes the mark it wrote, unless
/// result `id` is there all the same (a concurrent build of the same id
/// committed it, and its push clears the mark).
pub fn unmark_failed_build(store: &BlockingStore, id: &str, mark: Option<MarkBeforeBuild>) {
    if let Some(MarkBeforeBuild { made: Ok(true) }) = mark {
        if matches!(store.result(id), Ok(None)) {
            let _ = clear_pending(store, id);
        }
    }
}

/// Pushes the result a build just committed, with `push = "after-build"`
/// (`mark` is from [`mark_before_build`]). A failure never fails the
/// build: the result stays marked "not pushed" (see [`pending`]) and a
/// warning is returned, for `push --pending` to retry.
pub fn push_after_build(
    store: &BlockingStore,
    remote: Option<&RemoteConfig>,
    id: &str,
    mark: Option<MarkBeforeBuild>,
) -> Option<String> {
    // A mark is made only when the remote pushes after builds.
    let (remote, mark) = (remote?, mark?);
    // Pushed even if the mark could not be written (a full disk).
    let err = push(store, remote, id).err()?;
    warn!(id, "push after build failed: {err}");
    Some(match mark.made {
        Ok(_) => format!("result `{id}` kept but not pushed ({err}); `snapstore push --pending` retries"),
        Err(mark_err) => format!(
            "result `{id}` kept but not pushed ({err}), nor marked for `push --pending` ({mark_err}); \
             push it with `snapstore push {id}`"
        ),
    })
}

/// The results marked "not pushed", sorted.
pub fn pending(store: &BlockingStore) -> Result<Vec<String>, StoreError> {
    let dir = pending_dir(store);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("cannot read {}", dir.display()), &e)),
    };
    // Only marks snapstore wrote: a stray file is no id.
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| check_id(name).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// What `push --pending` did with one result.
#[derive(Debug, Serialize)]
pub struct PendingPush {
    pub id: String,
    pub pushed: bool,
    pub error: Option<String>,
}

/// Pushes every result marked "not pushed"; those deleted since are
/// unmarked. Goes on after a failure, and reports each.
pub fn push_pending(store: &BlockingStore, remote: &RemoteConfig) -> Result<Vec<PendingPush>, StoreError> {
    let mut done = Vec::new();
    for id in pending(store)? {
        let outcome = match store.result(&id) {
            // Deleted since: nothing to push.
            Ok(None) => match clear_pending(store, &id) {
                Ok(()) => continue,
                Err(e) => Err(e),
            },
            Ok(Some(_)) => push(store, remote, &id),
            Err(e) => Err(e),
        };
        done.push(PendingPush { pushed: outcome.is_ok(), error: outcome.err().map(|e| e.to_string()), id });
    }
    Ok(done)
}

fn pending_dir(store: &BlockingStore) -> PathBuf {
    store.root().join(META_DIR).join("remote").join("not-pushed")
}

fn mark_pending(store: &BlockingStore, id: &str) -> Result<(), StoreError> {
    let dir = pending_dir(store);
    fs::create_dir_all(&dir).context(format_args!("cannot create {}", dir.display()))?;
    fs::write(dir.join(id), b"")
        .context(format_args!("cannot mark `{id}` as not pushed in {}", dir.display()))
}

fn clear_pending(store: &BlockingStore, id: &str) -> Result<(), StoreError> {
    let file = pending_dir(store).join(id);
    match fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io(format!("cannot clear the mark {}", file.display()), &e))
        }
        _ => Ok(()),
    }
}

/// One image on the remote.
#[derive(Debug, Serialize)]
pub struct RemoteImage {
    pub tag: String,
    /// The manifest's digest.
    pub digest: String,
    /// The snapstore id, when snapstore pushed it.
    pub id: Option<String>,
    /// Bytes of its config and layers.
    pub size: u64,
    /// When its last step was made (the image config's `created`), in
    /// seconds since the epoch.
    pub created: Option<f64>,
}

fn open(remote: &RemoteConfig) -> Result<RegistryTransport, StoreError> {
    configure(remote);
    RegistryTransport::connect(
        &remote.registry,
        &remote.repository,
        &registry::settings_for(&remote.registry),
    )
}

/// What the remote holds: each tag with its id, size and age.
pub fn list(remote: &RemoteConfig) -> Result<Vec<RemoteImage>, StoreError> {
    let mut transport = open(remote)?;
    let mut images = Vec::new();
    for tag in transport.tags()? {
        let Some((_, bytes)) = transport.get_manifest(&tag)? else { continue };
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let size_of = |d: &serde_json::Value| d["size"].as_u64().unwrap_or(0);
        let layers = manifest["layers"].as_array().map(|l| l.iter().map(size_of).sum()).unwrap_or(0);
        let id = manifest["annotations"][crate::oci::image::ID_ANNOTATION].as_str().map(str::to_string);
        let created = image_created(&mut transport, &manifest["config"]);
        images.push(RemoteImage { tag, digest, id, size: layers + size_of(&manifest["config"]), created });
    }
    Ok(images)
}

/// The `created` time of an image's config, read from the registry.
fn image_created(transport: &mut RegistryTransport, config: &serde_json::Value) -> Option<f64> {
    let desc: oci_spec::image::Descriptor = serde_json::from_value(config.clone()).ok()?;
    if desc.size() > 1 << 20 {
        return None;
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut transport.get_blob(&desc).ok()?, &mut bytes).ok()?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let created = humantime::parse_rfc3339_weak(config["created"].as_str()?.get(..19)?).ok()?;
    Some(created.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
}

/// Deletes the remote's images made longer than `older_than` ago (the
/// registry's garbage collection then frees their blobs). Returns the tags
/// deleted (with `dry_run`, those that would be).
pub fn prune(remote: &RemoteConfig, older_than: Duration, dry_run: bool) -> Result<Vec<String>, StoreError> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut transport = open(remote)?;
    let mut deleted = Vec::new();
    for image in list(remote)? {
        let Some(created) = image.created else { continue };
        if now - created < older_than.as_secs_f64() {
            continue;
        }
        // By the digest that was judged: a push of the tag since then is a
        // new manifest, and stays.
        if !dry_run {
            transport.delete_manifest_digest(&image.digest)?;
        }
        deleted.push(image.tag);
    }
    Ok(deleted)
}
