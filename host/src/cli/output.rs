//! What a command prints: one JSON object with `--json`, else text lines.

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

    pub fn none() -> Self {
        Output { json: serde_json::Value::Null, text: String::new(), status: 0 }
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
        if as_json && !self.json.is_null() {
            println!("{}", self.json);
        } else if !as_json && !self.text.is_empty() {
            println!("{}", self.text.trim_end());
        }
        self.status
    }
}

/// Serializes data for `--json`.
pub fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(value).map_err(|e| StoreError::other(e.to_string()))
}

/// `snapstore list`: a line per result, cache and lease.
pub fn listing_text(listing: &Listing) -> String {
    let mut text = String::new();
    let when = |t: f64| {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
        humantime::format_rfc3339_seconds(time).to_string()
    };
    for r in &listing.results {
        let base = r.base.as_deref().map(|b| format!(" base {b}")).unwrap_or_default();
        text += &format!(
            "result {} created {} used {}{base} {}\n",
            r.id,
            when(r.created),
            when(r.last_used),
            r.path.display()
        );
    }
    for c in &listing.caches {
        text += &format!("cache {:?} generation {}\n", c.name, c.generation);
    }
    for l in &listing.leases {
        let kind = if l.record.bound { "bound" } else { "held" };
        text +=
            &format!("lease {} cache {:?} {kind} age {}s\n", l.record.lease, l.record.cache, l.age_seconds);
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
