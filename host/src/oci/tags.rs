//! Result ids as image tags, and image layers as result ids.
//!
//! Ids are 1–255 characters of `A-Z a-z 0-9 . _ -` not starting with `.` or
//! `-`; OCI tags are the same alphabet but at most 128 characters. An id of up
//! to 127 characters is its own tag; a longer one becomes its first 63
//! characters, `.` and the sha256 of the whole id (128 characters). The two
//! forms cannot meet (they differ in length), so the mapping is injective up to
//! sha256 collisions. The real id is always in the manifest's annotations.

use sha2::{Digest, Sha256};

use super::verify::hex;

/// The tag an id is exported under when the reference names none.
pub fn tag_for_id(id: &str) -> String {
    if id.len() < super::reference::MAX_TAG_LEN {
        return id.to_string();
    }
    // Ids are ASCII; cut at a character boundary all the same.
    let cut = (0..=63).rev().find(|&i| id.is_char_boundary(i)).unwrap_or(0);
    format!("{}.{}", &id[..cut], hex(&Sha256::digest(id.as_bytes())))
}

/// The result id of a layer of an image snapstore did not make: its OCI ChainID
/// (`sha256:<hex>`, the digest of the layers beneath it and itself) as
/// `chain-sha256-<hex>`. Two images that share base layers share these results.
pub fn chain_result_id(chain_id: &str) -> String {
    format!("chain-{}", chain_id.replacen(':', "-", 1))
}

/// The OCI ChainIDs of a list of layer diff_ids: the first is its diff_id, each
/// next one `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(previous) => {
                format!("sha256:{}", hex(&Sha256::digest(format!("{previous} {diff_id}").as_bytes())))
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::check_id;
    use crate::oci::reference::check_tag;

    #[test]
    fn short_ids_are_their_own_tags() {
        for id in ["a", "step_1.2-x", &"x".repeat(127)] {
            assert_eq!(tag_for_id(id), id);
            check_tag(&tag_for_id(id)).unwrap();
        }
    }

    #[test]
    fn long_ids_get_distinct_valid_tags() {
        let a = format!("{}a", "x".repeat(200));
        let b = format!("{}b", "x".repeat(200));
        let c = "y".repeat(128);
        for id in [&a, &b, &c] {
            check_id(id).unwrap();
            let tag = tag_for_id(id);
            check_tag(&tag).unwrap();
            assert_eq!(tag.len(), 128);
        }
        assert_ne!(tag_for_id(&a), tag_for_id(&b));
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let expected = format!("sha256:{}", hex(&Sha256::digest(format!("{a} {b}").as_bytes())));
        assert_eq!(ids[1], expected);
        let result = chain_result_id(&ids[1]);
        check_id(&result).unwrap();
        assert!(result.starts_with("chain-sha256-"));
    }
}
