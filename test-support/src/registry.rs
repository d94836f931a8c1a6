//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1 with a port of its own, storing its
//! blobs in a temporary directory, optionally behind htpasswd auth and TLS
//! from a certificate authority made for the test, or behind token auth
//! with a token service of its own ([`TokenService`]). Dropping it stops the
//! process and removes everything it wrote.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::token_service::{TokenService, ISSUER, SERVICE};
use crate::{installed, run, skip};

/// What the registry asks of its clients.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Basic auth (htpasswd, bcrypt) with this user and password.
    pub auth: Option<(String, String)>,
    /// Token auth (`auth: token`): a [`TokenService`] for this user and
    /// password, whose tokens last this long.
    pub token: Option<(String, String, Duration)>,
    /// Serve HTTPS with a certificate signed by a CA made for this registry
    /// ([`Registry::ca_cert`]); without it, plain HTTP.
    pub tls: bool,
}

/// A running `docker-registry`; see the module documentation.
pub struct Registry {
    /// `127.0.0.1:PORT`, as it goes into a `docker://` reference.
    pub host: String,
    /// The registry's filesystem storage (its `rootdirectory`).
    pub storage: PathBuf,
    options: RegistryOptions,
    token_service: Option<TokenService>,
    work: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry {
    /// A registry over plain HTTP with no auth, or `None` after a loud skip
    /// when `docker-registry` is not installed (a failure under CI=true).
    pub fn plain() -> Option<Registry> {
        Self::start(RegistryOptions::default())
    }

    /// A registry over HTTPS that wants `user` and `password`.
    pub fn secured(user: &str, password: &str) -> Option<Registry> {
        Self::start(RegistryOptions {
            auth: Some((user.into(), password.into())),
            tls: true,
            ..Default::default()
        })
    }

    /// A registry over plain HTTP with token auth: its token service takes
    /// `user` and `password` and hands out tokens that last `lifetime`.
    pub fn with_tokens(user: &str, password: &str, lifetime: Duration) -> Option<Registry> {
        Self::start(RegistryOptions {
            token: Some((user.into(), password.into(), lifetime)),
            ..Default::default()
        })
    }

    /// A registry as `options` say, or `None` after a loud skip when the
    /// tools are missing. Panics when the tools are there but the registry
    /// does not come up (that is a real failure).
    pub fn start(options: RegistryOptions) -> Option<Registry> {
        let mut tools = vec!["docker-registry"];
        if options.auth.is_some() {
            tools.push("htpasswd");
        }
        if options.tls || options.token.is_some() {
            tools.push("openssl");
        }
        if let Some(tool) = tools.iter().find(|t| !installed(t)) {
            skip(&format!("{tool} is not installed (scripts/install-test-deps installs it)"));
            return None;
        }
        Some(Self::create(options).unwrap_or_else(|e| panic!("cannot start docker-registry: {e}")))
    }

    fn create(options: RegistryOptions) -> Result<Registry, String> {
        let work = tempfile::Builder::new()
            .prefix("snapstore-registry-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let storage = work.path().join("storage");
        fs::create_dir(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
        let port = free_port()?;
        let token_service = match &options.token {
            Some((user, password, lifetime)) => {
                Some(TokenService::start(work.path(), user, password, *lifetime)?)
            }
            None => None,
        };
        let mut registry = Registry {
            host: format!("127.0.0.1:{port}"),
            storage,
            options,
            token_service,
            work,
            child: None,
        };
        registry.write_config()?;
        registry.launch()?;
        Ok(registry)
    }

    /// The token service of a registry with token auth.
    pub fn token_service(&self) -> Option<&TokenService> {
        self.token_service.as_ref()
    }

    /// The CA certificate that signed the registry's own (TLS only): what a
    /// client must trust.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.work.path().join("ca.crt"))
    }

    /// A directory laid out as `/etc/containers/certs.d`: `HOST:PORT/ca.crt`
    /// (TLS only).
    pub fn certs_d(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.work.path().join("certs.d"))
    }

    /// `docker://HOST:PORT/REPOSITORY`.
    pub fn url(&self, repository: &str) -> String {
        format!("docker://{}/{repository}", self.host)
    }

    /// Where the registry keeps the content of blob `digest` (`sha256:…`),
    /// for tests that corrupt it.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Tags of `repository`, read from the registry's storage (not through
    /// its API, so that a test checks the client against the registry).
    pub fn stored_tags(&self, repository: &str) -> Vec<String> {
        let dir =
            self.storage.join("docker/registry/v2/repositories").join(repository).join("_manifests/tags");
        let mut tags: Vec<String> = fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// Kills the registry at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.launch().unwrap_or_else(|e| panic!("cannot restart docker-registry: {e}"));
    }

    /// The registry's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.work.path().join("registry.log")).unwrap_or_default()
    }

    fn write_config(&self) -> Result<(), String> {
        let dir = self.work.path();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {}\n",
            self.storage.display(),
            self.host
        );
        if self.options.tls {
            make_certificates(dir)?;
            let certs_d = dir.join("certs.d").join(&self.host);
            fs::create_dir_all(&certs_d).map_err(|e| format!("{}: {e}", certs_d.display()))?;
            fs::copy(dir.join("ca.crt"), certs_d.join("ca.crt")).map_err(|e| e.to_string())?;
            config += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            );
        }
        if let Some((user, password)) = &self.options.auth {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, password]))?;
            let file = dir.join("htpasswd");
            fs::write(&file, line + "\n").map_err(|e| e.to_string())?;
            config +=
                &format!("auth:\n  htpasswd:\n    realm: snapstore-test\n    path: {}\n", file.display());
        }
        if let Some(tokens) = &self.token_service {
            config += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                tokens.realm,
                tokens.certificate.display()
            );
        }
        fs::write(dir.join("config.yml"), config).map_err(|e| e.to_string())
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("registry.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.work.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run docker-registry: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("docker-registry exited with {status}: {}", self.log()));
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!("docker-registry did not answer on {} within 20 s: {}", self.host, self.log()))
    }

    /// Whether the registry answers: `/v2/` over plain HTTP (any status: 401
    /// means it is up and wants auth); a TCP connection for TLS, whose
    /// listener only opens once the registry is ready.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.host) else { return false };
        if self.options.tls {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on now (the registry binds it a moment later).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A CA (`ca.crt`) and a server certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`) in `dir`. A separate CA, because rustls
/// refuses a CA certificate used as the server's own.
fn make_certificates(dir: &Path) -> Result<(), String> {
    let path = |name: &str| dir.join(name);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=snapstore test CA",
        ])
        .arg("-keyout")
        .arg(path("ca.key"))
        .arg("-out")
        .arg(path("ca.crt")))?;
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(path("server.key"))
        .arg("-out")
        .arg(path("server.csr")))?;
    fs::write(
        path("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(path("server.csr"))
        .arg("-CA")
        .arg(path("ca.crt"))
        .arg("-CAkey")
        .arg(path("ca.key"))
        .arg("-extfile")
        .arg(path("server.ext"))
        .arg("-out")
        .arg(path("server.crt")))?;
    Ok(())
}
