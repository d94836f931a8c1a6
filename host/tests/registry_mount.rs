//! Cross-repository mounts against a real registry, watched through the
//! fault proxy's request log: a blob that another repository of the
//! registry holds is mounted, with no upload session; one it lacks is
//! uploaded as usual, and asking about it opens no session either.

mod support;

use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use snapstore::oci::registry::{RegistrySettings, RegistryTransport};
use snapstore::oci::ImageTransport;
use support::*;
use test_support::fault_proxy::Seen;
use test_support::{FaultProxy, Registry};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

fn blob(dir: &Path, len: usize, seed: u8) -> (Descriptor, PathBuf) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)).collect();
    support::blobs::blob_file(dir, LAYER_TYPE, &bytes)
}

/// Requests that sent a blob's bytes (or opened a session for them) to `repository`.
fn uploads<'a>(log: &'a [Seen], repository: &str) -> Vec<&'a Seen> {
    let prefix = format!("/v2/{repository}/blobs/uploads");
    log.iter().filter(|s| s.path.starts_with(&prefix) && !s.path.contains("mount=")).collect()
}

fn mounts<'a>(log: &'a [Seen], repository: &str) -> Vec<&'a Seen> {
    let prefix = format!("/v2/{repository}/blobs/uploads");
    log.iter().filter(|s| s.path.starts_with(&prefix) && s.path.contains("mount=")).collect()
}

#[test]
fn a_blob_another_repository_holds_is_mounted_not_uploaded() {
    let Some(registry) = Registry::plain() else { return };
    let proxy = FaultProxy::start(&registry.host);
    let work = tempfile::tempdir().unwrap();
    let plain = RegistrySettings { insecure: true, ..Default::default() };
    let (base_layer, base_file) = blob(work.path(), 3 << 20, 1);
    let mut base = RegistryTransport::connect(&proxy.host, "base/debian", &plain).unwrap();
    base.put_blob(&base_layer, &base_file).unwrap();

    let settings = RegistrySettings { mount_from: vec!["base/debian".into()], ..plain };
    let mut t = RegistryTransport::connect(&proxy.host, "ci/results", &settings).unwrap();
    let before = proxy.log().len();
    t.put_blob(&base_layer, &base_file).unwrap();
    let log = proxy.log()[before..].to_vec();
    let mounted = mounts(&log, "ci/results");
    assert_eq!(mounted.len(), 1, "{log:#?}");
    assert!(mounted[0].path.contains("from=base%2Fdebian") && mounted[0].status == 201, "{log:#?}");
    assert!(uploads(&log, "ci/results").is_empty(), "uploaded though mountable: {log:#?}");
    assert!(t.has_blob(base_layer.digest().as_ref()).unwrap());

    // A blob the source lacks: asked about, not mounted, uploaded.
    let (own_layer, own_file) = blob(work.path(), 1 << 20, 2);
    let before = proxy.log().len();
    t.put_blob(&own_layer, &own_file).unwrap();
    let log = proxy.log()[before..].to_vec();
    assert!(mounts(&log, "ci/results").is_empty(), "{log:#?}");
    assert!(
        log.iter().any(|s| s.method == "HEAD" && s.path.starts_with("/v2/base/debian/blobs/")),
        "{log:#?}"
    );
    assert!(!uploads(&log, "ci/results").is_empty(), "{log:#?}");
    assert!(t.has_blob(own_layer.digest().as_ref()).unwrap());
}

#[test]
fn exporting_to_another_repository_of_the_remote_mounts_its_blobs() {
    let Some(registry) = Registry::plain() else { return };
    require_plugin("rsync");
    let proxy = FaultProxy::start(&registry.host);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = format!(
        "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[remote]\nurl = \"{}\"\ninsecure = true\n",
        proxy.url("ci/results")
    );
    let a = Fixture::with_config(dir, &root, &text);
    a.ok(&["build", "x", "--", "sh", "-c", "head -c 2000000 /dev/urandom > big"]);
    a.ok(&["push", "x"]);

    let before = proxy.log().len();
    a.ok(&["export", "x", &proxy.url("releases/app:x")]);
    let log = proxy.log()[before..].to_vec();
    // The layer and the config, mounted from the remote's repository.
    let mounted = mounts(&log, "releases/app");
    assert_eq!(mounted.len(), 2, "{log:#?}");
    assert!(mounted.iter().all(|s| s.status == 201 && s.path.contains("from=ci%2Fresults")), "{log:#?}");
    assert!(uploads(&log, "releases/app").is_empty(), "uploaded though mountable: {log:#?}");
    assert_eq!(registry.stored_tags("releases/app"), vec!["x"]);
}
