//! Both sides of the boundary: the plugin-side adapter that turns a
//! [`SnapshotBackend`] into a [`BackendBox`], and the host-side
//! [`RemoteBackend`] that turns it back.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};

use crate::abi::{BackendAbi, BackendAbi_TO, BackendBox, OpenFn, PluginMod, PluginModRef};
use crate::{Key, Namespace, Owner, SnapshotBackend, StoreError};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into a `PANIC` error: a panic must never
/// unwind across the boundary (it would abort the host).
pub fn guard<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    static QUIET_HOOK: Once = Once::new();
    // Record the panic's message and place instead of printing it: the host
    // reports it as a one-line error.
    QUIET_HOOK.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let text = format!("{message}{}", place.unwrap_or_default());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }))
    });
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => {
            let what = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
            Err(StoreError::new(crate::ErrorKind::PANIC, format!("backend panicked: {what}")))
        }
    }
}

fn path_string(path: PathBuf) -> Result<RString, StoreError> {
    path.into_os_string()
        .into_string()
        .map(RString::from)
        .map_err(|p| StoreError::other(format!("path {p:?} is not UTF-8")))
}

fn key(raw: RStr<'_>) -> Result<Key, StoreError> {
    Key::parse(raw.as_str())
}

fn tmp_key(raw: RStr<'_>) -> Result<Key, StoreError> {
    let key = key(raw)?;
    if key.namespace().is_committed() {
        return Err(StoreError::invalid(format!("`{key}` is not a temporary key")));
    }
    Ok(key)
}

fn committed_key(raw: RStr<'_>) -> Result<Key, StoreError> {
    let key = key(raw)?;
    if !key.namespace().is_committed() {
        return Err(StoreError::invalid(format!("`{key}` is not a committed key")));
    }
    Ok(key)
}

/// Plugin side: checks keys and catches panics around a backend.
struct Guarded<B>(B);

impl<B: SnapshotBackend> BackendAbi for Guarded<B> {
    fn create(&self, raw: RStr<'_>, owner: ROption<Owner>) -> RResult<RString, StoreError> {
        guard(|| path_string(self.0.create(&tmp_key(raw)?, owner.into_option())?)).into()
    }
    fn clone_tree(&self, src: RStr<'_>, dst: RStr<'_>) -> RResult<RString, StoreError> {
        guard(|| path_string(self.0.clone_tree(&committed_key(src)?, &tmp_key(dst)?)?)).into()
    }
    fn commit(
        &self,
        tmp: RStr<'_>,
        dst: RStr<'_>,
        parent: ROption<RStr<'_>>,
    ) -> RResult<RString, StoreError> {
        guard(|| {
            let parent = parent.into_option().map(committed_key).transpose()?;
            path_string(self.0.commit(&tmp_key(tmp)?, &committed_key(dst)?, parent.as_ref())?)
        })
        .into()
    }
    fn remove(&self, raw: RStr<'_>) -> RResult<(), StoreError> {
        guard(|| self.0.remove(&key(raw)?)).into()
    }
    fn path(&self, raw: RStr<'_>) -> RResult<ROption<RString>, StoreError> {
        guard(|| Ok(self.0.path(&key(raw)?)?.map(path_string).transpose()?.into())).into()
    }
    fn list(&self, namespace: RStr<'_>) -> RResult<RVec<RString>, StoreError> {
        guard(|| {
            let names = self.0.list(Namespace::parse(namespace.as_str())?)?;
            Ok(names.into_iter().map(RString::from).collect())
        })
        .into()
    }
    fn free_percent(&self) -> RResult<f64, StoreError> {
        guard(|| self.0.free_percent()).into()
    }
    fn complete_deletes(&self) -> RResult<(), StoreError> {
        guard(|| self.0.complete_deletes()).into()
    }
    fn check(&self) -> RResult<RVec<RString>, StoreError> {
        guard(|| Ok(self.0.check()?.into_iter().map(RString::from).collect())).into()
    }
    #[cfg(not(feature = "abi-1-0"))]
    fn recover(&self) -> RResult<(), StoreError> {
        guard(|| self.0.recover()).into()
    }
}

/// Plugin side: the body of the exported `open` (see [`crate::export_backend!`]).
pub fn open_guarded<B: SnapshotBackend>(
    root: RStr<'_>,
    options: RStr<'_>,
    open: fn(&Path, &str) -> Result<B, StoreError>,
) -> RResult<BackendBox, StoreError> {
    guard(|| {
        let backend = open(Path::new(root.as_str()), options.as_str())?;
        Ok(BackendAbi_TO::from_value(Guarded(backend), TD_Opaque))
    })
    .into()
}

/// Plugin side: builds the root module (see [`crate::export_backend!`]).
pub fn module(name: &'static str, version: &'static str, open: OpenFn) -> PluginModRef {
    PluginMod { name: RStr::from_str(name), version: RStr::from_str(version), open }.leak_into_prefix()
}

/// Host side: a backend reached through the boundary, as a [`SnapshotBackend`],
/// whichever interface version its plugin was built against.
pub enum RemoteBackend {
    Current(BackendBox),
    #[cfg(not(feature = "abi-1-0"))]
    V1_0(crate::abi::v1_0::BackendBox),
}

/// Calls the same method on whichever version `$remote` holds.
macro_rules! on_any {
    ($remote:expr, $backend:ident => $call:expr) => {
        match $remote {
            RemoteBackend::Current($backend) => $call,
            #[cfg(not(feature = "abi-1-0"))]
            RemoteBackend::V1_0($backend) => $call,
        }
    };
}

fn local_path(path: RString) -> PathBuf {
    PathBuf::from(path.into_string())
}

impl SnapshotBackend for RemoteBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let key = key.to_string();
        on_any!(self, b => b.create(key.as_str().into(), owner.into())).into_result().map(local_path)
    }
    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (src, dst) = (src.to_string(), dst.to_string());
        on_any!(self, b => b.clone_tree(src.as_str().into(), dst.as_str().into()))
            .into_result()
            .map(local_path)
    }
    fn commit(&self, tmp: &Key, dst: &Key, parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        let (tmp, dst) = (tmp.to_string(), dst.to_string());
        let parent = parent.map(Key::to_string);
        let parent = parent.as_deref().map(RStr::from_str);
        on_any!(self, b => b.commit(tmp.as_str().into(), dst.as_str().into(), parent.into()))
            .into_result()
            .map(local_path)
    }
    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let key = key.to_string();
        on_any!(self, b => b.remove(key.as_str().into())).into_result()
    }
    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        let key = key.to_string();
        let found = on_any!(self, b => b.path(key.as_str().into())).into_result()?;
        Ok(found.into_option().map(local_path))
    }
    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        let names = on_any!(self, b => b.list(namespace.as_str().into())).into_result()?;
        Ok(names.into_iter().map(RString::into_string).collect())
    }
    fn free_percent(&self) -> Result<f64, StoreError> {
        on_any!(self, b => b.free_percent()).into_result()
    }
    fn complete_deletes(&self) -> Result<(), StoreError> {
        on_any!(self, b => b.complete_deletes()).into_result()
    }
    fn check(&self) -> Result<Vec<String>, StoreError> {
        let found = on_any!(self, b => b.check()).into_result()?;
        Ok(found.into_iter().map(RString::into_string).collect())
    }
    fn recover(&self) -> Result<(), StoreError> {
        match self {
            #[cfg(not(feature = "abi-1-0"))]
            RemoteBackend::Current(b) => b.recover().into_result(),
            // Plugins built against 1.0 have no `recover`: the default.
            _ => Ok(()),
        }
    }
}

/// Exports a backend from a `cdylib`:
///
/// ```ignore
/// store_api::export_backend!(name: "mybackend", version: env!("CARGO_PKG_VERSION"), open: open);
/// ```
///
/// where `fn open(root: &Path, options: &str) -> Result<B, StoreError>` and
/// `B: SnapshotBackend`. `options` is the config's `[backend]` table as TOML;
/// parse it with [`crate::parse_options`].
#[macro_export]
macro_rules! export_backend {
    (name: $name:expr, version: $version:expr, open: $open:path $(,)?) => {
        // The symbol abi_stable's loader looks up
        // (`abi_stable::library::ROOT_MODULE_LOADER_NAME`, checked by a test).
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __snapstore_open(
                root: $crate::abi_stable::std_types::RStr<'_>,
                options: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<$crate::abi::BackendBox, $crate::StoreError> {
                $crate::plugin::open_guarded(root, options, $open)
            }
            fn __snapstore_module() -> $crate::abi::PluginModRef {
                $crate::plugin::module($name, $version, __snapstore_open)
            }
            extern "C" fn __snapstore_load() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__snapstore_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    __snapstore_load,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_symbol_is_the_one_the_loader_looks_up() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }

    #[test]
    fn panics_become_errors() {
        let err = guard::<()>(|| panic!("boom")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::PANIC);
        assert!(err.message().contains("boom"), "{err:?}");
        assert!(err.message().contains("plugin.rs"), "{err:?}");
    }
}
