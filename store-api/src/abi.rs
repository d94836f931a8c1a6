//! The types that cross the plugin boundary. Only `abi_stable` types here.
//!
//! Evolution rules: new methods of [`BackendAbi`] go after the last one and
//! have a default body (used when an older plugin lacks them); new fields of
//! [`PluginMod`] go at the end with `#[sabi(missing_field(option))]`. Both
//! are minor versions of `store-api`; anything else is a new major version,
//! which the host refuses to load.

#![allow(non_local_definitions)] // from the #[sabi_trait] expansion

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

use crate::StoreError;

/// A uid:gid pair.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Declares [`BackendAbi`] with the methods of 1.0 followed by `$later`,
/// so that the `abi-1-0` feature can build the 1.0 interface exactly.
macro_rules! backend_abi {
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
    };
}

#[cfg(feature = "abi-1-0")]
backend_abi! {}

#[cfg(not(feature = "abi-1-0"))]
backend_abi! {
    // ----- added in 1.1: plugins built against 1.0 get these defaults -----

    /// Removes the backend's own leftovers of dead processes.
    fn recover(&self) -> RResult<(), StoreError> {
        RResult::ROk(())
    }
}

/// An opened backend, owned by the host.
pub type BackendBox = BackendAbi_TO<'static, RBox<()>>;

/// The signature of a plugin's `open`: store root and the `[backend]` table
/// of the config, serialized as TOML.
pub type OpenFn = extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<BackendBox, StoreError>;

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
    #[sabi(last_prefix_field)]
    pub open: extern "C" fn(RStr<'_>, RStr<'_>) -> RResult<BackendBox, StoreError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "snapstore";
    const NAME: &'static str = "snapstore backend";
    // The version of store-api the plugin was built against; the loader
    // refuses a different major version.
    const VERSION_STRINGS: VersionStrings = if cfg!(feature = "abi-1-0") {
        VersionStrings::new("1.0.0")
    } else {
        package_version_strings!()
    };
}
