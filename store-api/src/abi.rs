//! The types that cross the plugin boundary. Only `abi_stable` types here.
//!
//! Evolution rules: a minor version of `store-api` adds methods to
//! [`BackendAbi`] after the last one, with a default body, and freezes the
//! previous version's interface in a module (like [`v1_0`] and [`v1_1`])
//! through which the host still loads older plugins. Anything else is a new
//! major version, which the host refuses to load.

#![allow(non_local_definitions)] // from the #[sabi_trait] expansion

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, sabi_trait, StableAbi};

use crate::StoreError;

/// A uid:gid pair.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a change list ([`crate::Change`]) as it crosses the
/// boundary: `kind` 0 = added, 1 = modified, 2 = deleted; `path` relative,
/// raw bytes.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct AbiChange {
    pub kind: u8,
    pub path: RVec<u8>,
}

/// Declares one version of the interface: [`BackendAbi`] with the methods
/// of 1.0 followed by `$later`, its trait object [`BackendBox`], and the
/// root module [`PluginMod`] whose `open` returns it.
macro_rules! plugin_interface {
    ($($later:tt)*) => {
        /// The backend as seen through the boundary. Plugin authors implement
        /// [`crate::SnapshotBackend`] instead; the adapter in [`crate::plugin`]
        /// validates keys and catches panics around every call.
        #[sabi_trait]
        pub trait BackendAbi: Send + Sync {
            fn create(&self, key: RStr<'_>, owner: ROption<Owner>) -> RResult<RString, StoreError>;
            fn clone_tree(&self, src: RStr<'_>, dst: RStr<'_>) -> RResult<RString, StoreError>;
            fn commit(
                &self,
                tmp: RStr<'_>,
                dst: RStr<'_>,
                parent: ROption<RStr<'_>>,
            ) -> RResult<RString, StoreError>;
            fn remove(&self, key: RStr<'_>) -> RResult<(), StoreError>;
            fn path(&self, key: RStr<'_>) -> RResult<ROption<RString>, StoreError>;
            fn list(&self, namespace: RStr<'_>) -> RResult<RVec<RString>, StoreError>;
            fn free_percent(&self) -> RResult<f64, StoreError>;
            fn complete_deletes(&self) -> RResult<(), StoreError>;
            #[sabi(last_prefix_field)]
            fn check(&self) -> RResult<RVec<RString>, StoreError>;
            $($later)*
        }

        /// An opened backend, owned by the host.
        pub type BackendBox = BackendAbi_TO<'static, RBox<()>>;

        /// The root module every plugin exports (through [`crate::export_backend!`]).
        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
        #[sabi(missing_field(panic))]
        pub struct PluginMod {
            /// The backend's name, as written in `backend = "..."`.
            pub name: RStr<'static>,
            /// The plugin's own version.
            pub version: RStr<'static>,
            /// Opens the store at a root with the config's `[backend]` table
            /// as TOML.
            #[sabi(last_prefix_field)]
            pub open: extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<BackendBox, StoreError>,
        }
    };
}

/// Implements `RootModule` for a version's module, declaring `$version`.
macro_rules! root_module {
    ($version:expr) => {
        impl RootModule for PluginModRef {
            declare_root_module_statics! {PluginModRef}
            const BASE_NAME: &'static str = "snapstore";
            const NAME: &'static str = "snapstore backend";
            // The version of store-api the plugin was built against; the
            // loader refuses a different major version.
            const VERSION_STRINGS: VersionStrings = $version;
        }
    };
}

/// The interface of 1.1: 1.0's methods, then `recover`, then `$later`.
macro_rules! since_1_1 {
    ($($later:tt)*) => {
        plugin_interface! {
            // ----- added in 1.1 -----

            /// Removes the backend's own leftovers of dead processes.
            fn recover(&self) -> RResult<(), StoreError> {
                RResult::ROk(())
            }
            $($later)*
        }
    };
}

#[cfg(feature = "abi-1-0")]
plugin_interface! {}
#[cfg(feature = "abi-1-0")]
root_module!(VersionStrings::new("1.0.0"));

#[cfg(feature = "abi-1-1")]
since_1_1! {}
#[cfg(feature = "abi-1-1")]
root_module!(VersionStrings::new("1.1.0"));

#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
since_1_1! {
    // ----- added in 1.2 -----

    /// The entries of `key`'s tree that differ from `base`'s, when the
    /// backend can tell without walking both.
    fn changes(&self, _key: RStr<'_>, _base: RStr<'_>) -> RResult<ROption<RVec<AbiChange>>, StoreError> {
        RResult::ROk(ROption::RNone)
    }

    /// The bytes of storage a result uses, when the backend can tell.
    fn size(&self, _key: RStr<'_>) -> RResult<ROption<u64>, StoreError> {
        RResult::ROk(ROption::RNone)
    }
}
#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
root_module!(abi_stable::package_version_strings!());

/// The interface exactly as it was in store-api 1.0, frozen. abi_stable
/// refuses a plugin whose vtable is shorter than the host's, so the host
/// loads plugins built against 1.0 through this copy (see the loader).
/// Each minor version that adds methods freezes its predecessor like this.
#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
pub mod v1_0 {
    use super::*;

    plugin_interface! {}
    root_module!(VersionStrings::new("1.0.0"));
}

/// The interface exactly as it was in store-api 1.1, frozen (see [`v1_0`]).
#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
pub mod v1_1 {
    use super::*;

    since_1_1! {}
    root_module!(VersionStrings::new("1.1.0"));
}

/// The signature of a plugin's `open`.
pub type OpenFn = extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<BackendBox, StoreError>;
