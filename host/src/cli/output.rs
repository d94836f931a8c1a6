//! What a command prints: one JSON object with `--json`, else text lines.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::json;
use snapstore::internal::Found;
use snapstore::{CacheInfo, LeaseInfo, Listing, PluginInfo, ResultInfo, StoreError};

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
    let dates = Dates::default();
    let mut result_columns: Vec<Column<ResultInfo>> = vec![
        Column::new("RESULT", |r: &ResultInfo, out| out.push_str(&r.id)),
        Column::new("BASE", |r: &ResultInfo, out| out.push_str(r.base.as_deref().unwrap_or("-"))),
        Column::new("CHILDREN", |r: &ResultInfo, out| push_display(out, r.children)),
        Column::new("CREATED", |r: &ResultInfo, out| dates.write(r.created, out)),
        Column::new("LAST USED", |r: &ResultInfo, out| dates.write(r.last_used, out)),
    ];
    if let Some(sizes) = sizes {
        result_columns.push(Column::new("SIZE", |r: &ResultInfo, out| {
            push_display(out, indicatif::HumanBytes(sizes[&r.id]))
        }));
    }
    result_columns.push(Column::new("PATH", |r: &ResultInfo, out| out.push_str(&r.path.to_string_lossy())));
    let cache_columns: [Column<CacheInfo>; 2] = [
        Column::new("CACHE", |c: &CacheInfo, out| out.push_str(&c.name)),
        Column::new("GENERATION", |c: &CacheInfo, out| push_display(out, c.generation)),
    ];
    let lease_columns: [Column<LeaseInfo>; 4] = [
        Column::new("LEASE", |l: &LeaseInfo, out| out.push_str(&l.record.lease)),
        Column::new("CACHE", |l: &LeaseInfo, out| out.push_str(&l.record.cache)),
        Column::new("KIND", |l: &LeaseInfo, out| out.push_str(if l.record.bound { "bound" } else { "held" })),
        Column::new("AGE", |l: &LeaseInfo, out| push_display(out, format_args!("{}s", l.age_seconds))),
    ];
    let tables = [
        table(&result_columns, &listing.results),
        table(&cache_columns, &listing.caches),
        table(&lease_columns, &listing.leases),
    ];
    tables.into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n")
}

/// A column of a text table: its header, and how a row writes its cell.
struct Column<'a, T> {
    header: &'static str,
    cell: Box<dyn Fn(&T, &mut String) + 'a>,
}

impl<'a, T> Column<'a, T> {
    fn new(header: &'static str, cell: impl Fn(&T, &mut String) + 'a) -> Self {
        Column { header, cell: Box::new(cell) }
    }
}

fn push_display(out: &mut String, value: impl std::fmt::Display) {
    use std::fmt::Write;
    let _ = write!(out, "{value}");
}

/// Dates as RFC 3339 seconds. Results made together share their second:
/// each second is formatted once, then copied.
#[derive(Default)]
struct Dates {
    last: std::cell::RefCell<Option<(u64, String)>>,
}

impl Dates {
    fn write(&self, unix_seconds: f64, out: &mut String) {
        let seconds = unix_seconds.max(0.0) as u64;
        let mut last = self.last.borrow_mut();
        if !matches!(&*last, Some((at, _)) if *at == seconds) {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            *last = Some((seconds, humantime::format_rfc3339_seconds(time).to_string()));
        }
        if let Some((_, text)) = &*last {
            out.push_str(text);
        }
    }
}

/// Rows under a header, in columns as wide as their widest cell; nothing
/// if there are no rows. Each cell is written twice, to measure it, then
/// into the text, and never kept on its own: `list` prints 100 000 rows.
fn table<T>(columns: &[Column<T>], rows: &[T]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut widths: Vec<usize> = columns.iter().map(|c| c.header.chars().count()).collect();
    let mut cell = String::new();
    for row in rows {
        for (width, column) in widths.iter_mut().zip(columns) {
            cell.clear();
            (column.cell)(row, &mut cell);
            *width = (*width).max(cell.chars().count());
        }
    }
    let line_width: usize = widths.iter().map(|w| w + 2).sum();
    let mut text = String::with_capacity(line_width * (rows.len() + 1));
    let line = |text: &mut String, write: &dyn Fn(usize, &mut String)| {
        let start = text.len();
        for (i, width) in widths.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let cell_start = text.len();
            write(i, text);
            let written = text[cell_start..].chars().count();
            text.extend(std::iter::repeat_n(' ', width.saturating_sub(written)));
        }
        let end = start + text[start..].trim_end().len();
        text.truncate(end);
        text.push('\n');
    };
    line(&mut text, &|i, text| text.push_str(columns[i].header));
    for row in rows {
        line(&mut text, &|i, text| (columns[i].cell)(row, text));
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
