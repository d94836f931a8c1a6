//! Dataset names: the [`Dataset`] type and the store's layout of datasets
//! (which dataset holds a key, hashed names, unique snapshot names).

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use store_api::{Key, Namespace, StoreError};

use crate::ZfsBackend;

/// The longest name `unique_name` makes: a random token of 16 hex digits.
pub const MAX_UNIQUE: usize = 16;
/// Where a removed dataset goes when its key is needed again before it
/// could be destroyed.
pub const TRASH: &str = "trash";
/// The longest dataset or snapshot name ZFS accepts (MAXNAMELEN - 1).
const MAX_ZFS_NAME: usize = 255;
/// Prefix of the hashed name of a key too long for ZFS.
pub const HASH_PREFIX: &str = "h:";
/// The longest suffix we add to DATASET: `/cache-tmp/h:<64 hex>@<unique>`.
const LONGEST_SUFFIX: usize = 1 + 9 + 1 + 2 + 64 + 1 + MAX_UNIQUE;

/// The name of a ZFS dataset (a filesystem), e.g. `tank/store/result/abc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dataset(String);

impl Dataset {
    /// The dataset named in the config: a plain dataset name, so that it
    /// cannot be taken for an option or a snapshot by `zfs`, with room left
    /// for the store's own suffixes.
    pub fn from_config(name: &str) -> Result<Self, StoreError> {
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
        Ok(Self(name.to_string()))
    }

    /// A name as `zfs` printed it.
    pub fn listed(name: &str) -> Self {
        Self(name.to_string())
    }

    /// The dataset of a snapshot name (`DATASET@SNAP`), e.g. an `origin`.
    pub fn of_snapshot(snapshot: &str) -> Option<Self> {
        snapshot.split_once('@').map(|(dataset, _)| Self(dataset.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool: the first component.
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}/{name}", self.0))
    }

    /// The name of its snapshot `snap`.
    pub fn snapshot(&self, snap: &str) -> String {
        format!("{}@{snap}", self.0)
    }

    /// The part of the name below `ancestor`, if it is below it.
    pub fn below(&self, ancestor: &Dataset) -> Option<&str> {
        self.0.strip_prefix(ancestor.as_str())?.strip_prefix('/')
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The user property that holds the real name of a hashed dataset.
pub fn name_property(namespace: Namespace) -> String {
    format!("snapstore:{namespace}")
}

impl ZfsBackend {
    /// `DATASET/<namespace>`, or `DATASET/trash`.
    pub(crate) fn namespace_dataset(&self, namespace: &str) -> Dataset {
        self.dataset.child(namespace)
    }

    /// Whether `dataset` is in the trash.
    pub(crate) fn is_trashed(&self, dataset: &Dataset) -> bool {
        dataset.below(&self.namespace_dataset(TRASH)).is_some()
    }

    /// The dataset name component of `key`'s name (see the crate doc).
    pub(crate) fn component(&self, key: &Key) -> String {
        let plain = format!("{}/{}/{}@", self.dataset, key.namespace(), key.name());
        if plain.len() + MAX_UNIQUE <= MAX_ZFS_NAME {
            key.name().to_string()
        } else {
            format!("{HASH_PREFIX}{}", sha256_hex(key.name()))
        }
    }

    pub(crate) fn dataset_of(&self, key: &Key) -> Dataset {
        self.namespace_dataset(key.namespace().as_str()).child(&self.component(key))
    }

    /// The path of `key`'s tree: `ROOT/<namespace>/<name>`, also for hashed
    /// names (their datasets get that mountpoint explicitly).
    pub(crate) fn key_path(&self, key: &Key) -> PathBuf {
        self.namespace_path(key.namespace()).join(key.name())
    }

    /// `ROOT/<namespace>`, the mountpoint of the namespace's dataset.
    pub(crate) fn namespace_path(&self, namespace: Namespace) -> PathBuf {
        self.root.join(namespace.as_str())
    }

    /// Whether `key`'s dataset name is a hash of its name.
    pub(crate) fn is_hashed(&self, key: &Key) -> bool {
        self.component(key).starts_with(HASH_PREFIX)
    }

    /// `zfs create`/`zfs clone` options for `key`'s dataset: if its name is
    /// a hash, its real name and its mountpoint (its key's path). Set at
    /// creation, so never missing.
    pub(crate) fn name_options(&self, key: &Key) -> Vec<String> {
        if self.is_hashed(key) {
            vec![
                "-o".into(),
                format!("{}={}", name_property(key.namespace()), key.name()),
                "-o".into(),
                format!("mountpoint={}", self.key_path(key).display()),
            ]
        } else {
            Vec::new()
        }
    }

    /// A name unique across processes and threads, for snapshots and the
    /// trash.
    pub(crate) fn unique_name(&self) -> String {
        store_api::util::random_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_are_checked() {
        for good in ["tank", "tank/snapstore", "t-1/a_b.c:d"] {
            assert!(Dataset::from_config(good).is_ok(), "{good}");
        }
        for bad in ["", "/tank", "tank/", "tank//x", "-o", "tank/-x", "tank@s", "tank/a b", "1tank"] {
            assert!(Dataset::from_config(bad).is_err(), "{bad}");
        }
        assert!(Dataset::from_config(&format!("t/{}", "x".repeat(200))).is_err());
    }

    #[test]
    fn datasets_know_their_place() {
        let store = Dataset::listed("tank/store");
        assert_eq!(store.pool(), "tank");
        assert_eq!(store.child("result").as_str(), "tank/store/result");
        assert_eq!(store.snapshot("s1"), "tank/store@s1");
        assert_eq!(
            Dataset::of_snapshot("tank/store/result/a@s1"),
            Some(Dataset::listed("tank/store/result/a"))
        );
        assert_eq!(Dataset::of_snapshot("-"), None);
        assert_eq!(Dataset::listed("tank/store/result/a").below(&store), Some("result/a"));
        assert_eq!(Dataset::listed("tank/storex/a").below(&store), None);
    }

    #[test]
    fn long_names_are_hashed() {
        let backend = ZfsBackend { dataset: Dataset::listed("tank/store"), root: "/r".into() };
        let short = Key::parse("result/abc").unwrap();
        assert_eq!(backend.dataset_of(&short).as_str(), "tank/store/result/abc");
        assert!(backend.name_options(&short).is_empty());
        assert_eq!(backend.key_path(&short), PathBuf::from("/r/result/abc"));
        let long = Key::new(Namespace::CacheTmp, &"x".repeat(255)).unwrap();
        let dataset = backend.dataset_of(&long);
        assert!(dataset.as_str().starts_with("tank/store/cache-tmp/h:"), "{dataset}");
        assert!(dataset.as_str().len() + 1 + MAX_UNIQUE <= MAX_ZFS_NAME);
        // Its tree is still at its key's path, and nothing guesses otherwise.
        assert_eq!(backend.key_path(&long), PathBuf::from(format!("/r/cache-tmp/{}", "x".repeat(255))));
        assert!(backend.name_options(&long).iter().any(|o| o.starts_with("mountpoint=/r/cache-tmp/x")));
        // The longest name that still fits is kept as it is.
        let room = MAX_ZFS_NAME - "tank/store/result/@".len() - MAX_UNIQUE;
        let fits = Key::new(Namespace::Result, &"y".repeat(room)).unwrap();
        assert_eq!(backend.component(&fits), "y".repeat(room));
        let too_long = Key::new(Namespace::Result, &"y".repeat(room + 1)).unwrap();
        assert!(backend.component(&too_long).starts_with(HASH_PREFIX));
        assert!(backend.unique_name().len() <= MAX_UNIQUE);
        assert_ne!(backend.unique_name(), backend.unique_name());
    }
}
