//! Checking blobs as they are read: their size and sha256 digest against
//! the descriptor that names them, and a cap on what is held in memory.

use std::io::{self, Read};

use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};
use store_api::StoreError;

/// The most bytes of a manifest, index or config held in memory.
pub const MAX_JSON_BLOB: u64 = 4 << 20;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of a descriptor as `sha256:<hex>`, refusing other algorithms
/// (and anything that is not 64 lower-case hex digits, which would be a path
/// in a layout).
pub fn sha256_of(desc: &Descriptor) -> Result<String, StoreError> {
    let digest = desc.digest().to_string();
    crate::oci::reference::check_digest(&digest).map_err(|_| {
        StoreError::invalid(format!(
            "unsupported digest `{}`: snapstore reads sha256 digests only",
            digest.escape_debug()
        ))
    })?;
    Ok(digest)
}

/// A reader that fails with INVALID_DATA past `expected` bytes, and whose
/// [`finish`](Self::finish) checks the size and the digest once all is read.
pub struct Verifying<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected_size: u64,
    expected_digest: String,
    what: String,
}

impl<R: Read> Verifying<R> {
    pub fn new(inner: R, desc: &Descriptor, what: impl Into<String>) -> Result<Self, StoreError> {
        Ok(Verifying {
            inner,
            hasher: Sha256::new(),
            read: 0,
            expected_size: desc.size(),
            expected_digest: sha256_of(desc)?,
            what: what.into(),
        })
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads what is left (a reader such as a tar parser may stop before the end),
    /// then checks the size and the digest.
    pub fn finish(mut self) -> Result<(), StoreError> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| self.error(&e))?;
        if self.read != self.expected_size {
            return Err(StoreError::invalid(format!(
                "{} is truncated: {} bytes of the {} its descriptor declares",
                self.what, self.read, self.expected_size
            )));
        }
        let digest = format!("sha256:{}", hex(&self.hasher.finalize_reset()));
        if digest != self.expected_digest {
            return Err(StoreError::invalid(format!(
                "{} has digest {digest}, not the {} its descriptor declares: the image is corrupt",
                self.what, self.expected_digest
            )));
        }
        Ok(())
    }

    /// The error for an I/O failure while reading: an overlong blob is named as such.
    pub fn error(&self, err: &io::Error) -> StoreError {
        if err.kind() == io::ErrorKind::InvalidData && self.read > self.expected_size {
            StoreError::invalid(format!(
                "{} is longer than the {} bytes its descriptor declares: the image is corrupt",
                self.what, self.expected_size
            ))
        } else {
            StoreError::io(format_args!("cannot read {}", self.what), err)
        }
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte beyond the declared size is asked for, to tell an overlong blob.
        let room = (self.expected_size + 1).saturating_sub(self.read);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.expected_size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "blob longer than declared"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads a whole small blob (a manifest, an index or a config), checked against
/// its descriptor; refuses one declared larger than [`MAX_JSON_BLOB`].
pub fn read_small(reader: impl Read, desc: &Descriptor, what: &str) -> Result<Vec<u8>, StoreError> {
    if desc.size() > MAX_JSON_BLOB {
        return Err(StoreError::invalid(format!(
            "{what} declares {} bytes; snapstore reads at most {MAX_JSON_BLOB}",
            desc.size()
        )));
    }
    let mut verifying = Verifying::new(reader, desc, what)?;
    let mut bytes = Vec::with_capacity(desc.size() as usize);
    verifying.read_to_end(&mut bytes).map_err(|e| verifying.error(&e))?;
    verifying.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::str::FromStr;

    fn desc(bytes: &[u8], size: u64) -> Descriptor {
        let digest = oci_spec::image::Digest::from_str(&sha256_digest(bytes)).unwrap();
        Descriptor::new(MediaType::ImageConfig, size, digest)
    }

    #[test]
    fn checks_size_and_digest() {
        let data = b"hello world";
        assert_eq!(read_small(&data[..], &desc(data, 11), "blob").unwrap(), data);
        let short = read_small(&data[..5], &desc(data, 11), "blob").unwrap_err();
        assert!(short.message().contains("truncated"), "{short}");
        let long = read_small(&data[..], &desc(&data[..5], 5), "blob").unwrap_err();
        assert!(long.message().contains("longer"), "{long}");
        let wrong = read_small(&b"hello WORLD"[..], &desc(data, 11), "blob").unwrap_err();
        assert!(wrong.message().contains("corrupt"), "{wrong}");
        let huge = read_small(&data[..], &desc(data, 1 << 40), "blob").unwrap_err();
        assert!(huge.message().contains("at most"), "{huge}");
    }
}
