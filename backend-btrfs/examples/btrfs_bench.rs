//! Times one build on a 2000-file base plus its delete, through this
//! backend and through the `btrfs` commands obuilder runs for the same work,
//! alternating in one run on one loop-mounted btrfs.
//!
//! Run as root: `cargo run --release -p backend-btrfs --example btrfs_bench [ITERATIONS]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{run, LoopBtrfs};
use store_api::{Key, SnapshotBackend, StoreError};

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times.get(times.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn key(s: &str) -> Result<Key, StoreError> {
    Key::parse(s)
}

fn btrfs(args: &[&str]) -> Result<(), String> {
    run("btrfs", args).map(drop)
}

fn main() -> Result<(), String> {
    let iterations: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(20);
    let Some(fs) = LoopBtrfs::new("bench") else {
        return Err("no scratch btrfs".into());
    };
    let s = snapstore_btrfs::open(&fs.root(), "").map_err(|e| e.to_string())?;
    let e = |e: StoreError| e.to_string();

    // The base: 2000 files in 20 directories, committed as a result.
    let base_tmp = key("result-tmp/base").map_err(e)?;
    let dir = s.create(&base_tmp, None).map_err(e)?;
    for d in 0..20 {
        fs::create_dir(dir.join(format!("d{d}"))).map_err(|e| e.to_string())?;
        for f in 0..100 {
            fs::write(dir.join(format!("d{d}/f{f}")), format!("{d}/{f}\n").repeat(20))
                .map_err(|e| e.to_string())?;
        }
    }
    let base = s.commit(&base_tmp, &key("result/base").map_err(e)?, None).map_err(e)?;
    let base = base.to_str().ok_or("non-UTF-8 path")?.to_string();
    let reference = fs.mnt.join("reference");
    fs::create_dir_all(&reference).map_err(|e| e.to_string())?;
    let tmp_ref = reference.join("tmp");
    let result_ref = reference.join("result");
    let (tmp_ref, result_ref) = (tmp_ref.to_str().ok_or("path")?, result_ref.to_str().ok_or("path")?);

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut clone_t, mut commit_t, mut remove_t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations + 2 {
        // Ours: clone the base, write, commit, delete.
        let tmp = key(&format!("result-tmp/b{i}")).map_err(e)?;
        let result = key(&format!("result/b{i}")).map_err(e)?;
        let t0 = Instant::now();
        let dir = s.clone_tree(&key("result/base").map_err(e)?, &tmp).map_err(e)?;
        fs::write(dir.join("output"), "built\n").map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        s.commit(&tmp, &result, Some(&key("result/base").map_err(e)?)).map_err(e)?;
        let t2 = Instant::now();
        s.remove(&result).map_err(e)?;
        let t3 = Instant::now();

        // obuilder's commands for the same work.
        let r0 = Instant::now();
        btrfs(&["subvolume", "snapshot", "--", &base, tmp_ref])?;
        fs::write(Path::new(tmp_ref).join("output"), "built\n").map_err(|e| e.to_string())?;
        btrfs(&["subvolume", "snapshot", "-r", "--", tmp_ref, result_ref])?;
        btrfs(&["subvolume", "delete", "--", tmp_ref])?;
        btrfs(&["subvolume", "delete", "--", result_ref])?;
        let r1 = Instant::now();

        if i >= 2 {
            // The first rounds warm caches up.
            ours.push(t3 - t0);
            clone_t.push(t1 - t0);
            commit_t.push(t2 - t1);
            remove_t.push(t3 - t2);
            theirs.push(r1 - r0);
        }
    }
    s.complete_deletes().map_err(e)?;

    let (ours, theirs) = (median(ours), median(theirs));
    println!("build on a 2000-file base + delete, median of {iterations} runs:");
    println!(
        "  snapstore btrfs backend (ioctls): {ours:6.2} ms  (clone+write {:.2}, commit {:.2}, remove {:.2})",
        median(clone_t),
        median(commit_t),
        median(remove_t)
    );
    println!("  obuilder's btrfs commands:        {theirs:6.2} ms");
    println!("  ratio backend/reference:          {:6.2}", ours / theirs);
    Ok(())
}
