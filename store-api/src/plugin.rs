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

#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
use crate::abi::AbiChange;
use crate::abi::{BackendAbi, BackendAbi_TO, BackendBox, OpenFn, PluginMod, PluginModRef};
use crate::{Change, Key, Namespace, Owner, SnapshotBackend, StoreError};

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
    #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
    fn changes(&self, raw: RStr<'_>, base: RStr<'_>) -> RResult<ROption<RVec<AbiChange>>, StoreError> {
        guard(|| {
            let changes = self.0.changes(&committed_key(raw)?, &committed_key(base)?)?;
            Ok(changes.map(|list| list.into_iter().map(abi_change).collect()).into())
        })
        .into()
    }
    #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
    fn size(&self, raw: RStr<'_>) -> RResult<ROption<u64>, StoreError> {
        guard(|| Ok(self.0.size(&committed_key(raw)?)?.into())).into()
    }
}

#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
fn abi_change(change: Change) -> AbiChange {
    use std::os::unix::ffi::OsStringExt;
    AbiChange { kind: change.kind.code(), path: change.path.into_os_string().into_vec().into() }
}

/// A change list from a plugin, checked: relative paths without `..`.
#[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
fn local_change(change: AbiChange) -> Result<Change, StoreError> {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::Component;
    let path = PathBuf::from(OsString::from_vec(change.path.into_vec()));
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    let kind = crate::ChangeKind::from_code(change.kind);
    match kind {
        Some(kind) if plain && !path.as_os_str().is_empty() => Ok(Change { kind, path }),
        _ => Err(StoreError::other(format!(
            "the backend reported a change of kind {} at {path:?}, which is not a relative path \
             below the tree or not a known kind; the plugin is broken: rebuild or report it",
            change.kind
        ))),
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
    #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
    V1_0(crate::abi::v1_0::BackendBox),
    #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
    V1_1(crate::abi::v1_1::BackendBox),
}

/// Calls the same method on whichever version `$remote` holds.
macro_rules! on_any {
    ($remote:expr, $backend:ident => $call:expr) => {
        match $remote {
            RemoteBackend::Current($backend) => $call,
            #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
            RemoteBackend::V1_0($backend) => $call,
            #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
            RemoteBackend::V1_1($backend) => $call,
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
            #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
            RemoteBackend::V1_1(b) => b.recover().into_result(),
            // Plugins built against 1.0 have no `recover`: the default.
            _ => Ok(()),
        }
    }
    fn changes(&self, key: &Key, base: &Key) -> Result<Option<Vec<Change>>, StoreError> {
        match self {
            #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
            RemoteBackend::Current(b) => {
                let (key, base) = (key.to_string(), base.to_string());
                let found = b.changes(key.as_str().into(), base.as_str().into()).into_result()?;
                found.into_option().map(|list| list.into_iter().map(local_change).collect()).transpose()
            }
            // Plugins built before 1.2 cannot tell: the host walks the trees.
            _ => Ok(None),
        }
    }
    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        match self {
            #[cfg(not(any(feature = "abi-1-0", feature = "abi-1-1")))]
            RemoteBackend::Current(b) => {
                let key = key.to_string();
                Ok(b.size(key.as_str().into()).into_result()?.into_option())
            }
            _ => Ok(None),
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
