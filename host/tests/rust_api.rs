//! The same scenario through the async Rust API that build tools embed.

mod support;

use std::fs;
use std::path::PathBuf;

use snapstore::{Config, ErrorKind, Owner, Released, Store, StoreError};
use support::*;

#[derive(Debug)]
enum BuildError {
    Store(StoreError),
    Failed(&'static str),
}

impl From<StoreError> for BuildError {
    fn from(e: StoreError) -> Self {
        BuildError::Store(e)
    }
}

async fn open(dir: &tempfile::TempDir) -> Store {
    require_plugin("rsync");
    let mut config = Config::new("rsync", &dir.path().join("store"));
    config.plugin_dirs = vec![plugin_dir()];
    Store::open(config).await.unwrap()
}

async fn write(
    store: &Store,
    base: Option<&str>,
    id: &str,
    text: &'static str,
) -> Result<PathBuf, BuildError> {
    store
        .build(base, id, |dir| async move {
            let path = dir.join("output");
            let old = fs::read_to_string(&path).unwrap_or_default();
            tokio::fs::write(&path, old + text).await.map_err(|e| StoreError::io("write", &e))?;
            Ok(())
        })
        .await
}

fn read(path: Option<std::path::PathBuf>) -> String {
    fs::read_to_string(path.expect("result exists").join("output")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.result("base").await.unwrap(), None);
    write(&store, None, "base", "ok").await.unwrap();
    let sub = write(&store, Some("base"), "sub", "+").await.unwrap();
    // The build returns the path of the new result.
    assert_eq!(store.result("sub").await.unwrap(), Some(sub));
    assert_eq!(read(store.result("sub").await.unwrap()), "ok+");
    store.delete("sub").await.unwrap();
    assert_eq!(store.result("sub").await.unwrap(), None);

    // A failing build is not recorded; a retry of its id works.
    let failed = store.build(Some("base"), "retry", |_| async { Err(BuildError::Failed("no")) }).await;
    assert!(matches!(failed, Err(BuildError::Failed("no"))));
    assert_eq!(store.result("retry").await.unwrap(), None);
    write(&store, Some("base"), "retry", "!").await.unwrap();
    assert_eq!(read(store.result("retry").await.unwrap()), "ok!");

    // An existing id is refused and left alone.
    match write(&store, None, "base", "changed").await {
        Err(BuildError::Store(e)) => assert_eq!(e.kind(), ErrorKind::ALREADY_EXISTS),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(store.result("base").await.unwrap()), "ok");

    // Invalid ids never reach the backend.
    for bad in ["../x", "a/b", ".x", ""] {
        let err = store.result(bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::INVALID_INPUT);
    }

    // Deleting a base keeps its children.
    store.delete("base").await.unwrap();
    assert_eq!(read(store.result("retry").await.unwrap()), "ok!");
    write(&store, Some("retry"), "next", "?").await.unwrap();
    assert_eq!(read(store.result("next").await.unwrap()), "ok!?");

    // Many builds at once, on one base.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { write(&store, Some("next"), &format!("par{i}"), "p").await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.list().await.unwrap().results.len(), 10);
    assert!(store.state_dir().is_dir());
    assert!(store.df().await.unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let me = Owner { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() };
    let user = if is_root() { Owner { uid: 4321, gid: 8765 } } else { me };

    let (path, copy) = store.acquire_cache("opam", user).await.unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    fs::write(path.join("data"), "v1").unwrap();
    assert_eq!(copy.release().await.unwrap(), Released::Published);

    let (path_a, a) = store.acquire_cache("opam", user).await.unwrap();
    let (path_b, b) = store.acquire_cache("opam", user).await.unwrap();
    assert_eq!(fs::read_to_string(path_a.join("data")).unwrap(), "v1");
    fs::write(path_a.join("data"), "v2a").unwrap();
    fs::write(path_b.join("data"), "v2b").unwrap();
    assert_eq!(b.release().await.unwrap(), Released::Published);
    assert_eq!(a.release().await.unwrap(), Released::Discarded);
    let (path, copy) = store.acquire_cache("opam", user).await.unwrap();
    assert_eq!(fs::read_to_string(path.join("data")).unwrap(), "v2b");

    // Delete while in use: done now, the copy is discarded on release.
    store.delete_cache("opam").await.unwrap();
    assert_eq!(copy.release().await.unwrap(), Released::Discarded);
    let (path, copy) = store.acquire_cache("opam", user).await.unwrap();
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0);

    // A copy dropped without release is discarded by a later operation.
    drop(copy);
    store.complete_deletes().await.unwrap();
    let listing = store.list().await.unwrap();
    assert!(listing.leases.is_empty(), "{:?}", listing.leases);
    assert_eq!(listing.caches.len(), 1);
}
