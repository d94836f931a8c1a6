//! The store contract as a test suite that runs against any backend.
//!
//! `snapstore conformance` runs it on the configured store; a backend
//! author runs it from their own tests on a [`BlockingStore`] made with
//! [`BlockingStore::with_backend`] (no plugin build needed):
//!
//! ```ignore
//! let store = BlockingStore::with_backend(root, "mine", Box::new(MyBackend::open(root)?))?;
//! assert!(snapstore::conformance::run(&store, |case| println!("{case}")).passed());
//! ```
//!
//! Every case runs in a namespace of its own (a fresh prefix of its ids
//! and cache name), so that one failure does not cascade into the next
//! case; whatever a case made is deleted after it, so the suite can run on
//! a store in use.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use store_api::{ErrorKind, Key, Namespace, Owner, StoreError};

use store_api::util::random_token;

use crate::store::{BlockingStore, Lease, LeaseKind, LockKind, Released};

/// The outcome of one case.
pub struct CaseResult {
    pub name: &'static str,
    pub outcome: Result<(), String>,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(()) => write!(f, "ok   {}", self.name),
            Err(why) => write!(f, "FAIL {}: {why}", self.name),
        }
    }
}

/// All cases' outcomes.
pub struct Report {
    pub cases: Vec<CaseResult>,
    /// Stopped by SIGINT or SIGTERM (see `stop_on_signals`) before every case ran.
    pub interrupted: bool,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.outcome.is_ok())
    }
    pub fn failures(&self) -> usize {
        self.cases.iter().filter(|c| c.outcome.is_err()).count()
    }
}

type Outcome = Result<(), String>;

/// Fails the case with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// A case's view of the store: names in a scratch namespace.
struct Suite<'a> {
    store: &'a BlockingStore,
    /// The prefix of this case's names.
    prefix: String,
    /// The prefix of every case's names in this run.
    run_prefix: String,
}

fn store_err(e: StoreError) -> String {
    format!("{:?}", e)
}

impl Suite<'_> {
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn build(&self, base: Option<&str>, id: &str, text: &str) -> Outcome {
        let (base, id) = (base.map(|b| self.id(b)), self.id(id));
        let built = self.store.build(base.as_deref(), &id, |dir| append(dir, text));
        built.map_err(store_err)?.map(|_| ()).map_err(|e| format!("cannot write the tree: {e}"))
    }

    fn read(&self, id: &str) -> Result<String, String> {
        let path = self.store.result(&self.id(id)).map_err(store_err)?;
        let path = path.ok_or_else(|| format!("result {id} is missing"))?;
        fs::read_to_string(path.join("output")).map_err(|e| format!("cannot read {id}: {e}"))
    }

    fn exists(&self, id: &str) -> Result<bool, String> {
        Ok(self.store.result(&self.id(id)).map_err(store_err)?.is_some())
    }

    fn cache(&self) -> String {
        format!("{} cache/../x", self.prefix)
    }

    fn acquire(&self, owner: Option<Owner>) -> Result<Lease, String> {
        self.store.acquire_cache(&self.cache(), owner, LeaseKind::BoundToProcess).map_err(store_err)
    }

    /// Publishes `text` as the cache's file `data`.
    fn publish(&self, text: &str) -> Outcome {
        let lease = self.acquire(None)?;
        fs::write(lease.path.join("data"), text).map_err(|e| e.to_string())?;
        let released = self.store.release(lease).map_err(store_err)?;
        ensure!(released == Released::Published, "a release with no other copy out was discarded");
        Ok(())
    }
}

fn append(dir: &Path, text: &str) -> Result<(), std::io::Error> {
    let path = dir.join("output");
    let old = fs::read_to_string(&path).unwrap_or_default();
    fs::write(path, old + text)
}

fn build_and_lookup(s: &Suite) -> Outcome {
    ensure!(!s.exists("base")?, "an unknown id has a result");
    s.build(None, "base", "ok")?;
    ensure!(s.read("base")? == "ok", "base holds {:?}", s.read("base")?);
    s.build(Some("base"), "sub", "+")?;
    ensure!(s.read("sub")? == "ok+", "sub holds {:?}", s.read("sub")?);
    ensure!(s.read("base")? == "ok", "building on base changed it");
    Ok(())
}

fn failure_is_not_recorded(s: &Suite) -> Outcome {
    s.build(None, "base", "ok")?;
    let failed = s.store.build(Some(&s.id("base")), &s.id("fail"), |dir| {
        append(dir, "half")?;
        Err(std::io::Error::other("the build failed"))
    });
    ensure!(matches!(failed, Ok(Err(_))), "a failing build did not report its failure");
    ensure!(!s.exists("fail")?, "a failed build left a result");
    s.build(Some("base"), "fail", "!")?;
    ensure!(s.read("fail")? == "ok!", "the retry holds {:?}", s.read("fail")?);
    Ok(())
}

fn existing_id_is_refused(s: &Suite) -> Outcome {
    s.build(None, "base", "ok")?;
    match s.store.build(None, &s.id("base"), |dir| append(dir, "changed")) {
        Err(e) if e.kind() == ErrorKind::ALREADY_EXISTS => {}
        Err(e) => return Err(format!("wrong error: {e:?}")),
        Ok(_) => return Err("a second build of an existing id ran".into()),
    }
    ensure!(s.read("base")? == "ok", "the refused build changed the result");
    match s.store.build(Some(&s.id("nosuchbase")), &s.id("orphan"), |_| Ok::<(), std::io::Error>(())) {
        Err(e) if e.kind() == ErrorKind::NOT_FOUND => Ok(()),
        other => Err(format!("a missing base gave {:?}", other.map(|_| ()))),
    }
}

fn delete_keeps_children(s: &Suite) -> Outcome {
    s.build(None, "base", "ok")?;
    s.build(Some("base"), "child", "1")?;
    s.store.delete(&s.id("base")).map_err(store_err)?;
    s.store.delete(&s.id("base")).map_err(|e| format!("a second delete failed: {e}"))?;
    ensure!(!s.exists("base")?, "a deleted result is still there");
    ensure!(s.read("child")? == "ok1", "the child of a deleted base holds {:?}", s.read("child")?);
    s.build(Some("child"), "grandchild", "2")?;
    ensure!(s.read("grandchild")? == "ok12", "a build on the orphaned child is wrong");
    Ok(())
}

fn cache_is_created_with_owner(s: &Suite) -> Outcome {
    let owner = if nix::unistd::geteuid().is_root() {
        Owner { uid: 4242, gid: 4343 }
    } else {
        Owner { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() }
    };
    let lease = s.acquire(Some(owner))?;
    let meta = fs::metadata(&lease.path).map_err(|e| e.to_string())?;
    ensure!(meta.is_dir(), "the cache copy is not a directory");
    ensure!((meta.uid(), meta.gid()) == (owner.uid, owner.gid), "owned by {}:{}", meta.uid(), meta.gid());
    let entries = fs::read_dir(&lease.path).map_err(|e| e.to_string())?.count();
    ensure!(entries == 0, "a new cache holds {entries} entries");
    ensure!(lease.path.starts_with(s.store.root()), "the copy is outside the store");
    fs::write(lease.path.join("data"), "v1").map_err(|e| e.to_string())?;
    let released = s.store.release(lease).map_err(store_err)?;
    ensure!(released == Released::Published, "the first release was discarded");
    Ok(())
}

fn cache_publishes(s: &Suite) -> Outcome {
    s.publish("v1")?;
    let lease = s.acquire(None)?;
    let data = fs::read_to_string(lease.path.join("data")).unwrap_or_default();
    ensure!(data == "v1", "the next copy holds {data:?}, not the published v1");
    s.store.release(lease).map_err(store_err)?;
    Ok(())
}

fn cache_first_release_wins(s: &Suite) -> Outcome {
    let (a, b) = (s.acquire(None)?, s.acquire(None)?);
    fs::write(a.path.join("data"), "v2a").map_err(|e| e.to_string())?;
    fs::write(b.path.join("data"), "v2b").map_err(|e| e.to_string())?;
    ensure!(s.store.release(b).map_err(store_err)? == Released::Published, "first release discarded");
    ensure!(s.store.release(a).map_err(store_err)? == Released::Discarded, "second release published");
    let check = s.acquire(None)?;
    let data = fs::read_to_string(check.path.join("data")).unwrap_or_default();
    s.store.release(check).map_err(store_err)?;
    ensure!(data == "v2b", "the cache holds {data:?}, not v2b");
    Ok(())
}

fn cache_delete_while_in_use(s: &Suite) -> Outcome {
    let lease = s.acquire(None)?;
    fs::write(lease.path.join("data"), "stale").map_err(|e| e.to_string())?;
    match s.store.delete_cache(&s.cache()) {
        Ok(()) => {
            let released = s.store.release(lease).map_err(store_err)?;
            ensure!(released == Released::Discarded, "a copy of a deleted cache was published");
        }
        Err(e) if e.kind() == ErrorKind::BUSY => {
            s.store.release(lease).map_err(store_err)?;
            s.store.delete_cache(&s.cache()).map_err(|e| format!("delete after release: {e}"))?;
        }
        Err(e) => return Err(store_err(e)),
    }
    let fresh = s.acquire(None)?;
    let entries = fs::read_dir(&fresh.path).map_err(|e| e.to_string())?.count();
    s.store.release(fresh).map_err(store_err)?;
    ensure!(entries == 0, "a deleted cache came back with {entries} entries");
    Ok(())
}

fn invalid_names_are_refused(s: &Suite) -> Outcome {
    let long = "x".repeat(256);
    for bad in ["../x", "a/b", ".x", "", long.as_str(), "a\0b"] {
        match s.store.result(bad) {
            Err(e) if e.kind() == ErrorKind::INVALID_INPUT => {}
            other => return Err(format!("id {bad:?} gave {other:?}")),
        }
        let built = s.store.build(None, bad, |_| Ok::<(), std::io::Error>(()));
        ensure!(matches!(&built, Err(e) if e.kind() == ErrorKind::INVALID_INPUT), "build {bad:?} accepted");
    }
    for bad in ["", long.as_str(), "a\0b"] {
        let acquired = s.store.acquire_cache(bad, None, LeaseKind::BoundToProcess);
        ensure!(
            matches!(&acquired, Err(e) if e.kind() == ErrorKind::INVALID_INPUT),
            "cache {bad:?} accepted"
        );
    }
    Ok(())
}

fn stale_tree_is_recovered(s: &Suite) -> Outcome {
    // A tree whose owner is gone: made directly, with no lock held.
    // Made after the live build began, whose start would remove it.
    let live = s.store.begin_build(None, &s.id("live")).map_err(store_err)?;
    let token = random_token();
    let key = Key::new(Namespace::ResultTmp, &token).map_err(store_err)?;
    s.store.backend().create(&key, None).map_err(store_err)?;
    // The case's own leftover is expected: no warning for it. Any other
    // tree removed in this pass was a real dead process's, and is told.
    let quiet = tracing::subscriber::NoSubscriber::default();
    let recovered = tracing::subscriber::with_default(quiet, || s.store.recover()).map_err(store_err)?;
    if recovered.temporary_trees > 1 {
        let others = recovered.temporary_trees - 1;
        tracing::warn!(others, "removed temporary trees left by dead processes");
    }
    let left = s.store.backend().list(Namespace::ResultTmp).map_err(store_err)?;
    ensure!(!left.contains(&token), "a stale temporary tree survived recovery");
    ensure!(live.path().is_dir(), "recovery removed the tree of a live build");
    live.commit().map_err(|e| format!("the live build cannot commit after recovery: {e}"))?;
    Ok(())
}

fn nothing_leaks(s: &Suite) -> Outcome {
    s.build(None, "base", "ok")?;
    s.build(Some("base"), "child", "1")?;
    s.publish("v1")?;
    cleanup(s)?;
    s.store.complete_deletes().map_err(store_err)?;
    // Nothing of this case nor of any case before it (each cleaned up after it ran).
    let prefix = &s.run_prefix;
    for ns in Namespace::ALL {
        let left: Vec<String> = s
            .store
            .backend()
            .list(ns)
            .map_err(store_err)?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        ensure!(left.is_empty(), "{ns} still holds {left:?}");
    }
    // Nor any of the host's own files for them (locks, records).
    for kind in [LockKind::Build, LockKind::Use, LockKind::Cache] {
        let dir = s.store.lock_dir(kind);
        let left: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        ensure!(left.is_empty(), "lock files left in {}: {left:?}", dir.display());
    }
    let recorded = s.store.records().and_then(|r| r.all()).map_err(store_err)?;
    ensure!(!recorded.iter().any(|r| r.id.starts_with(prefix)), "the result record keeps deleted results");
    Ok(())
}

/// Deletes what the case of `s` made.
fn cleanup(s: &Suite) -> Outcome {
    for id in s.store.backend().list(Namespace::Result).map_err(store_err)? {
        if id.starts_with(&s.prefix) {
            s.store.delete(&id).map_err(store_err)?;
        }
    }
    s.store.delete_cache(&s.cache()).map_err(store_err)
}

type Case = (&'static str, fn(&Suite) -> Outcome);

const CASES: &[Case] = &[
    ("build without and with a base, then look up", build_and_lookup),
    ("a failed build is not recorded; a retry works", failure_is_not_recorded),
    ("a build of an existing id is refused; a missing base is an error", existing_id_is_refused),
    ("delete is idempotent and keeps the children", delete_keeps_children),
    ("a new cache is an empty directory with the requested owner", cache_is_created_with_owner),
    ("a released copy is published", cache_publishes),
    ("of two copies of one snapshot the first released wins", cache_first_release_wins),
    ("deleting a cache in use: done or busy, both handled", cache_delete_while_in_use),
    ("invalid ids and cache names are refused", invalid_names_are_refused),
    ("a stale temporary tree is removed, a live one kept", stale_tree_is_recovered),
    ("nothing is left after deleting and complete_deletes", nothing_leaks),
];

/// Runs every case on `store`, calling `report` after each.
pub fn run(store: &BlockingStore, report: impl FnMut(&CaseResult)) -> Report {
    run_cases(store, CASES, report)
}

fn run_cases(store: &BlockingStore, cases: &[Case], mut report: impl FnMut(&CaseResult)) -> Report {
    let run_prefix = format!("conformance-{}", random_token());
    let mut results = Vec::new();
    for (number, (name, case)) in cases.iter().enumerate() {
        if crate::stress::interrupted() {
            return Report { cases: results, interrupted: true };
        }
        let suite =
            Suite { store, prefix: format!("{run_prefix}-c{number:02}"), run_prefix: run_prefix.clone() };
        // A panicking case (e.g. a backend bug surfacing in the host) is a failure, not an abort.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&suite)))
            .unwrap_or_else(|_| Err("panicked".into()));
        // Leave nothing behind, also when the case failed half-way.
        let cleaned = cleanup(&suite).map_err(|e| format!("cannot delete what the case made: {e}"));
        let result = CaseResult { name, outcome: outcome.and(cleaned) };
        report(&result);
        results.push(result);
    }
    Report { cases: results, interrupted: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsync_store(dir: &Path) -> BlockingStore {
        let root = dir.join("store");
        let backend = snapstore_rsync::open(&root, "").unwrap();
        BlockingStore::with_backend(&root, "rsync", Box::new(backend)).unwrap()
    }

    #[test]
    fn every_case_passes_alone_on_a_fresh_store() {
        for case in CASES {
            let dir = tempfile::tempdir().unwrap();
            let report = run_cases(&rsync_store(dir.path()), std::slice::from_ref(case), |_| ());
            assert!(report.passed(), "{}", report.cases[0]);
        }
    }

    #[test]
    fn a_failing_case_does_not_fail_the_next() {
        fn fails_half_way(s: &Suite) -> Outcome {
            s.build(None, "base", "ok")?;
            let lease = s.acquire(None)?;
            std::mem::forget(lease);
            Err("failed on purpose".into())
        }
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<Case> = [("fails half-way", fails_half_way as fn(&Suite) -> Outcome)]
            .into_iter()
            .chain(CASES.iter().copied())
            .collect();
        let report = run_cases(&rsync_store(dir.path()), &cases, |_| ());
        assert_eq!(
            report.failures(),
            1,
            "{}",
            report.cases.iter().map(|c| format!("{c}\n")).collect::<String>()
        );
        assert!(report.cases[0].outcome.is_err());
    }
}
