//! obuilder's store stress test: random 4-step builds that share results
//! and a cache, several at a time.

use std::fs;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use store_api::{ErrorKind, StoreError};

use store_api::util::random_token;

use crate::store::{BlockingStore, LeaseKind};

const STEPS: usize = 4;

/// Set by SIGINT or SIGTERM once [`stop_on_signals`] is called: long test
/// runs (stress, conformance) stop between steps and clean up.
/// Holds the signal's number, 0 while none came.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_interrupt(signal: nix::libc::c_int) {
    INTERRUPTED.store(signal, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM ask the running stress or conformance run to
/// stop and clean up; a second signal kills as usual (the handler resets).
pub fn stop_on_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(note_interrupt), SaFlags::SA_RESETHAND, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // Safety: the handler only stores to an atomic.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Whether a signal asked the run to stop.
pub fn interrupted() -> bool {
    interrupting_signal().is_some()
}

/// The signal that asked the run to stop, if one did.
pub fn interrupting_signal() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::SeqCst)).filter(|&signal| signal != 0)
}

/// What a stress run did.
#[derive(Debug, serde::Serialize)]
pub struct StressReport {
    pub jobs: usize,
    pub failures: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    /// Stopped by a signal before every job ran (what was built is removed all the same).
    pub interrupted: bool,
    /// The first few failures, for the error message.
    pub errors: Vec<String>,
}

/// A tiny xorshift generator: the values only need to spread jobs over
/// shared and unshared paths.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = u64::from_str_radix(&random_token(), 16).unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `jobs` jobs, `parallel` at a time. Each job builds 4 steps, each
/// appending a random digit 0–2 to `output` on top of the previous step's
/// result (ids are the digit paths, so jobs share results), and updates
/// one shared cache per step. Everything built is removed afterwards.
pub fn run(store: &BlockingStore, jobs: usize, parallel: usize) -> Result<StressReport, StoreError> {
    let prefix = format!("stress-{}", random_token());
    let cache = format!("{prefix}-cache");
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| {
                let mut rng = Rng::new();
                while !interrupted() && next.fetch_add(1, Ordering::SeqCst) < jobs {
                    let digits: Vec<u64> = (0..STEPS).map(|_| rng.below(3)).collect();
                    if let Err(e) = job(store, &prefix, &cache, &digits) {
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    let interrupted = interrupted();
    if interrupted {
        // Steps cut short by the signal are not failures of the store.
        errors.retain(|e| !e.ends_with(STOPPED));
    }
    if let Err(e) = cleanup(store, &prefix, &cache) {
        errors.push(format!("cannot clean up: {e}"));
    }
    let failures = errors.len();
    errors.truncate(5);
    let jobs_per_second = jobs as f64 / seconds.max(1e-9);
    Ok(StressReport { jobs, failures, seconds, jobs_per_second, interrupted, errors })
}

/// The error of a job cut short by a signal.
const STOPPED: &str = "stopped by a signal";

fn job(store: &BlockingStore, prefix: &str, cache: &str, digits: &[u64]) -> Result<(), String> {
    let mut base: Option<String> = None;
    let mut expected = String::new();
    for digit in digits {
        if interrupted() {
            return Err(STOPPED.to_string());
        }
        let digit = digit.to_string();
        expected.push_str(&digit);
        let id = format!("{prefix}-{}", &expected);
        if store.result(&id).map_err(|e| e.to_string())?.is_none() {
            let built = store.build(base.as_deref(), &id, |dir| {
                let path = dir.join("output");
                let old = fs::read_to_string(&path).unwrap_or_default();
                fs::write(&path, old + &digit)
            });
            match built {
                Ok(Ok(_)) => {}
                // Another job built the same step first: use theirs.
                Err(e) if e.kind() == ErrorKind::ALREADY_EXISTS => {}
                Err(e) => return Err(format!("cannot build {id}: {e}")),
                Ok(Err(e)) => return Err(format!("cannot build {id}: {e}")),
            }
        }
        let lease = store
            .acquire_cache(cache, None, LeaseKind::BoundToProcess)
            .map_err(|e| format!("cannot acquire the cache: {e}"))?;
        let count = fs::read_to_string(lease.path.join("count")).unwrap_or_default();
        let count = count.trim().parse::<u64>().unwrap_or(0) + 1;
        fs::write(lease.path.join("count"), count.to_string()).map_err(|e| e.to_string())?;
        store.release(lease).map_err(|e| format!("cannot release the cache: {e}"))?;
        base = Some(id);
    }
    let last = base.unwrap_or_default();
    let path = store.result(&last).map_err(|e| e.to_string())?.ok_or(format!("{last} vanished"))?;
    let output = fs::read_to_string(path.join("output")).map_err(|e| format!("cannot read {last}: {e}"))?;
    if output != expected {
        return Err(format!("{last} holds {output:?}, expected {expected:?}"));
    }
    Ok(())
}

fn cleanup(store: &BlockingStore, prefix: &str, cache: &str) -> Result<(), StoreError> {
    for id in store.backend().list(store_api::Namespace::Result)? {
        if id.starts_with(prefix) {
            store.delete(&id)?;
        }
    }
    store.delete_cache(cache)?;
    store.complete_deletes()
}
