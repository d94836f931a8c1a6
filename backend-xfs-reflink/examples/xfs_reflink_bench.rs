//! Clone + commit of a 10 000-file tree (100 dirs x 100 small files plus
//! one 50 MB file) against obuilder's `cp -pRduT --reflink=always` + `mv`,
//! in the same run on a loop-mounted XFS (reflink=1). Needs root.
//!
//!     cargo run --release -p backend-xfs-reflink --example xfs_reflink_bench -- [ITERATIONS] [THREADS]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use snapstore_xfs_reflink::XfsReflink;
use store_api::{Key, SnapshotBackend};

fn key(s: &str) -> Key {
    Key::parse(s).expect("valid key")
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("spawn");
    assert!(status.success(), "{cmd:?} failed");
}

fn build_base(store: &XfsReflink) {
    let tmp = store.create(&key("result-tmp/base"), None).expect("create");
    for d in 0..100 {
        let dir = tmp.join(format!("dir{d:03}"));
        fs::create_dir(&dir).expect("mkdir");
        for f in 0..100 {
            // Small files of varied sizes, like a source tree.
            let body = format!("file {d}/{f}\n").repeat(1 + (d * 7 + f * 13) % 200);
            fs::write(dir.join(format!("file{f:03}.txt")), body).expect("write");
        }
    }
    let big: Vec<u8> = (0..50_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(tmp.join("big.bin"), big).expect("write big");
    store.commit(&key("result-tmp/base"), &key("result/base"), None).expect("commit");
}

/// Times clone + commit with `store`, then removes the result (untimed).
fn time_backend(store: &XfsReflink, i: usize) -> Duration {
    let (tmp, dst) = (key(&format!("result-tmp/b{i}")), key(&format!("result/b{i}")));
    let start = Instant::now();
    store.clone_tree(&key("result/base"), &tmp).expect("clone");
    store.commit(&tmp, &dst, Some(&key("result/base"))).expect("commit");
    let took = start.elapsed();
    store.remove(&dst).expect("remove");
    took
}

/// obuilder's rsync-less reflink path: `cp -pRduT --reflink=always` + `mv`.
fn time_cp(store: &XfsReflink, root: &Path, i: usize) -> Duration {
    let src = root.join("result/base");
    let (tmp, dst) = (root.join(format!("result-tmp/cp{i}")), root.join(format!("result/cp{i}")));
    let start = Instant::now();
    run(Command::new("cp").args(["-pRduT", "--reflink=always"]).arg(&src).arg(&tmp));
    run(Command::new("mv").arg(&tmp).arg(&dst));
    let took = start.elapsed();
    store.remove(&key(&format!("result/cp{i}"))).expect("remove");
    took
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().map_or(10, |a| a.parse().expect("ITERATIONS"));
    let threads = args.next().map(|a| format!("threads = {}", a.parse::<usize>().expect("THREADS")));
    let Some(lfs) = common::LoopFs::new("bench", "xfs", 2 << 30, "") else {
        return;
    };
    let root = lfs.root();
    let opts = threads.unwrap_or_default();
    let synced = lfs.open(&opts);
    let unsynced = lfs.open(&format!("{opts}\nsync_on_commit = false"));
    build_base(&synced);
    common::sync(&lfs.mnt);
    eprintln!("{}", synced.check().expect("check").join("\n"));

    let (mut ours, mut ours_nosync, mut cp) = (vec![], vec![], vec![]);
    for i in 0..iterations {
        // Rotate the order so that no method always runs on a warmer cache.
        for step in 0..3 {
            common::sync(&lfs.mnt);
            match (i + step) % 3 {
                0 => ours.push(time_backend(&synced, i)),
                1 => ours_nosync.push(time_backend(&unsynced, i)),
                _ => cp.push(time_cp(&synced, &root, i)),
            }
        }
    }
    let (ours, ours_nosync, cp) = (median(ours), median(ours_nosync), median(cp));
    println!("{iterations} iterations, medians on loop XFS, 10 001 files (100x100 small + 50 MB):");
    println!("  xfs-reflink clone_tree+commit (sync on commit):  {}", ms(ours));
    println!("  xfs-reflink clone_tree+commit (no sync):         {}", ms(ours_nosync));
    println!("  cp -pRduT --reflink=always + mv:                 {}", ms(cp));
    println!("  ratio (sync) / cp:    {:.2}", ours.as_secs_f64() / cp.as_secs_f64());
    println!("  ratio (no sync) / cp: {:.2}", ours_nosync.as_secs_f64() / cp.as_secs_f64());
}
