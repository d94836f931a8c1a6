//! The `snapstore` command. Its parts are in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::Cli;
use cli::{commands, exit, output};

fn main() -> ExitCode {
    if let Some(status) = cli::fast_path::result(std::env::args_os().skip(1)) {
        return ExitCode::from(status);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) if json_asked() => {
            let shown = err.to_string();
            let first = shown.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            return ExitCode::from(output::print_error(first, exit::USAGE, true));
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    init_logging(cli.verbose);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        snapstore::internal::enable_progress();
    }
    match commands::run(&cli) {
        Ok(out) => ExitCode::from(out.print(cli.json)),
        Err(err) => ExitCode::from(output::print_error(err.message(), exit::code(err.kind()), cli.json)),
    }
}

/// Whether `--json` is among the arguments (before a `--`), for errors in
/// the arguments themselves.
fn json_asked() -> bool {
    std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json")
}

/// Sends the log to stderr, at `-v`'s level unless `SNAPSTORE_LOG` or
/// `RUST_LOG` says otherwise. The first call wins: a lookup the fast path
/// could not answer (it has no `-v`) is run again by the full parser.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // SNAPSTORE_LOG, else the ecosystem's RUST_LOG, else -v.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPSTORE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .without_time()
        .try_init()
        .ok();
}
