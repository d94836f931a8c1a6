//! The stable interface between the snapstore host and its backend plugins.
//!
//! A backend author implements [`SnapshotBackend`] and exports it from a
//! `cdylib` with [`export_backend!`]; nothing else of `abi_stable` is needed.
//! The host loads the library, checks its version and layout, and talks to
//! it through [`plugin::RemoteBackend`].

pub mod abi;
mod backend;
mod change;
mod error;
pub mod key;
mod options;
pub mod plugin;
pub mod util;

pub use abi::Owner;
pub use backend::SnapshotBackend;
pub use change::{Change, ChangeKind};
pub use error::{ErrorKind, IoContext, StoreError};
pub use key::{Key, Namespace};
pub use options::parse_options;

/// Re-exported for [`export_backend!`]; backend code need not use it.
#[doc(hidden)]
pub use abi_stable;

/// The version of this interface, `MAJOR.MINOR.PATCH`. Plugins built against
/// another major version are refused.
pub const API_VERSION: &str = if cfg!(feature = "abi-1-0") {
    "1.0.0"
} else if cfg!(feature = "abi-1-1") {
    "1.1.0"
} else {
    env!("CARGO_PKG_VERSION")
};
