//! A bounded pipe of byte chunks between two threads: making a layer's tar
//! (walk, reads, its sha256) overlaps its compression, applying a layer
//! (file creation) overlaps its download and decompression, and a blob is
//! uploaded as it is made. The stream has an explicit end: a writer
//! dropped before [`ChunkWriter::finish`] (a maker that failed or panicked)
//! is an error to the reader, never a clean end of a cut stream.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Bytes per chunk of [`pipe`]: large enough that the channel costs
/// nothing per byte.
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks in flight in [`pipe`]: enough to ride out a slow file or a slow write.
const DEPTH: usize = 4;

enum Message {
    Chunk(Vec<u8>),
    Failed(io::Error),
    End,
}

/// A pipe: what is written to the [`ChunkWriter`] is read from the [`ChunkReader`].
pub(super) fn pipe() -> (ChunkWriter, ChunkReader) {
    pipe_of(CHUNK, DEPTH)
}

/// A pipe of chunks of `chunk` bytes, `depth` of them in flight.
pub(super) fn pipe_of(chunk: usize, depth: usize) -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(depth);
    let writer = ChunkWriter { tx, buf: Vec::with_capacity(chunk), chunk };
    (writer, ChunkReader { rx, chunk: Vec::new(), pos: 0, ended: false })
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the other end of the pipe stopped")
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the stream stopped before its end")
}

/// The writing end. Buffers into chunks; [`ChunkWriter::finish`] sends the
/// last and marks the end.
pub(super) struct ChunkWriter {
    tx: SyncSender<Message>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChunkWriter {
    /// Sends a whole chunk as it is (no copy). Fails when the reader is gone.
    pub(super) fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.flush()?;
        self.tx.send(Message::Chunk(chunk)).map_err(|_| closed())
    }

    /// Hands an error to the reader, which returns it from its next read.
    pub(super) fn fail(self, err: io::Error) {
        let _ = self.tx.send(Message::Failed(err));
    }

    /// Sends what is buffered, then the end.
    pub(super) fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.tx.send(Message::End).map_err(|_| closed())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == self.chunk {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx.send(Message::Chunk(full)).map_err(|_| closed())
    }
}

/// The reading end: the chunks in order, then the end the writer marked
/// (or the error it [failed](ChunkWriter::fail) with, or [`cut`] if it
/// went away without either).
pub(super) struct ChunkReader {
    rx: Receiver<Message>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
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
        if self.ended {
            return None;
        }
        match self.rx.recv() {
            Ok(Message::Chunk(chunk)) => Some(Ok(chunk)),
            Ok(Message::Failed(err)) => Some(Err(err)),
            Ok(Message::End) => {
                self.ended = true;
                None
            }
            Err(_) => Some(Err(cut())),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            match self.next_chunk() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
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
    fn the_end_is_marked_and_a_writer_dropped_before_it_cuts_the_stream() {
        let (mut w, mut r) = pipe_of(4, 2);
        let writer = std::thread::spawn(move || {
            w.write_all(b"hello").unwrap();
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        writer.join().unwrap();
        let (mut w, mut r) = pipe_of(4, 2);
        let writer = std::thread::spawn(move || {
            w.write_all(b"hel").unwrap();
            w.flush().unwrap();
        });
        let mut got = Vec::new();
        assert_eq!(r.read_to_end(&mut got).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        writer.join().unwrap();
    }

    #[test]
    fn a_writer_whose_reader_is_gone_fails() {
        let (mut w, r) = pipe();
        drop(r);
        assert_eq!(w.send(vec![0]).unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
