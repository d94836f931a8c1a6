//! The commands that describe snapstore itself: `info`, `df`, and the
//! shell completions and man page made from the argument definitions.

use std::path::Path;

use clap::CommandFactory;
use indicatif::HumanBytes;
use serde_json::json;
use snapstore::{BlockingStore, Config, StoreError};

use super::args::Cli;
use super::output::Output;

/// Free and total bytes of the filesystem holding `root`.
fn space(root: &Path) -> Result<(u64, u64), StoreError> {
    let stat = nix::sys::statvfs::statvfs(root)
        .map_err(|e| StoreError::io(format_args!("cannot stat {}", root.display()), &e.into()))?;
    let unit = stat.fragment_size() as u64;
    Ok((stat.blocks_available() as u64 * unit, stat.blocks() as u64 * unit))
}

/// `snapstore df`: the backend's free percentage, with the bytes beside it.
pub fn df(store: &BlockingStore) -> Result<Output, StoreError> {
    let percent = store.df()?;
    let (free, total) = space(store.root())?;
    let text = format!("{percent:.1}% free ({} of {})", HumanBytes(free), HumanBytes(total));
    let json = json!({"free_percent": percent, "free_bytes": free, "total_bytes": total});
    Ok(Output::new(json, text))
}

/// `snapstore info`: where everything comes from and what the store holds.
pub fn info(cli: &Cli) -> Result<Output, StoreError> {
    let (file, why) = Config::locate(cli.config.as_deref())?;
    let config = Config::load(&file)?;
    let store = BlockingStore::open(&config)?;
    let plugin = store.plugin().expect("a store opened from a config has a plugin");
    let listing = store.list()?;
    let percent = store.df()?;
    let (free, total) = space(store.root())?;
    let search: Vec<_> = snapstore::internal::search_path(&config.plugin_dirs);
    let json = json!({
        "snapstore": env!("CARGO_PKG_VERSION"),
        "store_api": store_api::API_VERSION,
        "config": {"file": config.file, "chosen_because": why},
        "plugin": plugin,
        "plugin_search_path": search,
        "root": store.root(),
        "state_dir": store.state_dir(),
        "results": listing.results.len(),
        "caches": listing.caches.len(),
        "leases": listing.leases.len(),
        "space": {"free_percent": percent, "free_bytes": free, "total_bytes": total},
    });
    let rows = [
        ("snapstore", format!("{} (store-api {})", env!("CARGO_PKG_VERSION"), store_api::API_VERSION)),
        ("config", format!("{} ({why})", config.file.display())),
        ("backend", format!("{} {} (store-api {})", plugin.name, plugin.version, plugin.api_version)),
        ("plugin", plugin.file.display().to_string()),
        ("root", store.root().display().to_string()),
        ("state dir", store.state_dir().display().to_string()),
        ("results", listing.results.len().to_string()),
        ("caches", listing.caches.len().to_string()),
        ("leases", listing.leases.len().to_string()),
        ("free", format!("{percent:.1}% ({} of {})", HumanBytes(free), HumanBytes(total))),
    ];
    let text: String =
        rows.iter().map(|(key, value)| format!("{:<10} {value}\n", format!("{key}:"))).collect();
    Ok(Output::new(json, text))
}

/// `snapstore completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Output {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "snapstore", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    Output::new(json!({"shell": shell.to_string(), "script": script}), script)
}

/// `snapstore man`: the man page, in roff.
pub fn man() -> Result<Output, StoreError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| StoreError::io("cannot render the man page", &e))?;
    let page = String::from_utf8_lossy(&page).into_owned();
    Ok(Output::new(json!({"man": page}), page))
}
