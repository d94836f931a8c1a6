//! The `docker://HOST[:PORT]/REPO` transport: an image's blobs and manifests
//! in a registry, through the OCI distribution API (`oci-client`).
//!
//! The transport trait is synchronous; each transport owns a small tokio
//! runtime and blocks on it. Blobs go up streamed from their file in chunks
//! (a PATCH per 4 MiB) and are committed by digest, so an interrupted upload
//! leaves only an unreferenced upload session in the registry, never a
//! visible blob or image; the manifest goes last. Downloads stream; a
//! connection dropped mid-blob resumes at the byte reached (a ranged GET),
//! a bounded number of times; the caller verifies the digest of what it
//! reads. Every request that can fail transiently (unreachable, dropped,
//! 429, 5xx) is tried [`errors::ATTEMPTS`] times with a growing pause, or
//! after a 429 the pause the registry's Retry-After asks for (capped at
//! [`errors::MAX_RETRY_AFTER`]); a 401 or 403 is not retried.
//!
//! Credentials come from the containers auth files ([`credentials`]), CA
//! certificates from the certs.d directories ([`certs`]). HTTPS is the
//! default; with `insecure` the registry's certificate is not verified, and
//! a registry that does not speak TLS at all is spoken to in plain HTTP.

pub mod certs;
pub mod credentials;
mod errors;
mod reader;
mod token;
mod upload;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};
use store_api::{IoContext, StoreError};

use crate::oci::transport::ImageTransport;
use errors::{classify, Context, ATTEMPTS};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Do not verify the registry's certificate, and use plain HTTP when it
    /// does not speak TLS. Only for registries on a trusted network.
    pub insecure: bool,
    /// Replaces the certs.d directories (see [`certs`]).
    pub certs_dir: Option<PathBuf>,
    /// The only auth file to read, instead of the search (see [`credentials`]).
    pub auth_file: Option<PathBuf>,
    /// Other repositories of the same registry that may hold the blobs
    /// being pushed: a blob found in one of them is mounted (a cross-
    /// repository mount), not uploaded again. Best effort: when the mount
    /// fails, the blob is uploaded.
    pub mount_from: Vec<String>,
    /// Only reads: log in for pulling (credentials with pull rights only,
    /// and anonymous access to public images, then work).
    pub read_only: bool,
}

/// Names of Docker Hub.
const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Media types a manifest is asked for in.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A digest no blob has (of no content known to anyone), asked for to
/// check the credentials.
const NO_BLOB: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Settings given for registries (by [`configure`]), by `HOST[:PORT]`.
static CONFIGURED: std::sync::Mutex<Vec<(String, RegistrySettings)>> = std::sync::Mutex::new(Vec::new());

/// Says how to reach `registry` from now on in this process: the `[remote]`
/// of a config sets it for its registry, so that `export`, `import`, `push`
/// and `pull` to that registry all use its `insecure` and `certs_dir`.
/// Other registries get the defaults (HTTPS, certs.d, the auth files).
pub fn configure(registry: &str, settings: RegistrySettings) {
    let mut table = CONFIGURED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    table.retain(|(host, _)| host != registry);
    table.push((registry.to_string(), settings));
}

/// The settings for `registry`: as [configured](configure), else the defaults.
pub fn settings_for(registry: &str) -> RegistrySettings {
    let table = CONFIGURED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    table.iter().find(|(host, _)| host == registry).map(|(_, s)| s.clone()).unwrap_or_default()
}

/// Opens `repository` on `registry` (`HOST[:PORT]`) as a transport, with the
/// settings [configured](configure) for it. Checks that the registry answers
/// and accepts the credentials (and picks HTTP or HTTPS when insecure), so
/// a wrong address, an untrusted certificate or a wrong password is
/// reported here.
pub fn open(registry: &str, repository: &str, write: bool) -> Result<Box<dyn ImageTransport>, StoreError> {
    let settings = RegistrySettings { read_only: !write, ..settings_for(registry) };
    Ok(Box::new(RegistryTransport::connect(registry, repository, &settings)?))
}

/// A repository in a registry; see the module documentation.
pub struct RegistryTransport {
    runtime: tokio::runtime::Runtime,
    client: Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    certs_hint: String,
    /// For what oci-client lacks (deleting a manifest), with the same TLS.
    http: reqwest::Client,
    scheme: &'static str,
    login_for: oci_client::RegistryOperation,
    /// See [`RegistrySettings::mount_from`].
    mount_from: Vec<String>,
}

impl RegistryTransport {
    /// See [`open`].
    pub fn connect(
        registry: &str,
        repository: &str,
        settings: &RegistrySettings,
    ) -> Result<Self, StoreError> {
        check_name(registry, repository)?;
        // Docker Hub's official images are `library/NAME`, written `NAME`.
        let library;
        let repository = if DOCKER_HUB.contains(&registry) && !repository.contains('/') {
            library = format!("library/{repository}");
            library.as_str()
        } else {
            repository
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("cannot start the registry client's runtime", &e))?;
        let dirs = certs::certs_dirs(settings.certs_dir.as_deref());
        let cas = certs::ca_certificates(&dirs, registry)?;
        let certs_hint = dirs[0].display().to_string();
        let auth = credentials::find(registry, repository, settings.auth_file.as_deref())?;
        let protocol =
            if settings.insecure { runtime.block_on(probe_scheme(registry))? } else { ClientProtocol::Https };
        let scheme = if protocol == ClientProtocol::Http { "http" } else { "https" };
        let mut http = reqwest::Client::builder()
            .danger_accept_invalid_certs(settings.insecure)
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60));
        for ca in &cas {
            if let Ok(cert) = reqwest::Certificate::from_pem(&ca.data) {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| {
            StoreError::other(format!("cannot set up an HTTP client: {}", errors::detail(&e)))
        })?;
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: settings.insecure,
            extra_root_certificates: cas,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            // A registry that stops answering mid-transfer is a dropped
            // connection, not a hang.
            read_timeout: Some(std::time::Duration::from_secs(60)),
            platform_resolver: None,
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|e| {
            StoreError::other(format!(
                "cannot set up a client for registry {registry}: {}",
                errors::detail(&e)
            ))
        })?;
        let mount_from = settings.mount_from.iter().filter(|r| r.as_str() != repository).cloned().collect();
        let transport = RegistryTransport {
            mount_from,
            runtime,
            client,
            auth,
            registry: registry.to_string(),
            repository: repository.to_string(),
            certs_hint,
            http,
            scheme,
            login_for: if settings.read_only {
                oci_client::RegistryOperation::Pull
            } else {
                oci_client::RegistryOperation::Push
            },
        };
        transport.login()?;
        Ok(transport)
    }

    /// `HOST[:PORT]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository's tags (empty when the repository does not exist yet).
    pub fn tags(&mut self) -> Result<Vec<String>, StoreError> {
        let reference = self.reference("latest");
        let what = format!("listing the tags of {}", self.repository);
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut last: Option<String> = None;
        loop {
            let page = self.retrying(&what, |t| {
                match t.runtime.block_on(t.client.list_tags(&reference, &t.auth, Some(1000), last.as_deref()))
                {
                    Ok(page) => Ok(Some(page)),
                    Err(e) if errors::is_not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
            // No such repository: nothing was pushed to it yet.
            let Some(page) = page else { return Ok(tags) };
            // Pages go on until one brings nothing new: the empty one after
            // the last, or a repeated one from a registry that ignores
            // `last`. (A registry may also send fewer than asked.)
            let new: Vec<String> = page.tags.into_iter().filter(|tag| seen.insert(tag.clone())).collect();
            if new.is_empty() {
                return Ok(tags);
            }
            last = new.last().cloned();
            tags.extend(new);
        }
    }

    /// Deletes the manifest `tag` names (by its digest, as the API wants),
    /// and with it every tag of that manifest. A manifest already gone is
    /// not an error. The registry must allow deletes; its garbage
    /// collection frees the blobs.
    pub fn delete_manifest(&mut self, tag: &str) -> Result<(), StoreError> {
        let reference = self.reference(tag);
        let what = format!("finding the digest of {}:{tag}", self.repository);
        let digest = self.retrying(&what, |t| {
            match t.runtime.block_on(t.client.fetch_manifest_digest(&reference, &t.auth)) {
                Ok(digest) => Ok(Some(digest)),
                Err(e) if errors::is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(digest) = digest else { return Ok(()) };
        self.delete_manifest_digest(&digest)
    }

    /// Deletes the manifest `digest`, and every tag naming it; a tag moved
    /// to another manifest meanwhile stays. A manifest already gone is not
    /// an error.
    pub fn delete_manifest_digest(&mut self, digest: &str) -> Result<(), StoreError> {
        let url = format!("{}://{}/v2/{}/manifests/{digest}", self.scheme, self.registry, self.repository);
        let what = format!("deleting {}@{digest}", self.repository);
        let status = self.retrying(&what, |t| {
            let request = t.delete_request(&url)?;
            // Built inside the runtime: the request's timeout needs its timer.
            let response = t.runtime.block_on(async { request.send().await })?;
            match response.status().as_u16() {
                code @ (200..=299 | 404 | 405) => Ok(code),
                code => {
                    Err(OciDistributionError::ServerError { code, url: url.clone(), message: String::new() })
                }
            }
        })?;
        if status == 405 {
            return Err(StoreError::unsupported(format!(
                "registry {} does not allow deleting manifests (405): set storage.delete.enabled in its config",
                self.registry
            )));
        }
        Ok(())
    }

    /// Asks the registry for fresh tokens (for pulling, and for pushing
    /// unless read-only), replacing the ones oci-client holds. A registry
    /// without token auth takes the credentials as they are.
    fn authenticate(&self) -> Result<(), OciDistributionError> {
        let reference = self.reference("latest");
        self.runtime.block_on(async {
            self.client.auth(&reference, &self.auth, oci_client::RegistryOperation::Pull).await?;
            if self.login_for == oci_client::RegistryOperation::Push {
                self.client.auth(&reference, &self.auth, oci_client::RegistryOperation::Push).await?;
            }
            Ok(())
        })
    }

    /// A request of our own (for what oci-client lacks), authenticated as
    /// oci-client's are: with a token for `operation` when the registry
    /// hands them out, else with the credentials.
    fn own_request(
        &self,
        method: reqwest::Method,
        url: &str,
        operation: oci_client::RegistryOperation,
    ) -> Result<reqwest::RequestBuilder, OciDistributionError> {
        let request = self.http.request(method, url);
        let token = match &self.auth {
            RegistryAuth::Bearer(token) => Some(token.clone()),
            auth => self.runtime.block_on(self.client.auth(&self.reference("latest"), auth, operation))?,
        };
        Ok(match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        })
    }

    /// A DELETE of `url`: with a token for the `delete` action when the
    /// registry hands out tokens (oci-client's tokens grant pull and push
    /// only), else with the credentials.
    fn delete_request(&self, url: &str) -> Result<reqwest::RequestBuilder, OciDistributionError> {
        let base = format!("{}://{}", self.scheme, self.registry);
        let scope = format!("repository:{}:delete", self.repository);
        let token = match &self.auth {
            RegistryAuth::Bearer(token) => Some(token.clone()),
            auth => self.runtime.block_on(token::token_for(&self.http, &base, auth, &scope))?,
        };
        let request = self.http.delete(url);
        Ok(match (token, &self.auth) {
            (Some(token), _) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, _) => request,
        })
    }

    /// Authenticates up front (a bearer-token registry hands out its token
    /// here) and asks for a blob nobody has, so that wrong credentials or an
    /// unreachable registry are reported when the transport is opened: a
    /// registry with basic auth only says 401 to a real request.
    fn login(&self) -> Result<(), StoreError> {
        let reference = self.reference("latest");
        let what = format!("logging in for {}", self.repository);
        self.retrying(&what, |t| {
            t.runtime.block_on(async {
                t.client.auth(&reference, &t.auth, t.login_for).await?;
                t.client.blob_exists(&reference, NO_BLOB).await
            })
        })?;
        Ok(())
    }

    fn reference(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(self.registry.clone(), self.repository.clone(), tag_or_digest.to_string())
        } else {
            Reference::with_tag(self.registry.clone(), self.repository.clone(), tag_or_digest.to_string())
        }
    }

    fn context<'a>(&'a self, what: &'a str) -> Context<'a> {
        Context { registry: &self.registry, repository: &self.repository, what, certs_hint: &self.certs_hint }
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// [`ATTEMPTS`] times.
    fn retrying<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&Self) -> Result<T, OciDistributionError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        let mut reauthenticated = false;
        loop {
            match op(self) {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let failure = classify(&err, &self.context(what));
                    // A token that expired (or that the registry stopped
                    // taking) before oci-client's cache says: a fresh one,
                    // once; wrong credentials fail here in their own line.
                    if failure.unauthorized && !reauthenticated {
                        reauthenticated = true;
                        tracing::debug!("registry {}: {what}: 401; authenticating again", self.registry);
                        self.authenticate().map_err(|e| classify(&e, &self.context(what)).error)?;
                        continue;
                    }
                    if !failure.transient || attempt >= ATTEMPTS {
                        return Err(failure.error);
                    }
                    tracing::debug!("registry {}: {what}: {err}; trying again", self.registry);
                    std::thread::sleep(self.pause(&err, attempt, failure.rate_limited));
                    attempt += 1;
                }
            }
        }
    }
}

impl RegistryTransport {
    /// The pause before trying again after `err`. For a 429, what the
    /// registry's Retry-After says (capped): oci-client does not hand the
    /// header on, so the failed URL is asked again with a HEAD, which a
    /// limited registry answers with the same 429 and its Retry-After.
    /// Without one, the growing pause of [`errors::backoff`].
    pub(super) fn pause(
        &self,
        err: &OciDistributionError,
        attempt: u32,
        rate_limited: bool,
    ) -> std::time::Duration {
        let fallback = errors::backoff(attempt, rate_limited);
        if !rate_limited {
            return fallback;
        }
        let url =
            errors::failed_url(err).unwrap_or_else(|| format!("{}://{}/v2/", self.scheme, self.registry));
        let Ok(request) = self.own_request(reqwest::Method::HEAD, &url, oci_client::RegistryOperation::Pull)
        else {
            return fallback;
        };
        // Sent inside the runtime: the request's timeout needs its timer.
        let Ok(response) = self.runtime.block_on(async { request.send().await }) else { return fallback };
        if response.status().as_u16() != 429 {
            // The limit is already lifted: a short pause, not the long one.
            return errors::backoff(attempt, false);
        }
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| errors::retry_after(v, std::time::SystemTime::now()))
            .unwrap_or(fallback)
    }
}

impl RegistryTransport {
    /// Mounts blob `digest` from the first of [`RegistrySettings::mount_from`]
    /// that holds it; false when none does, or the mount fails (the caller
    /// then uploads it). The source is asked first, so that a mount of a
    /// blob it lacks does not open an upload session.
    fn mounted(&self, digest: &str) -> bool {
        let target = self.reference("latest");
        for repository in &self.mount_from {
            let source = Reference::with_tag(self.registry.clone(), repository.clone(), "latest".into());
            let mounted = self.runtime.block_on(async {
                if !self.client.blob_exists(&source, digest).await? {
                    return Ok(false);
                }
                self.client.mount_blob(&target, &source, digest).await.map(|()| true)
            });
            match mounted {
                Ok(true) => {
                    tracing::debug!(digest, from = repository.as_str(), "blob mounted");
                    return true;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(digest, from = repository.as_str(), "no mount: {e}"),
            }
        }
        false
    }
}

impl ImageTransport for RegistryTransport {
    fn describe(&self) -> String {
        format!("docker://{}/{}", self.registry, self.repository)
    }

    fn has_blob(&mut self, digest: &str) -> Result<bool, StoreError> {
        let reference = self.reference("latest");
        let what = format!("looking for blob {digest}");
        self.retrying(&what, |t| t.runtime.block_on(t.client.blob_exists(&reference, digest)))
    }

    fn put_blob(&mut self, desc: &Descriptor, file: &Path) -> Result<(), StoreError> {
        let reference = self.reference("latest");
        let digest = desc.digest().to_string();
        if self.mounted(&digest) {
            return Ok(());
        }
        // A local file that cannot be read is our error, not the
        // registry's: not retried, not reported as a dropped connection.
        std::fs::File::open(file).context(format_args!("cannot read {}", file.display()))?;
        let what = format!("pushing blob {digest}");
        self.retrying(&what, |t| {
            // A fresh upload each try: a session the registry lost with a
            // crash cannot be resumed.
            let stream = reader::file_chunks(file).map_err(OciDistributionError::IoError)?;
            t.runtime.block_on(t.client.push_blob_stream(&reference, stream, &digest, Some(desc.size())))
        })?;
        Ok(())
    }

    /// Uploads as the blob is made (a chunked upload on a thread of its
    /// own, on the transport's runtime, which nothing else drives
    /// meanwhile). Not when other repositories may hold the blob: mounting
    /// it from one of them, once its digest is known, beats sending it. A
    /// failed upload is only logged: the caller then sends the blob from
    /// its file, with retries.
    fn put_blob_while_made(
        &mut self,
        make: &mut dyn FnMut(&mut dyn Write) -> Result<(), StoreError>,
    ) -> Result<Option<(String, u64)>, StoreError> {
        if !self.mount_from.is_empty() {
            make(&mut std::io::sink())?;
            return Ok(None);
        }
        let this: &Self = self;
        let reference = this.reference("latest");
        let (mut writer, rx) = upload::channel();
        let (made, uploaded) = std::thread::scope(|scope| {
            let uploader = scope.spawn(|| {
                let body = upload::stream(rx);
                this.runtime.block_on(this.client.push_blob_stream_chunked(&reference, body))
            });
            let made = make(&mut writer);
            if made.is_ok() {
                // An upload that stopped is told by its own error below.
                let _ = writer.finish();
            } else {
                drop(writer);
            }
            (made, uploader.join())
        });
        made?;
        match uploaded {
            Ok(Ok(pushed)) => Ok(Some((pushed.blob_digest, pushed.size))),
            Ok(Err(e)) => {
                tracing::debug!("registry {}: uploading a blob as it was made: {e}", self.registry);
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    fn get_blob(&mut self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, StoreError> {
        let descriptor = OciDescriptor {
            media_type: desc.media_type().to_string(),
            digest: desc.digest().to_string(),
            size: desc.size() as i64,
            ..Default::default()
        };
        Ok(Box::new(reader::BlobReader::open(self, descriptor)?))
    }

    fn put_manifest(&mut self, tag: &str, media_type: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let reference = self.reference(tag);
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| {
            StoreError::invalid(format!("invalid manifest media type `{}`", media_type.escape_debug()))
        })?;
        let what = format!("pushing the manifest of {}:{tag}", self.repository);
        self.retrying(&what, |t| {
            t.runtime.block_on(t.client.push_manifest_raw(&reference, bytes.to_vec(), content_type.clone()))
        })?;
        Ok(())
    }

    fn get_manifest(&mut self, reference: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let target = self.reference(reference);
        let what = format!("reading the manifest of {}:{reference}", self.repository);
        let pulled = self.retrying(&what, |t| {
            match t.runtime.block_on(t.client.pull_manifest_raw(&target, &t.auth, &MANIFEST_TYPES)) {
                Ok(found) => Ok(Some(found)),
                Err(e) if errors::is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some((bytes, _)) = pulled else { return Ok(None) };
        if reference.starts_with("sha256:") {
            let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
            if actual != reference {
                return Err(StoreError::new(
                    store_api::ErrorKind::IO,
                    format!(
                        "registry {} sent a manifest for {reference} whose digest is {actual}: \
                         its storage may be damaged",
                        self.registry
                    ),
                ));
            }
        }
        let media_type = media_type_of(&bytes).ok_or_else(|| {
            StoreError::invalid(format!("{}:{reference} is not an image manifest or index", self.describe()))
        })?;
        Ok(Some((media_type, bytes.to_vec())))
    }
}

/// A manifest's media type: its `mediaType`, or for one without (allowed
/// by the image spec), an index when it lists manifests.
fn media_type_of(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    if let Some(media_type) = object.get("mediaType").and_then(|m| m.as_str()) {
        return Some(media_type.to_string());
    }
    Some(if object.contains_key("manifests") { MANIFEST_TYPES[1] } else { MANIFEST_TYPES[0] }.to_string())
}

/// Checks a registry address and repository name before they go into URLs.
fn check_name(registry: &str, repository: &str) -> Result<(), StoreError> {
    let host_ok = !registry.is_empty()
        && registry.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        && !registry.starts_with(['-', '.']);
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if !host_ok {
        return Err(StoreError::invalid(format!(
            "invalid registry address `{}`: use HOST or HOST:PORT",
            registry.escape_debug()
        )));
    }
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        return Err(StoreError::invalid(format!(
            "invalid repository name `{}`: use lower-case letters, digits and . _ - in /-separated parts",
            repository.escape_debug()
        )));
    }
    Ok(())
}

/// For an insecure registry: plain HTTP when the registry answers `/v2/`
/// in plain HTTP as a registry does (200, or 401 asking for credentials),
/// else HTTPS (unverified). Plain HTTP is asked first because a TLS client
/// costs tens of milliseconds to set up (it loads the system's CA
/// certificates), and a TLS server answers a plain request with an error
/// (Go's and nginx's: a 400) or hangs up, never with a 200 or a 401.
async fn probe_scheme(registry: &str) -> Result<ClientProtocol, StoreError> {
    // One client for both schemes; it checks no certificate, so it loads
    // none of the system's.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| StoreError::other(format!("cannot set up an HTTP client: {}", errors::detail(&e))))?;
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match client.get(format!("http://{registry}/v2/")).send().await {
            Ok(answer) if matches!(answer.status().as_u16(), 200 | 401) => return Ok(ClientProtocol::Http),
            // Unreachable: so is HTTPS, on the same port.
            Err(e) if e.is_connect() => last = Some(e),
            // A TLS server's answer to plain HTTP, or not a registry.
            plain_answer => {
                match client.get(format!("https://{registry}/v2/")).send().await {
                    Ok(_) => return Ok(ClientProtocol::Https),
                    // It speaks plain HTTP only: its own answers will say
                    // what is wrong.
                    Err(_) if plain_answer.is_ok() => return Ok(ClientProtocol::Http),
                    Err(e) => last = Some(e),
                }
            }
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(errors::backoff(attempt, false));
        }
    }
    let detail = last.map(|e| errors::detail(&e)).unwrap_or_default();
    Err(StoreError::new(
        store_api::ErrorKind::IO,
        format!(
            "cannot reach registry {registry} ({detail}, {ATTEMPTS} tries): check the remote's url \
             and that the registry runs"
        ),
    ))
}
