//! A blob uploaded while it is being made: what the maker writes goes, in
//! chunks, through a channel to a chunked upload on another thread, whose
//! digest oci-client computes as the bytes pass. The upload is committed
//! only when the maker says the blob is complete: a maker that fails, or
//! drops the writer early, leaves an upload session and no blob.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;
use oci_client::errors::OciDistributionError;

/// Bytes per chunk: oci-client sends at most 4 MiB per PATCH.
const CHUNK: usize = 4 << 20;
/// Chunks made ahead of the upload.
const DEPTH: usize = 2;

/// A chunk, or None: the blob is complete.
type Message = Option<Bytes>;

/// A writer and the stream of what it writes.
pub fn channel() -> (UploadWriter, Receiver<Message>) {
    let (tx, rx) = sync_channel(DEPTH);
    (UploadWriter { tx, buf: Vec::with_capacity(CHUNK) }, rx)
}

/// What is sent through the [`UploadWriter`], as oci-client wants a blob's
/// body; ends with an error when the writer was dropped before
/// [`UploadWriter::complete`], so that the upload is not committed. The
/// receive blocks the upload's own runtime, which has nothing else to do
/// between two chunks.
pub fn stream(
    rx: Receiver<Message>,
) -> impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let rx = rx?;
        match rx.recv() {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(rx))),
            Ok(None) => None,
            Err(_) => {
                let cut = io::Error::new(io::ErrorKind::Interrupted, "the blob was not finished");
                Some((Err(OciDistributionError::IoError(cut)), None))
            }
        }
    })
}

/// The maker's end.
pub struct UploadWriter {
    tx: SyncSender<Message>,
    buf: Vec<u8>,
}

impl UploadWriter {
    /// The blob is complete: sends the rest and lets the upload commit it.
    pub fn complete(mut self) -> io::Result<()> {
        self.flush()?;
        self.tx.send(None).map_err(|_| gone())
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
}

impl Write for UploadWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Some(Bytes::from(full))).map_err(|_| gone())
    }
}
