//! The error type that crosses the plugin boundary.

use std::fmt;
use std::io;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What went wrong, as a stable numeric code.
///
/// A newtype rather than an enum so that later versions can add kinds
/// without breaking the layout check of plugins built earlier; an unknown
/// code from a newer plugin is shown by number.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The key, result, cache or lease does not exist.
    pub const NOT_FOUND: Self = Self(1);
    /// The key already exists.
    pub const ALREADY_EXISTS: Self = Self(2);
    /// The object is in use; retry later.
    pub const BUSY: Self = Self(3);
    /// The caller passed a value the store does not accept.
    pub const INVALID_INPUT: Self = Self(4);
    /// The backend cannot do this here (wrong filesystem, missing tool, old kernel).
    pub const UNSUPPORTED: Self = Self(5);
    /// An I/O error from the system.
    pub const IO: Self = Self(6);
    /// The filesystem or pool is full.
    pub const NO_SPACE: Self = Self(7);
    /// Missing permissions.
    pub const PERMISSION: Self = Self(8);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANIC: Self = Self(9);
    /// The plugin cannot be loaded or does not match the host.
    pub const INCOMPATIBLE: Self = Self(10);
    /// Anything else.
    pub const OTHER: Self = Self(11);

    /// A short lower-case name, used in messages and JSON.
    pub fn name(self) -> String {
        let known = match self {
            Self::NOT_FOUND => "not found",
            Self::ALREADY_EXISTS => "already exists",
            Self::BUSY => "busy",
            Self::INVALID_INPUT => "invalid input",
            Self::UNSUPPORTED => "unsupported",
            Self::IO => "i/o error",
            Self::NO_SPACE => "no space",
            Self::PERMISSION => "permission denied",
            Self::PANIC => "plugin panic",
            Self::INCOMPATIBLE => "incompatible plugin",
            Self::OTHER => "error",
            Self(code) => return format!("error #{code}"),
        };
        known.to_string()
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// An error with a kind and a one-line message that says what is wrong and,
/// where there is one, how to fix it.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: ErrorKind,
    message: RString,
}

impl StoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // Keep errors to one line: the CLI prints them as `error: ...`.
        let message = message.replace('\n', " ");
        Self { kind, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NOT_FOUND, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ALREADY_EXISTS, message)
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BUSY, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_INPUT, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OTHER, message)
    }

    /// An error from an I/O call, classified by its OS error.
    pub fn io(context: impl fmt::Display, err: &io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT) => ErrorKind::NO_SPACE,
            _ => match err.kind() {
                io::ErrorKind::NotFound => ErrorKind::NOT_FOUND,
                io::ErrorKind::AlreadyExists => ErrorKind::ALREADY_EXISTS,
                io::ErrorKind::PermissionDenied => ErrorKind::PERMISSION,
                _ => ErrorKind::IO,
            },
        };
        Self::new(kind, format!("{context}: {err}"))
    }

    /// An error from a `nix` call, classified like [`Self::io`].
    pub fn errno(context: impl fmt::Display, errno: nix::errno::Errno) -> Self {
        Self::io(context, &io::Error::from(errno))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self::new(self.kind, format!("{context}: {}", self.message))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {}

/// `.context("what we were doing")` on I/O results, for backend code.
pub trait IoContext<T> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for Result<T, io::Error> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::io(context, &err))
    }
}

/// `nix` calls return a bare [`nix::errno::Errno`].
impl<T> IoContext<T> for Result<T, nix::errno::Errno> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError> {
        self.map_err(|errno| StoreError::errno(context, errno))
    }
}

/// `rustix` calls return a bare [`rustix::io::Errno`].
impl<T> IoContext<T> for Result<T, rustix::io::Errno> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError> {
        self.map_err(|errno| StoreError::io(context, &io::Error::from(errno)))
    }
}

impl<T> IoContext<T> for Result<T, StoreError> {
    fn context(self, context: impl fmt::Display) -> Result<T, StoreError> {
        self.map_err(|err| err.context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(StoreError::io("write", &full).kind(), ErrorKind::NO_SPACE);
        let quota: Result<(), _> = Err(nix::errno::Errno::EDQUOT);
        assert_eq!(quota.context("write").unwrap_err().kind(), ErrorKind::NO_SPACE);
        let gone: Result<(), _> = Err(rustix::io::Errno::NOENT);
        let err = gone.context("cannot open y").unwrap_err();
        assert_eq!(
            (err.kind(), err.message()),
            (ErrorKind::NOT_FOUND, "cannot open y: No such file or directory (os error 2)")
        );
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let err = StoreError::io("open x", &missing);
        assert_eq!(err.kind(), ErrorKind::NOT_FOUND);
        assert!(err.message().starts_with("open x: "));
    }

    #[test]
    fn messages_stay_on_one_line() {
        let err = StoreError::other("a\nb");
        assert_eq!(err.message(), "a b");
        assert_eq!(ErrorKind(99).name(), "error #99");
    }
}
