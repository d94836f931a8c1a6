//! A build that fails for lack of space gives its space back before the
//! next build needs it. Real btrfs on a loop device; needs root (skipped
//! loudly otherwise, a failure with CI=true).

mod common;
mod support;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use common::LoopBtrfs;
use store_api::SnapshotBackend;
use support::{key, store};

const CHUNK: usize = 1 << 20;

/// Writes `path` in 1 MiB chunks until `limit` bytes or "no space left";
/// returns how much was written and whether the disk filled up.
fn write_until(path: &Path, limit: u64) -> (u64, bool) {
    let mut file = File::create(path).expect("create");
    let chunk = vec![0xa5_u8; CHUNK];
    let mut written = 0u64;
    let full = |err: &io::Error| err.raw_os_error() == Some(28);
    while written < limit {
        match file.write_all(&chunk) {
            Ok(()) => written += CHUNK as u64,
            Err(err) if full(&err) => return (written, true),
            Err(err) => panic!("write {}: {err}", path.display()),
        }
    }
    match file.sync_all() {
        Ok(()) => (written, false),
        Err(err) if full(&err) => (written, true),
        Err(err) => panic!("fsync {}: {err}", path.display()),
    }
}

#[test]
fn a_build_that_fills_the_disk_gives_its_space_back() {
    let Some(fs) = LoopBtrfs::new("enospc") else {
        return;
    };
    let s = store(&fs.root());

    // The first build writes until the disk is full, fails, and is
    // discarded (the host removes a failed build's tree).
    let first = key("result-tmp/first");
    let dir = s.create(&first, None).expect("create");
    let (written, full) = write_until(&dir.join("big"), u64::MAX);
    assert!(full && written > 500 << 20, "wrote {written} bytes, full: {full}");
    let start = Instant::now();
    s.remove(&first).expect("remove the failed build");
    eprintln!("removing the failed build took {:?}", start.elapsed());

    // The next build of (nearly) the same size fits.
    let second = key("result-tmp/second");
    let dir = s.create(&second, None).expect("create the next build");
    let goal = written / 10 * 9;
    let (done, full) = write_until(&dir.join("big"), goal);
    assert!(!full, "the next build ran out of space after {done} of {goal} bytes: the failed build's space did not come back");
    let result = s.commit(&second, &key("result/second"), None).expect("commit");
    assert_eq!(std::fs::metadata(result.join("big")).expect("stat").len(), done);
}

#[test]
fn removing_a_temporary_plain_directory_waits_only_for_its_subvolumes() {
    let Some(fs) = LoopBtrfs::new("plain-tmp") else {
        return;
    };
    let s = store(&fs.root());
    // Not a subvolume itself (e.g. left by an older layout), holding one.
    let plain = fs.root().join("result-tmp/plain");
    std::fs::create_dir_all(plain.join("dir")).expect("mkdir");
    support::subvolume_create(&plain.join("dir/sub"));
    std::fs::write(plain.join("dir/sub/f"), "x").expect("write");
    let start = Instant::now();
    s.remove(&key("result-tmp/plain")).expect("remove");
    assert!(!plain.exists());
    // Waiting for the directory's parent subvolume (never deleted) would
    // last until the time limit.
    assert!(start.elapsed().as_secs() < 10, "remove took {:?}", start.elapsed());
}
