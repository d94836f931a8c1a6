//! Exit statuses of snapstore's own failures (after sysexits.h), chosen to
//! stay clear of the statuses of the commands that `build` and `cache run`
//! pass through.

use snapstore::ErrorKind;

pub const USAGE: u8 = 64;
pub const NOT_FOUND: u8 = 66;
pub const UNAVAILABLE: u8 = 69;
pub const SOFTWARE: u8 = 70;
pub const EXISTS: u8 = 73;
pub const IO: u8 = 74;
pub const BUSY: u8 = 75;
pub const PERMISSION: u8 = 77;

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
