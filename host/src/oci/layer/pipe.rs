//! A bounded pipe of byte chunks between two threads: making a layer's tar
//! (walk, reads, its sha256) overlaps its compression, and applying a
//! layer (file creation) overlaps its download and decompression.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Bytes per chunk: large enough that the channel costs nothing per byte.
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks in flight: enough to ride out a slow file or a slow write.
const DEPTH: usize = 4;

type Message = io::Result<Vec<u8>>;

/// A pipe: what is written to the [`ChunkWriter`] is read from the [`ChunkReader`].
pub(super) fn pipe() -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(DEPTH);
    (ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) }, ChunkReader { rx, chunk: Vec::new(), pos: 0 })
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the other end of the layer's pipe stopped")
}

/// The writing end. Buffers into chunks; [`ChunkWriter::finish`] sends the last.
pub(super) struct ChunkWriter {
    tx: SyncSender<Message>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    /// Sends a whole chunk as it is (no copy). Fails when the reader is gone.
    pub(super) fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.flush()?;
        self.tx.send(Ok(chunk)).map_err(|_| closed())
    }

    /// Hands an error to the reader, which returns it from its next read:
    /// the end of the stream is then an error, not a clean end.
    pub(super) fn fail(self, err: io::Error) {
        let _ = self.tx.send(Err(err));
    }

    /// Sends what is buffered; the reader sees the end once this is dropped.
    pub(super) fn finish(mut self) -> io::Result<()> {
        self.flush()
    }
}

impl Write for ChunkWriter {
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
        self.tx.send(Ok(full)).map_err(|_| closed())
    }
}

/// The reading end: the chunks in order, then the end once the writer is
/// dropped (or the error the writer [failed](ChunkWriter::fail) with).
pub(super) struct ChunkReader {
    rx: Receiver<Message>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// The next whole chunk (what a partial read left of the current one
    /// first); None at the end.
    pub(super) fn next_chunk(&mut self) -> Option<io::Result<Vec<u8>>> {
        if self.pos < self.chunk.len() {
            let rest = self.chunk.split_off(self.pos);
            self.pos = 0;
            self.chunk.clear();
            return Some(Ok(rest));
        }
        self.rx.recv().ok()
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pass_in_order_and_an_error_passes_too() {
        let (mut w, mut r) = pipe();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for piece in sent.chunks(100_000) {
                w.write_all(piece).unwrap();
            }
            w.send(vec![1, 2, 3]).unwrap();
            w.fail(io::Error::new(io::ErrorKind::InvalidData, "bad"));
        });
        let mut got = vec![0u8; data.len() + 3];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], &[1, 2, 3]);
        assert_eq!(r.read(&mut [0u8; 8]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        writer.join().unwrap();
    }

    #[test]
    fn a_writer_whose_reader_is_gone_fails() {
        let (mut w, r) = pipe();
        drop(r);
        assert_eq!(w.send(vec![0]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
