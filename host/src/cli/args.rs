//! The command line: what `snapstore --help` shows. Running the commands
//! is `commands`' job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "snapstore",
    version,
    long_version = long_version(),
    about = "A snapshot store for build systems",
    after_help = format!("{EXAMPLES}\n\n{}", super::exit::help()),
    after_long_help = format!("{EXAMPLES}\n\n{}\n\n{ENVIRONMENT}", super::exit::help()),
)]
pub struct Cli {
    /// Config file [default: $SNAPSTORE_CONFIG, ./snapstore.toml, /etc/snapstore/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print exactly one JSON object on stdout, also on failure
    /// (`{"error": {"kind", "message", "exit"}}`); the output of a build's or
    /// cache run's command then goes to stderr
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
    #[command(after_help = "Example: snapstore build step2 --base step1 -- sh -c 'make install'\n\
        Exits with CMD's status when it fails; the tree is then discarded.")]
    Build {
        /// The new result's id (letters, digits, `._-`; e.g. a hash of the step)
        id: String,
        /// Start from a copy of result BASE instead of an empty tree
        #[arg(long, value_name = "BASE")]
        base: Option<String>,
        /// The command and its arguments, after `--`; it runs in the tree
        /// (also `$SNAPSTORE_DIR`)
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print the path of result ID
    Result {
        /// The result's id
        id: String,
    },
    /// Delete result ID (no error if absent)
    Delete {
        /// The result's id
        id: String,
    },
    /// Export result ID as an OCI image: one layer per step of its chain
    #[command(
        after_help = "IMAGE-REF: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://HOST/REPO[:TAG];\n\
        without a tag, the id's tag (the id itself when shorter than 128 characters).\n\
        Example: snapstore export step2 oci:/srv/images"
    )]
    Export {
        /// The result's id
        id: String,
        /// Where to write the image
        #[arg(value_name = "IMAGE-REF")]
        image: String,
        /// How layers are compressed
        #[arg(long, value_enum, default_value_t = ImageCompression::Zstd)]
        compression: ImageCompression,
    },
    /// Make result ID from an OCI or Docker image, applying only the layers of missing steps
    #[command(
        after_help = "IMAGE-REF: oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://HOST/REPO[:TAG|@DIGEST];\n\
        without a tag, the id's tag. Example: snapstore import step2 oci:/srv/images"
    )]
    Import {
        /// The new result's id
        id: String,
        /// The image to read
        #[arg(value_name = "IMAGE-REF")]
        image: String,
    },
    /// Push result ID to the config's [remote] registry (only the layers it lacks)
    Push {
        /// The result's id
        #[arg(required_unless_present = "pending", conflicts_with = "pending")]
        id: Option<String>,
        /// Push every result marked "not pushed" (a failed push after a build)
        #[arg(long)]
        pending: bool,
    },
    /// Pull result ID from the config's [remote] registry (only the layers of missing steps)
    Pull {
        /// The result's id
        id: String,
    },
    /// The config's [remote] registry: what it holds, and pruning it
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// Shared mutable caches
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Free space of the store's filesystem: percent, free and total bytes
    Df,
    /// The store's root
    Root,
    /// The directory for users' own state
    StateDir,
    /// Wait until deleted space is really free
    CompleteDeletes,
    /// Results (with base, creation, last use and children), caches and cache leases
    List {
        /// Order of the results
        #[arg(long, value_enum, default_value_t = SortBy::Id)]
        sort: SortBy,
        /// Reverse the order (e.g. most recently used first)
        #[arg(long)]
        reverse: bool,
        /// Give each result's size (a walk of every tree: slow on big stores)
        #[arg(long)]
        sizes: bool,
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
    /// Where the config came from, the backend and its plugin, the root,
    /// what the store holds and its free space
    Info,
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
    /// Print a shell completion script (e.g. `snapstore completions bash > /etc/bash_completion.d/snapstore`)
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (e.g. `snapstore man > /usr/share/man/man1/snapstore.1`)
    Man,
}

const EXAMPLES: &str = "Examples:
  snapstore build base -- sh -c 'echo hello > greeting'
  snapstore build child --base base -- make
  snapstore cache run cargo-registry -- cargo fetch
  snapstore --json list --sort last-used --reverse
  snapstore prune --until-free 20";

const ENVIRONMENT: &str = "Environment:
  SNAPSTORE_CONFIG       the config file, when --config is not given
  SNAPSTORE_PLUGIN_PATH  extra directories searched for backend plugins
  SNAPSTORE_LOG          log filter (e.g. debug); RUST_LOG is read when it is unset";

/// `--version`: the store-api version plugins must match, and where they are looked for.
fn long_version() -> String {
    let dirs: Vec<String> =
        snapstore::internal::search_path(&[]).iter().map(|d| d.display().to_string()).collect();
    format!(
        "{}\nstore-api {}\nplugin search path (after the config's plugin_dirs): {}",
        env!("CARGO_PKG_VERSION"),
        store_api::API_VERSION,
        dirs.join(":")
    )
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SortBy {
    /// By id
    Id,
    /// Oldest first
    Created,
    /// Least recently used first
    LastUsed,
    /// Smallest first (walks every tree, as --sizes)
    Size,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage from 0 to 100")),
    }
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// The images on the remote: tag, id, size and age
    List,
    /// Delete the remote's images made longer ago than DURATION (its garbage collection frees the blobs)
    Prune {
        /// e.g. 30d, 12h
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Print what would be deleted and delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Take a writable copy of cache NAME; prints the lease and the copy's path
    Acquire {
        /// The cache's name (any text; created empty if new)
        name: String,
        /// Owner of the cache if it is created now
        #[arg(long, value_name = "UID:GID")]
        user: Option<String>,
    },
    /// Publish a copy (or discard it if the cache changed since it was taken)
    Release {
        /// The lease `cache acquire` printed
        lease: String,
        /// Drop the copy without publishing it (e.g. an abandoned lease)
        #[arg(long)]
        discard: bool,
    },
    /// Acquire, run CMD in the copy, release; exits with CMD's status
    Run {
        /// The cache's name (created empty if new)
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Owner of the cache if it is created now
        #[arg(long, value_name = "UID:GID")]
        user: Option<String>,
        /// The command and its arguments, after `--`; it runs in the copy
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Delete cache NAME
    Delete {
        /// The cache's name
        name: String,
    },
}

/// The layers' compression of an exported image.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageCompression {
    /// zstd, multithreaded (fast; read by current tools)
    Zstd,
    /// gzip (for old clients)
    Gzip,
}
