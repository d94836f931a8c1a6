//! Blob bodies in both directions: a file read as a stream of chunks for
//! upload, and a download read as a blocking `Read` that resumes where a
//! dropped connection left it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use oci_client::client::BlobResponse;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use store_api::StoreError;

use super::errors::{classify, ATTEMPTS};
use super::RegistryTransport;

/// Bytes read from the file per chunk (oci-client sends at most 4 MiB per
/// PATCH).
const CHUNK: usize = 4 << 20;

/// `path`'s content as a stream of chunks. The reads block, which is fine
/// on the transport's own single-threaded runtime.
pub fn file_chunks(
    path: &Path,
) -> io::Result<impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static> {
    let file = File::open(path)?;
    Ok(futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(Bytes::from(buf)), Some(file)))
    }))
}

/// A blob being downloaded. When the connection drops (or the body ends
/// short), it asks again from the byte reached, up to [`ATTEMPTS`] times in
/// all; a registry that ignores the range sends the whole blob again, and
/// the part already read is skipped.
pub struct BlobReader<'a> {
    transport: &'a RegistryTransport,
    descriptor: OciDescriptor,
    stream: Option<BoxStream<'static, io::Result<Bytes>>>,
    pending: Bytes,
    /// Bytes handed to the caller.
    offset: u64,
    /// Bytes of a full resent body still to skip.
    skip: u64,
    failures: u32,
    /// A fresh token was asked for once already.
    reauthenticated: bool,
    /// The body ended, whole: later reads return 0 without polling the
    /// finished stream again (oci-client's digest check would run twice,
    /// the second time on nothing).
    done: bool,
}

impl<'a> BlobReader<'a> {
    /// Starts the download; a blob the registry does not have, or refuses,
    /// is reported here.
    pub fn open(transport: &'a RegistryTransport, descriptor: OciDescriptor) -> Result<Self, StoreError> {
        let mut reader = BlobReader {
            transport,
            descriptor,
            stream: None,
            pending: Bytes::new(),
            offset: 0,
            skip: 0,
            failures: 0,
            reauthenticated: false,
            done: false,
        };
        let what = reader.what();
        let reference = transport.reference("latest");
        let stream = transport.retrying(&what, |t| {
            t.runtime.block_on(t.client.pull_blob_stream(&reference, &reader.descriptor))
        })?;
        reader.stream = Some(stream.stream);
        Ok(reader)
    }

    fn what(&self) -> String {
        format!("pulling blob {}", self.descriptor.digest)
    }

    /// Asks again from `offset`, after a drop.
    fn resume(&mut self) -> Result<(), OciDistributionError> {
        let t = self.transport;
        let reference = t.reference("latest");
        let response = t.runtime.block_on(t.client.pull_blob_stream_partial(
            &reference,
            &self.descriptor,
            self.offset,
            None,
        ))?;
        match response {
            BlobResponse::Partial(stream) => {
                self.skip = 0;
                self.stream = Some(stream.stream);
            }
            BlobResponse::Full(stream) => {
                self.skip = self.offset;
                self.stream = Some(stream.stream);
            }
        }
        Ok(())
    }

    /// Counts a drop; gives up with the one-line error after the last try.
    fn dropped(&mut self, cause: OciDistributionError) -> io::Result<()> {
        self.stream = None;
        self.failures += 1;
        let what = self.what();
        let failure = classify(&cause, &self.transport.context(&what));
        // A token that ran out during a long download: a fresh one, once,
        // as for every other request (`retrying`).
        if failure.unauthorized && !self.reauthenticated {
            self.reauthenticated = true;
            return self.transport.authenticate().map_err(|e| {
                io::Error::other(classify(&e, &self.transport.context(&what)).error.message().to_string())
            });
        }
        if !failure.transient || self.failures >= ATTEMPTS {
            return Err(io::Error::other(failure.error.message().to_string()));
        }
        std::thread::sleep(self.transport.pause(&cause, self.failures, failure.rate_limited));
        Ok(())
    }
}

/// oci-client reports a digest mismatch at the end of a stream inside an
/// I/O error: take it out, so that it is not mistaken for a dropped
/// connection (and retried).
fn unwrap_digest_error(e: io::Error) -> OciDistributionError {
    if !e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) {
        return OciDistributionError::IoError(e);
    }
    match e.into_inner().map(|inner| inner.downcast::<DigestError>()) {
        Some(Ok(digest)) => OciDistributionError::DigestError(*digest),
        _ => OciDistributionError::GenericError(Some("the blob's digest does not match".into())),
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        loop {
            if buf.is_empty() {
                return Ok(0);
            }
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending.split_to(n));
                self.offset += n as u64;
                return Ok(n);
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.resume() {
                    self.dropped(e)?;
                }
                continue;
            };
            match self.transport.runtime.block_on(stream.next()) {
                Some(Ok(mut bytes)) => {
                    let skipped = self.skip.min(bytes.len() as u64);
                    let _ = bytes.split_to(skipped as usize);
                    self.skip -= skipped;
                    self.pending = bytes;
                }
                Some(Err(e)) => self.dropped(unwrap_digest_error(e))?,
                // A body that ends short of the blob's size was cut off: the
                // caller's size check would refuse it anyway, but asking
                // for the rest can save the transfer.
                None if (self.offset as i64) < self.descriptor.size => {
                    let short = io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended early");
                    self.dropped(OciDistributionError::IoError(short))?
                }
                None => {
                    self.done = true;
                    self.stream = None;
                    return Ok(0);
                }
            }
        }
    }
}
