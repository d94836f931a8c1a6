//! What a command prints: one JSON object with `--json`, else text lines.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::json;
use snapstore::internal::Found;
use snapstore::{Listing, PluginInfo, StoreError};

/// What a command leaves behind: data to print, and an exit status.
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
    pub status: u8,
}

impl Output {
    pub fn new(json: serde_json::Value, text: impl Into<String>) -> Self {
        Output { json, text: text.into(), status: 0 }
    }

    /// Data and an exit status.
    pub fn with_status(json: serde_json::Value, text: impl Into<String>, status: u8) -> Self {
        Output { json, text: text.into(), status }
    }

    /// A path, as `{key: path}` or as a line.
    pub fn path(key: &str, path: &Path) -> Self {
        Output::new(json!({ key: path }), path.display().to_string())
    }

    /// Prints the data in the form asked for; returns the exit status.
    pub fn print(&self, as_json: bool) -> u8 {
        if as_json {
            // Every command prints exactly one object.
            let line = if self.json.is_null() { "{}".to_string() } else { self.json.to_string() };
            print_line(&line);
        } else if !self.text.is_empty() {
            print_line(self.text.trim_end());
        }
        self.status
    }
}

/// Reports a failure of snapstore itself: a line `error: ...` on stderr
/// and, with `--json`, `{"error": {"kind", "message", "exit"}}` on stdout.
/// Returns the exit status.
pub fn print_error(message: &str, status: u8, as_json: bool) -> u8 {
    eprintln!("error: {message}");
    if as_json {
        let kind = super::exit::kind_name(status);
        print_line(&json!({"error": {"kind": kind, "message": message, "exit": status}}).to_string());
    }
    status
}

/// A line on stdout; a reader that went away (`snapstore man | head`) is
/// not an error worth a panic.
fn print_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// While alive, what is written to stdout goes to stderr: a build's or a
/// cache run's command must not mix its output into snapstore's JSON.
pub struct StdoutToStderr {
    saved: Option<std::os::fd::OwnedFd>,
}

impl StdoutToStderr {
    pub fn new(active: bool) -> Self {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        if !active {
            return StdoutToStderr { saved: None };
        }
        let _ = std::io::stdout().flush();
        let saved = nix::unistd::dup(1)
            .ok()
            // SAFETY: `dup` returned a new descriptor that nothing else owns.
            .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        if saved.is_some() {
            let _ = nix::unistd::dup2(2, 1);
        }
        StdoutToStderr { saved }
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::unistd::dup2(saved.as_raw_fd(), 1);
        }
    }
}

/// Serializes data for `--json`.
pub fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::other(e.to_string()))
}

/// `snapstore list`: a table each of results, caches and leases, with a
/// header; empty tables are left out.
pub fn listing_text(listing: &Listing, sizes: Option<&HashMap<String, u64>>) -> String {
    // Results made together share their second: each is formatted once.
    let mut last_formatted: Option<(u64, String)> = None;
    let mut when = |t: f64| {
        let seconds = t.max(0.0) as u64;
        match &last_formatted {
            Some((at, text)) if *at == seconds => text.clone(),
            _ => {
                let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
                let text = humantime::format_rfc3339_seconds(time).to_string();
                last_formatted = Some((seconds, text.clone()));
                text
            }
        }
    };
    let results = listing.results.iter().map(|r| {
        let base = r.base.clone().unwrap_or_else(|| "-".into());
        let mut row = Vec::with_capacity(7);
        row.extend([r.id.clone(), base, r.children.to_string(), when(r.created), when(r.last_used)]);
        if let Some(sizes) = sizes {
            row.push(indicatif::HumanBytes(sizes[&r.id]).to_string());
        }
        row.push(r.path.to_string_lossy().into_owned());
        row
    });
    let mut result_header = vec!["RESULT", "BASE", "CHILDREN", "CREATED", "LAST USED"];
    if sizes.is_some() {
        result_header.push("SIZE");
    }
    result_header.push("PATH");
    let caches = listing.caches.iter().map(|c| vec![c.name.clone(), c.generation.to_string()]);
    let leases = listing.leases.iter().map(|l| {
        let kind = if l.record.bound { "bound" } else { "held" };
        vec![l.record.lease.clone(), l.record.cache.clone(), kind.into(), format!("{}s", l.age_seconds)]
    });
    let tables = [
        table(&result_header, results.collect()),
        table(&["CACHE", "GENERATION"], caches.collect()),
        table(&["LEASE", "CACHE", "KIND", "AGE"], leases.collect()),
    ];
    tables.into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n")
}

/// Rows under a header, in columns as wide as their widest cell; nothing
/// if there are no rows.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Written cell by cell into one string: `list` prints 100 000 rows.
    let mut text = String::new();
    let header = header.iter().copied();
    for row in std::iter::once(header.collect::<Vec<_>>())
        .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()))
    {
        let start = text.len();
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            for _ in cell.chars().count()..*width {
                text.push(' ');
            }
        }
        let end = start + text[start..].trim_end().len();
        text.truncate(end);
        text.push('\n');
    }
    text
}

/// `snapstore check`: where everything came from, and what was checked.
pub fn check_text(config: &Path, plugin: &PluginInfo, root: &Path, found: &[String]) -> String {
    let mut text = format!(
        "config: {}\nbackend: {} {} (store-api {}) from {}\nroot: {}\n",
        config.display(),
        plugin.name,
        plugin.version,
        plugin.api_version,
        plugin.file.display(),
        root.display()
    );
    for line in found {
        text += &format!("ok: {line}\n");
    }
    text
}

/// `snapstore backends`: a line per plugin found.
pub fn backends_text(found: &[Found]) -> String {
    if found.is_empty() {
        return "no plugins found (search path: plugin_dirs, $SNAPSTORE_PLUGIN_PATH, the executable's directory, ../lib/snapstore)".into();
    }
    let mut text = String::new();
    for f in found {
        text += &match f {
            Found::Usable(i) => {
                format!("{} {} store-api {} {}\n", i.name, i.version, i.api_version, i.file.display())
            }
            Found::Unusable { file, error } => format!("unusable {}: {error}\n", file.display()),
        };
    }
    text
}
