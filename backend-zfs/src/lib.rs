//! snapstore backend on ZFS, driven through the `zfs` and `zpool` commands.
//!
//! Layout, for `[backend] dataset = "DATASET"` mounted at the store root:
//!
//! * key `ns/name` is the dataset `DATASET/ns/name`, mounted (by inheritance)
//!   at `ROOT/ns/name`;
//! * commit sets `readonly=on`, takes a snapshot with a unique name (kept in
//!   the user property `snapstore:snap`) and renames the dataset to its
//!   committed key: the rename is the commit point. Clones are made from
//!   that snapshot;
//! * remove sets the user property `snapstore:removed=yes` (atomic: from then
//!   on the key is invisible), then destroys the dataset. ZFS refuses to
//!   destroy a snapshot that has clones, so live clones are first promoted
//!   (`zfs promote`): the snapshot moves into a clone, and the removed
//!   dataset becomes a clone itself, destroyable at once. A removed dataset
//!   whose only clones are removed ones too waits for them: destroying a
//!   dataset also destroys its removed origin. Snapshot names are unique, so
//!   promoted snapshots never clash; `snapstore:snap` still finds a
//!   dataset's snapshot after it moved (it is then the dataset's origin).
//! * Removed datasets are never renamed (libzfs unmounts and remounts the
//!   clones of a renamed dataset; zfs-fuse then reports them busy), except
//!   into `DATASET/trash` (never mounted) when a key must be reused before
//!   its old dataset could be destroyed.
//!
//! ZFS names are at most 255 characters. A key whose dataset name would be
//! longer is stored under `h:<sha256 of the name>` (`:` never occurs in a
//! key, so such names cannot collide with plain ones), and its real name is
//! kept in the user property `snapstore:<namespace>` of the dataset.

mod cmd;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use store_api::{ErrorKind, IoContext, Key, Namespace, Owner, SnapshotBackend, StoreError};

use cmd::{has_dependent_clones, zfs, zpool};

/// The user property naming a committed dataset's snapshot.
const SNAP_PROPERTY: &str = "snapstore:snap";
/// The user property that marks a removed dataset (value `yes`).
const REMOVED_PROPERTY: &str = "snapstore:removed";
/// The longest name `unique_name` makes: `<16 hex>-<8 hex>-<16 hex>`.
const MAX_UNIQUE: usize = 16 + 1 + 8 + 1 + 16;
/// Where a removed dataset goes when its key is needed again before it
/// could be destroyed.
const TRASH: &str = "trash";
/// The longest dataset or snapshot name ZFS accepts (MAXNAMELEN - 1).
const MAX_ZFS_NAME: usize = 255;
/// Prefix of the hashed name of a key too long for ZFS.
const HASH_PREFIX: &str = "h:";
/// The longest suffix we add to DATASET: `/cache-tmp/h:<64 hex>@<unique>`.
const LONGEST_SUFFIX: usize = 1 + 9 + 1 + 2 + 64 + 1 + MAX_UNIQUE;
/// How many clones one removal promotes at most before giving up.
const MAX_PROMOTES: usize = 1000;
/// How long `complete_deletes` waits for the pool to report freed space.
const FREEING_TIMEOUT: Duration = Duration::from_secs(600);

/// The `[backend]` options.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The dataset that holds the store; its mountpoint is the store root.
    pub dataset: String,
}

/// The zfs backend.
pub struct ZfsBackend {
    dataset: String,
    pool: String,
    root: PathBuf,
    /// Makes snapshot and trash names unique within this process.
    counter: AtomicU64,
}

/// Opens the store at `root`, which must be the mountpoint of the dataset
/// named in `options`, and creates the namespace datasets if needed.
pub fn open(root: &Path, options: &str) -> Result<ZfsBackend, StoreError> {
    let options: Options = store_api::parse_options(options)?;
    check_dataset_name(&options.dataset)?;
    let pool = options.dataset.split('/').next().unwrap_or_default().to_string();
    let backend =
        ZfsBackend { dataset: options.dataset, pool, root: root.to_path_buf(), counter: AtomicU64::new(0) };
    // One `zfs list` for both checks: each costs milliseconds on every command.
    let datasets = backend.store_datasets()?;
    backend.verify_dataset(&datasets)?;
    backend.ensure_parents(&datasets)?;
    Ok(backend)
}

store_api::export_backend!(name: "zfs", version: env!("CARGO_PKG_VERSION"), open: open);

/// Refuses anything but a plain dataset name, so that it cannot be taken for
/// an option or a snapshot by `zfs`, and leaves room for our suffixes.
fn check_dataset_name(name: &str) -> Result<(), StoreError> {
    let valid_component = |c: &str| {
        !c.is_empty()
            && !c.starts_with('-')
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "_-.:".contains(ch))
    };
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_with_letter || !name.split('/').all(valid_component) {
        return Err(StoreError::invalid(format!(
            "[backend] dataset = {name:?} is not a ZFS dataset name like \"tank/snapstore\""
        )));
    }
    if name.len() + LONGEST_SUFFIX > MAX_ZFS_NAME {
        return Err(StoreError::invalid(format!(
            "[backend] dataset = {name:?} is too long: at most {} characters, \
             to leave room for the store's own datasets",
            MAX_ZFS_NAME - LONGEST_SUFFIX
        )));
    }
    Ok(())
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What is at a dataset name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    /// Marked removed, not destroyed yet: invisible as a key.
    Removed,
    Live,
}

impl ZfsBackend {
    fn namespace_dataset(&self, namespace: &str) -> String {
        format!("{}/{namespace}", self.dataset)
    }

    /// The dataset name component of `key`'s name (see the module doc).
    fn component(&self, key: &Key) -> String {
        let plain = format!("{}/{}/{}@", self.dataset, key.namespace(), key.name());
        if plain.len() + MAX_UNIQUE <= MAX_ZFS_NAME {
            key.name().to_string()
        } else {
            format!("{HASH_PREFIX}{}", sha256_hex(key.name()))
        }
    }

    fn dataset_of(&self, key: &Key) -> String {
        format!("{}/{}", self.namespace_dataset(key.namespace().as_str()), self.component(key))
    }

    /// The user property that holds the real name of a hashed dataset.
    fn name_property(namespace: Namespace) -> String {
        format!("snapstore:{namespace}")
    }

    /// `zfs create`/`zfs clone` options that record `key`'s real name, if
    /// its dataset name is a hash. Set at creation, so never missing.
    fn name_options(&self, key: &Key) -> Vec<String> {
        if self.component(key).starts_with(HASH_PREFIX) {
            vec!["-o".into(), format!("{}={}", Self::name_property(key.namespace()), key.name())]
        } else {
            Vec::new()
        }
    }

    /// A name unique across processes and threads, for snapshots and the
    /// trash.
    fn unique_name(&self) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{:x}-{n:x}", nanos as u64, std::process::id())
    }

    /// The state of `dataset`.
    fn state(&self, dataset: &str) -> Result<State, StoreError> {
        match zfs(&["get", "-H", "-o", "value", REMOVED_PROPERTY, dataset]) {
            Ok(value) if value.trim() == "yes" => Ok(State::Removed),
            Ok(_) => Ok(State::Live),
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => Ok(State::Absent),
            Err(err) => Err(err),
        }
    }

    /// The mountpoint of `dataset`, mounting it if needed (e.g. after the
    /// ZFS daemon restarted), or `None` if it does not exist or is removed.
    fn mountpoint(&self, dataset: &str) -> Result<Option<PathBuf>, StoreError> {
        let columns = format!("mountpoint,mounted,readonly,{REMOVED_PROPERTY}");
        let out = match zfs(&["list", "-H", "-o", &columns, dataset]) {
            Ok(out) => out,
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(None),
            Err(err) => return Err(err),
        };
        let fields: Vec<&str> = out.trim_end().split('\t').collect();
        let [mountpoint, mounted, readonly, removed] = fields[..] else {
            return Err(StoreError::other(format!("unexpected `zfs list` output: {out:?}")));
        };
        if removed == "yes" {
            return Ok(None);
        }
        if !mountpoint.starts_with('/') {
            return Err(StoreError::other(format!(
                "dataset `{dataset}` has mountpoint `{mountpoint}`; \
                 let it inherit its mountpoint: `zfs inherit mountpoint {dataset}`"
            )));
        }
        if mounted != "yes" {
            // zfs-fuse mounts read-write (and shows `readonly=off`) unless told.
            let args: &[&str] = if readonly == "on" { &["mount", "-o", "ro"] } else { &["mount"] };
            match zfs(&[args, &[dataset]].concat()) {
                // Another process may have mounted it meanwhile.
                Err(err) if !err.message().contains("already mounted") => return Err(err),
                _ => {}
            }
        }
        Ok(Some(PathBuf::from(mountpoint)))
    }

    /// Like `mountpoint`, for a dataset that was just made.
    fn mountpoint_of_new(&self, dataset: &str) -> Result<PathBuf, StoreError> {
        self.mountpoint(dataset)?
            .ok_or_else(|| StoreError::other(format!("dataset `{dataset}` vanished after creation")))
    }

    /// Unmounts `dataset` if it is mounted. `zfs rename` and `zfs destroy`
    /// unmount by themselves, but on failure they mount again, and zfs-fuse
    /// keeps a just-unmounted dataset busy for a moment: letting them
    /// unmount makes every retry fail. Unmounted first, a retry succeeds.
    fn unmount(&self, dataset: &str) -> Result<(), StoreError> {
        match zfs(&["umount", dataset]) {
            Err(err) if err.message().contains("not currently mounted") => Ok(()),
            // Left to the command that follows to report.
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => Ok(()),
            other => other.map(drop),
        }
    }

    /// `zfs rename`, unmounted first (see `unmount`). The dataset stays
    /// unmounted at its new name; `mountpoint` mounts it when needed.
    fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.unmount(from)?;
        zfs(&["rename", from, to]).map(drop)
    }

    /// Promotes the live clones of `dataset`'s snapshots until it has none
    /// (each promotion moves the snapshots up to the clone's origin into the
    /// clone). Returns the removed clones that still depend on it.
    fn promote_live_clones(&self, dataset: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{dataset}@");
        let committed: Vec<String> = Namespace::ALL
            .into_iter()
            .filter(|ns| ns.is_committed())
            .map(|ns| format!("{}/", self.namespace_dataset(ns.as_str())))
            .collect();
        let columns = format!("name,origin,{REMOVED_PROPERTY}");
        for _ in 0..MAX_PROMOTES {
            let all = zfs(&["list", "-H", "-o", &columns, "-t", "filesystem", "-r", &self.dataset])?;
            let (mut live, mut removed) = (Vec::new(), Vec::new());
            for line in all.lines() {
                let fields: Vec<&str> = line.split('\t').collect();
                if let [name, origin, gone] = fields[..] {
                    if !origin.starts_with(&prefix) {
                        continue;
                    }
                    if gone == "yes" || name.starts_with(&self.trash_prefix()) {
                        removed.push(name.to_string());
                    } else {
                        live.push(name);
                    }
                }
            }
            // Committed trees first: they are never renamed again, so the
            // promoted snapshot will not be in the way of a commit.
            live.sort_by_key(|name| !committed.iter().any(|c| name.starts_with(c.as_str())));
            let Some(clone) = live.first() else { return Ok(removed) };
            match zfs(&["promote", clone]) {
                // Renamed or removed meanwhile: look again.
                Err(err) if err.kind() == ErrorKind::NOT_FOUND => {}
                other => {
                    other?;
                }
            }
        }
        Err(StoreError::busy(format!("`{dataset}` keeps getting new clones")))
    }

    fn trash_prefix(&self) -> String {
        format!("{}/", self.namespace_dataset(TRASH))
    }

    /// Destroys the removed `dataset` unless removed clones still depend on
    /// it, then its origin if that is a removed dataset too.
    fn destroy_removed(&self, dataset: &str) -> Result<(), StoreError> {
        let mut next = Some(dataset.to_string());
        'datasets: while let Some(ds) = next.take() {
            let origin = match zfs(&["get", "-H", "-o", "value", "origin", &ds]) {
                Ok(origin) => origin.trim().to_string(),
                // Destroyed meanwhile by another process.
                Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
                Err(err) => return Err(err),
            };
            self.unmount(&ds)?;
            for _ in 0..3 {
                if !self.promote_live_clones(&ds)?.is_empty() {
                    // Destroyed with the last of its removed clones.
                    return Ok(());
                }
                match zfs(&["destroy", "-r", &ds]) {
                    Ok(_) => {
                        let origin_ds = origin.split_once('@').map(|(d, _)| d.to_string());
                        next = match origin_ds {
                            Some(o)
                                if self.state(&o)? == State::Removed
                                    || o.starts_with(&self.trash_prefix()) =>
                            {
                                Some(o)
                            }
                            _ => None,
                        };
                        continue 'datasets;
                    }
                    Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
                    // A clone appeared since we looked: promote it too.
                    Err(err) if has_dependent_clones(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            return Err(StoreError::busy(format!("`{ds}` keeps getting new clones")));
        }
        Ok(())
    }

    /// Makes room for a new dataset at the key of the removed `dataset`:
    /// destroys it, or else moves it into the trash.
    fn clear_removed(&self, dataset: &str) -> Result<(), StoreError> {
        let _ = self.destroy_removed(dataset);
        if self.state(dataset)? == State::Absent {
            return Ok(());
        }
        // Renaming would unmount and mount again its (removed) clones.
        for clone in self.promote_live_clones(dataset)? {
            self.unmount(&clone)?;
        }
        let trashed = format!("{}{}", self.trash_prefix(), self.unique_name());
        self.rename(dataset, &trashed)
    }

    /// The snapshot of the committed `dataset`, or `None` if it does not
    /// exist: `dataset@<snapstore:snap>`, or, once a removal promoted a
    /// clone of it, the same snapshot as `dataset`'s origin.
    fn snapshot_of(&self, dataset: &str) -> Result<Option<String>, StoreError> {
        let properties = format!("{SNAP_PROPERTY},origin,{REMOVED_PROPERTY}");
        let out = match zfs(&["get", "-H", "-o", "property,value", &properties, dataset]) {
            Ok(out) => out,
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(None),
            Err(err) => return Err(err),
        };
        let value = |property: &str| {
            out.lines()
                .filter_map(|line| line.split_once('\t'))
                .find(|(p, _)| *p == property)
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        if value(REMOVED_PROPERTY) == "yes" {
            return Ok(None);
        }
        let (snap, origin) = (value(SNAP_PROPERTY), value("origin"));
        if snap.is_empty() || snap == "-" {
            return Err(StoreError::other(format!("dataset `{dataset}` has no `{SNAP_PROPERTY}` property")));
        }
        if origin.ends_with(&format!("@{snap}")) {
            Ok(Some(origin))
        } else {
            Ok(Some(format!("{dataset}@{snap}")))
        }
    }

    /// Runs `zfs create`/`zfs clone` (`args`) for the temporary `dataset`,
    /// first clearing a removed dataset left at that name.
    fn make(&self, args: &[String], dataset: &str) -> Result<(), StoreError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match zfs(&args) {
            Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS && self.state(dataset)? == State::Removed => {
                self.clear_removed(dataset)?;
                zfs(&args).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// The dataset and its direct children: (name, mountpoint, mounted).
    fn store_datasets(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let ds = &self.dataset;
        let out =
            zfs(&["list", "-H", "-o", "name,mountpoint,mounted", "-t", "filesystem", "-r", "-d", "1", ds])
                .map_err(|err| self.explain_missing(err))?;
        Ok(out
            .lines()
            .map(|line| {
                let mut fields = line.split('\t').map(str::to_string);
                let mut next = || fields.next().unwrap_or_default();
                (next(), next(), next())
            })
            .collect())
    }

    /// Checks that the dataset (in `datasets`, from [`Self::store_datasets`])
    /// is mounted at the store root. Returns a line describing it.
    fn verify_dataset(&self, datasets: &[(String, String, String)]) -> Result<String, StoreError> {
        let ds = &self.dataset;
        let (mountpoint, mounted) = match datasets.iter().find(|(name, _, _)| name == ds) {
            Some((_, mountpoint, mounted)) => (mountpoint.as_str(), mounted.as_str()),
            None => return Err(StoreError::not_found(format!("dataset `{ds}` is missing"))),
        };
        let root = self.root.display();
        if !same_path(Path::new(mountpoint), &self.root) {
            return Err(StoreError::invalid(format!(
                "dataset `{ds}` is mounted at `{mountpoint}`, not at the store root `{root}`: \
                 run `zfs set mountpoint={root} {ds}`, or set the store's root to `{mountpoint}`"
            )));
        }
        if mounted != "yes" {
            zfs(&["mount", ds]).map_err(|err| {
                err.context(format!("dataset `{ds}` is not mounted; mount it with `zfs mount {ds}`"))
            })?;
        }
        Ok(format!("dataset {ds} is mounted at the store root {root}"))
    }

    /// Turns a failed `zfs list DATASET` into an error that says how to fix it.
    fn explain_missing(&self, err: StoreError) -> StoreError {
        let (ds, pool, root) = (&self.dataset, &self.pool, self.root.display());
        match err.kind() {
            ErrorKind::NOT_FOUND => match zpool(&["list", "-H", "-o", "name", pool]) {
                Err(pool_err) if pool_err.kind() == ErrorKind::NOT_FOUND => {
                    StoreError::not_found(format!(
                        "ZFS pool `{pool}` (of dataset `{ds}`) does not exist: create it with \
                         `zpool create {pool} DEVICE` or import it with `zpool import {pool}`"
                    ))
                }
                Err(pool_err) => pool_err,
                Ok(_) => StoreError::not_found(format!(
                    "ZFS dataset `{ds}` does not exist: create it with \
                     `zfs create -p -o mountpoint={root} {ds}`"
                )),
            },
            ErrorKind::UNSUPPORTED => err.context(
                "cannot reach ZFS: start the ZFS daemon (`zfs-fuse`) or load the kernel module (`modprobe zfs`)",
            ),
            ErrorKind::PERMISSION => {
                err.context("not allowed to use ZFS: run snapstore as root")
            }
            _ => err,
        }
    }

    /// Creates `DATASET/<namespace>` and `DATASET/trash` if missing.
    fn ensure_parents(&self, datasets: &[(String, String, String)]) -> Result<(), StoreError> {
        let present: Vec<&str> = datasets.iter().map(|(name, _, _)| name.as_str()).collect();
        let namespaces = Namespace::ALL.map(Namespace::as_str);
        for name in namespaces.iter().chain([&TRASH]) {
            let dataset = self.namespace_dataset(name);
            if present.contains(&dataset.as_str()) {
                continue;
            }
            // The trash is never mounted: nobody needs to see removed trees.
            let args: &[&str] = if *name == TRASH { &["-o", "mountpoint=none"] } else { &[] };
            let mut command = vec!["create"];
            command.extend_from_slice(args);
            command.push(&dataset);
            match zfs(&command) {
                // Another process opening the store at the same time.
                Err(err) if err.kind() == ErrorKind::ALREADY_EXISTS => {}
                other => {
                    other.context("cannot create the store's datasets")?;
                }
            }
        }
        Ok(())
    }

    /// Waits until the pool has accounted the space of destroyed datasets.
    fn wait_for_freed_space(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        // Pools with async_destroy free space in the background and say how
        // much is left in `freeing`.
        let freeing_now = || zpool(&["get", "-Hp", "-o", "value", "freeing", &self.pool]);
        if let Ok(mut freeing) = freeing_now() {
            loop {
                if freeing.trim() == "0" {
                    return Ok(());
                }
                if start.elapsed() > FREEING_TIMEOUT {
                    return Err(StoreError::busy(format!(
                        "pool `{}` is still freeing {} bytes after {} s",
                        self.pool,
                        freeing.trim(),
                        FREEING_TIMEOUT.as_secs()
                    )));
                }
                sleep(Duration::from_millis(200));
                freeing = freeing_now()?;
            }
        }
        // Older pools (zfs-fuse's version 23) have no `freeing`: a destroy
        // frees synchronously, so wait only until `used` settles.
        let used = || zfs(&["get", "-Hp", "-o", "value", "used", &self.pool]);
        let mut last = used()?;
        while start.elapsed() < Duration::from_secs(10) {
            sleep(Duration::from_millis(100));
            let now = used()?;
            if now == last {
                return Ok(());
            }
            last = now;
        }
        Ok(())
    }

    /// `(used, available)` in bytes of each of `datasets`.
    fn space(&self, datasets: &[&str]) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut args = vec!["get", "-Hp", "-o", "name,property,value", "used,available"];
        args.extend_from_slice(datasets);
        let out = zfs(&args)?;
        let parse = |ds: &str, prop: &str| {
            out.lines()
                .filter_map(|line| {
                    let mut f = line.split('\t');
                    (f.next() == Some(ds) && f.next() == Some(prop)).then(|| f.next())?
                })
                .find_map(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| StoreError::other(format!("`zfs get {prop} {ds}` gave no number")))
        };
        datasets.iter().map(|ds| Ok((parse(ds, "used")?, parse(ds, "available")?))).collect()
    }
}

/// Whether two paths name the same directory (the config may spell the
/// root differently from ZFS, e.g. through a symlink or a trailing `/`).
fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

impl SnapshotBackend for ZfsBackend {
    fn create(&self, key: &Key, owner: Option<Owner>) -> Result<PathBuf, StoreError> {
        let dataset = self.dataset_of(key);
        let args = [vec!["create".to_string()], self.name_options(key), vec![dataset.clone()]].concat();
        self.make(&args, &dataset).context(format!("create `{key}`"))?;
        let path = self.mountpoint_of_new(&dataset)?;
        let prepare = || -> Result<(), StoreError> {
            if let Some(owner) = owner {
                std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid)).context(format!(
                    "chown {}:{} {}",
                    owner.uid,
                    owner.gid,
                    path.display()
                ))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .context(format!("chmod 755 {}", path.display()))
        };
        if let Err(err) = prepare() {
            // Do not leave a tree with the wrong owner behind.
            let _ = self.remove(key);
            return Err(err);
        }
        Ok(path)
    }

    fn clone_tree(&self, src: &Key, dst: &Key) -> Result<PathBuf, StoreError> {
        let (src_ds, dataset) = (self.dataset_of(src), self.dataset_of(dst));
        let what = format!("clone `{src}` to `{dst}`");
        let missing = || StoreError::not_found(format!("cannot clone `{src}`: it does not exist"));
        // Twice: a concurrent removal of `src` may move its snapshot.
        for attempt in 0..2 {
            let origin = self.snapshot_of(&src_ds)?.ok_or_else(missing)?;
            let args =
                [vec!["clone".to_string()], self.name_options(dst), vec![origin, dataset.clone()]].concat();
            match self.make(&args, &dataset) {
                Ok(()) => return self.mountpoint_of_new(&dataset),
                Err(err) if err.kind() == ErrorKind::NOT_FOUND && attempt == 0 => {}
                Err(err) => return Err(err.context(&what)),
            }
        }
        Err(missing())
    }

    fn commit(&self, tmp: &Key, dst: &Key, _parent: Option<&Key>) -> Result<PathBuf, StoreError> {
        // Clones already share storage with their origin: `parent` is not needed.
        let (tmp_ds, dst_ds) = (self.dataset_of(tmp), self.dataset_of(dst));
        let what = format!("commit `{tmp}` as `{dst}`");
        match self.state(&dst_ds)? {
            State::Live => return Err(StoreError::already_exists(format!("{what}: `{dst}` already exists"))),
            State::Removed => self.clear_removed(&dst_ds).context(&what)?,
            State::Absent => {}
        }
        if self.state(&tmp_ds)? != State::Live {
            return Err(StoreError::not_found(format!("{what}: `{tmp}` does not exist")));
        }
        if self.component(dst).starts_with(HASH_PREFIX) {
            // Recorded before the rename, so the committed dataset is never
            // without its name. Harmless on the tmp dataset until then.
            let property = format!("{}={}", Self::name_property(dst.namespace()), dst.name());
            zfs(&["set", &property, &tmp_ds]).context(&what)?;
        }
        // Read-only before the snapshot, so that the tree and its snapshot
        // (what clones start from) hold the same files.
        zfs(&["set", "readonly=on", &tmp_ds]).context(&what)?;
        // A snapshot the tmp dataset got from a promotion may have clones;
        // renaming would unmount them: move it on to a clone first.
        let snapshots =
            zfs(&["list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", &tmp_ds]).context(&what)?;
        if !snapshots.trim().is_empty() {
            self.promote_live_clones(&tmp_ds).context(&what)?;
        }
        // A fresh snapshot even if an earlier attempt left one: it may
        // predate the last writes.
        let snap = self.unique_name();
        zfs(&["snapshot", &format!("{tmp_ds}@{snap}")]).context(&what)?;
        zfs(&["set", &format!("{SNAP_PROPERTY}={snap}"), &tmp_ds]).context(&what)?;
        // The commit point: the complete, read-only tree appears under its key.
        self.rename(&tmp_ds, &dst_ds).context(&what)?;
        self.mountpoint_of_new(&dst_ds)
    }

    fn remove(&self, key: &Key) -> Result<(), StoreError> {
        let dataset = self.dataset_of(key);
        // The atomic step: from now on the key is absent for every reader.
        match zfs(&["set", &format!("{REMOVED_PROPERTY}=yes"), &dataset]) {
            Err(err) if err.kind() == ErrorKind::NOT_FOUND => return Ok(()),
            other => other.map(drop).context(format!("remove `{key}`"))?,
        }
        // If destroying fails now (busy, say), the dataset stays removed and
        // `complete_deletes` (or a later use of the key) finishes the job.
        let _ = self.destroy_removed(&dataset);
        Ok(())
    }

    fn path(&self, key: &Key) -> Result<Option<PathBuf>, StoreError> {
        self.mountpoint(&self.dataset_of(key))
    }

    fn list(&self, namespace: Namespace) -> Result<Vec<String>, StoreError> {
        let parent = self.namespace_dataset(namespace.as_str());
        let columns = format!("name,{},{REMOVED_PROPERTY}", Self::name_property(namespace));
        let out = zfs(&["list", "-H", "-o", &columns, "-t", "filesystem", "-r", "-d", "1", &parent])?;
        let prefix = format!("{parent}/");
        let mut names = Vec::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [dataset, recorded, removed] = fields[..] else { continue };
            let Some(component) = dataset.strip_prefix(&prefix) else { continue };
            if removed == "yes" {
                continue;
            }
            let name = if component.starts_with(HASH_PREFIX) { recorded } else { component };
            // Skips anything not made by us (a dataset created by hand with a
            // name that is not a valid key).
            if store_api::key::check_name(name).is_ok() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn free_percent(&self) -> Result<f64, StoreError> {
        // The pool's free space, or the dataset's if a quota limits it more.
        let space = self.space(&[&self.pool, &self.dataset])?;
        let percent = space
            .iter()
            .map(|&(used, available)| {
                let total = used.saturating_add(available);
                if total == 0 {
                    0.0
                } else {
                    available as f64 * 100.0 / total as f64
                }
            })
            .fold(100.0, f64::min);
        Ok(percent)
    }

    fn complete_deletes(&self) -> Result<(), StoreError> {
        // Removed datasets left by failed destroys or crashed processes, and
        // anything in the trash. Repeated while it makes progress: each pass
        // may free the origins of the next.
        let columns = format!("name,{REMOVED_PROPERTY}");
        let mut left = usize::MAX;
        let mut last_error = None;
        loop {
            let out = zfs(&["list", "-H", "-o", &columns, "-t", "filesystem", "-r", &self.dataset])?;
            let removed: Vec<&str> = out
                .lines()
                .filter_map(|line| line.split_once('\t'))
                .filter(|(name, gone)| *gone == "yes" || name.starts_with(&self.trash_prefix()))
                .map(|(name, _)| name)
                .collect();
            if removed.is_empty() {
                // All gone, whatever failed on the way.
                last_error = None;
                break;
            }
            if removed.len() >= left {
                break;
            }
            left = removed.len();
            // Only the failures of the last pass count.
            last_error = None;
            for dataset in removed {
                if let Err(err) = self.destroy_removed(dataset) {
                    last_error = Some(err);
                }
            }
        }
        self.wait_for_freed_space()?;
        last_error.map_or(Ok(()), |err| Err(err.context("complete_deletes")))
    }

    fn check(&self) -> Result<Vec<String>, StoreError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(StoreError::new(
                ErrorKind::PERMISSION,
                "the zfs backend needs root (it creates, mounts and destroys datasets): run snapstore as root",
            ));
        }
        let datasets = self.store_datasets()?;
        let mut lines = vec![self.verify_dataset(&datasets)?];
        let health = zpool(&["list", "-H", "-o", "health", &self.pool])?;
        let health = health.trim();
        if health != "ONLINE" {
            return Err(StoreError::other(format!(
                "pool `{}` is {health}: see `zpool status {}`",
                self.pool, self.pool
            )));
        }
        lines.push(format!("pool {} is ONLINE", self.pool));
        let namespaces = Namespace::ALL.map(Namespace::as_str);
        for name in namespaces.iter().chain([&TRASH]) {
            let dataset = self.namespace_dataset(name);
            if !datasets.iter().any(|(name, _, _)| *name == dataset) {
                return Err(StoreError::not_found(format!(
                    "dataset `{dataset}` is missing: create it with `zfs create {dataset}` \
                     (opening the store again also creates it)"
                )));
            }
        }
        lines.push(format!("datasets {}/{{result,result-tmp,cache,cache-tmp,trash}} exist", self.dataset));
        lines.push(format!("{:.1}% free", self.free_percent()?));
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_are_checked() {
        for good in ["tank", "tank/snapstore", "t-1/a_b.c:d"] {
            assert!(check_dataset_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/tank", "tank/", "tank//x", "-o", "tank/-x", "tank@s", "tank/a b", "1tank"] {
            assert!(check_dataset_name(bad).is_err(), "{bad}");
        }
        assert!(check_dataset_name(&format!("t/{}", "x".repeat(200))).is_err());
    }

    #[test]
    fn long_names_are_hashed() {
        let backend = ZfsBackend {
            dataset: "tank/store".into(),
            pool: "tank".into(),
            root: "/r".into(),
            counter: AtomicU64::new(0),
        };
        let short = Key::parse("result/abc").unwrap();
        assert_eq!(backend.dataset_of(&short), "tank/store/result/abc");
        assert!(backend.name_options(&short).is_empty());
        let long = Key::new(Namespace::CacheTmp, &"x".repeat(255)).unwrap();
        let dataset = backend.dataset_of(&long);
        assert!(dataset.starts_with("tank/store/cache-tmp/h:"), "{dataset}");
        assert!(dataset.len() + 1 + MAX_UNIQUE <= MAX_ZFS_NAME);
        // The longest name that still fits is kept as it is.
        let room = MAX_ZFS_NAME - "tank/store/result/@".len() - MAX_UNIQUE;
        let fits = Key::new(Namespace::Result, &"y".repeat(room)).unwrap();
        assert_eq!(backend.component(&fits), "y".repeat(room));
        let too_long = Key::new(Namespace::Result, &"y".repeat(room + 1)).unwrap();
        assert!(backend.component(&too_long).starts_with(HASH_PREFIX));
        assert!(backend.unique_name().len() <= MAX_UNIQUE);
        assert_ne!(backend.unique_name(), backend.unique_name());
    }

    #[test]
    fn options_are_strict() {
        assert!(store_api::parse_options::<Options>("dataset = \"tank/s\"").is_ok());
        assert!(store_api::parse_options::<Options>("").is_err());
        let err = store_api::parse_options::<Options>("dataset = \"t\"\nmode = \"x\"").unwrap_err();
        assert!(err.message().contains("mode"), "{err}");
    }
}
