//! The `docker://` transport against a real registry (Debian's
//! docker-registry, started by `test_support::Registry`): blobs and
//! manifests put, found and read back; auth and TLS; a registry killed
//! mid-push and mid-pull; a corrupted blob; images that skopeo pushed and
//! that skopeo reads.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};
use snapstore::oci::registry::{RegistrySettings, RegistryTransport};
use snapstore::oci::ImageTransport;
use test_support::{installed, run, skip, Registry};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn insecure() -> RegistrySettings {
    RegistrySettings { insecure: true, ..Default::default() }
}

fn connect(registry: &Registry, repository: &str, settings: &RegistrySettings) -> RegistryTransport {
    RegistryTransport::connect(&registry.host, repository, settings)
        .unwrap_or_else(|e| panic!("connect: {e}\nregistry log: {}", registry.log()))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A blob file holding `bytes`, and its descriptor.
fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> (Descriptor, PathBuf) {
    support::blobs::blob_file(dir, media_type, bytes)
}

/// Pseudo-random bytes (incompressible, distinct per seed).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn read_all(transport: &mut RegistryTransport, desc: &Descriptor) -> Result<Vec<u8>, String> {
    let mut reader = transport.get_blob(desc).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
    // Reading again after the end is still the end (not a second digest
    // check on nothing).
    assert_eq!(reader.read(&mut [0u8; 8]).map_err(|e| e.to_string())?, 0);
    Ok(out)
}

/// A one-layer image (an uncompressed tar of one file): its manifest's
/// bytes, after its blobs are pushed through `transport`.
fn push_small_image(transport: &mut RegistryTransport, dir: &Path, content: &str) -> Vec<u8> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), content).unwrap();
    let tar = dir.join("layer.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&tree).arg("hello.txt")).unwrap();
    let layer_bytes = std::fs::read(&tar).unwrap();
    let (layer, layer_file) = blob(dir, LAYER_TYPE, &layer_bytes);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_bytes)]},
    });
    let (config, config_file) = blob(dir, CONFIG_TYPE, config.to_string().as_bytes());
    for (desc, file) in [(&layer, &layer_file), (&config, &config_file)] {
        if !transport.has_blob(desc.digest().as_ref()).unwrap() {
            transport.put_blob(desc, file).unwrap();
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config.digest().to_string(), "size": config.size()},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer.digest().to_string(), "size": layer.size()}],
    });
    manifest.to_string().into_bytes()
}

#[test]
fn blobs_and_manifests_round_trip() {
    let Some(registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&registry, "ci/results", &insecure());
    assert_eq!(t.describe(), format!("docker://{}/ci/results", registry.host));

    // A blob of several chunks (4 MiB each), and an empty one.
    let big = noise(9 << 20, 1);
    let (big_desc, big_file) = blob(work.path(), LAYER_TYPE, &big);
    assert!(!t.has_blob(big_desc.digest().as_ref()).unwrap());
    t.put_blob(&big_desc, &big_file).unwrap();
    assert!(t.has_blob(big_desc.digest().as_ref()).unwrap());
    assert!(registry.blob_file(big_desc.digest().as_ref()).exists());
    assert_eq!(read_all(&mut t, &big_desc).unwrap(), big);

    // Manifests by tag and by digest, with their media type.
    let manifest = push_small_image(&mut t, work.path(), "hello\n");
    assert_eq!(t.get_manifest("step-1").unwrap(), None);
    t.put_manifest("step-1", MANIFEST_TYPE, &manifest).unwrap();
    assert_eq!(t.get_manifest("step-1").unwrap(), Some((MANIFEST_TYPE.to_string(), manifest.clone())));
    assert_eq!(
        t.get_manifest(&sha256(&manifest)).unwrap(),
        Some((MANIFEST_TYPE.to_string(), manifest.clone()))
    );
    assert_eq!(registry.stored_tags("ci/results"), vec!["step-1".to_string()]);
    assert_eq!(t.tags().unwrap(), vec!["step-1".to_string()]);

    // A repository nobody pushed to: no manifest, no tags.
    let mut empty = connect(&registry, "ci/nothing", &insecure());
    assert_eq!(empty.get_manifest("step-1").unwrap(), None);
    assert_eq!(empty.tags().unwrap(), Vec::<String>::new());
}

/// A blob file that cannot be read is reported as ours, at once: not
/// retried and blamed on the registry's connection.
#[test]
fn a_blob_file_that_cannot_be_read_is_a_local_error() {
    let Some(registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&registry, "ci/results", &insecure());
    let (desc, file) = blob(work.path(), LAYER_TYPE, b"layer");
    std::fs::remove_file(&file).unwrap();
    let err = t.put_blob(&desc, &file).unwrap_err();
    assert!(err.message().starts_with(&format!("cannot read {}", file.display())), "{}", err.message());
    assert!(!err.message().contains(&registry.host), "{}", err.message());
}

/// What `remote prune` relies on: a manifest deleted by the digest it
/// was judged by takes its tag along only if the tag still names it.
#[test]
fn deleting_a_manifest_by_digest_spares_a_newer_push_of_its_tag() {
    let Some(registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&registry, "ci/results", &insecure());
    let old = push_small_image(&mut t, &work.path().join("old"), "old\n");
    t.put_manifest("step", MANIFEST_TYPE, &old).unwrap();
    // Pushed again meanwhile, with other content.
    let new = push_small_image(&mut t, &work.path().join("new"), "new\n");
    t.put_manifest("step", MANIFEST_TYPE, &new).unwrap();
    assert_ne!(sha256(&old), sha256(&new));

    t.delete_manifest_digest(&sha256(&old)).unwrap();
    assert_eq!(t.get_manifest("step").unwrap(), Some((MANIFEST_TYPE.to_string(), new.clone())));
    assert_eq!(t.get_manifest(&sha256(&old)).unwrap(), None);
    // Gone already: not an error.
    t.delete_manifest_digest(&sha256(&old)).unwrap();
    // By digest, the tag's own manifest takes the tag along.
    t.delete_manifest_digest(&sha256(&new)).unwrap();
    assert_eq!(t.get_manifest("step").unwrap(), None);
    assert_eq!(t.tags().unwrap(), Vec::<String>::new());
}

#[test]
fn bad_names_are_refused_before_any_request() {
    for (host, repo) in
        [("127.0.0.1:1", "Upper/case"), ("127.0.0.1:1", "a//b"), ("bad host", "a"), ("h", "../x")]
    {
        let err = RegistryTransport::connect(host, repo, &insecure()).err().expect("refused");
        assert!(err.message().starts_with("invalid"), "{err}");
    }
}

#[test]
fn an_unreachable_registry_is_one_line_naming_it() {
    let Some(mut registry) = Registry::plain() else { return };
    registry.kill();
    let started = std::time::Instant::now();
    let err =
        RegistryTransport::connect(&registry.host, "ci/results", &insecure()).err().expect("unreachable");
    let message = err.message();
    assert!(message.contains(&format!("cannot reach registry {}", registry.host)), "{message}");
    assert!(!message.contains('\n'));
    // Bounded retries: a few seconds, not forever.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// An auth file with `user:password` for `host`.
fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let file = dir.join(format!("auth-{user}-{password}.json"));
    std::fs::write(&file, serde_json::json!({"auths": {host: {"auth": auth}}}).to_string()).unwrap();
    file
}

#[test]
fn auth_and_tls_as_podman_does_them() {
    let Some(registry) = Registry::secured("fleet", "s3cret") else { return };
    let work = tempfile::tempdir().unwrap();
    let right = auth_file(work.path(), &registry.host, "fleet", "s3cret");
    let wrong = auth_file(work.path(), &registry.host, "fleet", "guess");
    let certs = registry.certs_d();

    // The CA trusted through certs.d and the right credentials: it works.
    let trusted =
        RegistrySettings { certs_dir: certs.clone(), auth_file: Some(right.clone()), ..Default::default() };
    let mut t = connect(&registry, "ci/results", &trusted);
    let manifest = push_small_image(&mut t, work.path(), "secret\n");
    t.put_manifest("a", MANIFEST_TYPE, &manifest).unwrap();
    assert!(t.get_manifest("a").unwrap().is_some());

    // Wrong credentials: refused, saying how to log in.
    let settings =
        RegistrySettings { certs_dir: certs.clone(), auth_file: Some(wrong), ..Default::default() };
    let err = RegistryTransport::connect(&registry.host, "ci/results", &settings).err().expect("refused");
    assert!(err.message().contains("401") && err.message().contains("podman login"), "{err}");
    // None at all: refused as well.
    let none = work.path().join("none.json");
    let settings = RegistrySettings { certs_dir: certs.clone(), auth_file: Some(none), ..Default::default() };
    let err = RegistryTransport::connect(&registry.host, "ci/results", &settings).err().expect("refused");
    assert!(err.message().contains("401"), "{err}");

    // The CA not trusted: a TLS failure, naming where the CA goes.
    let empty = work.path().join("empty-certs.d");
    std::fs::create_dir(&empty).unwrap();
    let settings =
        RegistrySettings { certs_dir: Some(empty), auth_file: Some(right.clone()), ..Default::default() };
    let err = RegistryTransport::connect(&registry.host, "ci/results", &settings).err().expect("untrusted");
    assert!(err.message().contains("TLS") && err.message().contains("ca.crt"), "{err}");
    assert!(!err.message().contains('\n'));

    // Insecure: the certificate is not checked.
    let settings = RegistrySettings { insecure: true, auth_file: Some(right), ..Default::default() };
    let mut t = connect(&registry, "ci/results", &settings);
    assert!(t.get_manifest("a").unwrap().is_some());
}

/// Runs `f` on another thread while the registry is killed after `delay`;
/// returns what `f` returned.
fn with_registry_killed<T: Send>(
    registry: &mut Registry,
    delay: Duration,
    restart_after: Option<Duration>,
    f: impl FnOnce() -> T + Send,
) -> T {
    std::thread::scope(|scope| {
        let worker = scope.spawn(f);
        std::thread::sleep(delay);
        registry.kill();
        if let Some(pause) = restart_after {
            std::thread::sleep(pause);
            registry.restart();
        }
        worker.join().unwrap()
    })
}

#[test]
fn a_registry_killed_mid_push_shows_nothing_and_the_next_push_completes() {
    let Some(mut registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let big = noise(96 << 20, 2);
    let (desc, file) = blob(work.path(), LAYER_TYPE, &big);
    drop(big);
    let host = registry.host.clone();
    let result = with_registry_killed(&mut registry, Duration::from_millis(300), None, || {
        let mut t = RegistryTransport::connect(&host, "ci/results", &insecure()).unwrap();
        t.put_blob(&desc, &file).map_err(|e| e.to_string())
    });
    let err = result.expect_err("the registry died mid-push");
    assert!(err.contains(&host) && !err.contains('\n'), "{err}");
    registry.restart();
    let mut t = connect(&registry, "ci/results", &insecure());
    assert!(!t.has_blob(desc.digest().as_ref()).unwrap(), "a half-pushed blob is visible");
    t.put_blob(&desc, &file).unwrap();
    assert!(t.has_blob(desc.digest().as_ref()).unwrap());
    assert_eq!(read_all(&mut t, &desc).unwrap(), std::fs::read(&file).unwrap());
}

#[test]
fn a_registry_killed_mid_pull_fails_in_one_line_or_resumes_once_back() {
    let Some(mut registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let big = noise(64 << 20, 3);
    let (desc, file) = blob(work.path(), LAYER_TYPE, &big);
    let mut t = connect(&registry, "ci/results", &insecure());
    t.put_blob(&desc, &file).unwrap();
    drop(t);

    // Read slowly, so that the kill comes mid-blob.
    let slow_read = |host: &str| -> Result<Vec<u8>, String> {
        let mut t = RegistryTransport::connect(host, "ci/results", &insecure()).map_err(|e| e.to_string())?;
        let mut reader = t.get_blob(&desc).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let host = registry.host.clone();
    // Killed for good: an error naming the registry, no partial success.
    let err = with_registry_killed(&mut registry, Duration::from_millis(150), None, || slow_read(&host))
        .expect_err("the registry died mid-pull");
    assert!(err.contains(&host) && !err.contains('\n'), "{err}");
    // Killed and back within the retries: the download resumes and is whole.
    registry.restart();
    let got = with_registry_killed(
        &mut registry,
        Duration::from_millis(150),
        Some(Duration::from_millis(200)),
        || slow_read(&host),
    )
    .unwrap_or_else(|e| panic!("resumed pull: {e}"));
    assert!(got == big, "the resumed download differs");
}

#[test]
fn a_corrupted_blob_in_the_registry_is_refused_by_digest() {
    let Some(registry) = Registry::plain() else { return };
    let work = tempfile::tempdir().unwrap();
    let bytes = noise(1 << 20, 4);
    let (desc, file) = blob(work.path(), LAYER_TYPE, &bytes);
    let mut t = connect(&registry, "ci/results", &insecure());
    t.put_blob(&desc, &file).unwrap();
    let stored = registry.blob_file(desc.digest().as_ref());
    let mut damaged = bytes.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(&stored, &damaged).unwrap();
    let err = read_all(&mut t, &desc).expect_err("corrupt blob accepted");
    assert!(err.contains("corrupt") && err.contains(&registry.host), "{err}");
}

#[test]
fn skopeo_reads_what_was_pushed_and_pushes_what_we_read() {
    let Some(registry) = Registry::plain() else { return };
    if !installed("skopeo") {
        return skip("skopeo is not installed");
    }
    let work = tempfile::tempdir().unwrap();
    let mut t = connect(&registry, "ci/results", &insecure());
    let manifest = push_small_image(&mut t, work.path(), "for skopeo\n");
    t.put_manifest("ours", MANIFEST_TYPE, &manifest).unwrap();

    let image = registry.url("ci/results:ours");
    let raw = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &image])).unwrap();
    assert_eq!(raw.as_bytes(), manifest.as_slice());
    let copy = work.path().join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--src-tls-verify=false", &image])
        .arg(format!("oci:{}:ours", copy.display())))
    .unwrap();
    let layer = serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let copied = copy.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    let copied = std::fs::read(&copied).unwrap_or_else(|e| {
        let listing = run(Command::new("find").arg(&copy)).unwrap_or_default();
        panic!("{}: {e}; the copy holds {listing}", copied.display())
    });
    assert_eq!(sha256(&copied), layer);

    // And back: skopeo pushes the copy under another name; we read it.
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:ours", copy.display()))
        .arg(registry.url("other/image:theirs")))
    .unwrap();
    let mut theirs = connect(&registry, "other/image", &insecure());
    let (media_type, bytes) = theirs.get_manifest("theirs").unwrap().expect("skopeo's manifest");
    assert!(media_type.contains("manifest"), "{media_type}");
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let desc: Descriptor = serde_json::from_value(parsed["layers"][0].clone()).unwrap();
    assert_eq!(sha256(&read_all(&mut theirs, &desc).unwrap()), desc.digest().to_string());
}
