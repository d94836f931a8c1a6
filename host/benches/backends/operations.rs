//! The measurements of each backend: build + delete, cache cycles and
//! fixed costs, each done obuilder's way, through the CLI, the API and
//! the bare backend.

use std::io;
use std::time::Duration;

use snapstore::LeaseKind;
use store_api::{Namespace, SnapshotBackend};

use crate::measure::{interleave, median_ms, timed, Variant};
use crate::reference::Kind;
use crate::table::{Goal, Row};
use crate::target::Target;
use crate::trees::{fill_10k, fill_2k};
use crate::util::{build_command, cmd, key};

// ----- the measurements -----

/// Build on `base` (`ref_base` for obuilder) then delete, four ways.
/// Returns per way [build, delete, both].
pub fn build_and_delete(t: &Target, base: &str, ref_base: &str, iters: usize) -> Vec<[Option<f64>; 3]> {
    let base_key = key(Namespace::Result, base);
    let mut variants: Vec<Variant> = vec![
        Box::new(|name| {
            let a = timed(|| t.reference.build(ref_base, name));
            let b = timed(|| t.reference.delete(name));
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                t.cli.run(&["build", name, "--base", base, "--", "true"]);
            });
            let b = timed(|| {
                t.cli.run(&["delete", name]);
            });
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                t.api
                    .build(Some(base), name, |dir| {
                        build_command(dir);
                        Ok::<(), io::Error>(())
                    })
                    .expect("api build")
                    .expect("build command");
            });
            let b = timed(|| t.api.delete(name).expect("api delete"));
            [a, b]
        }),
        // The floor: the backend's primitives alone, no command, no locks.
        Box::new(|name| {
            let (tmp, result) = (key(Namespace::ResultTmp, name), key(Namespace::Result, name));
            let a = timed(|| {
                t.backend.clone_tree(&base_key, &tmp).expect("clone");
                t.backend.commit(&tmp, &result, Some(&base_key)).expect("commit");
            });
            let b = timed(|| t.backend.remove(&result).expect("remove"));
            [a, b]
        }),
    ];
    interleave(&t.mnt, iters, &mut variants)
        .iter()
        .map(|s| [median_ms(&s[0]), median_ms(&s[1]), median_ms(&s[2])])
        .collect()
}

/// Acquire + release of cache `name` (obuilder: `ref_cache`), three ways.
pub fn cache_cycle(t: &Target, name: &str, ref_cache: &str, iters: usize) -> Vec<Option<f64>> {
    let has_reference = t.reference.kind != Kind::Zfs;
    let mut variants: Vec<Variant> = vec![
        Box::new(|_| {
            let a = timed(|| {
                let out = t.cli.run(&["cache", "acquire", name]);
                let lease = out.split_whitespace().next().expect("lease").to_string();
                t.cli.run(&["cache", "release", &lease]);
            });
            [a, Duration::ZERO]
        }),
        Box::new(|_| {
            let a = timed(|| {
                let lease = t.api.acquire_cache(name, None, LeaseKind::BoundToProcess).expect("acquire");
                t.api.release(lease).expect("release");
            });
            [a, Duration::ZERO]
        }),
    ];
    if has_reference {
        variants.push(Box::new(|copy| {
            let a = timed(|| {
                t.reference.acquire(ref_cache, copy);
                t.reference.release(ref_cache, copy);
            });
            [a, Duration::ZERO]
        }));
    }
    let samples = interleave(&t.mnt, iters, &mut variants);
    let mut medians: Vec<Option<f64>> = samples.iter().map(|s| median_ms(&s[2])).collect();
    medians.resize(3, None);
    medians
}

/// The CLI's fixed cost and a lookup, against a bare process spawn.
pub fn fixed_costs(t: &Target, id: &str, iters: usize) -> Vec<Option<f64>> {
    let one = |d: Duration| [d, Duration::ZERO];
    let mut variants: Vec<Variant> = vec![
        Box::new(|_| {
            one(timed(|| {
                cmd("true", &[]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.cli.run(&["root"]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.cli.run(&["result", id]);
            }))
        }),
        Box::new(|_| {
            one(timed(|| {
                t.api.result(id).expect("result").expect("present");
            }))
        }),
    ];
    interleave(&t.mnt, iters, &mut variants).iter().map(|s| median_ms(&s[2])).collect()
}

pub fn measure(t: &Target, rows: &mut Vec<Row>) {
    let iters = t.iters;
    let row = |op: &str, reference, cli: Option<f64>, api, backend_calls, goal| Row {
        backend: t.label.clone(),
        op: op.into(),
        reference,
        cli: cli.unwrap_or(f64::NAN),
        api,
        backend_calls,
        goal,
    };
    eprintln!("[{}] bases", t.label);
    t.api.build(None, "base2k", fill_2k).expect("store").expect("fill");
    t.reference.make_base("base2k", fill_2k);
    t.api.build(None, "tree10k", fill_10k).expect("store").expect("fill");
    t.reference.make_base("tree10k", fill_10k);

    eprintln!("[{}] build + delete on 2000 files, {iters} iterations", t.label);
    let m = build_and_delete(t, "base2k", "base2k", iters);
    // The goals of issues 3, 4 and 8, CLI against obuilder in the same run.
    let build_goal = match t.kind {
        Kind::Btrfs => Goal::Ratio(0.5),
        Kind::Rsync => Goal::Ratio(1.1),
        _ => Goal::None,
    };
    let clone_goal = match t.kind {
        Kind::Xfs => Goal::Ratio(0.8),
        Kind::Rsync => Goal::Ratio(1.1),
        _ => Goal::None,
    };
    rows.push(row("build on 2000 files", m[0][0], m[1][0], m[2][0], m[3][0], Goal::None));
    rows.push(row("delete it", m[0][1], m[1][1], m[2][1], m[3][1], Goal::None));
    rows.push(row("**build + delete**", m[0][2], m[1][2], m[2][2], m[3][2], build_goal));

    eprintln!("[{}] clone of 10 000 files + 50 MB, {} iterations", t.label, t.big);
    let m = build_and_delete(t, "tree10k", "tree10k", t.big);
    rows.push(row("**clone 10 000 files** (build)", m[0][0], m[1][0], m[2][0], m[3][0], clone_goal));
    rows.push(row("delete it", m[0][1], m[1][1], m[2][1], m[3][1], Goal::None));

    eprintln!("[{}] cache of 10 000 files, {} iterations", t.label, t.big);
    let lease = t.api.acquire_cache("cache10k", None, LeaseKind::BoundToProcess).expect("acquire");
    fill_10k(&lease.path).expect("fill cache");
    t.api.release(lease).expect("release");
    t.reference.make_base("cache10k", fill_10k);
    let c = cache_cycle(t, "cache10k", "cache10k", t.big);
    rows.push(row("cache acquire + release, 10 000 files", c[2], c[0], c[1], None, Goal::None));

    eprintln!("[{}] fixed costs, {} iterations", t.label, iters * 2);
    let f = fixed_costs(t, "base2k", iters * 2);
    rows.push(row("**CLI fixed cost** (`root`; ref: spawn `true`)", f[0], f[1], None, None, Goal::Ms(5.0)));
    rows.push(row("`result` lookup (ref: spawn `true`)", f[0], f[2], f[3], None, Goal::None));
}
