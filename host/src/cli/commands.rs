//! The commands: each takes the parsed arguments, does its work through
//! the library and returns what to print.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use snapstore::internal::{find_plugins, parse_owner};
use snapstore::internal::{supervise, Activity};
use snapstore::{BlockingStore, Config, LeaseKind, Owner, PruneOptions, ReleaseMode, Released, StoreError};

use super::args::{CacheCmd, Cli, Cmd, SortBy};
use super::output::{backends_text, check_text, listing_text, to_json, Output, StdoutToStderr};
use super::sizes::tree_size;
use super::{exit, info};

/// Runs the command `cli` names.
pub fn run(cli: &Cli) -> Result<Output, StoreError> {
    match &cli.command {
        Cmd::Build { id, base, command } => build(&open(cli)?, base.as_deref(), id, command, cli.json),
        Cmd::Result { id } => result(&open(cli)?, id, cli.json),
        Cmd::Delete { id } => {
            open(cli)?.delete(id).map(|()| Output::new(json!({"id": id, "deleted": true}), ""))
        }
        Cmd::Cache(cmd) => cache(&open(cli)?, cmd, cli.json),
        Cmd::Df => info::df(&open(cli)?),
        Cmd::Root => Ok(Output::path("root", open(cli)?.root())),
        Cmd::StateDir => Ok(Output::path("state_dir", &open(cli)?.state_dir())),
        Cmd::CompleteDeletes => {
            open(cli)?.complete_deletes().map(|()| Output::new(json!({"completed": true}), ""))
        }
        Cmd::List { sort, reverse, sizes } => list(&open(cli)?, *sort, *reverse, *sizes),
        Cmd::Prune { limit, older_than, until_free } => {
            let options = PruneOptions { limit: *limit, older_than: *older_than, until_free: *until_free };
            prune(&open(cli)?, &options, cli.json)
        }
        Cmd::Check => check(cli),
        Cmd::Info => info::info(cli),
        Cmd::Completions { shell } => Ok(info::completions(*shell)),
        Cmd::Man => info::man(),
        Cmd::Backends => backends(cli),
        Cmd::Conformance => conformance(&open(cli)?, cli.json),
        Cmd::Stress { jobs, parallel } => stress(&open(cli)?, *jobs, *parallel),
    }
}

fn open(cli: &Cli) -> Result<BlockingStore, StoreError> {
    BlockingStore::open(&Config::discover(cli.config.as_deref())?)
}

fn build(
    store: &BlockingStore,
    base: Option<&str>,
    id: &str,
    command: &[String],
    as_json: bool,
) -> Result<Output, StoreError> {
    let build = {
        let _cloning = Activity::start(|| match base {
            Some(base) => format!("cloning result `{base}` for `{id}`"),
            None => format!("making an empty tree for `{id}`"),
        });
        store.begin_build(base, id)?
    };
    let status = {
        let _quiet = StdoutToStderr::new(as_json);
        supervise::run(command, build.path(), build.tree())?
    };
    if status != 0 {
        build.abort()?;
        eprintln!("error: `{}` failed with status {status}; result `{id}` not recorded", command[0]);
        return Ok(Output::with_status(json!({"id": id, "path": null, "status": status}), "", status));
    }
    let path = {
        let _saving = Activity::start(|| format!("saving result `{id}`"));
        build.commit()?
    };
    Ok(Output::new(json!({"id": id, "path": path, "status": 0}), path.display().to_string()))
}

fn result(store: &BlockingStore, id: &str, as_json: bool) -> Result<Output, StoreError> {
    match store.result(id)? {
        Some(path) => Ok(Output::new(json!({"id": id, "path": path}), path.display().to_string())),
        None if as_json => Ok(Output::new(json!({"id": id, "path": null}), "")),
        None => Err(StoreError::not_found(format!("no result `{id}`"))),
    }
}

fn cache(store: &BlockingStore, cmd: &CacheCmd, as_json: bool) -> Result<Output, StoreError> {
    match cmd {
        CacheCmd::Acquire { name, user } => cache_acquire(store, name, owner(user)?),
        CacheCmd::Release { lease, discard } => cache_release(store, lease, *discard),
        CacheCmd::Run { name, user, command } => cache_run(store, name, owner(user)?, command, as_json),
        CacheCmd::Delete { name } => {
            store.delete_cache(name).map(|()| Output::new(json!({"cache": name, "deleted": true}), ""))
        }
    }
}

fn owner(user: &Option<String>) -> Result<Option<Owner>, StoreError> {
    user.as_deref().map(parse_owner).transpose()
}

fn cache_acquire(store: &BlockingStore, name: &str, owner: Option<Owner>) -> Result<Output, StoreError> {
    let lease = {
        let _copying = Activity::start(|| format!("copying cache `{name}`"));
        store.acquire_cache(name, owner, LeaseKind::UntilReleased)?
    };
    let text = format!("{} {}", lease.id, lease.path.display());
    Ok(Output::new(json!({"lease": lease.id, "path": lease.path}), text))
}

fn cache_release(store: &BlockingStore, lease: &str, discard: bool) -> Result<Output, StoreError> {
    let mode = if discard { ReleaseMode::Discard } else { ReleaseMode::PublishIfCurrent };
    let published = store.release_id(lease, mode)? == Released::Published;
    let text = if published { "published" } else { "discarded" };
    Ok(Output::new(json!({"lease": lease, "published": published}), text))
}

fn cache_run(
    store: &BlockingStore,
    name: &str,
    owner: Option<Owner>,
    command: &[String],
    as_json: bool,
) -> Result<Output, StoreError> {
    let lease = {
        let _copying = Activity::start(|| format!("copying cache `{name}`"));
        store.acquire_cache(name, owner, LeaseKind::BoundToProcess)?
    };
    let copy = store_api::Key::new(store_api::Namespace::CacheTmp, &lease.id)?;
    let status = {
        let _quiet = StdoutToStderr::new(as_json);
        supervise::run(command, &lease.path, &copy)
    };
    // Released whatever the command's status: the copy is published
    // unless the cache changed meanwhile.
    let released = store.release(lease)?;
    let status = status?;
    let published = released == Released::Published;
    let json = json!({"cache": name, "published": published, "status": status});
    Ok(Output::with_status(json, "", status))
}

fn list(store: &BlockingStore, sort: SortBy, reverse: bool, sizes: bool) -> Result<Output, StoreError> {
    let mut listing = store.list()?;
    let sizes: Option<HashMap<String, u64>> = (sizes || matches!(sort, SortBy::Size))
        .then(|| listing.results.iter().map(|r| (r.id.clone(), tree_size(&r.path))).collect());
    match sort {
        SortBy::Id => {}
        SortBy::Created => listing.results.sort_by(|a, b| a.created.total_cmp(&b.created)),
        SortBy::LastUsed => listing.results.sort_by(|a, b| a.last_used.total_cmp(&b.last_used)),
        SortBy::Size => listing.results.sort_by_key(|r| sizes.as_ref().map(|s| s[&r.id])),
    }
    if reverse {
        listing.results.reverse();
    }
    let mut json = to_json(&listing)?;
    if let (Some(sizes), Some(results)) = (&sizes, json["results"].as_array_mut()) {
        for result in results {
            result["size"] = json!(result["id"].as_str().map(|id| sizes[id]));
        }
    }
    Ok(Output::new(json, listing_text(&listing, sizes.as_ref())))
}

fn check(cli: &Cli) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let store = BlockingStore::open(&config)?;
    let plugin = store.plugin().expect("a store opened from a config has a plugin");
    let found = store.check()?;
    let missing: Vec<String> = (config.plugin_dirs.iter().filter(|d| !d.is_dir()))
        .map(|d| format!("plugin_dirs entry {} is not a directory; it is skipped", d.display()))
        .collect();
    let text = check_text(&config.file, plugin, store.root(), &found, &missing);
    let json = json!({"config": config.file, "plugin": plugin, "root": store.root(), "checks": found,
        "warnings": missing});
    Ok(Output::new(json, text))
}

fn backends(cli: &Cli) -> Result<Output, StoreError> {
    // The config only adds plugin_dirs: `backends` works without one.
    let dirs = match Config::discover(cli.config.as_deref()) {
        Ok(config) => config.plugin_dirs,
        Err(_) if cli.config.is_none() => Vec::new(),
        Err(err) => return Err(err),
    };
    let found = find_plugins(&dirs);
    Ok(Output::new(json!({ "backends": found }), backends_text(&found)))
}

fn conformance(store: &BlockingStore, as_json: bool) -> Result<Output, StoreError> {
    let report = snapstore::conformance::run(store, |case| {
        if !as_json {
            println!("{case}");
        }
    });
    let cases: Vec<_> = report
        .cases
        .iter()
        .map(|c| json!({"case": c.name, "passed": c.outcome.is_ok(), "error": c.outcome.as_ref().err()}))
        .collect();
    let failures = report.failures();
    let text = format!("{} cases, {failures} failed", report.cases.len());
    let json = json!({"backend": store.backend_name(), "cases": cases, "failures": failures});
    Ok(Output::with_status(json, text, if failures == 0 { 0 } else { exit::FAILED_CASES }))
}

fn stress(store: &BlockingStore, jobs: usize, parallel: usize) -> Result<Output, StoreError> {
    let report = snapstore::internal::stress(store, jobs, parallel)?;
    let text = format!(
        "jobs {} failures {} seconds {:.2} jobs/s {:.1}",
        report.jobs, report.failures, report.seconds, report.jobs_per_second
    );
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let status = if report.failures == 0 { 0 } else { exit::FAILED_CASES };
    Ok(Output::with_status(to_json(&report)?, text, status))
}

fn prune(store: &BlockingStore, options: &PruneOptions, as_json: bool) -> Result<Output, StoreError> {
    let started = Instant::now();
    let mut last_progress = started;
    let mut count = 0;
    let report = store.prune(options, |id| {
        count += 1;
        if !as_json {
            println!("deleted {id}");
        }
        // A progress line on long runs, for the operator watching stderr.
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!("prune: {count} deleted in {:.0}s", started.elapsed().as_secs_f64());
            last_progress = Instant::now();
        }
    })?;
    let text = format!("stopped: {}", report.stopped);
    Ok(Output::new(json!({"deleted": report.deleted, "stopped": report.stopped}), text))
}
