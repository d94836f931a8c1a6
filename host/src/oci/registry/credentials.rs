//! Registry credentials, found as podman and skopeo find them: the first of
//! `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json` and `~/.docker/config.json` that has an
//! entry for the registry. An entry is keyed by `HOST[:PORT]`, by
//! `HOST[:PORT]/NAMESPACE…` (the longest match wins), or by an URL
//! (`https://HOST[:PORT]`, Docker's older form), and holds `auth`:
//! base64 of `USER:PASSWORD`, or `identitytoken`: a bearer token.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use store_api::StoreError;

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    identitytoken: String,
}

/// The auth files to look in, in order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(Path::new(&home).join(".config/containers/auth.json"));
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

/// The credentials for `repository` on `registry`, or anonymous access when
/// no auth file has an entry for it. `only`: the one file to read instead of
/// the search. A file that exists but cannot be read
/// or parsed is an error naming it: silently going anonymous would turn a
/// typo into a confusing 401 later.
pub fn find(registry: &str, repository: &str, only: Option<&Path>) -> Result<RegistryAuth, StoreError> {
    let files = match only {
        Some(file) => vec![file.to_path_buf()],
        None => auth_files(),
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StoreError::io(format!("cannot read the auth file {}", file.display()), &e))
            }
        };
        let parsed: AuthFile = serde_json::from_str(&text).map_err(|e| {
            StoreError::invalid(format!(
                "the auth file {} is not valid JSON ({e}); fix it or log in again with `podman login {registry}`",
                file.display()
            ))
        })?;
        if let Some(entry) = best_entry(&parsed, registry, repository) {
            return decode(entry, registry, &file);
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// The entry whose key names the registry, or the longest namespace of it
/// that contains `repository`.
fn best_entry<'a>(file: &'a AuthFile, registry: &str, repository: &str) -> Option<&'a AuthEntry> {
    let full = format!("{registry}/{repository}");
    file.auths
        .iter()
        .filter_map(|(key, entry)| {
            let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
            let key = key.trim_end_matches('/');
            // Docker's older keys carry the API path: `https://host/v1/`.
            let key = key.strip_suffix("/v1").or_else(|| key.strip_suffix("/v2")).unwrap_or(key);
            // Docker writes Docker Hub's entry as index.docker.io.
            let key = if key == "index.docker.io" && registry == "docker.io" { registry } else { key };
            let matches = key == registry
                || (full.starts_with(key)
                    && full.as_bytes().get(key.len()) == Some(&b'/')
                    && key.contains('/'));
            matches.then_some((key.len(), entry))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, entry)| entry)
}

fn decode(entry: &AuthEntry, registry: &str, file: &Path) -> Result<RegistryAuth, StoreError> {
    if !entry.identitytoken.is_empty() {
        return Ok(RegistryAuth::Bearer(entry.identitytoken.clone()));
    }
    let bad = |why: &str| {
        StoreError::invalid(format!(
            "the entry for {registry} in the auth file {} {why}; log in again with `podman login {registry}`",
            file.display()
        ))
    };
    if entry.auth.is_empty() {
        return Err(bad("has no `auth` (credential helpers are not supported)"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.trim())
        .map_err(|_| bad("has an `auth` that is not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("has an `auth` that is not UTF-8"))?;
    let (user, password) =
        text.split_once(':').ok_or_else(|| bad("has an `auth` without `user:password`"))?;
    Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str) -> AuthFile {
        serde_json::from_str(json).unwrap()
    }

    fn basic(entry: Option<&AuthEntry>) -> Option<(String, String)> {
        match decode(entry?, "r", Path::new("f")).unwrap() {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn the_longest_matching_key_wins() {
        // "a:b", "c:d", "e:f" in base64.
        let f = file(
            r#"{"auths": {"reg:5000": {"auth": "YTpi"}, "reg:5000/team": {"auth": "YzpK"},
                "reg:5000/team/ci": {"auth": "ZTpm"}, "reg:5000/te": {"auth": "YzpK"}}}"#,
        );
        assert_eq!(basic(best_entry(&f, "reg:5000", "team/ci/results")), Some(("e".into(), "f".into())));
        assert_eq!(basic(best_entry(&f, "reg:5000", "other")), Some(("a".into(), "b".into())));
        // "reg:5000/te" is not a namespace of "reg:5000/tex".
        assert_eq!(basic(best_entry(&f, "reg:5000", "tex")), Some(("a".into(), "b".into())));
        assert!(best_entry(&f, "reg:5001", "team").is_none());
    }

    #[test]
    fn docker_url_keys_match_their_host() {
        let f = file(r#"{"auths": {"https://reg.example/v1/": {"auth": "YTpi"}}}"#);
        assert_eq!(basic(best_entry(&f, "reg.example", "x")), Some(("a".into(), "b".into())));
        let f = file(r#"{"auths": {"https://index.docker.io/v1/": {"auth": "YTpi"}}}"#);
        assert_eq!(basic(best_entry(&f, "docker.io", "library/debian")), Some(("a".into(), "b".into())));
    }

    #[test]
    fn a_broken_entry_is_one_line_naming_the_fix() {
        let err =
            decode(&AuthEntry { auth: "%%%".into(), ..Default::default() }, "reg", Path::new("/a.json"))
                .unwrap_err();
        assert!(err.message().contains("podman login reg"), "{err}");
        let err =
            decode(&AuthEntry { auth: "bm9jb2xvbg==".into(), ..Default::default() }, "reg", Path::new("/a"))
                .unwrap_err();
        assert!(err.message().contains("user:password"), "{err}");
    }
}
