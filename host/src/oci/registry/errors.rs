//! What a registry's failures mean to the operator: one line naming the
//! registry and the fix, and whether trying again can help.

use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use store_api::{ErrorKind, StoreError};

/// Tries of one request before its failure is reported.
pub const ATTEMPTS: u32 = 4;

/// The longest wait a registry's Retry-After can ask for: a registry that
/// wants longer gets its one-line error instead of a silent hang.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The pause before try `attempt` (1-based, after a failure): 0.5 s, 1 s, 2 s.
/// A 429 whose Retry-After is unknown waits longer (2 s, 4 s, 8 s).
pub fn backoff(attempt: u32, rate_limited: bool) -> Duration {
    let base = if rate_limited { 2000 } else { 500 };
    Duration::from_millis(base << (attempt.saturating_sub(1)).min(4))
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date
/// (relative to `now`), capped at [`MAX_RETRY_AFTER`]; `None` when the
/// value is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let when = httpdate::parse_http_date(value).ok()?;
            when.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The URL of the request that failed, when the error names it.
pub fn failed_url(err: &OciDistributionError) -> Option<String> {
    use OciDistributionError as E;
    match err {
        E::ServerError { url, .. } | E::RegistryError { url, .. } | E::UnauthorizedError { url } => {
            Some(url.clone())
        }
        E::RequestError(e) => e.url().map(|u| u.to_string()),
        _ => None,
    }
}

/// A classified failure.
pub struct Failure {
    pub error: StoreError,
    /// A later try may succeed (unreachable for now, dropped, 429, 5xx).
    pub transient: bool,
    pub rate_limited: bool,
    /// A 401: the credentials, or a token the registry no longer takes.
    pub unauthorized: bool,
}

/// Where a failure happened, for messages: the registry and the operation.
pub struct Context<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    /// e.g. `pushing blob sha256:…`.
    pub what: &'a str,
    /// Where the CA certificates of a registry go (for the TLS fix).
    pub certs_hint: &'a str,
}

/// Classifies `err`, raised while doing `cx.what` against `cx.registry`.
pub fn classify(err: &OciDistributionError, cx: &Context) -> Failure {
    use OciDistributionError as E;
    let r = cx.registry;
    let status = match err {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Some(401),
        E::ServerError { code, .. } => Some(*code),
        E::RegistryError { envelope, .. } => envelope.errors.first().and_then(|e| match e.code {
            OciErrorCode::Unauthorized => Some(401),
            OciErrorCode::Denied => Some(403),
            OciErrorCode::Toomanyrequests => Some(429),
            _ => None,
        }),
        E::RequestError(e) => e.status().map(|s| s.as_u16()),
        _ => None,
    };
    let unauthorized = status == Some(401);
    let fatal = |kind, message: String| Failure {
        error: StoreError::new(kind, message),
        transient: false,
        rate_limited: false,
        unauthorized,
    };
    let transient = |kind, message: String, rate_limited| Failure {
        error: StoreError::new(kind, message),
        transient: true,
        rate_limited,
        unauthorized,
    };
    match status {
        Some(401) => {
            return fatal(
                ErrorKind::PERMISSION,
                format!(
                    "registry {r} refused the credentials while {} (401 unauthorized): log in with \
                     `podman login {r}`, or point REGISTRY_AUTH_FILE at an auth file with an entry for {r}",
                    cx.what
                ),
            )
        }
        Some(403) => {
            return fatal(
                ErrorKind::PERMISSION,
                format!(
                    "registry {r} denied {} (403 forbidden): the account has no such rights on {}; \
                     ask the registry's administrator, or log in as another user",
                    cx.what, cx.repository
                ),
            )
        }
        Some(429) => {
            return transient(
                ErrorKind::BUSY,
                format!(
                    "registry {r} still answers 429 too many requests after {ATTEMPTS} tries while {}: \
                     wait and try again later, or raise the registry's rate limit",
                    cx.what
                ),
                true,
            )
        }
        Some(code) if code >= 500 => {
            return transient(
                ErrorKind::OTHER,
                format!(
                "registry {r} failed while {} (HTTP {code}, {ATTEMPTS} tries): {}; see the registry's log",
                cx.what,
                detail(err)
            ),
                false,
            )
        }
        _ => {}
    }
    if names_a_lost_blob(err) {
        // A blob a manifest names was gone when the registry checked: taken
        // by its garbage collection, or (distribution) a concurrent push of
        // the same blob rewriting its link as it was read. Transient for the
        // latter; a push that finds the blob really gone uploads it again.
        return transient(
            ErrorKind::OTHER,
            format!(
                "registry {r} did not find a blob the manifest names while {} ({ATTEMPTS} tries): \
                 it was removed meanwhile (garbage collection?); push again",
                cx.what
            ),
            false,
        );
    }
    match err {
        E::RequestError(e) if is_tls_failure(err) => fatal(
            ErrorKind::PERMISSION,
            format!(
                "TLS with registry {r} failed ({}): put its CA certificate in {}/{r}/ca.crt, \
                 or set `insecure = true` under [remote] for a test registry",
                detail_of(e),
                cx.certs_hint
            ),
        ),
        E::RequestError(e) if e.is_connect() => transient(
            ErrorKind::IO,
            format!(
                "cannot reach registry {r} while {} ({}, {ATTEMPTS} tries): check the remote's url \
                 and that the registry runs",
                cx.what,
                detail_of(e)
            ),
            false,
        ),
        E::RequestError(_) | E::IoError(_) => transient(
            ErrorKind::IO,
            format!(
                "the connection to registry {r} dropped while {} ({}, {ATTEMPTS} tries): \
                 check the network and the registry, then try again",
                cx.what,
                detail(err)
            ),
            false,
        ),
        E::DigestError(_) => fatal(
            ErrorKind::IO,
            format!(
                "registry {r} sent corrupt data while {} ({}): its storage may be damaged",
                cx.what,
                detail(err)
            ),
        ),
        _ => fatal(ErrorKind::OTHER, format!("registry {r} failed while {}: {}", cx.what, detail(err))),
    }
}

/// Whether the registry refused a manifest for a blob it did not find
/// (`MANIFEST_BLOB_UNKNOWN`, or distribution's `DIGEST_INVALID` when it read
/// a blob's link while another push rewrote it).
fn names_a_lost_blob(err: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    let on_manifest = |url: &str| url.contains("/manifests/");
    match err {
        E::ServerError { code: 400, url, message } => {
            on_manifest(url)
                && ["MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID"].iter().any(|c| message.contains(c))
        }
        E::RegistryError { envelope, url } => {
            on_manifest(url)
                && envelope.errors.iter().any(|e| {
                    matches!(e.code, OciErrorCode::ManifestBlobUnknown | OciErrorCode::DigestInvalid)
                })
        }
        _ => false,
    }
}

/// Whether a request failed in the TLS handshake (an untrusted or invalid
/// certificate, or TLS against a plain-HTTP port).
fn is_tls_failure(err: &OciDistributionError) -> bool {
    let text = chain(err).to_lowercase();
    ["certificate", "tls", "handshake", "invalidcontenttype", "corrupt message"]
        .iter()
        .any(|w| text.contains(w))
}

/// The innermost cause of `err`, on one line, short.
pub fn detail(err: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = err;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string().replace('\n', " ");
    let mut text = text.trim().to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn detail_of(e: &reqwest::Error) -> String {
    detail(e)
}

/// Every message of the error's chain, joined.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut inner = err.source();
    while let Some(e) = inner {
        text.push_str(": ");
        text.push_str(&e.to_string());
        inner = e.source();
    }
    text
}

/// Whether a manifest request failed because there is no such manifest.
pub fn is_not_found(err: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    match err {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NotFound | OciErrorCode::NameUnknown
            )
        }),
        E::RequestError(e) => e.status().is_some_and(|s| s.as_u16() == 404),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_429_waits_longer() {
        assert_eq!(backoff(1, false), Duration::from_millis(500));
        assert_eq!(backoff(3, false), Duration::from_millis(2000));
        assert_eq!(backoff(1, true), Duration::from_millis(2000));
        assert!(backoff(30, true) <= Duration::from_secs(32));
    }

    fn cx() -> Context<'static> {
        Context { registry: "reg:5000", repository: "ci/results", what: "pushing x", certs_hint: "/etc/c" }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(5));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(5)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-1", now), None);
    }

    #[test]
    fn status_codes_name_the_fix() {
        let f = classify(&OciDistributionError::UnauthorizedError { url: "u".into() }, &cx());
        assert!(!f.transient);
        assert!(f.error.message().contains("podman login reg:5000"), "{}", f.error);
        let f = classify(
            &OciDistributionError::ServerError { code: 429, url: "u".into(), message: "".into() },
            &cx(),
        );
        assert!(f.transient && f.rate_limited);
        assert!(f.error.message().contains("429"), "{}", f.error);
        let f = classify(
            &OciDistributionError::ServerError { code: 503, url: "u".into(), message: "".into() },
            &cx(),
        );
        assert!(f.transient && !f.rate_limited);
        let envelope: oci_client::errors::OciEnvelope =
            serde_json::from_str(r#"{"errors":[{"code":"DENIED","message":"no"}]}"#).unwrap();
        let f = classify(&OciDistributionError::RegistryError { envelope, url: "u".into() }, &cx());
        assert!(f.error.message().contains("403") && f.error.message().contains("ci/results"), "{}", f.error);
    }

    #[test]
    fn a_manifest_refused_for_a_lost_blob_is_tried_again() {
        let refused = |url: &str, body: &str| {
            classify(
                &OciDistributionError::ServerError { code: 400, url: url.into(), message: body.into() },
                &cx(),
            )
        };
        let body = r#"{"errors":[{"code":"DIGEST_INVALID"},{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#;
        let f = refused("http://reg:5000/v2/ci/results/manifests/c3", body);
        assert!(f.transient, "{}", f.error);
        assert!(f.error.message().contains("push again"), "{}", f.error);
        // Not for a blob upload, nor for another 400.
        assert!(!refused("http://reg:5000/v2/ci/results/blobs/uploads/x", body).transient);
        assert!(
            !refused(
                "http://reg:5000/v2/ci/results/manifests/c3",
                r#"{"errors":[{"code":"MANIFEST_INVALID"}]}"#
            )
            .transient
        );
    }
}
