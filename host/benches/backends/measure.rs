//! Timing: interleaved variants and their medians.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{check_interrupted, fresh, sync_fs};

/// Times of the two phases of one iteration (build and delete, acquire and
/// release, ...); the second is zero for one-phase work.
pub type Phases = [Duration; 2];

/// A way of doing the work, given a fresh name.
pub type Variant<'a> = Box<dyn FnMut(&str) -> Phases + 'a>;

pub fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Runs each variant `iters` times, interleaved, rotating their order each
/// iteration so that none always runs first (on warmer or colder caches);
/// one more round first warms up and is not counted. Returns, per variant,
/// the samples of each phase and of their sum.
pub fn interleave(mnt: &Path, iters: usize, variants: &mut [Variant]) -> Vec<[Vec<Duration>; 3]> {
    let n = variants.len();
    let mut samples: Vec<[Vec<Duration>; 3]> = (0..n).map(|_| Default::default()).collect();
    for i in 0..=iters {
        for k in 0..n {
            let v = (i + k) % n;
            sync_fs(mnt);
            check_interrupted();
            let [a, b] = (variants[v])(&fresh("n"));
            if i > 0 {
                samples[v][0].push(a);
                samples[v][1].push(b);
                samples[v][2].push(a + b);
            }
        }
    }
    samples
}

pub fn median_ms(samples: &[Duration]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).map(|d| d.as_secs_f64() * 1000.0)
}
