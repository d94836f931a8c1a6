//! Which certificate authorities a registry is trusted through, as the
//! containers tools decide: the system's roots, plus every `*.crt` in
//! `CERTS_DIR/HOST[:PORT]/`, where CERTS_DIR is `/etc/containers/certs.d`
//! and `/etc/docker/certs.d`. A `[remote] certs_dir` in the config, or else
//! `$SNAPSTORE_REGISTRY_CERTS_DIR`, replaces both (tests use it; so can a
//! user who may not write /etc). Client certificates (`*.cert` + `*.key`)
//! are not used.

use std::path::{Path, PathBuf};

use oci_client::client::{Certificate, CertificateEncoding};
use store_api::StoreError;

/// The variable that names the certificates directory.
pub const CERTS_DIR_ENV: &str = "SNAPSTORE_REGISTRY_CERTS_DIR";

/// The directories searched, in order.
pub fn certs_dirs(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = configured {
        return vec![dir.to_path_buf()];
    }
    if let Some(dir) = std::env::var_os(CERTS_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    vec![PathBuf::from("/etc/containers/certs.d"), PathBuf::from("/etc/docker/certs.d")]
}

/// The CA certificates (PEM) for `registry` found in `dirs`.
pub fn ca_certificates(dirs: &[PathBuf], registry: &str) -> Result<Vec<Certificate>, StoreError> {
    let mut certs = Vec::new();
    for dir in dirs {
        let host_dir = dir.join(registry);
        let entries = match std::fs::read_dir(&host_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(format!("cannot read {}", host_dir.display()), &e)),
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).map_err(|e| {
                StoreError::io(format!("cannot read the CA certificate {}", file.display()), &e)
            })?;
            if reqwest::Certificate::from_pem(&data).is_err() {
                return Err(StoreError::invalid(format!(
                    "{} is not a PEM certificate: replace it with the registry's CA certificate in PEM form",
                    file.display()
                )));
            }
            certs.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
    }
    Ok(certs)
}
