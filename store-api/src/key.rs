//! Keys: the names under which a backend keeps its trees.
//!
//! A key is `NAMESPACE/NAME`. The host chooses every key and validates it
//! before a backend sees it; the plugin adapter checks it again, so a backend
//! may map a key straight onto a path or dataset name.

use std::fmt;

use crate::StoreError;

/// The namespaces a backend must support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Committed, read-only build results: `result/<id>`.
    Result,
    /// Writable trees of builds in progress.
    ResultTmp,
    /// Committed snapshots of caches: `cache/<escaped-name>.<generation>`.
    Cache,
    /// Writable copies of caches handed out to users.
    CacheTmp,
}

impl Namespace {
    pub const ALL: [Namespace; 4] =
        [Namespace::Result, Namespace::ResultTmp, Namespace::Cache, Namespace::CacheTmp];

    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Result => "result",
            Namespace::ResultTmp => "result-tmp",
            Namespace::Cache => "cache",
            Namespace::CacheTmp => "cache-tmp",
        }
    }

    /// Whether trees in this namespace are committed (read-only) ones.
    pub fn is_committed(self) -> bool {
        matches!(self, Namespace::Result | Namespace::Cache)
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|ns| ns.as_str() == s)
            .ok_or_else(|| StoreError::invalid(format!("unknown namespace `{s}`")))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    namespace: Namespace,
    name: String,
}

/// The longest name: one path component on every common filesystem.
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` is 1–255 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.`: safe as a file name, a subvolume and a dataset name.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::invalid("name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::invalid(format!(
            "name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if name.starts_with('.') {
        return Err(StoreError::invalid(format!("name `{name}` starts with `.`")));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(StoreError::invalid(format!(
            "name `{}` contains `{}`; use only A-Z a-z 0-9 . _ -",
            name.escape_debug(),
            bad.escape_debug()
        )));
    }
    Ok(())
}

impl Key {
    pub fn new(namespace: Namespace, name: &str) -> Result<Self, StoreError> {
        check_name(name)?;
        Ok(Self { namespace, name: name.to_string() })
    }

    /// Parses `NAMESPACE/NAME`.
    pub fn parse(key: &str) -> Result<Self, StoreError> {
        let (ns, name) = key
            .split_once('/')
            .ok_or_else(|| StoreError::invalid(format!("key `{key}` has no namespace")))?;
        Self::new(Namespace::parse(ns)?, name).map_err(|e| e.context(format!("key `{key}`")))
    }

    pub fn namespace(&self) -> Namespace {
        self.namespace
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Key {
    /// `NAMESPACE/NAME`, also the key's path relative to a backend's root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", ".x", "a/b", "../x", "a b", "a\0b", "é", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "A-b_c.d", "0123abcdef", &"x".repeat(255)] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn keys_round_trip() {
        let key = Key::parse("result-tmp/abc").unwrap();
        assert_eq!(key.namespace(), Namespace::ResultTmp);
        assert_eq!(key.to_string(), "result-tmp/abc");
        assert!(Key::parse("results/abc").is_err());
        assert!(Key::parse("result/../x").is_err());
        assert!(Key::parse("abc").is_err());
    }
}
