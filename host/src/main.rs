//! The `snapstore` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use snapstore::loader::{find_plugins, Found};
use snapstore::names::parse_owner;
use snapstore::{BlockingStore, Config, ErrorKind, Released, StoreError};

/// Exit statuses of snapstore's own failures (after sysexits.h), chosen to
/// stay clear of the statuses of the commands that `build` and `cache run`
/// pass through.
mod exit {
    pub const USAGE: u8 = 64;
    pub const NOT_FOUND: u8 = 66;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const EXISTS: u8 = 73;
    pub const IO: u8 = 74;
    pub const BUSY: u8 = 75;
    pub const PERMISSION: u8 = 77;
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::INVALID_INPUT | ErrorKind::INCOMPATIBLE => exit::USAGE,
        ErrorKind::NOT_FOUND => exit::NOT_FOUND,
        ErrorKind::UNSUPPORTED => exit::UNAVAILABLE,
        ErrorKind::ALREADY_EXISTS => exit::EXISTS,
        ErrorKind::IO | ErrorKind::NO_SPACE => exit::IO,
        ErrorKind::BUSY => exit::BUSY,
        ErrorKind::PERMISSION => exit::PERMISSION,
        _ => exit::SOFTWARE,
    }
}

#[derive(Parser)]
#[command(name = "snapstore", version, about = "A snapshot store for build systems")]
struct Cli {
    /// Config file [default: $SNAPSTORE_CONFIG, ./snapstore.toml, /etc/snapstore/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print data as one JSON object on stdout
    #[arg(long, global = true)]
    json: bool,
    /// Log what the store does on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run CMD in a fresh tree (empty, or a clone of BASE); on success save it as result ID
    Build {
        id: String,
        #[arg(long)]
        base: Option<String>,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print the path of result ID
    Result { id: String },
    /// Delete result ID (no error if absent)
    Delete { id: String },
    /// Shared mutable caches
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Free space of the store's filesystem, in percent
    Df,
    /// The store's root
    Root,
    /// The directory for users' own state
    StateDir,
    /// Wait until deleted space is really free
    CompleteDeletes,
    /// Results (with base, creation and last use), caches and cache leases
    List {
        /// Order of the results
        #[arg(long, value_enum, default_value_t = SortBy::Id)]
        sort: SortBy,
    },
    /// Delete least-recently-used results that nothing is built on
    Prune {
        /// Delete at most N results
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only results unused for this long (e.g. 30d, 12h, 90m)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Stop once this percentage of space is free
        #[arg(long, value_name = "PCT", value_parser = parse_percent)]
        until_free: Option<f64>,
    },
    /// Validate the config, load the plugin and check its prerequisites
    Check,
    /// The plugins found in the search path
    Backends,
    /// Run the store-contract suite on the configured backend (in a scratch namespace)
    Conformance,
    /// obuilder's stress test: random 4-step builds sharing bases and a cache
    Stress {
        /// Number of jobs
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// Jobs run at a time
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SortBy {
    Id,
    Created,
    LastUsed,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage from 0 to 100")),
    }
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Take a writable copy of cache NAME; prints the lease and the copy's path
    Acquire {
        name: String,
        /// Owner of the cache if it is created now
        #[arg(long, value_name = "UID:GID")]
        user: Option<String>,
    },
    /// Publish a copy (or discard it if the cache changed since it was taken)
    Release {
        lease: String,
        /// Drop the copy without publishing it (e.g. an abandoned lease)
        #[arg(long)]
        discard: bool,
    },
    /// Acquire, run CMD in the copy, release; exits with CMD's status
    Run {
        #[arg(allow_hyphen_values = true)]
        name: String,
        #[arg(long, value_name = "UID:GID")]
        user: Option<String>,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Delete cache NAME
    Delete { name: String },
}

/// What a command leaves behind: data to print, and an exit status.
struct Output {
    json: serde_json::Value,
    text: String,
    status: u8,
}

impl Output {
    fn new(json: serde_json::Value, text: impl Into<String>) -> Self {
        Output { json, text: text.into(), status: 0 }
    }
    fn none() -> Self {
        Output { json: serde_json::Value::Null, text: String::new(), status: 0 }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let usage_error = err.use_stderr();
            let _ = err.print();
            return ExitCode::from(if usage_error { exit::USAGE } else { 0 });
        }
    };
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(out) => {
            if cli.json && !out.json.is_null() {
                println!("{}", out.json);
            } else if !cli.json && !out.text.is_empty() {
                println!("{}", out.text.trim_end());
            }
            ExitCode::from(out.status)
        }
        Err(err) => {
            eprintln!("error: {}", err.message());
            ExitCode::from(exit_code(err.kind()))
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .init();
}

fn open(cli: &Cli) -> Result<BlockingStore, StoreError> {
    BlockingStore::open(&Config::discover(cli.config.as_deref())?)
}

fn run(cli: &Cli) -> Result<Output, StoreError> {
    match &cli.command {
        Cmd::Build { id, base, command } => build(&open(cli)?, base.as_deref(), id, command),
        Cmd::Result { id } => {
            let path = open(cli)?.result(id)?;
            match path {
                Some(path) => Ok(Output::new(json!({"id": id, "path": path}), path.display().to_string())),
                None if cli.json => Ok(Output::new(json!({"id": id, "path": null}), "")),
                None => Err(StoreError::not_found(format!("no result `{id}`"))),
            }
        }
        Cmd::Delete { id } => open(cli)?.delete(id).map(|()| Output::none()),
        Cmd::Cache(cmd) => cache(&open(cli)?, cmd),
        Cmd::Df => {
            let free = open(cli)?.df()?;
            Ok(Output::new(json!({ "free_percent": free }), format!("{free:.1}")))
        }
        Cmd::Root => {
            let store = open(cli)?;
            Ok(Output::new(json!({ "root": store.root() }), store.root().display().to_string()))
        }
        Cmd::StateDir => {
            let dir = open(cli)?.state_dir();
            Ok(Output::new(json!({ "state_dir": dir }), dir.display().to_string()))
        }
        Cmd::CompleteDeletes => open(cli)?.complete_deletes().map(|()| Output::none()),
        Cmd::List { sort } => list(&open(cli)?, *sort),
        Cmd::Prune { limit, older_than, until_free } => {
            let options = snapstore::prune::PruneOptions {
                limit: *limit,
                older_than: *older_than,
                until_free: *until_free,
            };
            prune(cli, &open(cli)?, &options)
        }
        Cmd::Check => check(cli),
        Cmd::Backends => backends(cli),
        Cmd::Conformance => conformance(cli, &open(cli)?),
        Cmd::Stress { jobs, parallel } => stress(&open(cli)?, *jobs, *parallel),
    }
}

fn build(
    store: &BlockingStore,
    base: Option<&str>,
    id: &str,
    command: &[String],
) -> Result<Output, StoreError> {
    let build = store.begin_build(base, id)?;
    let status = snapstore::supervise::run(command, build.path(), build.tree())?;
    if status != 0 {
        build.abort()?;
        eprintln!("error: `{}` failed with status {status}; result `{id}` not recorded", command[0]);
        return Ok(Output { status, ..Output::none() });
    }
    let path = build.commit()?;
    Ok(Output::new(json!({"id": id, "path": path}), path.display().to_string()))
}

fn cache(store: &BlockingStore, cmd: &CacheCmd) -> Result<Output, StoreError> {
    let owner = |user: &Option<String>| user.as_deref().map(parse_owner).transpose();
    match cmd {
        CacheCmd::Acquire { name, user } => {
            let lease = store.acquire(name, owner(user)?, false)?;
            let text = format!("{} {}", lease.id, lease.path.display());
            Ok(Output::new(json!({"lease": lease.id, "path": lease.path}), text))
        }
        CacheCmd::Release { lease, discard } => {
            let released = store.release_id(lease, *discard)?;
            let published = released == Released::Published;
            let text = if published { "published" } else { "discarded" };
            Ok(Output::new(json!({"lease": lease, "published": published}), text))
        }
        CacheCmd::Run { name, user, command } => {
            let lease = store.acquire(name, owner(user)?, true)?;
            let copy = store_api::Key::new(store_api::Namespace::CacheTmp, &lease.id)?;
            let status = snapstore::supervise::run(command, &lease.path, &copy);
            // Released whatever the command's status: the copy is published
            // unless the cache changed meanwhile.
            let released = store.release(lease)?;
            let status = status?;
            let published = released == Released::Published;
            let json = json!({"cache": name, "published": published, "status": status});
            Ok(Output { json, text: String::new(), status })
        }
        CacheCmd::Delete { name } => store.delete_cache(name).map(|()| Output::none()),
    }
}

fn list(store: &BlockingStore, sort: SortBy) -> Result<Output, StoreError> {
    let mut listing = store.list()?;
    match sort {
        SortBy::Id => {}
        SortBy::Created => listing.results.sort_by(|a, b| a.created.total_cmp(&b.created)),
        SortBy::LastUsed => listing.results.sort_by(|a, b| a.last_used.total_cmp(&b.last_used)),
    }
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
    let json = serde_json::to_value(&listing).map_err(|e| StoreError::other(e.to_string()))?;
    Ok(Output::new(json, text))
}

fn check(cli: &Cli) -> Result<Output, StoreError> {
    let config = Config::discover(cli.config.as_deref())?;
    let store = BlockingStore::open(&config)?;
    let plugin = store.plugin().expect("a store opened from a config has a plugin");
    let found = store.backend().check()?;
    let mut text = format!(
        "config: {}\nbackend: {} {} (store-api {}) from {}\nroot: {}\n",
        config.file.display(),
        plugin.name,
        plugin.version,
        plugin.api_version,
        plugin.file.display(),
        store.root().display()
    );
    for line in &found {
        text += &format!("ok: {line}\n");
    }
    let json = json!({"config": config.file, "plugin": plugin, "root": store.root(), "checks": found});
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
    let mut text = String::new();
    for f in &found {
        text += &match f {
            Found::Usable(i) => {
                format!("{} {} store-api {} {}\n", i.name, i.version, i.api_version, i.file.display())
            }
            Found::Unusable { file, error } => format!("unusable {}: {error}\n", file.display()),
        };
    }
    if found.is_empty() {
        text = "no plugins found (search path: plugin_dirs, $SNAPSTORE_PLUGIN_PATH, the executable's directory, ../lib/snapstore)".into();
    }
    let json = json!({ "backends": found });
    Ok(Output::new(json, text))
}

fn conformance(cli: &Cli, store: &BlockingStore) -> Result<Output, StoreError> {
    let json = cli.json;
    let report = snapstore::conformance::run(store, |case| {
        if !json {
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
    let status = if failures == 0 { 0 } else { 1 };
    Ok(Output {
        json: json!({"backend": store.backend_name(), "cases": cases, "failures": failures}),
        text,
        status,
    })
}

fn stress(store: &BlockingStore, jobs: usize, parallel: usize) -> Result<Output, StoreError> {
    let report = snapstore::stress::run(store, jobs, parallel)?;
    let text = format!(
        "jobs {} failures {} seconds {:.2} jobs/s {:.1}",
        report.jobs, report.failures, report.seconds, report.jobs_per_second
    );
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let status = if report.failures == 0 { 0 } else { 1 };
    let json = serde_json::to_value(&report).map_err(|e| StoreError::other(e.to_string()))?;
    Ok(Output { json, text, status })
}

fn prune(
    cli: &Cli,
    store: &BlockingStore,
    options: &snapstore::prune::PruneOptions,
) -> Result<Output, StoreError> {
    let started = std::time::Instant::now();
    let mut last_progress = started;
    let mut count = 0;
    let report = snapstore::prune::prune(store, options, |id| {
        count += 1;
        if !cli.json {
            println!("deleted {id}");
        }
        // A progress line on long runs, for the operator watching stderr.
        if last_progress.elapsed().as_secs() >= 5 {
            eprintln!("prune: {count} deleted in {:.0}s", started.elapsed().as_secs_f64());
            last_progress = std::time::Instant::now();
        }
    })?;
    let text = format!("stopped: {}", report.stopped);
    let json = json!({"deleted": report.deleted, "stopped": report.stopped});
    Ok(Output::new(json, text))
}
