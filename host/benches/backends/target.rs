//! One backend on one filesystem, through the CLI, the API and the bare
//! backend.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use snapstore::{BlockingStore, Config};
use store_api::plugin::RemoteBackend;

use crate::reference::{Kind, Reference};
use crate::util::{run, s};

/// The `snapstore` command on one config.
pub struct Cli {
    pub bin: PathBuf,
    pub config: PathBuf,
}

impl Cli {
    pub fn run(&self, args: &[&str]) -> String {
        run(Command::new(&self.bin).arg("--config").arg(&self.config).args(args).env_remove("SNAPSTORE_LOG"))
    }
}

/// One backend on one filesystem, ready to measure.
pub struct Target {
    pub label: String,
    pub kind: Kind,
    /// The filesystem to sync between steps.
    pub mnt: PathBuf,
    pub cli: Cli,
    pub api: BlockingStore,
    pub backend: RemoteBackend,
    pub reference: Reference,
    pub iters: usize,
    pub big: usize,
}

/// Writes a config for `backend` at `root` and opens it through the API.
pub fn open_store(
    bin: &Path,
    work: &Path,
    name: &str,
    backend: &str,
    root: &Path,
    options: &str,
) -> (Cli, BlockingStore, Config) {
    let config = work.join(format!("{name}.toml"));
    let plugins = bin.parent().expect("bin dir");
    // plugin_dirs: the bench runs from target/release/deps, not beside the plugins.
    let text = format!(
        "[store]\nbackend = \"{backend}\"\nroot = \"{}\"\nplugin_dirs = [\"{}\"]\n{options}",
        s(root),
        s(plugins)
    );
    fs::write(&config, text).expect("write config");
    let loaded = Config::load(&config).expect("config");
    let api = BlockingStore::open(&loaded).unwrap_or_else(|e| panic!("open {name}: {e}"));
    let cli = Cli { bin: bin.to_path_buf(), config };
    (cli, api, loaded)
}

impl Target {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Rsync => "rsync",
            Kind::Btrfs => "btrfs",
            Kind::Xfs => "xfs-reflink",
            Kind::Zfs => "zfs",
        }
    }
}
