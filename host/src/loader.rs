//! Finding and loading backend plugins.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use store_api::abi::{v1_0, v1_1, PluginModRef};
use store_api::plugin::RemoteBackend;
use store_api::{ErrorKind, StoreError};

use crate::config::Config;
use crate::plugin_file::PluginFile;

/// The file name of plugin `name`: `libsnapstore_NAME.so`, hyphens as underscores.
pub fn library_file_name(name: &str) -> String {
    format!("libsnapstore_{}.so", name.replace('-', "_"))
}

/// Directories searched for plugins, in order: `plugin_dirs` of the config,
/// `$SNAPSTORE_PLUGIN_PATH`, the directory of the running executable and
/// `../lib/snapstore` beside it. Never the current directory.
pub fn search_path(config_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = config_dirs.to_vec();
    if let Some(path) = env::var_os("SNAPSTORE_PLUGIN_PATH") {
        dirs.extend(env::split_paths(&path).filter(|d| d.is_absolute()));
    }
    if let Some(exe_dir) = env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join("../lib/snapstore"));
        dirs.insert(dirs.len() - 1, exe_dir);
    }
    dirs
}

/// A loaded plugin's identity.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The store-api version the plugin was built against.
    pub api_version: String,
    pub file: PathBuf,
}

/// A plugin library, loaded and checked.
pub struct Plugin {
    pub info: PluginInfo,
    module: Module,
}

/// The root module, in the interface version the plugin was built against.
#[derive(Clone, Copy)]
enum Module {
    Current(PluginModRef),
    V1_0(v1_0::PluginModRef),
    V1_1(v1_1::PluginModRef),
}

/// A one-line message for a library abi_stable would not load.
fn load_error(err: LibraryError, file: &Path, library_version: &str) -> StoreError {
    let shown = file.display();
    match err {
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            incompatible(format!(
                "plugin {shown} was built against store-api {actual_version}, \
             but this snapstore uses store-api {expected_version} (the major versions must match); \
             rebuild the plugin against store-api {}.x",
                expected_version.major
            ))
        }
        LibraryError::AbiInstability(_) => incompatible(format!(
            "plugin {shown} has an interface layout incompatible with this snapstore \
             (store-api {library_version} in the plugin, {} here); rebuild it",
            store_api::API_VERSION
        )),
        LibraryError::InvalidAbiHeader(_) => incompatible(format!(
            "plugin {shown} was built with an incompatible abi_stable version; rebuild it"
        )),
        other => {
            let text = other.to_string();
            incompatible(format!("cannot load plugin {shown}: {}", text.lines().next().unwrap_or("")))
        }
    }
}

/// A plugin that is not there: the store is unavailable, not misused.
fn unavailable(err: StoreError) -> StoreError {
    StoreError::new(ErrorKind::UNSUPPORTED, err.message())
}

fn incompatible(message: String) -> StoreError {
    StoreError::new(ErrorKind::INCOMPATIBLE, message)
}

impl Plugin {
    /// Loads and checks the library at `file`.
    pub fn load(file: &Path) -> Result<Plugin, StoreError> {
        let opened = PluginFile::open(file)?;
        let shown = file.display();
        let header = lib_header_from_path(&opened.load_path).map_err(|err| match err {
            LibraryError::OpenError { .. } => incompatible(format!(
                "cannot load plugin {shown}: {}",
                opened.explain(
                    err.to_string().lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or(""),
                    file
                )
            )),
            LibraryError::GetSymbolError { .. } => incompatible(format!(
                "{shown} is not a snapstore plugin (it exports no abi_stable root module)"
            )),
            other => incompatible(format!(
                "cannot load plugin {shown}: {}",
                opened.explain(&other.to_string(), file)
            )),
        })?;
        let library_version = header.version_strings().version.to_string();
        let module = match header.init_root_module::<PluginModRef>() {
            Ok(module) => Module::Current(module),
            // abi_stable refuses a vtable shorter than ours: a plugin of an
            // earlier minor version loads through that version's frozen interface.
            Err(LibraryError::AbiInstability(_)) if library_version.starts_with("1.0.") => {
                let module = header.init_root_module::<v1_0::PluginModRef>();
                Module::V1_0(module.map_err(|err| load_error(err, file, &library_version))?)
            }
            Err(LibraryError::AbiInstability(_)) if library_version.starts_with("1.1.") => {
                let module = header.init_root_module::<v1_1::PluginModRef>();
                Module::V1_1(module.map_err(|err| load_error(err, file, &library_version))?)
            }
            Err(err) => return Err(load_error(err, file, &library_version)),
        };
        let (name, version) = match module {
            Module::Current(m) => (m.name(), m.version()),
            Module::V1_0(m) => (m.name(), m.version()),
            Module::V1_1(m) => (m.name(), m.version()),
        };
        let info = PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            api_version: library_version,
            file: file.to_path_buf(),
        };
        Ok(Plugin { info, module })
    }

    /// Finds and loads the plugin the config names, checking its declared name.
    pub fn for_config(config: &Config) -> Result<Plugin, StoreError> {
        let by_path = config.backend.contains('/');
        let file = if by_path {
            PathBuf::from(&config.backend)
        } else {
            let wanted = library_file_name(&config.backend);
            let dirs = search_path(&config.plugin_dirs);
            dirs.iter().map(|d| d.join(&wanted)).find(|f| f.is_file()).ok_or_else(|| {
                let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                unavailable(config.error(format_args!(
                    "[store] backend = \"{}\": no plugin {wanted} in {}; build it, add its directory \
                     to plugin_dirs or SNAPSTORE_PLUGIN_PATH, or run `snapstore backends`",
                    config.backend,
                    list.join(", ")
                )))
            })?
        };
        if by_path && !file.is_file() {
            let missing = config.error(format_args!("[store] backend: no plugin file {}", file.display()));
            return Err(unavailable(missing));
        }
        let plugin = Plugin::load(&file).map_err(|e| e.context(config.file.display()))?;
        if !by_path && plugin.info.name != config.backend {
            return Err(config.error(format_args!(
                "[store] backend = \"{}\", but plugin {} declares itself as `{}`",
                config.backend,
                file.display(),
                plugin.info.name
            )));
        }
        Ok(plugin)
    }

    /// Opens the backend on `root` with the config's `[backend]` options.
    pub fn open(&self, root: &Path, options: &toml::Table) -> Result<RemoteBackend, StoreError> {
        let root = root.to_str().ok_or_else(|| StoreError::invalid("the store root must be UTF-8"))?;
        let options = toml::to_string(options).map_err(|e| StoreError::invalid(e.to_string()))?;
        let (root, options) = (root.into(), options.as_str().into());
        // A plugin may quote a config value in full: cut it to one short line.
        // Opening looks up no key: "not found" there is a missing
        // prerequisite (a pool, a dataset), as on every backend.
        let short = |e: StoreError| {
            let kind = if e.kind() == ErrorKind::NOT_FOUND { ErrorKind::UNSUPPORTED } else { e.kind() };
            let mut message = crate::config::shorten(e.message());
            if kind == ErrorKind::PERMISSION {
                let uid = nix::unistd::geteuid();
                message += &format!(
                    "; the store root {root} must be writable by this user (uid {uid}): run snapstore as \
                     the root's owner, or give the root to this user"
                );
            }
            StoreError::new(kind, message)
        };
        Ok(match self.module {
            Module::Current(m) => {
                RemoteBackend::Current(m.open()(root, options).into_result().map_err(short)?)
            }
            Module::V1_0(m) => RemoteBackend::V1_0(m.open()(root, options).into_result().map_err(short)?),
            Module::V1_1(m) => RemoteBackend::V1_1(m.open()(root, options).into_result().map_err(short)?),
        })
    }
}

/// What `snapstore backends` reports for one library in the search path.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Found {
    Usable(PluginInfo),
    Unusable { file: PathBuf, error: String },
}

/// Every `libsnapstore_*.so` in the search path, loaded to read its identity.
pub fn find_plugins(config_dirs: &[PathBuf]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dir in search_path(config_dirs) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("libsnapstore_") && name.ends_with(".so")
            })
            .collect();
        files.sort();
        for file in files {
            let canonical = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !seen.insert(canonical) {
                continue;
            }
            found.push(match Plugin::load(&file) {
                // Found by name, it would be refused: the names must agree.
                Ok(plugin) if file.file_name() != Some(library_file_name(&plugin.info.name).as_ref()) => {
                    let error = format!(
                        "declares itself as `{}`: rename it to {} or name it by path",
                        plugin.info.name,
                        library_file_name(&plugin.info.name)
                    );
                    Found::Unusable { file, error }
                }
                Ok(plugin) => Found::Usable(plugin.info),
                Err(err) => Found::Unusable { file, error: err.message().to_string() },
            });
        }
    }
    found
}
