//! The progress line of an image transfer (layers and bytes done), shown on
//! stderr once the transfer has lasted a second, when progress is enabled.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Transfer {
    what: String,
    layers: usize,
    layers_done: usize,
    bytes: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Transfer {
    /// `what`: e.g. "exporting `id` to oci:/srv/img:tag"; `layers`: how many in all.
    pub fn new(what: String, layers: usize) -> Transfer {
        Transfer { what, layers, layers_done: 0, bytes: 0, started: Instant::now(), bar: None }
    }

    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
        self.show();
    }

    pub fn layer_done(&mut self) {
        self.layers_done += 1;
        self.show();
    }

    fn show(&mut self) {
        if self.bar.is_none() {
            if !crate::progress::enabled() || self.started.elapsed() < Duration::from_secs(1) {
                return;
            }
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{}: layer {}/{}, {:.1} MB",
                self.what,
                (self.layers_done + 1).min(self.layers),
                self.layers,
                self.bytes as f64 / 1e6
            ));
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Counts the bytes that pass through a reader or writer into a [`Transfer`].
pub struct Counting<'a, T> {
    pub inner: T,
    pub transfer: &'a mut Transfer,
}

impl<T: Read> Read for Counting<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.transfer.add_bytes(n as u64);
        Ok(n)
    }
}

impl<T: Write> Write for Counting<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.transfer.add_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
