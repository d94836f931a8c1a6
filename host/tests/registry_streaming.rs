//! Blobs uploaded while they are made (`put_blob_while_made`), against a
//! real registry behind the fault proxy: the blob arrives under the digest
//! of what was written; a maker that fails leaves no blob; an upload that
//! fails is left to `put_blob`. And a pulled chain pushed back from the
//! puller's store uploads none of its layers.

mod support;

use std::io::Read;

use sha2::{Digest, Sha256};
use snapstore::oci::registry::{RegistrySettings, RegistryTransport};
use snapstore::oci::ImageTransport;
use store_api::StoreError;
use support::*;
use test_support::fault_proxy::Fault;
use test_support::{FaultProxy, Registry};

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7919) % 251) as u8).collect()
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn transport(proxy: &FaultProxy, repository: &str) -> RegistryTransport {
    let settings = RegistrySettings { insecure: true, ..Default::default() };
    RegistryTransport::connect(&proxy.host, repository, &settings).unwrap()
}

/// A registry behind the fault proxy, and a transport to `ci/stream` through
/// it (the registry lives as long as what is returned).
fn streaming() -> Option<(Registry, FaultProxy, RegistryTransport)> {
    let registry = Registry::plain()?;
    let proxy = FaultProxy::start(&registry.host);
    let t = transport(&proxy, "ci/stream");
    Some((registry, proxy, t))
}

#[test]
fn a_blob_is_stored_as_it_is_made() {
    let Some((_registry, _proxy, mut t)) = streaming() else { return };
    // Over two of oci-client's 4 MiB chunks, written in small pieces.
    let data = bytes(9 << 20);
    let stored = t
        .put_blob_while_made(&mut |w| {
            for piece in data.chunks(100_000) {
                w.write_all(piece).unwrap();
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(stored, Some((sha(&data), data.len() as u64)));
    let desc =
        support::blobs::blob_file(tempfile::tempdir().unwrap().path(), "application/octet-stream", &data).0;
    let mut back = Vec::new();
    t.get_blob(&desc).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data, "the stored blob differs from what was written");
}

#[test]
fn a_blob_whose_making_fails_is_not_stored() {
    let Some((_registry, proxy, mut t)) = streaming() else { return };
    let data = bytes(6 << 20);
    let err = t
        .put_blob_while_made(&mut |w| {
            w.write_all(&data).unwrap();
            Err(StoreError::invalid("the maker gave up"))
        })
        .unwrap_err();
    assert!(err.to_string().contains("the maker gave up"), "{err}");
    assert!(!t.has_blob(&sha(&data)).unwrap(), "a half-made blob was stored");
    // Nothing was committed: no PUT of an upload session.
    let log = proxy.log();
    assert!(
        !log.iter().any(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/")),
        "an upload was committed: {log:#?}"
    );
}

#[test]
fn an_upload_that_fails_is_left_to_put_blob() {
    let Some((_registry, proxy, mut t)) = streaming() else { return };
    proxy.inject("PATCH /v2/ci/stream/blobs/uploads/", Fault::Unavailable, 100);
    let data = bytes(5 << 20);
    let stored = t
        .put_blob_while_made(&mut |w| {
            // As export's writer does: the file is what counts, the upload
            // may stop taking bytes.
            let _ = w.write_all(&data);
            Ok(())
        })
        .unwrap();
    assert_eq!(stored, None);
    assert!(proxy.faults_injected() > 0);
    proxy.clear();
    assert!(!t.has_blob(&sha(&data)).unwrap());
}

#[test]
fn a_pulled_chain_pushed_back_uploads_none_of_its_layers() {
    let Some(registry) = Registry::plain() else { return };
    require_plugin("rsync");
    let proxy = FaultProxy::start(&registry.host);
    let worker = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let text = format!(
            "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[remote]\nurl = \"{}\"\ninsecure = true\n",
            proxy.url(&format!("ci/{name}"))
        );
        Fixture::with_config(dir, &root, &text)
    };
    let a = worker("chain");
    a.ok(&["build", "s1", "--", "sh", "-c", "mkdir d && echo one > d/f && echo two > g"]);
    a.ok(&["build", "s2", "--base", "s1", "--", "sh", "-c", "echo three >> d/f && rm g"]);
    let pushed = a.json(&["push", "s2"]);
    assert_eq!(pushed["layers_written"].as_u64(), Some(2), "{pushed}");

    let b = worker("chain");
    let pulled = b.json(&["pull", "s2"]);
    assert_eq!(pulled["layers_applied"].as_u64(), Some(2), "{pulled}");
    let layers = layer_digests(&proxy, "ci/chain", "s2");
    assert_eq!(layers.len(), 2);
    let before = proxy.log().len();
    let again = b.json(&["push", "s2"]);
    // The layers are the pulled ones, not made again (made again, they
    // would be uploaded as they were made).
    assert_eq!((again["layers_written"].as_u64(), again["layers_skipped"].as_u64()), (Some(0), Some(2)));
    let log = proxy.log()[before..].to_vec();
    let uploaded: Vec<&str> = log
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
        .filter_map(|s| s.path.split("digest=").nth(1))
        .collect();
    assert!(
        !uploaded.iter().any(|d| layers.iter().any(|l| l.replace(':', "%3A") == *d || l == d)),
        "pushing back a pulled chain uploaded a layer: {log:#?}"
    );
    // Only the config may be new: it dates the steps by B's records, to
    // the second, so it is new unless both pushes fell in one second.
    let sessions = log.iter().filter(|s| s.method == "POST" && s.path.contains("/blobs/uploads/")).count();
    assert!(sessions <= 1, "pushing back a pulled chain uploaded more than its config: {log:#?}");
}

/// The layer digests of `repo:tag`'s manifest, as the registry holds it.
fn layer_digests(proxy: &FaultProxy, repo: &str, tag: &str) -> Vec<String> {
    let (_, bytes) = transport(proxy, repo).get_manifest(tag).unwrap().expect("the pushed manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}
