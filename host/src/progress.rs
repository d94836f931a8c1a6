//! Telling a person at a terminal what a slow step is doing or waiting
//! for: a spinner that shows once the step has lasted a second. Off unless
//! the program turns it on (the CLI does when stderr is a terminal), so
//! that an embedding program's stderr stays its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long a step runs before it is shown.
const DELAY: Duration = Duration::from_secs(1);

/// Shows slow steps on stderr from now on.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether slow steps are shown (for progress lines of their own, e.g. image transfers).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The spinners of steps running at once (e.g. a clone waiting for a
/// lock), one line each.
fn lines() -> &'static MultiProgress {
    static LINES: OnceLock<MultiProgress> = OnceLock::new();
    LINES.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A step under way; its spinner, if shown, is cleared on drop.
pub struct Activity {
    done: Option<mpsc::Sender<()>>,
    shower: Option<JoinHandle<()>>,
}

impl Activity {
    /// Starts a step described by `message` (made only if shown).
    pub fn start(message: impl FnOnce() -> String) -> Activity {
        if !ENABLED.load(Ordering::Relaxed) {
            return Activity { done: None, shower: None };
        }
        let message = message();
        let (done, finished) = mpsc::channel::<()>();
        let shower = std::thread::spawn(move || {
            if finished.recv_timeout(DELAY) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let spinner = lines().add(ProgressBar::new_spinner().with_elapsed(DELAY));
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                spinner.set_style(style);
            }
            spinner.set_message(message);
            spinner.enable_steady_tick(Duration::from_millis(120));
            let _ = finished.recv();
            spinner.finish_and_clear();
            lines().remove(&spinner);
        });
        Activity { done: Some(done), shower: Some(shower) }
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        // Cleared before anything else (a build's command) uses the terminal.
        drop(self.done.take());
        if let Some(shower) = self.shower.take() {
            let _ = shower.join();
        }
    }
}
