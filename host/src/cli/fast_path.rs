//! `result ID` without building the whole command line parser.
//!
//! A build farm asks for a result before every step, so the lookup is the
//! command run most often. clap builds the description of every command
//! before it parses anything: about a third of a lookup's instructions.
//! The plain forms of a lookup, `[--config FILE] [--json] result ID`, are
//! recognised here; anything else (other options, `--help`, a miss that
//! needs the plugin or the remote) goes to the full parser, which answers
//! the same way.

use std::ffi::OsString;
use std::path::PathBuf;

use snapstore::{BlockingStore, Config};

use super::commands::found;

/// A lookup in its plain form.
#[derive(Debug, PartialEq)]
struct Lookup {
    config: Option<PathBuf>,
    json: bool,
    id: String,
}

/// Answers `result ID` when the arguments are a plain lookup of a result
/// this store holds; returns the exit status, or `None` to run the full
/// command line.
pub fn result(args: impl Iterator<Item = OsString>) -> Option<u8> {
    let lookup = parse(args)?;
    // A warning (the record could not note the use) must still be shown.
    crate::init_logging(0);
    let config = Config::discover(lookup.config.as_deref()).ok()?;
    let path = BlockingStore::result_without_plugin(&config, &lookup.id)?;
    Some(found(&lookup.id, &path).print(lookup.json))
}

/// The arguments after the program's name, if they are
/// `[--config FILE | --config=FILE] [--json] result ID` in that order.
fn parse(mut args: impl Iterator<Item = OsString>) -> Option<Lookup> {
    let mut lookup = Lookup { config: None, json: false, id: String::new() };
    let mut arg = args.next()?;
    if arg == "--config" {
        lookup.config = Some(args.next()?.into());
        arg = args.next()?;
    } else if let Some(file) = arg.to_str()?.strip_prefix("--config=") {
        lookup.config = Some(file.into());
        arg = args.next()?;
    }
    if arg == "--json" {
        lookup.json = true;
        arg = args.next()?;
    }
    if arg != "result" {
        return None;
    }
    let id = args.next()?.into_string().ok()?;
    // An option (`--help`, `--json` after the id...) or a second argument:
    // the full parser handles it, and its errors.
    if id.starts_with('-') || args.next().is_some() {
        return None;
    }
    lookup.id = id;
    Some(lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Option<Lookup> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn plain_lookups_are_recognised() {
        let lookup = |config: Option<&str>, json| {
            Some(Lookup { config: config.map(PathBuf::from), json, id: "a.1".into() })
        };
        assert_eq!(parsed(&["result", "a.1"]), lookup(None, false));
        assert_eq!(parsed(&["--json", "result", "a.1"]), lookup(None, true));
        assert_eq!(parsed(&["--config", "c.toml", "result", "a.1"]), lookup(Some("c.toml"), false));
        assert_eq!(parsed(&["--config=c.toml", "--json", "result", "a.1"]), lookup(Some("c.toml"), true));
    }

    #[test]
    fn anything_else_goes_to_the_full_parser() {
        for args in [
            &[][..],
            &["result"],
            &["result", "--help"],
            &["result", "a", "--json"],
            &["result", "a", "b"],
            &["-v", "result", "a"],
            &["--json", "--config", "c.toml", "result", "a"],
            &["--config"],
            &["delete", "a"],
            &["results", "a"],
        ] {
            assert_eq!(parsed(args), None, "{args:?}");
        }
    }
}
