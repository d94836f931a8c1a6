//! Exit statuses of snapstore's own failures (after sysexits.h), chosen to
//! stay clear of the statuses of the commands that `build` and `cache run`
//! pass through, and the names `--json` gives them.

use snapstore::ErrorKind;

pub const FAILED_CASES: u8 = 1;
pub const USAGE: u8 = 64;
pub const NOT_FOUND: u8 = 66;
pub const UNAVAILABLE: u8 = 69;
pub const SOFTWARE: u8 = 70;
pub const EXISTS: u8 = 73;
pub const IO: u8 = 74;
pub const BUSY: u8 = 75;
pub const PERMISSION: u8 = 77;

/// Every status snapstore itself exits with, its `--json` error kind and
/// what it means: the source of `--help`'s list (and the README's).
pub const STATUSES: &[(u8, &str, &str)] = &[
    (0, "", "success"),
    (FAILED_CASES, "", "conformance or stress: some cases or jobs failed (see the report)"),
    (USAGE, "usage", "bad arguments, invalid id or name, bad config, incompatible plugin"),
    (NOT_FOUND, "not_found", "no such result, base, cache or lease"),
    (UNAVAILABLE, "unavailable", "missing plugin, tool, pool or other prerequisite"),
    (SOFTWARE, "internal", "internal error (e.g. a plugin panicked)"),
    (EXISTS, "already_exists", "the result id is taken"),
    (IO, "io", "I/O error, including a full disk"),
    (BUSY, "busy", "in use by another process: try again later"),
    (PERMISSION, "permission", "permission denied"),
];

/// The exit status of a failure of `kind`.
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::INVALID_INPUT | ErrorKind::INCOMPATIBLE => USAGE,
        ErrorKind::NOT_FOUND => NOT_FOUND,
        ErrorKind::UNSUPPORTED => UNAVAILABLE,
        ErrorKind::ALREADY_EXISTS => EXISTS,
        ErrorKind::IO | ErrorKind::NO_SPACE => IO,
        ErrorKind::BUSY => BUSY,
        ErrorKind::PERMISSION => PERMISSION,
        _ => SOFTWARE,
    }
}

/// The name of exit status `status` in `--json` errors.
pub fn kind_name(status: u8) -> &'static str {
    STATUSES.iter().find(|(code, ..)| *code == status).map_or("internal", |(_, name, _)| name)
}

/// The list of statuses shown at the end of `--help`.
pub fn help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, kind, meaning) in STATUSES {
        let kind = if kind.is_empty() { String::new() } else { format!("{kind}: ") };
        text += &format!("  {code:>3}  {kind}{meaning}\n");
    }
    text +=
        "  any other: that of CMD, for build and cache run (128+N if signal N killed it, 127 if not found)";
    text
}
