//! The registry fixture itself: it comes up, answers, survives a restart,
//! and its secured form wants TLS and credentials.

use std::process::Command;

use test_support::{installed, run, Registry};

fn skopeo_tags(args: &[&str], image: &str) -> Result<String, String> {
    run(Command::new("skopeo").arg("list-tags").args(args).arg(image))
}

#[test]
fn plain_registry_restarts_on_its_port_and_storage() {
    let Some(mut registry) = Registry::plain() else { return };
    if !installed("skopeo") {
        return test_support::skip("skopeo is not installed");
    }
    let image = registry.url("fixture/empty");
    // An unknown repository: the registry answers 404.
    let err = skopeo_tags(&["--tls-verify=false"], &image).unwrap_err();
    assert!(err.contains("404"), "{err}");
    registry.kill();
    let err = skopeo_tags(&["--tls-verify=false"], &image).unwrap_err();
    assert!(err.contains("connection refused"), "{err}");
    registry.restart();
    let err = skopeo_tags(&["--tls-verify=false"], &image).unwrap_err();
    assert!(!err.contains("connection refused"), "{err}");
}

#[test]
fn secured_registry_wants_its_ca_and_credentials() {
    let Some(registry) = Registry::secured("fleet", "s3cret") else { return };
    if !installed("skopeo") {
        return test_support::skip("skopeo is not installed");
    }
    let image = registry.url("fixture/empty");
    let certs = registry.certs_d().unwrap();
    let certs = certs.to_str().unwrap();
    // Without the CA: a TLS failure.
    let err = skopeo_tags(&[], &image).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    // With the CA but no credentials: refused.
    let err = skopeo_tags(&["--cert-dir", &format!("{certs}/{}", registry.host)], &image).unwrap_err();
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
    // With both: the repository is merely unknown (404).
    let err = skopeo_tags(
        &["--cert-dir", &format!("{certs}/{}", registry.host), "--creds", "fleet:s3cret"],
        &image,
    )
    .unwrap_err();
    assert!(err.contains("404"), "{err}");
}
