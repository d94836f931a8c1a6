//! A fault-injecting HTTP proxy for registry tests: it listens on
//! 127.0.0.1, forwards each request to a real registry, and, on command,
//! answers the next N matching requests with a fault instead (429 with a
//! Retry-After, 503, 403), or forwards them but cuts the response off
//! mid-body. It also keeps a log of every request it saw, with the status
//! it answered, so that a test can tell which requests a client made.
//!
//! One request per connection: the proxy reads a request, answers it with
//! `Connection: close` and closes, which keeps it a small HTTP/1.1 parser
//! (requests with a `Content-Length`, as the registry clients send them).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to a request instead of forwarding it.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// `401 Unauthorized` with a Bearer challenge for this realm, as a
    /// registry answers a token it no longer takes.
    Unauthorized(String),
    /// `429 Too Many Requests` with this `Retry-After` value (seconds, or an
    /// HTTP date), or none.
    TooManyRequests(Option<String>),
    /// `503 Service Unavailable`.
    Unavailable,
    /// `403 Forbidden`, with the registry's `DENIED` error body.
    Forbidden,
    /// Forwards the request, then sends only this many bytes of the
    /// response's body and drops the connection.
    DropAfter(usize),
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The status it answered (0 when the upstream gave none).
    pub status: u16,
    /// The fault it injected, if any.
    pub fault: Option<Fault>,
}

struct Rule {
    /// Matched against `METHOD PATH` (a substring; empty matches all).
    matching: String,
    fault: Fault,
    left: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<Seen>,
}

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`, to use in place of the registry's address.
    pub host: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// A proxy in front of the registry at `upstream` (`HOST:PORT`, plain HTTP).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let host = listener.local_addr().expect("the proxy's address").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (upstream, shared, stopping) = (upstream.to_string(), state.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (upstream, state) = (upstream.clone(), shared.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &state);
                });
            }
        });
        FaultProxy { host, state, stop }
    }

    /// Makes the next `times` requests whose `METHOD PATH` contains
    /// `matching` get `fault`. Rules apply in the order given.
    pub fn inject(&self, matching: &str, fault: Fault, times: usize) {
        let mut state = self.state.lock().unwrap();
        state.rules.push(Rule { matching: matching.to_string(), fault, left: times });
    }

    /// Drops every rule not used up yet.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Every request seen so far, in order.
    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many requests got a fault so far.
    pub fn faults_injected(&self) -> usize {
        self.state.lock().unwrap().log.iter().filter(|s| s.fault.is_some()).count()
    }

    /// `docker://PROXY/REPOSITORY`.
    pub fn url(&self, repository: &str) -> String {
        format!("docker://{}/{repository}", self.host)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
    }
}

/// A request or response head: its first line and its header lines.
pub(crate) struct Head {
    pub first: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn read(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
        let mut first = String::new();
        if reader.read_line(&mut first)? == 0 {
            return Ok(None);
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head cut off"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        Ok(Some(Head { first: first.trim_end().to_string(), headers }))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> io::Result<u64> {
        if self.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            return Err(io::Error::other("the fault proxy does not take chunked bodies"));
        }
        Ok(self.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The head as sent on, with `Connection: close` in place of any
    /// connection header.
    fn to_bytes(&self) -> Vec<u8> {
        let mut text = format!("{}\r\n", self.first);
        for (name, value) in &self.headers {
            if !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive") {
                text += &format!("{name}: {value}\r\n");
            }
        }
        text += "Connection: close\r\n\r\n";
        text.into_bytes()
    }
}

fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = Head::read(&mut reader)? else { return Ok(()) };
    let mut parts = request.first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let line = format!("{method} {path}");
    let fault = {
        let mut state = state.lock().unwrap();
        let rule = state.rules.iter_mut().find(|r| r.left > 0 && line.contains(&r.matching));
        rule.map(|r| {
            r.left -= 1;
            r.fault.clone()
        })
    };
    let length = request.content_length()?;
    let mut seen = Seen { method, path, status: 0, fault: fault.clone() };
    let canned = match &fault {
        Some(Fault::TooManyRequests(after)) => {
            Some((429, "Too Many Requests", after.clone(), "TOOMANYREQUESTS"))
        }
        Some(Fault::Unavailable) => Some((503, "Service Unavailable", None, "UNAVAILABLE")),
        Some(Fault::Forbidden) => Some((403, "Forbidden", None, "DENIED")),
        Some(Fault::Unauthorized(_)) => Some((401, "Unauthorized", None, "UNAUTHORIZED")),
        _ => None,
    };
    if let Some((status, reason, retry_after, code)) = canned {
        // Reads the body first: a client still sending it would see a reset.
        io::copy(&mut (&mut reader).take(length), &mut io::sink())?;
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"injected by the fault proxy"}}]}}"#);
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(after) = retry_after {
            head += &format!("Retry-After: {after}\r\n");
        }
        if let Some(Fault::Unauthorized(realm)) = &fault {
            head += &format!("WWW-Authenticate: Bearer realm=\"{realm}\",error=\"invalid_token\"\r\n");
        }
        head += "Connection: close\r\n\r\n";
        seen.status = status;
        state.lock().unwrap().log.push(seen);
        client.write_all(head.as_bytes())?;
        client.write_all(body.as_bytes())?;
        return client.shutdown(Shutdown::Both);
    }

    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&request.to_bytes())?;
    io::copy(&mut (&mut reader).take(length), &mut server)?;
    let mut from_server = BufReader::new(server);
    let Some(response) = Head::read(&mut from_server)? else {
        state.lock().unwrap().log.push(seen);
        return client.shutdown(Shutdown::Both);
    };
    seen.status = response.first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    state.lock().unwrap().log.push(seen);
    client.write_all(&response.to_bytes())?;
    match fault {
        Some(Fault::DropAfter(bytes)) => {
            io::copy(&mut from_server.take(bytes as u64), &mut client)?;
        }
        _ => {
            io::copy(&mut from_server, &mut client)?;
        }
    }
    client.shutdown(Shutdown::Both)
}
