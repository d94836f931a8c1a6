//! Validation of what users name: result ids, cache names, owners.
//! Everything is checked here, before a backend is touched.

use sha2::{Digest, Sha256};
use store_api::{key::check_name, Owner, StoreError};

/// Checks a result id: 1–255 characters of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` or `-` (which a command line would take for an option).
pub fn check_id(id: &str) -> Result<(), StoreError> {
    check_name(id).map_err(|e| StoreError::invalid(format!("invalid id: {}", e.message())))?;
    if id.starts_with('-') {
        return Err(StoreError::invalid(format!(
            "invalid id `{id}`: it starts with `-`; start it with a letter, digit or `_`"
        )));
    }
    Ok(())
}

/// The longest cache name, in bytes.
pub const MAX_CACHE_NAME: usize = 255;

/// Escaped names longer than this are replaced by a hash, so that a
/// snapshot key (`<escaped>.<generation>`) stays one path component.
const MAX_ESCAPED: usize = 200;

/// Checks a cache name: any non-empty string of at most 255 bytes without NUL.
pub fn check_cache_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::invalid("invalid cache name: it is empty"));
    }
    if name.len() > MAX_CACHE_NAME {
        return Err(StoreError::invalid(format!(
            "invalid cache name: it is {} bytes long; the limit is {MAX_CACHE_NAME}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(StoreError::invalid("invalid cache name: it contains a NUL byte"));
    }
    Ok(())
}

/// The on-disk form of a cache name: `A-Z a-z 0-9 -` kept, every other
/// byte written `_XX` (upper-case hex). This is injective and never contains
/// `.` (the generation separator) or `__`. Names that would escape to more
/// than 200 bytes become `__` + the SHA-256 of the name instead; the host
/// records the original beside it and refuses a (theoretical) collision.
pub fn escape_cache_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
    }
    if out.len() > MAX_ESCAPED {
        let digest = Sha256::digest(name.as_bytes());
        out = format!("__{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    out
}

/// Whether an escaped name is a hash (see [`escape_cache_name`]).
pub fn is_hashed(escaped: &str) -> bool {
    escaped.starts_with("__")
}

/// Reverses [`escape_cache_name`] for names that are not hashed.
pub fn unescape_cache_name(escaped: &str) -> Option<String> {
    if is_hashed(escaped) {
        return None;
    }
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Parses `UID:GID`, numbers or user and group names.
pub fn parse_owner(spec: &str) -> Result<Owner, StoreError> {
    let bad = |why: &str| {
        StoreError::invalid(format!(
            "invalid owner `{}`: {why}; write UID:GID, e.g. 1000:1000",
            spec.escape_debug()
        ))
    };
    let (user, group) = spec.split_once(':').ok_or_else(|| bad("no `:`"))?;
    let uid = match user.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) if !user.is_empty() => match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => u.uid.as_raw(),
            _ => return Err(bad(&format!("no user `{}`", user.escape_debug()))),
        },
        Err(_) => return Err(bad("the user is empty")),
    };
    let gid = match group.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) if !group.is_empty() => match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => g.gid.as_raw(),
            _ => return Err(bad(&format!("no group `{}`", group.escape_debug()))),
        },
        Err(_) => return Err(bad("the group is empty")),
    };
    // chown(2) takes -1 (4294967295) as "leave unchanged", not as an id.
    if uid == u32::MAX || gid == u32::MAX {
        return Err(bad("4294967295 is not an id (chown reads it as \"unchanged\")"));
    }
    Ok(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for bad in ["../x", "a/b", ".x", "", &"a".repeat(256), "-x", "--base"] {
            let err = check_id(bad).unwrap_err();
            assert!(err.message().starts_with("invalid id"), "{err}");
        }
        check_id(&"f".repeat(64)).unwrap();
    }

    #[test]
    fn escaping_is_injective_and_safe() {
        let names = ["a", "A", "_", "_5F", "../../x", "a.b", "a b", "é", "x/y", "--", "%41"];
        let escaped: Vec<String> = names.iter().map(|n| escape_cache_name(n)).collect();
        for (name, esc) in names.iter().zip(&escaped) {
            store_api::key::check_name(&format!("{esc}.1")).unwrap();
            assert!(!esc.contains('.') && !esc.contains('/') && !is_hashed(esc), "{esc}");
            assert_eq!(unescape_cache_name(esc).as_deref(), Some(*name));
        }
        let unique: std::collections::HashSet<_> = escaped.iter().collect();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn long_names_are_hashed() {
        let long = "é".repeat(100);
        let esc = escape_cache_name(&long);
        assert!(is_hashed(&esc) && esc.len() == 66);
        assert_ne!(esc, escape_cache_name(&"é".repeat(99)));
        assert!(check_cache_name(&"x".repeat(256)).is_err());
        assert!(check_cache_name("a\0b").is_err());
        assert!(check_cache_name("").is_err());
    }

    #[test]
    fn owners_parse() {
        assert_eq!(parse_owner("1000:100").unwrap(), Owner { uid: 1000, gid: 100 });
        assert_eq!(parse_owner("root:root").unwrap(), Owner { uid: 0, gid: 0 });
        for bad in ["1000", ":1", "1:", "nosuchuser:1", "1:2:3", "4294967295:4294967295", "0:4294967295"] {
            assert!(parse_owner(bad).is_err(), "{bad}");
        }
    }
}
