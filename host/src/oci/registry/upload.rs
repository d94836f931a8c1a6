//! A blob uploaded while it is being made: what the maker writes goes, in
//! chunks, through a [pipe](crate::oci::pipe) to a chunked upload on
//! another thread, whose digest oci-client computes as the bytes pass. The
//! upload is committed only when the maker finishes the pipe: a maker that
//! fails, or drops the writer early, cuts the stream, which leaves an
//! upload session and no blob.

use bytes::Bytes;
use oci_client::errors::OciDistributionError;

use crate::oci::pipe::{pipe_of, ChunkReader, ChunkWriter};

/// Bytes per chunk: oci-client sends at most 4 MiB per PATCH.
const CHUNK: usize = 4 << 20;
/// Chunks made ahead of the upload.
const DEPTH: usize = 2;

/// The maker's end ([`ChunkWriter::finish`] completes the blob) and the
/// upload's.
pub(super) fn channel() -> (ChunkWriter, ChunkReader) {
    pipe_of(CHUNK, DEPTH)
}

/// What is sent through the pipe, as oci-client wants a blob's body; ends
/// with an error when the stream was cut, so that the upload is not
/// committed. The receive blocks the upload's own runtime, which has
/// nothing else to do between two chunks.
pub(super) fn stream(
    rx: ChunkReader,
) -> impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.next_chunk()? {
            Ok(chunk) => Some((Ok(Bytes::from(chunk)), Some(rx))),
            Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
        }
    })
}
