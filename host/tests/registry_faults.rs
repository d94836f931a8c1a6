//! The `docker://` transport against a real registry behind a
//! fault-injecting proxy (`test_support::FaultProxy`): 429 with Retry-After
//! (seconds or an HTTP date), 503, 403 and connections dropped mid-body.
//! Transient faults are retried and the transfer completes; persistent ones
//! fail in one line naming the registry, leaving nothing visible.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};
use snapstore::oci::registry::{RegistrySettings, RegistryTransport};
use snapstore::oci::ImageTransport;
use support::*;
use test_support::{Fault, FaultProxy, Registry};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REPO: &str = "ci/results";

fn insecure() -> RegistrySettings {
    RegistrySettings { insecure: true, ..Default::default() }
}

/// A registry and a proxy in front of it.
fn proxied() -> Option<(Registry, FaultProxy)> {
    let registry = Registry::plain()?;
    let proxy = FaultProxy::start(&registry.host);
    Some((registry, proxy))
}

fn connect(proxy: &FaultProxy, registry: &Registry) -> RegistryTransport {
    RegistryTransport::connect(&proxy.host, REPO, &insecure())
        .unwrap_or_else(|e| panic!("connect: {e}\nregistry log: {}", registry.log()))
}

/// A blob file of `len` pseudo-random bytes, and its descriptor.
fn blob(dir: &Path, len: usize, seed: u64) -> (Descriptor, PathBuf) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    support::blobs::blob_file(dir, LAYER_TYPE, &bytes)
}

fn read_all(t: &mut RegistryTransport, desc: &Descriptor) -> Result<Vec<u8>, String> {
    let mut reader = t.get_blob(desc).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A manifest naming `layer` (and, as config, the same blob: the registry
/// only checks that the blobs exist).
fn manifest(layer: &Descriptor) -> Vec<u8> {
    let d = serde_json::json!({"mediaType": LAYER_TYPE, "digest": layer.digest().to_string(), "size": layer.size()});
    serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": d, "layers": [d]})
        .to_string()
        .into_bytes()
}

fn one_line_naming(err: &str, host: &str, what: &str) {
    assert!(!err.contains('\n'), "more than one line: {err}");
    assert!(err.contains(host), "does not name the registry {host}: {err}");
    assert!(err.contains(what), "does not say {what}: {err}");
}

#[test]
fn transient_faults_are_retried_and_push_and_pull_complete() {
    let Some((registry, proxy)) = proxied() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&proxy, &registry);
    let (desc, file) = blob(work.path(), 9 << 20, 1);
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1));

    // Starting the upload is rate-limited (seconds), a chunk meets a 503,
    // the manifest is rate-limited (an HTTP date).
    proxy.inject("POST /v2/ci/results/blobs/uploads", Fault::TooManyRequests(Some("1".into())), 1);
    proxy.inject("PATCH /v2/ci/results/blobs/uploads", Fault::Unavailable, 1);
    proxy.inject("PUT /v2/ci/results/manifests/", Fault::TooManyRequests(Some(later)), 1);
    t.put_blob(&desc, &file).unwrap_or_else(|e| panic!("push after transient faults: {e}"));
    t.put_manifest("one", MANIFEST_TYPE, &manifest(&desc)).unwrap();
    assert_eq!(proxy.faults_injected(), 3, "{:#?}", proxy.log());
    assert_eq!(registry.stored_tags(REPO), vec!["one"]);

    // The download is cut off twice mid-body and answered 503 once: it
    // resumes and is whole.
    proxy.inject("GET /v2/ci/results/blobs/sha256:", Fault::DropAfter(1 << 20), 2);
    proxy.inject("GET /v2/ci/results/blobs/sha256:", Fault::Unavailable, 1);
    let got = read_all(&mut t, &desc).unwrap_or_else(|e| panic!("pull after transient faults: {e}"));
    assert!(got == std::fs::read(&file).unwrap(), "the resumed download differs");
    assert_eq!(proxy.faults_injected(), 6, "{:#?}", proxy.log());
}

#[test]
fn retry_after_is_honoured() {
    let Some((registry, proxy)) = proxied() else { return };
    let mut t = connect(&proxy, &registry);
    // The request and the client's question about how long to wait.
    proxy.inject("HEAD /v2/ci/results/blobs/", Fault::TooManyRequests(Some("3".into())), 2);
    let started = Instant::now();
    let digest = format!("sha256:{:x}", Sha256::digest(b"nothing"));
    assert!(!t.has_blob(&digest).unwrap());
    let waited = started.elapsed();
    // The pause without a Retry-After would be 2 s.
    assert!(waited >= Duration::from_secs(3), "Retry-After: 3 not honoured ({waited:?})");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
}

#[test]
fn persistent_faults_fail_in_one_line_and_leave_nothing_visible() {
    let Some((registry, proxy)) = proxied() else { return };
    let work = tempfile::tempdir().unwrap();
    let host = proxy.host.clone();
    let mut t = connect(&proxy, &registry);
    let (desc, file) = blob(work.path(), 5 << 20, 2);

    // Rate-limited for good: a bounded wait, then one line.
    proxy.inject("PATCH ", Fault::TooManyRequests(Some("1".into())), 1000);
    let started = Instant::now();
    let err = t.put_blob(&desc, &file).expect_err("pushed through a permanent 429").to_string();
    one_line_naming(&err, &host, "429");
    assert!(err.contains("try again later"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(!registry.blob_file(desc.digest().as_ref()).exists(), "a half-pushed blob is visible");
    proxy.clear();

    // A registry failing for good.
    t.put_blob(&desc, &file).unwrap();
    proxy.inject("PUT /v2/ci/results/manifests/", Fault::Unavailable, 1000);
    let err = t.put_manifest("gone", MANIFEST_TYPE, &manifest(&desc)).expect_err("503 accepted").to_string();
    one_line_naming(&err, &host, "503");
    assert_eq!(registry.stored_tags(REPO), Vec::<String>::new(), "an image is visible");
    proxy.clear();

    // A download dropped every time: one line, never a whole-looking blob.
    proxy.inject("GET /v2/ci/results/blobs/sha256:", Fault::DropAfter(1 << 20), 1000);
    let err = read_all(&mut t, &desc).expect_err("a cut-off download succeeded");
    one_line_naming(&err, &host, "dropped");
}

#[test]
fn forbidden_is_its_own_one_line_error_without_retries() {
    let Some((registry, proxy)) = proxied() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&proxy, &registry);
    let (desc, file) = blob(work.path(), 1 << 20, 3);
    proxy.inject("POST /v2/ci/results/blobs/uploads", Fault::Forbidden, 1000);
    let err = t.put_blob(&desc, &file).expect_err("pushed through a 403").to_string();
    one_line_naming(&err, &proxy.host, "403");
    assert!(err.contains("rights") && err.contains(REPO), "{err}");
    assert_eq!(proxy.faults_injected(), 1, "a 403 was retried: {:#?}", proxy.log());
    assert!(!registry.blob_file(desc.digest().as_ref()).exists());
}

/// The `[remote]` of a store that reaches `registry` through `proxy`.
fn worker(proxy: &FaultProxy) -> Fixture {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = format!(
        "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[remote]\nurl = \"{}\"\ninsecure = true\n",
        proxy.url(REPO)
    );
    Fixture::with_config(dir, &root, &text)
}

#[test]
fn snapstore_push_and_pull_ride_out_transient_faults_and_leave_no_result_after_persistent_ones() {
    let Some((registry, proxy)) = proxied() else { return };
    let a = worker(&proxy);
    a.ok(&["build", "x", "--", "sh", "-c", "head -c 3000000 /dev/urandom > big && echo x > x"]);
    proxy.inject("PATCH ", Fault::Unavailable, 1);
    proxy.inject("PUT /v2/ci/results/manifests/", Fault::TooManyRequests(Some("1".into())), 1);
    a.ok(&["push", "x"]);
    assert_eq!(registry.stored_tags(REPO), vec!["x"]);
    assert_eq!(proxy.faults_injected(), 2, "{:#?}", proxy.log());

    let b = worker(&proxy);
    proxy.inject("GET /v2/ci/results/blobs/sha256:", Fault::DropAfter(100_000), 1);
    b.ok(&["pull", "x"]);
    assert_eq!(b.read_result("x", "x"), "x\n");
    assert_eq!(proxy.faults_injected(), 3, "{:#?}", proxy.log());

    // Every layer download cut off: the pull fails in one line, and no
    // result appears.
    let c = worker(&proxy);
    proxy.inject("GET /v2/ci/results/blobs/sha256:", Fault::DropAfter(100_000), 1000);
    let err = c.fails(&["pull", "x"], 74);
    one_line_naming(err.trim(), &proxy.host, "dropped");
    assert!(c.result("x").is_none(), "a half-pulled result");
}
