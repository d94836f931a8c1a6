//! The commands of the config's `[remote]`: push, pull, remote list and
//! remote prune (the library's `remote` module does the work).

use serde_json::json;
use snapstore::{remote, BlockingStore, Config, RemoteConfig, StoreError};

use super::args::{Cli, RemoteCmd};
use super::output::{to_json, Output};

/// The store, and the config's remote (configured for this process).
pub fn open_with_remote(cli: &Cli) -> Result<(BlockingStore, Option<RemoteConfig>), StoreError> {
    open_config_with_remote(Config::discover(cli.config.as_deref())?)
}

/// The same, with the config already read.
pub fn open_config_with_remote(config: Config) -> Result<(BlockingStore, Option<RemoteConfig>), StoreError> {
    if let Some(r) = &config.remote {
        remote::configure(r);
    }
    Ok((BlockingStore::open(&config)?, config.remote))
}

fn required(config_remote: Option<RemoteConfig>, cli: &Cli) -> Result<RemoteConfig, StoreError> {
    config_remote.ok_or_else(|| {
        let file =
            Config::locate(cli.config.as_deref()).map(|(f, _)| f.display().to_string()).unwrap_or_default();
        StoreError::invalid(format!(
            "no [remote] in the config {file}: add one with url = \"docker://HOST[:PORT]/REPOSITORY\""
        ))
    })
}

pub fn push(cli: &Cli, id: Option<&str>, pending: bool) -> Result<Output, StoreError> {
    let (store, config_remote) = open_with_remote(cli)?;
    let remote = required(config_remote, cli)?;
    if pending {
        let done = remote::push_pending(&store, &remote)?;
        let failed = done.iter().filter(|p| !p.pushed).count();
        let text: Vec<String> = done
            .iter()
            .map(|p| match &p.error {
                None => format!("{} pushed", p.id),
                Some(e) => format!("{} not pushed: {e}", p.id),
            })
            .collect();
        let status = if failed > 0 { super::exit::code(snapstore::ErrorKind::OTHER) } else { 0 };
        return Ok(Output::with_status(json!({"pushed": done}), text.join("\n"), status));
    }
    let id = id.expect("clap requires an id without --pending");
    let report = remote::push(&store, &remote, id)?;
    let text = format!(
        "{} {} ({} layers pushed, {} already there, {} bytes)",
        report.reference, report.digest, report.layers_written, report.layers_skipped, report.bytes_written
    );
    Ok(Output::new(to_json(&report)?, text))
}

pub fn pull(cli: &Cli, id: &str) -> Result<Output, StoreError> {
    let (store, config_remote) = open_with_remote(cli)?;
    let remote = required(config_remote, cli)?;
    let report = remote::pull(&store, &remote, id)?;
    super::commands::imported(&store, id, &report, "pulled")
}

pub fn remote(cli: &Cli, cmd: &RemoteCmd) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let remote = required(config.remote, cli)?;
    match cmd {
        RemoteCmd::List => {
            let images = remote::list(&remote)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let text: Vec<String> = images
                .iter()
                .map(|i| {
                    let age = i
                        .created
                        .map(|c| {
                            humantime::format_duration(std::time::Duration::from_secs(
                                (now - c).max(0.0) as u64
                            ))
                        })
                        .map_or("?".to_string(), |d| d.to_string());
                    format!("{}\t{}\t{} bytes\t{age} old", i.tag, i.id.as_deref().unwrap_or("-"), i.size)
                })
                .collect();
            Ok(Output::new(json!({"remote": remote.url(), "images": images}), text.join("\n")))
        }
        RemoteCmd::Prune { older_than, dry_run } => {
            let deleted = remote::prune(&remote, *older_than, *dry_run)?;
            let verb = if *dry_run { "would delete" } else { "deleted" };
            let text: Vec<String> = deleted.iter().map(|t| format!("{verb} {t}")).collect();
            Ok(Output::new(json!({"deleted": deleted, "dry_run": dry_run}), text.join("\n")))
        }
    }
}
