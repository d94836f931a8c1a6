//! The command line: what `snapstore --help` shows. Running the commands
//! is `commands`' job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "snapstore", version, about = "A snapshot store for build systems")]
pub struct Cli {
    /// Config file [default: $SNAPSTORE_CONFIG, ./snapstore.toml, /etc/snapstore/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print data as one JSON object on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Log what the store does on stderr (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
        /// Delete every result nothing is built on (needed when no other limit is given)
        #[arg(long, conflicts_with_all = ["limit", "older_than", "until_free"])]
        all: bool,
        /// Print what would be deleted, in order, and delete nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config, load the plugin and check its prerequisites (changes nothing)
    Check,
    /// Remove the whole store: every result, cache, lease and record, and the root
    Destroy {
        /// Do not ask for confirmation (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Create the store at the configured root (the first build or cache use also does)
    Init,
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
pub enum SortBy {
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
pub enum CacheCmd {
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
