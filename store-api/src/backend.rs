//! The interface a backend author implements, in plain Rust types.

use std::path::PathBuf;

#[allow(unused_imports)] // for the docs
use crate::ChangeKind;
use crate::{Change, Key, Namespace, Owner, StoreError};

/// Snapshot primitives over keys: the whole contract between the snapstore
/// host and a backend.
///
/// The host builds the store (results, caches, leases, recovery) on these
/// primitives and holds all policy. A backend only has to make each
/// primitive do what its section below says, atomically, whatever else is
/// running and whatever moment the process is killed.
///
/// # Vocabulary
///
/// * **Key**: `NAMESPACE/NAME` ([`Key`]). The host chooses every key; the
///   name is 1–255 characters of `A-Z a-z 0-9 . _ -`, not starting with
///   `.` ([`crate::key::check_name`]), checked by the host and again by the
///   plugin adapter before a backend sees it. So `root.join(key.to_string())`
///   is a safe path and `NAME` a safe file, subvolume or dataset name.
/// * **Tree**: the directory a key stands for, at the path that
///   [`create`](Self::create), [`clone_tree`](Self::clone_tree),
///   [`commit`](Self::commit) and [`path`](Self::path) return (inside the
///   store root, UTF-8).
/// * **Namespaces** ([`Namespace`]):
///
///   | namespace | holds | made by |
///   |---|---|---|
///   | `result/ID` | committed build results | `commit` |
///   | `result-tmp/TOKEN` | writable trees of builds in progress | `create`, `clone_tree` |
///   | `cache/NAME.GENERATION` | committed cache snapshots | `commit` |
///   | `cache-tmp/TOKEN` | writable cache copies handed out | `create`, `clone_tree` |
///
/// * **Committed** keys (`result`, `cache`) appear only through `commit`,
///   whole; their trees never change afterwards (read-only where the
///   technology can enforce it), and they go only through `remove`.
/// * **Temporary** keys (`result-tmp`, `cache-tmp`) are writable trees the
///   host hands to build commands and cache users. They end in `commit`
///   or `remove`. What is in them is untrusted: any file type, owner and
///   mode, directories made unwritable, and **mounts** (see below).
/// * **Owner**: the uid:gid of a new tree's top directory
///   ([`create`](Self::create)); `None` means the calling process's.
/// * **Parent hint**: the committed key a temporary tree was cloned from,
///   passed to `commit` so that a backend can share storage with it
///   (`rsync --link-dest`). It exists and is not removed during the call;
///   a backend is free to ignore it.
/// * **The backend's own state** (a trash directory, a staging area, a
///   dataset for removed trees) lives outside the four namespaces, is never
///   listed, and is cleaned by [`recover`](Self::recover) and
///   [`complete_deletes`](Self::complete_deletes).
///
/// # Guarantees a backend gives
///
/// **Atomicity and crashes.** A process may be killed at any instruction.
/// Whatever the moment:
///
/// * a committed key is either absent or a complete tree: `commit` makes it
///   appear in one step, `remove` makes it disappear in one step;
/// * a temporary key may be left half-made (half-copied, half-deleted);
///   the host removes it later with `remove`, which must cope with any
///   such state;
/// * leftovers outside the namespaces are the backend's to clean, in
///   `recover` (quickly) or `complete_deletes`.
///
/// **Mounts: never through them.** Build sandboxes bind-mount host
/// directories, caches, `/proc` and `/dev` into the trees a backend hands
/// out, and may leave them there. No method ever removes, changes, copies
/// or follows anything through a mount point:
///
/// * before removing or committing a tree, detach the mounts under it, and
///   only those, with [`crate::util::mounts::detach_mounts_under`];
/// * when walking a tree, never enter a mount root
///   ([`crate::util::mounts::is_mount_root`]): a mount still met there is an
///   error naming it, and nothing below it is touched;
/// * a committed tree never holds a mount.
///
/// **Concurrency.** Calls come from several threads (the trait is
/// `Send + Sync`) and several processes on one store root at once. The
/// host's locks ensure that:
///
/// * no two calls that make, commit or remove one key run at once
///   (`create` or `clone_tree` of a `dst`, `commit` of a `tmp` or to a
///   `dst`, `remove`);
/// * a committed key is never removed while it is being cloned or is the
///   parent of a running `commit`.
///
/// Everything else may overlap, and must work: calls on different keys;
/// several `clone_tree` calls from one `src`, and `commit`s naming it as
/// parent; `path`, `list` and `free_percent` alongside anything, also on
/// a key being committed or removed (they see it before or after); the
/// removal of a key while trees cloned from it are cloned, committed or
/// removed; `recover` and `complete_deletes` alongside all of these, in
/// other processes. State a backend shares between processes (its trash, its
/// staging area) is protected with `flock`, never judged by age: a tree of
/// a live process is never touched.
///
/// **Errors.** Every error is a [`StoreError`]: a kind
/// ([`ErrorKind`](crate::ErrorKind)), which decides the CLI's exit status,
/// and one line that says what is wrong and, where there is one, how to fix
/// it. Build them with [`StoreError::io`] or
/// [`IoContext::context`](crate::IoContext::context), which classify I/O
/// errors (`ENOSPC` and `EDQUOT` are `NO_SPACE`, `ENOENT` is `NOT_FOUND`,
/// `EEXIST` is `ALREADY_EXISTS`, `EACCES` and `EPERM` are `PERMISSION`).
/// A method that fails leaves committed keys as they were. Never write to
/// stdout: it belongs to the CLI.
///
/// # What the host does, so a backend need not
///
/// Validating and escaping names; locking; deciding when a cache copy is
/// published (a `commit` to the next `cache/NAME.GENERATION`) or discarded
/// (a `remove`); finding temporary trees of dead processes (with `list` and
/// its own locks) and removing them (with `remove`); recording which
/// backend made a store root.
///
/// # Examples
///
/// A build on a base, as the host runs it (each method's section has its
/// own example). `backend` is a minimal directory backend made for these
/// examples.
///
/// ```
/// # mod example { include!("../doc/example_backend.rs"); }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let backend = example::ExampleBackend::scratch();
/// use std::fs;
/// use store_api::{Key, Namespace, SnapshotBackend};
///
/// // Build `base` on an empty tree.
/// let tmp = Key::new(Namespace::ResultTmp, "7f3a")?;
/// let tree = backend.create(&tmp, None)?;
/// fs::write(tree.join("hello"), "hi")?;
/// let base = Key::new(Namespace::Result, "base")?;
/// backend.commit(&tmp, &base, None)?;
///
/// // Build `child` on a clone of `base`, committed with `base` as its parent.
/// let tmp = Key::new(Namespace::ResultTmp, "9c01")?;
/// let tree = backend.clone_tree(&base, &tmp)?;
/// fs::write(tree.join("hello"), "changed")?;
/// let child = Key::new(Namespace::Result, "child")?;
/// let path = backend.commit(&tmp, &child, Some(&base))?;
///
/// // Removing the base leaves the child intact.
/// backend.remove(&base)?;
/// assert_eq!(backend.list(Namespace::Result)?, ["child"]);
/// assert_eq!(fs::read_to_string(path.join("hello"))?, "changed");
/// # Ok(()) }
/// ```
///
/// A cache update: the user works on a copy of the latest generation; the
/// host publishes it as the next generation and removes the old one.
///
/// ```
/// # mod example { include!("../doc/example_backend.rs"); }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let backend = example::ExampleBackend::scratch();
/// use std::fs;
/// use store_api::{Key, Namespace, SnapshotBackend};
///
/// // The cache `downloads` at generation 1, made empty.
/// let copy = Key::new(Namespace::CacheTmp, "c0ffee")?;
/// backend.create(&copy, None)?;
/// let gen1 = Key::new(Namespace::Cache, "downloads.1")?;
/// backend.commit(&copy, &gen1, None)?;
///
/// // A copy, changed and published as generation 2.
/// let copy = Key::new(Namespace::CacheTmp, "d00d")?;
/// fs::write(backend.clone_tree(&gen1, &copy)?.join("pkg.tar"), "...")?;
/// let gen2 = Key::new(Namespace::Cache, "downloads.2")?;
/// backend.commit(&copy, &gen2, None)?;
/// backend.remove(&gen1)?;
/// assert_eq!(backend.list(Namespace::Cache)?, ["downloads.2"]);
/// assert!(backend.list(Namespace::CacheTmp)?.is_empty());
/// # Ok(()) }
/// ```
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Creates an empty, writable directory at the temporary `key` and
    /// returns its path.
    ///
    /// The directory has mode 0755 whatever the umask, and is owned by
    /// `owner` if given, else by the calling process
    /// ([`crate::util::create_owned_dir`] does exactly this). On failure
    /// nothing may be left, or a half-made tree that `remove` deletes.
    ///
    /// Errors: `ALREADY_EXISTS` if `key` exists; `NO_SPACE`; `PERMISSION`
    /// (e.g. `owner` given without the right to chown); `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use std::os::unix::fs::PermissionsExt;
    /// use store_api::{ErrorKind, Key, Namespace, SnapshotBackend};
    ///
    /// let key = Key::new(Namespace::CacheTmp, "3e9d")?;
    /// let tree = backend.create(&key, None)?;
    /// assert_eq!(std::fs::read_dir(&tree)?.count(), 0);
    /// assert_eq!(std::fs::metadata(&tree)?.permissions().mode() & 0o7777, 0o755);
    /// let again = backend.create(&key, None).unwrap_err();
    /// assert_eq!(again.kind(), ErrorKind::ALREADY_EXISTS);
    /// # Ok(()) }
    /// ```
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError>;

    /// Makes a writable copy of the committed tree `src` at the temporary
    /// key `dst` and returns its path.
    ///
    /// The copy holds everything `src` holds: the same contents, file
    /// types (hard links within the tree, symlinks as links, devices,
    /// fifos), owners, modes (setuid and sticky bits included), times, and
    /// extended attributes (ACLs, capabilities) where the filesystem has
    /// them; nested subvolumes or datasets too, or else the call fails:
    /// part of a tree is never dropped silently. The copy is independent:
    /// writing to it never changes `src`, and removing `src` later never
    /// changes the copy. It never reaches through a mount point in `src`.
    /// On failure `dst` may be left half-made; the host removes it.
    ///
    /// Errors: `NOT_FOUND` if `src` does not exist; `ALREADY_EXISTS` if
    /// `dst` exists; `NO_SPACE` if the copy does not fit; `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use std::fs;
    /// use store_api::{ErrorKind, Key, Namespace, SnapshotBackend};
    ///
    /// let (tmp, base) = (Key::new(Namespace::ResultTmp, "a1")?, Key::new(Namespace::Result, "base")?);
    /// fs::write(backend.create(&tmp, None)?.join("f"), "base")?;
    /// let base_tree = backend.commit(&tmp, &base, None)?;
    ///
    /// let copy = backend.clone_tree(&base, &Key::new(Namespace::ResultTmp, "b2")?)?;
    /// fs::write(copy.join("f"), "changed")?;
    /// assert_eq!(fs::read_to_string(base_tree.join("f"))?, "base");
    ///
    /// let missing = Key::new(Namespace::Result, "missing")?;
    /// let err = backend.clone_tree(&missing, &Key::new(Namespace::ResultTmp, "c3")?).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::NOT_FOUND);
    /// # Ok(()) }
    /// ```
    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError>;

    /// Turns the temporary tree `tmp` into the committed tree `dst`, in one
    /// atomic step, and returns the path of `dst`.
    ///
    /// Whatever the moment the process is killed, `dst` is either absent
    /// or complete, with everything written to `tmp` before the call.
    /// (Whether a commit also survives a power loss is the backend's
    /// choice, to be written in its README: flushing before the commit
    /// point gives it.) `dst` is never replaced. Make it
    /// read-only if the technology can. Mounts under `tmp` are detached
    /// first (see "Mounts" above): `dst` holds the tree's own files, never a
    /// sandbox's mount. `parent` is the committed tree `tmp` was cloned
    /// from, if it still exists: a hint for sharing storage, free to
    /// ignore. On success `tmp` is gone; on failure `dst` is as it was
    /// (absent, or the existing tree) and the host removes `tmp`.
    ///
    /// Errors: `ALREADY_EXISTS` if `dst` exists (it stays as it was);
    /// `NOT_FOUND` if `tmp` does not exist; `NO_SPACE`; `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{ErrorKind, Key, Namespace, SnapshotBackend};
    ///
    /// let (tmp, dst) = (Key::new(Namespace::CacheTmp, "5d2c")?, Key::new(Namespace::Cache, "opam.1")?);
    /// std::fs::write(backend.create(&tmp, None)?.join("index"), "v1")?;
    /// let path = backend.commit(&tmp, &dst, None)?;
    /// assert_eq!(backend.path(&dst)?, Some(path));
    /// assert_eq!(backend.path(&tmp)?, None);
    ///
    /// // A second commit to the same key is refused, and changes nothing.
    /// let other = Key::new(Namespace::CacheTmp, "6e3d")?;
    /// backend.create(&other, None)?;
    /// let err = backend.commit(&other, &dst, None).unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::ALREADY_EXISTS);
    /// assert!(backend.path(&dst)?.unwrap().join("index").exists());
    /// # Ok(()) }
    /// ```
    fn commit(&self, tmp: &Key, dst: &Key, parent: Option<&Key>) -> Result<PathBuf, StoreError>;

    /// Removes `key` from view at once (one atomic step), and frees its
    /// space now or later (by [`complete_deletes`](Self::complete_deletes)
    /// at the latest).
    ///
    /// An absent key is not an error. The tree may be in any state a crash
    /// or a build left: half-copied, half-deleted, with directories made
    /// unwritable, with mounts under it. Mounts are detached first, and
    /// only those under the tree; nothing is deleted through a mount (see
    /// "Mounts" above). Trees cloned from `key` stay intact, whatever their
    /// state.
    ///
    /// Errors: `IO` or `PERMISSION` if the key cannot be taken from view;
    /// a mount that cannot be detached is an error naming it. A key taken
    /// from view stays absent even if freeing its space fails: the call may
    /// then succeed (`complete_deletes` frees the space later) or report
    /// the failure.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// let key = Key::new(Namespace::ResultTmp, "dead")?;
    /// backend.create(&key, None)?;
    /// backend.remove(&key)?;
    /// assert_eq!(backend.path(&key)?, None);
    /// backend.remove(&key)?; // absent: still fine
    /// # Ok(()) }
    /// ```
    fn remove(&self, key: &Key) -> Result<(), StoreError>;

    /// The path of `key`'s tree if the key exists, else `None`.
    ///
    /// A committed key has a path only between its `commit` and its
    /// `remove`: never the path of a tree being committed, removed, or left
    /// half-made by a crash.
    ///
    /// Errors: `IO` (not for an absent key).
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// assert_eq!(backend.path(&Key::new(Namespace::Result, "nope")?)?, None);
    /// # Ok(()) }
    /// ```
    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError>;

    /// The names of the keys present in `namespace`, in any order.
    ///
    /// Only valid key names are listed: anything else there (the backend's
    /// trees in transit, a file made by hand) is skipped
    /// ([`crate::util::list_key_names`]). Keys present during the whole
    /// call are listed; keys committed or removed during it may or may not
    /// be.
    ///
    /// Errors: `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// backend.create(&Key::new(Namespace::CacheTmp, "x1")?, None)?;
    /// assert_eq!(backend.list(Namespace::CacheTmp)?, ["x1"]);
    /// assert!(backend.list(Namespace::Cache)?.is_empty());
    /// # Ok(()) }
    /// ```
    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError>;

    /// Free space of the filesystem or pool that holds the store, in
    /// percent (0–100): the space that new trees can still take
    /// ([`crate::util::free_percent`] for a directory). `prune` uses it.
    ///
    /// Errors: `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::SnapshotBackend;
    ///
    /// let free = backend.free_percent()?;
    /// assert!((0.0..=100.0).contains(&free));
    /// # Ok(()) }
    /// ```
    fn free_percent(&self) -> Result<f64, StoreError>;

    /// Returns once the space of everything removed so far, by any process,
    /// is really free, so that `df` and [`free_percent`](Self::free_percent)
    /// are accurate.
    ///
    /// Deletes the removed trees that are still waiting (after a crash or
    /// a busy filesystem). An entry that cannot be deleted does not stop
    /// the others: they are all tried, and the error names what is left.
    /// Entries a live process is still working on are left alone.
    ///
    /// Errors: `IO`, `PERMISSION`, or `BUSY` if the space is still not free
    /// after a long wait.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// let key = Key::new(Namespace::ResultTmp, "big")?;
    /// std::fs::write(backend.create(&key, None)?.join("blob"), vec![0u8; 1 << 20])?;
    /// backend.remove(&key)?;
    /// backend.complete_deletes()?;
    /// # Ok(()) }
    /// ```
    fn complete_deletes(&self) -> Result<(), StoreError>;

    /// Checks the prerequisites (tools, filesystem, kernel features,
    /// permissions) and returns lines saying what was found
    /// (`snapstore check` prints them).
    ///
    /// Errors: `UNSUPPORTED` (wrong filesystem, missing tool, old kernel),
    /// `PERMISSION` (e.g. needs root), `NOT_FOUND` (a missing pool or
    /// dataset), each with the fix in its message.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::SnapshotBackend;
    ///
    /// for line in backend.check()? {
    ///     println!("ok: {line}");
    /// }
    /// # Ok(()) }
    /// ```
    fn check(&self) -> Result<Vec<String>, StoreError>;

    /// Removes the backend's own leftovers of dead processes (e.g. trees
    /// half-way through a staged commit or a removal), quickly and without
    /// waiting for deletes to complete. (1.1)
    ///
    /// Called by the host's recovery pass, which may run alongside any
    /// other call in other processes: leftovers of a live process (its
    /// `flock` still held) are never touched. Temporary keys are not its
    /// business: the host removes those with `remove`. Defaults to doing
    /// nothing (backends without state of their own, and plugins built
    /// against store-api 1.0).
    ///
    /// Errors: `IO`, `PERMISSION`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::SnapshotBackend;
    ///
    /// backend.recover()?; // the default: nothing to do
    /// # Ok(()) }
    /// ```
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The entries of the committed tree `key` that differ from those of
    /// the committed tree `base`, when the backend can tell without walking
    /// both trees (its own layer, a snapshot diff); `Ok(None)` when it
    /// cannot, and the host then compares the trees itself. (1.2)
    ///
    /// The host writes an image layer from the answer (`snapstore export`),
    /// so it must be complete: every entry of `key` that is not identical
    /// in `base` (content, type, owner, mode, times, xattrs) is listed as
    /// [`ChangeKind::Added`] or [`ChangeKind::Modified`], every entry of
    /// `base` missing from `key` as [`ChangeKind::Deleted`]. A path both
    /// deleted and added was replaced: none of its old entries survive, and
    /// all its new ones are listed as added. Parent directories are listed
    /// only if they changed themselves. Any order.
    ///
    /// Defaults to `Ok(None)` (and plugins built against 1.0 or 1.1 answer
    /// it).
    ///
    /// Errors: `NOT_FOUND` if either key is missing; `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// let (tmp, base) = (Key::new(Namespace::ResultTmp, "b")?, Key::new(Namespace::Result, "base")?);
    /// backend.create(&tmp, None)?;
    /// backend.commit(&tmp, &base, None)?;
    /// let (tmp, step) = (Key::new(Namespace::ResultTmp, "s")?, Key::new(Namespace::Result, "step")?);
    /// std::fs::write(backend.clone_tree(&base, &tmp)?.join("new"), "x")?;
    /// backend.commit(&tmp, &step, Some(&base))?;
    /// // This backend keeps plain copies: it cannot tell, the host walks.
    /// assert_eq!(backend.changes(&step, &base)?, None);
    /// # Ok(()) }
    /// ```
    fn changes(&self, key: &Key, base: &Key) -> Result<Option<Vec<Change>>, StoreError> {
        let _ = (key, base);
        Ok(None)
    }

    /// The bytes of storage the committed tree `key` takes, when the
    /// backend can tell cheaply (a dataset's `used`, a layer's size);
    /// `Ok(None)` when it cannot, and the host then adds up the tree's
    /// blocks (`snapstore list --sizes`). (1.2)
    ///
    /// Defaults to `Ok(None)`.
    ///
    /// Errors: `NOT_FOUND` if `key` is missing; `IO`.
    ///
    /// ```
    /// # mod example { include!("../doc/example_backend.rs"); }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let backend = example::ExampleBackend::scratch();
    /// use store_api::{Key, Namespace, SnapshotBackend};
    ///
    /// let (tmp, key) = (Key::new(Namespace::ResultTmp, "t")?, Key::new(Namespace::Result, "r")?);
    /// backend.create(&tmp, None)?;
    /// backend.commit(&tmp, &key, None)?;
    /// assert_eq!(backend.size(&key)?, None); // the default: the host counts
    /// # Ok(()) }
    /// ```
    fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let _ = key;
        Ok(None)
    }
}
