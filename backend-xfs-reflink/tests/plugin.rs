//! The built `libsnapstore_xfs_reflink.so`, loaded as the host loads it.

mod common;

use std::path::PathBuf;

use store_api::abi::PluginModRef;
use store_api::abi_stable::library::lib_header_from_path;
use store_api::plugin::RemoteBackend;
use store_api::{ErrorKind, Key, SnapshotBackend};

use common::LoopFs;

/// The library cargo built with this test: `cargo test` leaves it in
/// target/<profile>/deps/ beside the test (only `cargo build` copies it up).
fn library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lib = exe.parent()?.join("libsnapstore_xfs_reflink.so");
    lib.exists().then_some(lib)
}

#[test]
fn loads_and_works_through_the_boundary() {
    let Some(lib) = library() else {
        common::skip("loads_and_works_through_the_boundary", "libsnapstore_xfs_reflink.so not built");
        return;
    };
    let header = lib_header_from_path(&lib).expect("load the library");
    let module = header.init_root_module::<PluginModRef>().expect("init the root module");
    assert_eq!(module.name().as_str(), "xfs-reflink");
    assert_eq!(module.version().as_str(), env!("CARGO_PKG_VERSION"));
    let open = module.open();

    // Refusal crosses the boundary as an error, not a crash.
    let err = open("/dev/shm/snapstore-plugin-test".into(), "".into()).into_result().err().unwrap();
    let _ = std::fs::remove_dir_all("/dev/shm/snapstore-plugin-test");
    assert_eq!(err.kind(), ErrorKind::UNSUPPORTED, "{err:?}");
    let err = open("/dev/shm/x".into(), "bogus = 1".into()).into_result().err().unwrap();
    assert_eq!(err.kind(), ErrorKind::INVALID_INPUT, "{err:?}");

    let Some(lfs) = LoopFs::new("loads_and_works_through_the_boundary", "xfs", 512 << 20, "") else {
        return;
    };
    let root = lfs.root();
    let backend =
        RemoteBackend::Current(open(root.to_str().unwrap().into(), "".into()).into_result().expect("open"));
    let key = |s: &str| Key::parse(s).unwrap();
    let tmp = backend.create(&key("result-tmp/a"), None).unwrap();
    std::fs::write(tmp.join("f"), "data").unwrap();
    backend.commit(&key("result-tmp/a"), &key("result/a"), None).unwrap();
    let c = backend.clone_tree(&key("result/a"), &key("result-tmp/b")).unwrap();
    assert_eq!(std::fs::read_to_string(c.join("f")).unwrap(), "data");
    let err = backend.clone_tree(&key("result/none"), &key("result-tmp/c")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NOT_FOUND);
    backend.remove(&key("result-tmp/b")).unwrap();
    backend.complete_deletes().unwrap();
    assert_eq!(backend.list(store_api::Namespace::Result).unwrap(), ["a"]);
    let lines = backend.check().unwrap();
    assert!(lines.iter().any(|l| l.contains("FICLONE works")), "{lines:?}");
}
