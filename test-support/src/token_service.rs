//! A token service for a registry with `auth: token`, as Docker Hub and
//! most cloud registries run one: on 127.0.0.1, it checks the Basic
//! credentials of `GET /token?service=…&scope=…` and answers with a
//! short-lived RS256 JWT granting the scopes asked for, signed by a key
//! whose certificate (made with openssl) the registry trusts through its
//! `rootcertbundle`. It counts the tokens it issued and refused.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::fault_proxy::Head;
use crate::run;

/// The registry's `service` and the tokens' audience.
pub const SERVICE: &str = "snapstore-test-registry";
/// The tokens' issuer.
pub const ISSUER: &str = "snapstore-test-token-service";

/// A running token service; dropping it stops it.
pub struct TokenService {
    /// `http://127.0.0.1:PORT/token`: the registry's `realm`.
    pub realm: String,
    /// The certificate of the signing key: the registry's `rootcertbundle`.
    pub certificate: PathBuf,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    address: String,
}

struct Signer {
    user: String,
    password: String,
    lifetime: Duration,
    key: jsonwebtoken::EncodingKey,
    /// The certificate, DER in standard base64: the token's `x5c`.
    x5c: String,
}

impl TokenService {
    /// A service for `user`/`password` whose tokens last `lifetime`
    /// (at least a second), with its key and certificate made in `dir`.
    pub fn start(dir: &Path, user: &str, password: &str, lifetime: Duration) -> Result<TokenService, String> {
        let key = dir.join("token.key");
        let certificate = dir.join("token.crt");
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=snapstore test token signer", "-addext", "keyUsage=digitalSignature"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&certificate))?;
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&certificate)
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?
            .stdout;
        let pem = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
        let signer = Arc::new(Signer {
            user: user.to_string(),
            password: password.to_string(),
            lifetime: lifetime.max(Duration::from_secs(1)),
            key: jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| format!("the token key: {e}"))?,
            x5c: base64::engine::general_purpose::STANDARD.encode(der),
        });
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind the token service: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counts, stopping) = ((issued.clone(), refused.clone()), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (signer, counts) = (signer.clone(), counts.clone());
                std::thread::spawn(move || answer(client, &signer, &counts.0, &counts.1));
            }
        });
        Ok(TokenService {
            realm: format!("http://{address}/token"),
            certificate,
            issued,
            refused,
            stop,
            address,
        })
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Requests refused (wrong or no credentials) so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.address);
    }
}

fn answer(client: TcpStream, signer: &Signer, issued: &AtomicUsize, refused: &AtomicUsize) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(reading) = client.try_clone() else { return };
    let Ok(Some(request)) = Head::read(&mut BufReader::new(reading)) else { return };
    let target = request.first.split_whitespace().nth(1).unwrap_or("").to_string();
    let (status, body) = if !authorized(&request, signer) {
        refused.fetch_add(1, Ordering::SeqCst);
        (401, r#"{"details":"wrong user name or password"}"#.to_string())
    } else {
        match token(signer, &target) {
            Ok(body) => {
                issued.fetch_add(1, Ordering::SeqCst);
                (200, body)
            }
            Err(e) => (500, serde_json::json!({ "details": e }).to_string()),
        }
    };
    let mut client = client;
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Refused" },
        body.len()
    );
    let _ = client.write_all(head.as_bytes()).and_then(|_| client.write_all(body.as_bytes()));
    let _ = client.shutdown(Shutdown::Both);
}

fn authorized(request: &Head, signer: &Signer) -> bool {
    let Some(basic) = request.header("authorization").and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else { return false };
    decoded == format!("{}:{}", signer.user, signer.password).as_bytes()
}

/// The JSON answer to `GET target`: a token granting every scope asked for.
fn token(signer: &Signer, target: &str) -> Result<String, String> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut access = Vec::new();
    for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        if name != "scope" {
            continue;
        }
        // repository:NAME:ACTIONS (NAME may hold a port's colon, never here).
        let scope = percent_decode(value);
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(repository), Some(actions)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let actions: Vec<&str> = actions.split(',').collect();
        access.push(serde_json::json!({ "type": kind, "name": repository, "actions": actions }));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": signer.user, "aud": SERVICE,
        "iat": now, "nbf": now.saturating_sub(1), "exp": now + signer.lifetime.as_secs(),
        "jti": format!("{now}-{}", rand_suffix()), "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5c = Some(vec![signer.x5c.clone()]);
    let jwt = jsonwebtoken::encode(&header, &claims, &signer.key).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ "token": jwt, "expires_in": signer.lifetime.as_secs() }).to_string())
}

/// A suffix that keeps token ids of the same second apart.
fn rand_suffix() -> u32 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst) as u32
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && text.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
