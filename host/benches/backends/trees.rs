//! The trees the measurements build on.

use std::fs;
use std::io;
use std::path::Path;

/// 20 directories of 100 small files: the base of a typical build step.
pub fn fill_2k(dir: &Path) -> io::Result<()> {
    for d in 0..20 {
        let sub = dir.join(format!("d{d:02}"));
        fs::create_dir(&sub)?;
        for f in 0..100 {
            fs::write(sub.join(format!("f{f:03}")), format!("{d}/{f}\n").repeat(20))?;
        }
    }
    Ok(())
}

/// 100 directories of 100 small files of varied sizes, plus one 50 MB file.
pub fn fill_10k(dir: &Path) -> io::Result<()> {
    for d in 0..100 {
        let sub = dir.join(format!("dir{d:03}"));
        fs::create_dir(&sub)?;
        for f in 0..100 {
            let body = format!("file {d}/{f}\n").repeat(1 + (d * 7 + f * 13) % 200);
            fs::write(sub.join(format!("file{f:03}.txt")), body)?;
        }
    }
    // Pseudo-random bytes, so that no filesystem can compress them away.
    let big: Vec<u8> = (0..50_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(dir.join("big.bin"), big)
}

pub fn fill_small(dir: &Path) -> io::Result<()> {
    (0..10).try_for_each(|f| fs::write(dir.join(format!("f{f}")), "x\n"))
}
