//! Removal of a 10 000-file tree (100 dirs x 100 small files) on a
//! loop-mounted XFS (reflink=1): the median time of `remove`, which
//! deletes the tree before it returns. Needs root.
//!
//!     cargo run --release -p backend-xfs-reflink --example remove_bench -- [ITERATIONS]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::time::{Duration, Instant};

use store_api::{Key, SnapshotBackend};

fn key(s: &str) -> Key {
    Key::parse(s).expect("valid key")
}

fn main() {
    let iterations: usize = std::env::args().nth(1).map_or(9, |n| n.parse().expect("ITERATIONS is a number"));
    let Some(lfs) = common::LoopFs::new("remove_bench", "xfs", 1 << 30, "") else {
        return;
    };
    let store = lfs.open("");
    let mut times: Vec<Duration> = Vec::new();
    for i in 0..iterations {
        let tmp = store.create(&key(&format!("result-tmp/t{i}")), None).expect("create");
        for d in 0..100 {
            let dir = tmp.join(format!("dir{d:03}"));
            fs::create_dir(&dir).expect("mkdir");
            for f in 0..100 {
                fs::write(dir.join(format!("f{f:03}")), b"some small content").expect("write");
            }
        }
        let result = key(&format!("result/t{i}"));
        store.commit(&key(&format!("result-tmp/t{i}")), &result, None).expect("commit");
        common::sync(&lfs.mnt);
        let started = Instant::now();
        store.remove(&result).expect("remove");
        times.push(started.elapsed());
    }
    times.sort();
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t.as_secs_f64() * 1000.0)).collect();
    println!("remove of 10 000 files: median {} ms (sorted: {})", ms[ms.len() / 2], ms.join(" "));
}
