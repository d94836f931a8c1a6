//! The `snapstore` command. Its parts are in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::Cli;
use cli::{commands, exit};

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
    match commands::run(&cli) {
        Ok(out) => ExitCode::from(out.print(cli.json)),
        Err(err) => {
            eprintln!("error: {}", err.message());
            ExitCode::from(exit::code(err.kind()))
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
