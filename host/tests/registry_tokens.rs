//! The `docker://` transport against a real registry with token auth
//! (`auth: token`): a token service on 127.0.0.1 (test_support's
//! `TokenService`) hands out short-lived RS256 JWTs that the registry
//! verifies against the service's certificate. Pushes and pulls that
//! outlive a token get a new one; a token the registry refuses is renewed
//! once; wrong credentials are one line.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::image::Descriptor;
use snapstore::oci::registry::{RegistrySettings, RegistryTransport};
use snapstore::oci::ImageTransport;
use test_support::{Fault, FaultProxy, Registry};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REPO: &str = "ci/results";
/// How long a token lasts.
const LIFETIME: Duration = Duration::from_secs(2);

/// An auth file with `user:password` for `host`.
fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let file = dir.join(format!("auth-{user}-{password}.json"));
    std::fs::write(&file, serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()).unwrap();
    file
}

fn settings(auth_file: PathBuf) -> RegistrySettings {
    RegistrySettings { insecure: true, auth_file: Some(auth_file), ..Default::default() }
}

/// A blob file of `len` bytes made from `seed`, and its descriptor.
fn blob(dir: &Path, len: usize, seed: u8) -> (Descriptor, PathBuf) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    support::blobs::blob_file(dir, LAYER_TYPE, &bytes)
}

fn manifest(config: &Descriptor, layers: &[&Descriptor]) -> Vec<u8> {
    let d = |desc: &Descriptor| serde_json::json!({"mediaType": LAYER_TYPE, "digest": desc.digest().to_string(), "size": desc.size()});
    let layers: Vec<_> = layers.iter().map(|l| d(l)).collect();
    serde_json::json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": d(config), "layers": layers})
        .to_string()
        .into_bytes()
}

fn read_all(t: &mut RegistryTransport, desc: &Descriptor) -> Vec<u8> {
    let mut out = Vec::new();
    t.get_blob(desc).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn a_push_and_pull_that_outlive_their_token_get_a_new_one() {
    let Some(registry) = Registry::with_tokens("fleet", "s3cret", LIFETIME) else { return };
    let tokens = registry.token_service().unwrap();
    let work = tempfile::tempdir().unwrap();
    let auth = auth_file(work.path(), &registry.host, "fleet", "s3cret");
    let mut t = RegistryTransport::connect(&registry.host, REPO, &settings(auth))
        .unwrap_or_else(|e| panic!("connect: {e}\nregistry log: {}", registry.log()));
    let (first, first_file) = blob(work.path(), 6 << 20, 1);
    t.put_blob(&first, &first_file).unwrap();
    let before = tokens.issued();
    assert!(before >= 1);

    // The token runs out between the blobs.
    std::thread::sleep(LIFETIME + Duration::from_secs(1));
    let (second, second_file) = blob(work.path(), 1 << 20, 2);
    assert!(!t.has_blob(second.digest().as_ref()).unwrap());
    t.put_blob(&second, &second_file).unwrap();
    t.put_manifest("a", MANIFEST_TYPE, &manifest(&second, &[&first])).unwrap();
    assert!(tokens.issued() > before, "no new token after the first expired");
    assert_eq!(registry.stored_tags(REPO), vec!["a"]);

    // A pull, after the tokens ran out again.
    std::thread::sleep(LIFETIME + Duration::from_secs(1));
    let before = tokens.issued();
    assert!(t.get_manifest("a").unwrap().is_some());
    assert!(read_all(&mut t, &first) == std::fs::read(&first_file).unwrap());
    assert!(tokens.issued() > before, "no new token for the pull");

    // Deleting goes through the token service as well.
    t.delete_manifest("a").unwrap_or_else(|e| panic!("delete with token auth: {e}"));
    assert_eq!(t.get_manifest("a").unwrap(), None);
}

/// A registry with token auth behind a fault proxy, a transport to it
/// through the proxy, and one blob of 1 MiB pushed.
struct Proxied {
    registry: Registry,
    proxy: FaultProxy,
    _work: tempfile::TempDir,
    t: RegistryTransport,
    layer: Descriptor,
    file: PathBuf,
}

fn proxied(seed: u8) -> Option<Proxied> {
    let registry = Registry::with_tokens("fleet", "s3cret", Duration::from_secs(60))?;
    let proxy = FaultProxy::start(&registry.host);
    let work = tempfile::tempdir().unwrap();
    let auth = auth_file(work.path(), &proxy.host, "fleet", "s3cret");
    let mut t = RegistryTransport::connect(&proxy.host, REPO, &settings(auth))
        .unwrap_or_else(|e| panic!("connect: {e}\nregistry log: {}", registry.log()));
    let (layer, file) = blob(work.path(), 1 << 20, seed);
    t.put_blob(&layer, &file).unwrap();
    Some(Proxied { registry, proxy, _work: work, t, layer, file })
}

#[test]
fn a_token_the_registry_refuses_is_renewed_once_then_reported() {
    let Some(Proxied { registry, proxy, _work, mut t, layer, .. }) = proxied(3) else { return };
    let tokens = registry.token_service().unwrap();

    // The registry refuses a token that the client still thinks valid (it
    // expired early, or was revoked): a new token, and it goes through.
    let before = tokens.issued();
    proxy.inject("PUT /v2/ci/results/manifests/", Fault::Unauthorized(tokens.realm.clone()), 1);
    t.put_manifest("a", MANIFEST_TYPE, &manifest(&layer, &[&layer])).unwrap();
    assert!(tokens.issued() > before, "the refused token was not renewed");
    assert_eq!(registry.stored_tags(REPO), vec!["a"]);

    // Refused even with a fresh token: one line, nothing visible.
    proxy.inject("PUT /v2/ci/results/manifests/", Fault::Unauthorized(tokens.realm.clone()), 1000);
    let err = t.put_manifest("b", MANIFEST_TYPE, &manifest(&layer, &[&layer])).expect_err("401 accepted");
    let err = err.to_string();
    assert!(err.contains("401") && err.contains(&proxy.host) && !err.contains('\n'), "{err}");
    assert_eq!(proxy.faults_injected(), 3, "{:#?}", proxy.log());
    assert_eq!(registry.stored_tags(REPO), vec!["a"]);
}

/// A download cut off, then refused on its resumption (its token ran out
/// meanwhile): a fresh token, and it resumes.
#[test]
fn a_download_resumed_after_its_token_ran_out_gets_a_new_one() {
    let Some(Proxied { registry, proxy, _work, mut t, layer, file }) = proxied(4) else { return };
    let tokens = registry.token_service().unwrap();

    let before = tokens.issued();
    let get = format!("GET /v2/{REPO}/blobs/{}", layer.digest());
    proxy.inject(&get, Fault::DropAfter(100_000), 1);
    proxy.inject(&get, Fault::Unauthorized(tokens.realm.clone()), 1);
    assert!(read_all(&mut t, &layer) == std::fs::read(&file).unwrap());
    assert!(tokens.issued() > before, "no new token for the resumption");
    assert_eq!(proxy.faults_injected(), 2, "{:#?}", proxy.log());
}

#[test]
fn wrong_or_missing_credentials_for_the_token_service_are_one_line() {
    let Some(registry) = Registry::with_tokens("fleet", "s3cret", LIFETIME) else { return };
    let tokens = registry.token_service().unwrap();
    let work = tempfile::tempdir().unwrap();
    for auth in [auth_file(work.path(), &registry.host, "fleet", "guess"), work.path().join("none.json")] {
        let refused = tokens.refused();
        let err = RegistryTransport::connect(&registry.host, REPO, &settings(auth)).err().expect("refused");
        let err = err.to_string();
        assert!(err.contains("401") && err.contains("podman login"), "{err}");
        assert!(err.contains(&registry.host) && !err.contains('\n'), "{err}");
        assert!(tokens.refused() > refused, "the token service was not asked");
    }
    assert_eq!(tokens.issued(), 0);
}
