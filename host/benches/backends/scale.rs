//! The scale test: CLI operations in a store of 10 results, then of many.

use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::measure::{interleave, median_ms, timed, Variant};
use crate::table::ms;
use crate::target::{open_store, Target};
use crate::trees::fill_small;

pub struct ScaleRow {
    pub backend: String,
    pub op: &'static str,
    pub small: Option<f64>,
    pub large: Option<f64>,
}

/// `result`, `build`, `delete`, `list`, `complete-deletes` and `prune` through the
/// CLI in a store of 10 results, then of `n`.
pub fn scale(t: &Target, bin: &Path, work: &Path, n: usize, iters: usize, rows: &mut Vec<ScaleRow>) {
    let root = t.mnt.join("scale-store");
    let (cli, api, _) = open_store(bin, work, &format!("{}-scale", t.kind_name()), t.kind_name(), &root, "");
    api.build(None, "s-base", fill_small).expect("store").expect("fill");
    let empty = |_: &Path| Ok::<(), io::Error>(());
    let mut have = 1;
    let mut grow = |to: usize| {
        let start = Instant::now();
        while have < to {
            // s-5, looked up by the runs, is built on s-base: neither is
            // ever the least recently used leaf that `prune` takes.
            let base = (have == 5).then_some("s-base");
            api.build(base, &format!("s-{have}"), empty).expect("store").expect("build");
            have += 1;
        }
        start.elapsed()
    };
    let measure_at = || {
        let mut variants: Vec<Variant> = vec![
            Box::new(|_| {
                [
                    timed(|| {
                        cli.run(&["result", "s-5"]);
                    }),
                    Duration::ZERO,
                ]
            }),
            Box::new(|name| {
                let a = timed(|| {
                    cli.run(&["build", name, "--base", "s-base", "--", "true"]);
                });
                let b = timed(|| {
                    cli.run(&["delete", name]);
                });
                [a, b]
            }),
            Box::new(|_| {
                let a = timed(|| {
                    cli.run(&["list"]);
                });
                let b = timed(|| {
                    cli.run(&["complete-deletes"]);
                });
                [a, b]
            }),
            Box::new(|name| {
                // One more leaf, so that the store keeps its size.
                cli.run(&["build", name, "--", "true"]);
                cli.run(&["result", "s-5"]);
                let a = timed(|| {
                    cli.run(&["prune", "--limit", "1"]);
                });
                [a, Duration::ZERO]
            }),
        ];
        let m = interleave(&t.mnt, iters, &mut variants);
        [
            median_ms(&m[0][0]),
            median_ms(&m[1][0]),
            median_ms(&m[1][1]),
            median_ms(&m[2][0]),
            median_ms(&m[2][1]),
            median_ms(&m[3][0]),
        ]
    };
    grow(10);
    eprintln!("[{}] scale: 10 results, {iters} iterations", t.label);
    let small = measure_at();
    eprintln!("[{}] scale: adding {} results through the API", t.label, n - 10);
    let took = grow(n);
    eprintln!(
        "[{}] scale: {} results added in {:.0} s ({:.1} ms each)",
        t.label,
        n - 10,
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / (n - 10) as f64
    );
    let large = measure_at();
    let ops = [
        "`result`",
        "`build --base` (10 files)",
        "`delete`",
        "`list`",
        "`complete-deletes`",
        "`prune --limit 1`",
    ];
    for (i, op) in ops.into_iter().enumerate() {
        rows.push(ScaleRow { backend: t.label.clone(), op, small: small[i], large: large[i] });
    }
}

pub fn print_scale_table(rows: &[ScaleRow], n: usize) -> String {
    let mut t =
        format!("| backend | operation | 10 results | {n} results | ratio |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        let ratio = match (r.small, r.large) {
            (Some(a), Some(b)) => format!("{:.2}", b / a),
            _ => "—".into(),
        };
        let _ = writeln!(t, "| {} | {} | {} | {} | {ratio} |", r.backend, r.op, ms(r.small), ms(r.large));
    }
    t
}
