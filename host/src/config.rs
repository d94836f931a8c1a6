//! The TOML config: where it is found and what it may contain.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use store_api::StoreError;

/// The backend used when the config names none.
pub const DEFAULT_BACKEND: &str = "rsync";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config was read from (for error messages).
    pub file: PathBuf,
    /// A plugin name, or a path to a plugin library.
    pub backend: String,
    /// The store's root directory (absolute).
    pub root: PathBuf,
    /// Extra directories searched for plugins first (absolute).
    pub plugin_dirs: Vec<PathBuf>,
    /// The `[backend]` table, passed to the plugin.
    pub backend_options: toml::Table,
    /// Where each `[backend]` option is in the file: key, line, and the
    /// value if it is a string.
    option_lines: Vec<(String, usize, Option<String>)>,
    /// The `[remote]` table: the registry results are shared through.
    pub remote: Option<RemoteConfig>,
}

/// The `[backend]` table again, with the place of each value.
#[derive(Deserialize)]
struct BackendSpans {
    #[serde(default)]
    backend: std::collections::BTreeMap<String, toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    store: RawStore,
    #[serde(default)]
    backend: toml::Table,
    remote: Option<toml::Spanned<RawRemote>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<String>,
    root: PathBuf,
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
}

fn config_error(file: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::invalid(shorten(&format!("{}: {message}", file.display())))
}

/// The longest word (e.g. a quoted value) an error message shows in full.
const MAX_WORD: usize = 100;
/// The longest error message, in bytes.
const MAX_MESSAGE: usize = 1000;

/// An error message fit for one line: control characters become spaces,
/// and long words (values quoted from the config, names made of them) and
/// the message itself are cut, saying how long they were.
pub fn shorten(message: &str) -> String {
    let one_line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let cut = |text: &str, keep: usize| {
        let end = (0..=keep).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        format!("{}… ({} bytes)", &text[..end], text.len())
    };
    let words: Vec<String> = one_line
        .split(' ')
        .map(|word| if word.len() > MAX_WORD { cut(word, MAX_WORD / 2) } else { word.to_string() })
        .collect();
    let joined = words.join(" ");
    if joined.len() > MAX_MESSAGE {
        cut(&joined, MAX_MESSAGE / 2)
    } else {
        joined
    }
}

impl Config {
    /// Finds the config: `explicit`, else `$SNAPSTORE_CONFIG`, else
    /// `./snapstore.toml`, else `/etc/snapstore/config.toml`.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, StoreError> {
        Self::load(&Self::locate(explicit)?.0)
    }

    /// The config file [`Config::discover`] reads, and why that one.
    pub fn locate(explicit: Option<&Path>) -> Result<(PathBuf, &'static str), StoreError> {
        if let Some(file) = explicit {
            return Ok((file.to_path_buf(), "given with --config"));
        }
        if let Some(file) = env::var_os("SNAPSTORE_CONFIG").filter(|f| !f.is_empty()) {
            return Ok((PathBuf::from(file), "named by $SNAPSTORE_CONFIG"));
        }
        let defaults = [
            ("snapstore.toml", "./snapstore.toml in the current directory"),
            (
                "/etc/snapstore/config.toml",
                "the system default (no --config, $SNAPSTORE_CONFIG or ./snapstore.toml)",
            ),
        ];
        for (file, why) in defaults {
            if Path::new(file).exists() {
                return Ok((PathBuf::from(file), why));
            }
        }
        Err(StoreError::invalid(
            "no config found: pass --config FILE, set SNAPSTORE_CONFIG, or create ./snapstore.toml \
             or /etc/snapstore/config.toml",
        ))
    }

    pub fn load(file: &Path) -> Result<Config, StoreError> {
        let text = fs::read_to_string(file)
            .map_err(|e| config_error(file, format_args!("cannot read config: {e}")))?;
        Self::parse(file, &text)
    }

    /// Parses config text; relative paths are relative to the file's directory.
    pub fn parse(file: &Path, text: &str) -> Result<Config, StoreError> {
        let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
        let raw: RawConfig = toml::from_str(text).map_err(|err| {
            let place = err.span().map(|span| format!(" (line {})", line_of(span.start)));
            config_error(file, format_args!("{}{}", err.message(), place.unwrap_or_default()))
        })?;
        let spans: BackendSpans = toml::from_str(text).map_err(|err| config_error(file, err.message()))?;
        let option_lines = spans
            .backend
            .iter()
            .map(|(key, value)| {
                let string = value.get_ref().as_str().map(str::to_string);
                (key.clone(), line_of(value.span().start), string)
            })
            .collect();
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let absolute = |p: &Path| {
            let joined = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
            std::path::absolute(&joined).unwrap_or(joined)
        };
        if raw.store.root.as_os_str().is_empty() {
            return Err(config_error(file, "[store] root is empty; set it to the store's directory"));
        }
        if raw.store.root.to_str().is_none() {
            return Err(config_error(file, "[store] root must be valid UTF-8"));
        }
        let mut backend = raw.store.backend.unwrap_or_else(|| DEFAULT_BACKEND.to_string());
        if backend.is_empty() {
            return Err(config_error(file, "[store] backend is empty; name a plugin, e.g. \"rsync\""));
        }
        if backend.contains('/') {
            backend = absolute(Path::new(&backend)).to_string_lossy().into_owned();
        }
        Ok(Config {
            file: file.to_path_buf(),
            backend,
            root: absolute(&raw.store.root),
            plugin_dirs: raw.store.plugin_dirs.iter().map(|d| absolute(d)).collect(),
            backend_options: raw.backend,
            option_lines,
            remote: raw.remote.map(|r| RemoteConfig::from_raw(file, r, &line_of, &absolute)).transpose()?,
        })
    }

    /// A config built in code, for embedders that have no file.
    pub fn new(backend: &str, root: &Path) -> Config {
        Config {
            file: PathBuf::from("<built-in config>"),
            backend: backend.to_string(),
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
            plugin_dirs: Vec::new(),
            backend_options: toml::Table::new(),
            option_lines: Vec::new(),
            remote: None,
        }
    }

    pub fn error(&self, message: impl std::fmt::Display) -> StoreError {
        config_error(&self.file, message)
    }

    /// The plugin's refusal of its `[backend]` options, naming the file and,
    /// where the message quotes an option or its value, the line.
    pub(crate) fn backend_error(&self, err: StoreError) -> StoreError {
        let message = err.message();
        // The option quoted first: "unknown field `mood`, expected `mode`".
        let quoted = |word: &str| message.find(&format!("`{word}`"));
        let place = self
            .option_lines
            .iter()
            .filter_map(|(key, line, value)| {
                let at = [quoted(key), value.as_deref().and_then(quoted)].into_iter().flatten().min()?;
                Some((at, line))
            })
            .min()
            .map(|(_, line)| format!(" (line {line})"))
            .unwrap_or_default();
        StoreError::new(err.kind(), format!("{}: {message}{place}", self.file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, StoreError> {
        Config::parse(Path::new("/etc/s.toml"), text)
    }

    #[test]
    fn minimal_config() {
        let c = parse("[store]\nroot = \"data\"\n").unwrap();
        assert_eq!(c.backend, "rsync");
        assert_eq!(c.root, Path::new("/etc/data"));
    }

    #[test]
    fn unknown_keys_name_file_key_and_line() {
        let err = parse("[store]\nroot = \"/x\"\nbackends = \"zfs\"\n").unwrap_err();
        let msg = err.message();
        assert!(msg.contains("/etc/s.toml") && msg.contains("backends") && msg.contains("line 3"), "{msg}");
        let err = parse("[store]\nroot = \"/x\"\n[extra]\n").unwrap_err();
        assert!(err.message().contains("extra"), "{err}");
    }

    #[test]
    fn malformed_and_incomplete() {
        assert!(parse("[store\nroot=1").unwrap_err().message().contains("/etc/s.toml"));
        assert!(parse("[store]\n").unwrap_err().message().contains("root"));
        assert!(!parse("[store]\nroot = 5\n").unwrap_err().message().contains('\n'));
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let value = "A".repeat(5_000_000);
        for text in [
            format!("[store]\nroot = [\"{value}\"]\n"),
            format!("[store]\nroot = \"x\"\n{value} = 1\n"),
            format!("[store]\nroot = \"x\"\nbackend = 5\nextra = \"{}\"\n", "a b\\n".repeat(100_000)),
        ] {
            let msg = parse(&text).unwrap_err().message().to_string();
            assert!(msg.len() < 1200 && !msg.contains('\n') && msg.contains("/etc/s.toml"), "{}", msg.len());
        }
        assert_eq!(shorten("short `value`"), "short `value`");
        let cut = shorten(&format!("unknown variant `{}`", "é".repeat(100)));
        assert!(cut.starts_with("unknown variant `é") && cut.ends_with("(202 bytes)"), "{cut}");
    }

    #[test]
    fn backend_errors_name_the_file_and_line() {
        let c = parse("[store]\nroot=\"/x\"\n\n[backend]\nmode = \"fast\"\nmood = \"copy\"\n").unwrap();
        let err = c.backend_error(StoreError::invalid("[backend]: unknown field `mood`, expected `mode`"));
        assert_eq!(err.message(), "/etc/s.toml: [backend]: unknown field `mood`, expected `mode` (line 6)");
        let err = c.backend_error(StoreError::invalid("unknown variant `fast`"));
        assert!(err.message().ends_with("(line 5)"), "{err}");
        let err = c.backend_error(StoreError::invalid("no such thing"));
        assert_eq!(err.message(), "/etc/s.toml: no such thing");
    }

    #[test]
    fn backend_table_is_passed_through() {
        let c =
            parse("[store]\nroot=\"/x\"\nbackend=\"./p/libx.so\"\n[backend]\nmode=\"hardlink\"\n").unwrap();
        assert_eq!(c.backend, "/etc/p/libx.so");
        assert_eq!(c.backend_options["mode"].as_str(), Some("hardlink"));
    }
}

// ---- The [remote] table (the registry a fleet shares results through) ----

/// The `[remote]` table:
///
/// ```toml
/// [remote]
/// url = "docker://registry.example:5000/ci/results"
/// insecure = false        # true: no certificate check; plain HTTP if the registry has no TLS
/// certs_dir = "/etc/containers/certs.d"   # where HOST:PORT/*.crt are (default: as podman)
/// pull = "on-miss"        # or "never" (the default): result/build pull a missing id
/// push = "after-build"    # or "never" (the default): every new result is pushed
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository results are pushed to, as tags.
    pub repository: String,
    pub insecure: bool,
    pub certs_dir: Option<PathBuf>,
    pub pull: PullPolicy,
    pub push: PushPolicy,
}

/// When results are pulled from the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// `result ID` and `build --base ID` pull an id missing here.
    OnMiss,
    /// Only `snapstore pull`.
    #[default]
    Never,
}

/// When results are pushed to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushPolicy {
    /// Every result a build commits.
    AfterBuild,
    /// Only `snapstore push`.
    #[default]
    Never,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    url: toml::Spanned<String>,
    #[serde(default)]
    insecure: bool,
    certs_dir: Option<PathBuf>,
    #[serde(default)]
    pull: PullPolicy,
    #[serde(default)]
    push: PushPolicy,
}

impl RemoteConfig {
    fn from_raw(
        file: &Path,
        raw: toml::Spanned<RawRemote>,
        line_of: &dyn Fn(usize) -> usize,
        absolute: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<RemoteConfig, StoreError> {
        let raw = raw.into_inner();
        let line = line_of(raw.url.span().start);
        let url = raw.url.into_inner();
        let bad = |why: String| {
            config_error(
                file,
                format_args!(
                    "[remote] url `{}` {why}; use docker://HOST[:PORT]/REPOSITORY (line {line})",
                    url.escape_debug()
                ),
            )
        };
        let parsed = crate::oci::ImageRef::parse(&url).map_err(|e| bad(format!("is not valid: {e}")))?;
        let crate::oci::ImageRef::Docker { registry, repository, reference } = parsed else {
            return Err(bad("is not a registry".into()));
        };
        if reference.is_some() {
            return Err(bad("names a tag or digest (each result is its own tag)".into()));
        }
        Ok(RemoteConfig {
            registry,
            repository,
            insecure: raw.insecure,
            certs_dir: raw.certs_dir.map(|d| absolute(&d)),
            pull: raw.pull,
            push: raw.push,
        })
    }

    /// `docker://HOST[:PORT]/REPOSITORY`.
    pub fn url(&self) -> String {
        format!("docker://{}/{}", self.registry, self.repository)
    }
}
