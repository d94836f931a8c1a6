//! The commands: each takes the parsed arguments, does its work through
//! the library and returns what to print.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use snapstore::internal::{find_plugins, parse_owner};
use snapstore::internal::{supervise, Activity};
use snapstore::{BlockingStore, Config, LeaseKind, Owner, PruneOptions, ReleaseMode, Released, StoreError};

use super::args::{CacheCmd, Cli, Cmd, ImageCompression, SortBy};
use super::output::{backends_text, check_text, listing_text, to_json, Output, StdoutToStderr};
use super::remote;
use super::{exit, info};

/// Runs the command `cli` names.
pub fn run(cli: &Cli) -> Result<Output, StoreError> {
    // A store this user cannot write to: the error says how to fix it.
    run_command(cli).map_err(|e| match Config::discover(cli.config.as_deref()) {
        Ok(config) => snapstore::internal::root::explain_unwritable(&config.root, e),
        Err(_) => e,
    })
}

fn run_command(cli: &Cli) -> Result<Output, StoreError> {
    match &cli.command {
        Cmd::Build { id, base, command } => {
            let (store, remote) = remote::open_with_remote(cli)?;
            if let Some(base) = base {
                snapstore::remote::pull_on_miss(&store, remote.as_ref(), base)?;
            }
            let mark = snapstore::remote::mark_before_build(&store, remote.as_ref(), id);
            let out = build(&store, base.as_deref(), id, command, cli.json);
            match &out {
                Ok(done) if done.status == 0 => {
                    if let Some(warning) =
                        snapstore::remote::push_after_build(&store, remote.as_ref(), id, mark)
                    {
                        eprintln!("warning: {warning}");
                    }
                }
                _ => snapstore::remote::unmark_failed_build(&store, id, mark),
            }
            out
        }
        Cmd::Result { id } => {
            // Most lookups find their result: answered without loading the plugin.
            let config = Config::discover(cli.config.as_deref())?;
            if let Some(path) = BlockingStore::result_without_plugin(&config, id) {
                return Ok(found(id, &path));
            }
            let (store, remote) = remote::open_config_with_remote(config)?;
            snapstore::remote::pull_on_miss(&store, remote.as_ref(), id)?;
            result(&store, id, cli.json)
        }
        Cmd::Delete { id } => {
            open(cli)?.delete(id).map(|()| Output::new(json!({"id": id, "deleted": true}), ""))
        }
        Cmd::Export { id, image, compression } => export(&open(cli)?, id, image, *compression),
        Cmd::Import { id, image } => import(&open(cli)?, id, image),
        Cmd::Push { id, pending } => remote::push(cli, id.as_deref(), *pending),
        Cmd::Pull { id } => remote::pull(cli, id),
        Cmd::Remote(cmd) => remote::remote(cli, cmd),
        Cmd::Cache(cmd) => cache(&open(cli)?, cmd, cli.json),
        Cmd::Df => info::df(&open(cli)?),
        Cmd::Root => Ok(Output::path("root", open(cli)?.root())),
        Cmd::StateDir => Ok(Output::path("state_dir", &open(cli)?.state_dir())),
        Cmd::CompleteDeletes => {
            open(cli)?.complete_deletes().map(|()| Output::new(json!({"completed": true}), ""))
        }
        Cmd::List { sort, reverse, sizes } => list(&open(cli)?, *sort, *reverse, *sizes, cli.json),
        Cmd::Prune { limit, older_than, until_free, all, dry_run } => {
            let (limit, older_than, until_free) = (*limit, *older_than, *until_free);
            let options = PruneOptions { limit, older_than, until_free, all: *all, dry_run: *dry_run };
            prune(cli, &options)
        }
        Cmd::Check => check(cli),
        Cmd::Init => init(cli),
        Cmd::Destroy { yes } => destroy(cli, *yes),
        Cmd::Info => info::info(cli),
        Cmd::Completions { shell } => Ok(info::completions(*shell)),
        Cmd::Man => info::man(),
        Cmd::Backends => backends(cli),
        Cmd::Conformance => conformance(&open(cli)?, cli.json),
        Cmd::Stress { jobs, parallel } => stress(&open(cli)?, *jobs, *parallel),
    }
}

fn open(cli: &Cli) -> Result<BlockingStore, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    // export/import to the remote's registry use its settings (insecure, certs_dir).
    if let Some(remote) = &config.remote {
        snapstore::remote::configure(remote);
    }
    BlockingStore::open(&config)
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
        Some(path) => Ok(found(id, &path)),
        None if as_json => Ok(Output::new(json!({"id": id, "path": null}), "")),
        None => Err(StoreError::not_found(format!("no result `{id}`"))),
    }
}

fn export(
    store: &BlockingStore,
    id: &str,
    image: &str,
    compression: ImageCompression,
) -> Result<Output, StoreError> {
    let compression = match compression {
        ImageCompression::Zstd => snapstore::Compression::Zstd,
        ImageCompression::Gzip => snapstore::Compression::Gzip,
    };
    let report = store.export(id, image, snapstore::ExportOptions { compression })?;
    let text = format!(
        "{} {} ({} layers written, {} already there, {} bytes)",
        report.reference, report.digest, report.layers_written, report.layers_skipped, report.bytes_written
    );
    Ok(Output::new(to_json(&report)?, text))
}

fn import(store: &BlockingStore, id: &str, image: &str) -> Result<Output, StoreError> {
    imported(store, id, &store.import(id, image)?, "applied")
}

/// What an import or a pull made: the result's path and the layers.
pub(super) fn imported(
    store: &BlockingStore,
    id: &str,
    report: &snapstore::ImportReport,
    verb: &str,
) -> Result<Output, StoreError> {
    let path = store.result(id)?.unwrap_or_default();
    let text = format!(
        "{} ({} layers {verb}, {} already here, {} bytes read)",
        path.display(),
        report.layers_applied,
        report.layers_skipped,
        report.bytes_read
    );
    let mut json = to_json(report)?;
    json["path"] = json!(path);
    Ok(Output::new(json, text))
}

pub fn found(id: &str, path: &Path) -> Output {
    Output::new(json!({"id": id, "path": path}), path.display().to_string())
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

fn list(
    store: &BlockingStore,
    sort: SortBy,
    reverse: bool,
    sizes: bool,
    as_json: bool,
) -> Result<Output, StoreError> {
    let mut listing = store.list()?;
    let sizes: Option<HashMap<String, u64>> = (sizes || matches!(sort, SortBy::Size))
        .then(|| {
            listing.results.iter().map(|r| Ok((r.id.clone(), store.result_size(&r.id, &r.path)?))).collect()
        })
        .transpose()?;
    match sort {
        SortBy::Id => {}
        SortBy::Created => listing.results.sort_by(|a, b| a.created.total_cmp(&b.created)),
        SortBy::LastUsed => listing.results.sort_by(|a, b| a.last_used.total_cmp(&b.last_used)),
        SortBy::Size => listing.results.sort_by_key(|r| sizes.as_ref().map(|s| s[&r.id])),
    }
    if reverse {
        listing.results.reverse();
    }
    let not_pushed = snapstore::remote::pending(store)?;
    // Only the form asked for: a store may hold 100 000 results.
    if !as_json {
        let mut text = listing_text(&listing, sizes.as_ref());
        if !not_pushed.is_empty() {
            text += &format!("\nnot pushed (snapstore push --pending): {}", not_pushed.join(" "));
        }
        return Ok(Output::new(serde_json::Value::Null, text));
    }
    let mut json = to_json(&listing)?;
    if let (Some(sizes), Some(results)) = (&sizes, json["results"].as_array_mut()) {
        for result in results {
            result["size"] = json!(result["id"].as_str().map(|id| sizes[id]));
        }
    }
    json["not_pushed"] = json!(not_pushed);
    Ok(Output::new(json, ""))
}

/// Checks without changing anything: a store that does not exist yet is
/// not created (that is `init`'s job, or the first use's).
fn check(cli: &Cli) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let (plugin, store) = BlockingStore::open_existing(&config)?;
    let found = match &store {
        Some(store) => store.check()?,
        None => vec![format!(
            "no store at {} yet: `snapstore init` (or the first build or cache use) creates it \
             and checks the backend's prerequisites there",
            config.root.display()
        )],
    };
    let warnings: Vec<String> = (config.plugin_dirs.iter().filter(|dir| !dir.is_dir()))
        .map(|dir| {
            format!("plugin_dirs entry {} in {} is not a directory", dir.display(), config.file.display())
        })
        .collect();
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let text = check_text(&config.file, &plugin, &config.root, &found);
    let json = json!({"config": config.file, "plugin": plugin, "root": config.root,
                      "store_exists": store.is_some(), "checks": found, "warnings": warnings});
    Ok(Output::new(json, text))
}

fn init(cli: &Cli) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let existed = BlockingStore::open_existing(&config)?.1.is_some();
    let store = BlockingStore::open(&config)?;
    let found = store.check()?;
    let verb = if existed { "exists already" } else { "created" };
    let text =
        format!("store {} ({}): {verb}\n{}", store.root().display(), store.backend_name(), found.join("\n"));
    let json =
        json!({"root": store.root(), "backend": store.backend_name(), "created": !existed, "checks": found});
    Ok(Output::new(json, text))
}

/// Removes the store after a confirmation on a terminal, or with `--yes`.
fn destroy(cli: &Cli, yes: bool) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let root = config.root.display().to_string();
    let Some(store) = BlockingStore::open_existing(&config)?.1 else {
        return Ok(Output::new(json!({"root": root, "destroyed": null}), format!("no store at {root}")));
    };
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            return Err(StoreError::invalid(format!(
                "destroy removes everything in the store {root}: pass --yes to confirm (stdin is not a terminal)"
            )));
        }
        let listing = store.list()?;
        let (results, caches, leases) = (listing.results.len(), listing.caches.len(), listing.leases.len());
        eprint!("Remove the store {root} with {results} results, {caches} caches and {leases} leases? Type `yes`: ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| StoreError::io("cannot read the answer", &e))?;
        if answer.trim() != "yes" {
            return Err(StoreError::invalid("not confirmed; nothing was removed"));
        }
    }
    let destroyed = store.destroy()?;
    let mut text = format!(
        "removed {} results, {} caches, {} leases",
        destroyed.results, destroyed.caches, destroyed.leases
    );
    if !destroyed.root_removed {
        text += &format!("; {root} stays, holding {:?}", destroyed.left);
    }
    Ok(Output::new(json!({"root": root, "destroyed": destroyed}), text))
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
    snapstore::internal::stop_on_signals();
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
    let mut text = format!("{} cases, {failures} failed", report.cases.len());
    let status = match interrupted_status(&mut text) {
        Some(status) => status,
        None if failures == 0 => 0,
        None => exit::FAILED_CASES,
    };
    let json = json!({"backend": store.backend_name(), "cases": cases, "failures": failures,
                      "interrupted": report.interrupted});
    Ok(Output::with_status(json, text, status))
}

fn stress(store: &BlockingStore, jobs: usize, parallel: usize) -> Result<Output, StoreError> {
    snapstore::internal::stop_on_signals();
    let report = snapstore::internal::stress(store, jobs, parallel)?;
    let mut text = format!(
        "jobs {} failures {} seconds {:.2} jobs/s {:.1}",
        report.jobs, report.failures, report.seconds, report.jobs_per_second
    );
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let status = match interrupted_status(&mut text) {
        Some(status) => status,
        None if report.failures == 0 => 0,
        None => exit::FAILED_CASES,
    };
    Ok(Output::with_status(to_json(&report)?, text, status))
}

/// After SIGINT or SIGTERM: 128 + the signal, as a shell reports it, and a
/// note that what the run made was removed.
fn interrupted_status(text: &mut String) -> Option<u8> {
    let signal = snapstore::internal::interrupting_signal()?;
    *text += "\ninterrupted: what the run made was removed";
    Some(128u8.saturating_add(signal as u8))
}

fn prune(cli: &Cli, options: &PruneOptions) -> Result<Output, StoreError> {
    options.validate()?;
    let store = open(cli)?;
    let started = Instant::now();
    let mut last_progress = started;
    let mut count = 0;
    let verb = if options.dry_run { "would delete" } else { "deleted" };
    let report = store.prune(options, |id| {
        count += 1;
        if !cli.json {
            println!("{verb} {id}");
        }
        // A progress line on long runs, for the operator watching stderr.
        if last_progress.elapsed() >= Duration::from_secs(5) {
            eprintln!("prune: {count} deleted in {:.0}s", started.elapsed().as_secs_f64());
            last_progress = Instant::now();
        }
    })?;
    let text = format!("stopped: {}", report.stopped);
    Ok(Output::new(to_json(&report)?, text))
}
