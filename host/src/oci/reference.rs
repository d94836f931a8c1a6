//! Image references, named as skopeo and podman name them:
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.

use std::fmt;
use std::path::PathBuf;

use store_api::StoreError;

/// The longest OCI tag.
pub const MAX_TAG_LEN: usize = 128;

/// Where an image is, parsed from the command line's `IMAGE-REF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory, and the tag (`org.opencontainers.image.ref.name`)
    /// in its index; None: the tag of the result's id.
    Oci { dir: PathBuf, tag: Option<String> },
    /// A tar file of an OCI image layout, and the tag in its index.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// A repository in a registry (`HOST[:PORT]`); `reference` is a tag or a
    /// `sha256:…` digest (None: the tag of the result's id).
    Docker { registry: String, repository: String, reference: Option<String> },
}

impl ImageRef {
    /// Parses `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`. As in skopeo, a path ends at its
    /// first `:`, so it cannot contain one.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = split_path(text, rest)?;
            Ok(Self::Oci { dir, tag })
        } else if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (file, tag) = split_path(text, rest)?;
            Ok(Self::OciArchive { file, tag })
        } else if let Some(rest) = text.strip_prefix("docker://") {
            parse_docker(text, rest)
        } else {
            Err(StoreError::invalid(format!(
                "image reference `{}` names no known transport; use oci:DIR[:TAG], \
                 oci-archive:FILE[:TAG] or docker://HOST/REPO[:TAG]",
                text.escape_debug()
            )))
        }
    }

    /// The tag or digest the reference names, if any.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Self::Oci { tag, .. } | Self::OciArchive { tag, .. } => tag.as_deref(),
            Self::Docker { reference, .. } => reference.as_deref(),
        }
    }

    /// The same reference with `tag` when it names none.
    pub fn with_default_tag(&self, default: &str) -> Self {
        let mut out = self.clone();
        match &mut out {
            Self::Oci { tag, .. } | Self::OciArchive { tag, .. } => {
                tag.get_or_insert_with(|| default.to_string());
            }
            Self::Docker { reference, .. } => {
                reference.get_or_insert_with(|| default.to_string());
            }
        }
        out
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oci { dir, .. } => write!(f, "oci:{}", dir.display())?,
            Self::OciArchive { file, .. } => write!(f, "oci-archive:{}", file.display())?,
            Self::Docker { registry, repository, .. } => write!(f, "docker://{registry}/{repository}")?,
        }
        match (self, self.tag()) {
            (_, None) => Ok(()),
            (Self::Docker { .. }, Some(digest)) if digest.starts_with("sha256:") => write!(f, "@{digest}"),
            (_, Some(tag)) => write!(f, ":{tag}"),
        }
    }
}

/// Checks an OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), StoreError> {
    let bad = |why: &str| {
        Err(StoreError::invalid(format!(
            "invalid image tag `{}`: {why}; a tag is 1-128 characters of A-Z a-z 0-9 . _ - \
             not starting with `.` or `-`",
            tag.escape_debug()
        )))
    };
    if tag.is_empty() {
        return bad("it is empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return bad(&format!("it is {} characters long", tag.len()));
    }
    if tag.starts_with(['.', '-']) {
        return bad("it starts with `.` or `-`");
    }
    if let Some(c) = tag.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return bad(&format!("it contains `{}`", c.escape_debug()));
    }
    Ok(())
}

/// Checks a digest as a reference names it: `sha256:` and 64 lower-case hex digits.
pub fn check_digest(digest: &str) -> Result<(), StoreError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(StoreError::invalid(format!(
            "invalid digest `{}`: use sha256: and 64 lower-case hex digits",
            digest.escape_debug()
        ))),
    }
}

fn split_path(text: &str, rest: &str) -> Result<(PathBuf, Option<String>), StoreError> {
    let (path, tag) = match rest.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(StoreError::invalid(format!(
            "image reference `{}` names no path; write e.g. oci:/srv/images:TAG",
            text.escape_debug()
        )));
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    Ok((PathBuf::from(path), tag.map(str::to_string)))
}

fn parse_docker(text: &str, rest: &str) -> Result<ImageRef, StoreError> {
    let bad = |why: &str| {
        Err(StoreError::invalid(format!(
            "image reference `{}` {why}; write docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]",
            text.escape_debug()
        )))
    };
    let Some((registry, path)) = rest.split_once('/') else {
        return bad("names no repository");
    };
    if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '@') {
        return bad("names no registry host");
    }
    let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
        check_digest(digest)?;
        (repo, Some(digest.to_string()))
    } else {
        // A tag follows the last `:` that comes after the last `/`.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        match path[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &path[last_slash + i + 1..];
                check_tag(tag)?;
                (&path[..last_slash + i], Some(tag.to_string()))
            }
            None => (path, None),
        }
    };
    if !valid_repository(repository) {
        return bad("has an invalid repository name (lower-case a-z 0-9 and . _ - / separators)");
    }
    Ok(ImageRef::Docker { registry: registry.to_string(), repository: repository.to_string(), reference })
}

/// The distribution spec's repository names: `/`-separated components of
/// lower-case alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
                && !part.contains("..")
                && !part.contains("___")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_transports() {
        assert_eq!(
            ImageRef::parse("oci:/srv/img:v1").unwrap(),
            ImageRef::Oci { dir: "/srv/img".into(), tag: Some("v1".into()) }
        );
        assert_eq!(
            ImageRef::parse("oci:rel/dir").unwrap(),
            ImageRef::Oci { dir: "rel/dir".into(), tag: None }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:/tmp/a.tar:x_1").unwrap(),
            ImageRef::OciArchive { file: "/tmp/a.tar".into(), tag: Some("x_1".into()) }
        );
        assert_eq!(
            ImageRef::parse("docker://localhost:5000/a/b:t").unwrap(),
            ImageRef::Docker {
                registry: "localhost:5000".into(),
                repository: "a/b".into(),
                reference: Some("t".into())
            }
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            ImageRef::parse(&format!("docker://reg.example/x@{digest}")).unwrap(),
            ImageRef::Docker {
                registry: "reg.example".into(),
                repository: "x".into(),
                reference: Some(digest)
            }
        );
        assert_eq!(
            ImageRef::parse("docker://h/r").unwrap(),
            ImageRef::Docker { registry: "h".into(), repository: "r".into(), reference: None }
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["oci:/a/b:t", "oci-archive:f.tar", "docker://h:1/r/s:t", "oci:d"] {
            assert_eq!(ImageRef::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_bad_references() {
        for text in [
            "",
            "oci:",
            "oci::tag",
            "oci:/d:",
            "oci:/d:.hidden",
            "oci:/d:-x",
            "oci:/d:a/b",
            "docker://host",
            "docker:///repo",
            "docker://h/UPPER",
            "docker://h/r@sha256:12",
            "docker://h/r:bad tag",
            "tar:/x",
        ] {
            let err = ImageRef::parse(text).expect_err(text);
            assert_eq!(err.kind(), store_api::ErrorKind::INVALID_INPUT, "{text}");
            assert!(!err.message().contains('\n'), "{text}");
        }
        assert!(ImageRef::parse(&format!("oci:/d:{}", "a".repeat(129))).is_err());
        assert!(ImageRef::parse(&format!("oci:/d:{}", "a".repeat(128))).is_ok());
    }

    #[test]
    fn default_tag_fills_only_a_missing_one() {
        let r = ImageRef::parse("oci:/d").unwrap().with_default_tag("id1");
        assert_eq!(r.tag(), Some("id1"));
        let r = ImageRef::parse("oci:/d:t").unwrap().with_default_tag("id1");
        assert_eq!(r.tag(), Some("t"));
    }
}
