//! A clone shares its base's data: cloning 512 MiB costs metadata only.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use store_api::{Key, SnapshotBackend};

use common::LoopFs;

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

const MIB: u64 = 1 << 20;

fn sharing(test: &str, fs: &str) {
    let Some(lfs) = LoopFs::new(test, fs, 1 << 30, "") else {
        return;
    };
    let store = lfs.open("");
    let empty = lfs.used_bytes();
    let tmp = store.create(&key("result-tmp/base"), None).unwrap();
    let mut big = File::create(tmp.join("big")).unwrap();
    // Real data (not a hole), different in every MiB.
    let mut chunk = vec![0u8; MIB as usize];
    for i in 0..512u64 {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ (j as u8);
        }
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    store.commit(&key("result-tmp/base"), &key("result/base"), None).unwrap();

    let before = lfs.used_bytes();
    // The measure works: the base itself took its 512 MiB.
    assert!(before - empty >= 500 * MIB, "{fs}: base used only {} KiB", (before - empty) / 1024);
    let clone = store.clone_tree(&key("result/base"), &key("result-tmp/c")).unwrap();
    store.commit(&key("result-tmp/c"), &key("result/c"), Some(&key("result/base"))).unwrap();
    let after = lfs.used_bytes();
    let grown = after.saturating_sub(before);
    eprintln!("{fs}: clone of a 512 MiB file used {} KiB", grown / 1024);
    assert!(grown < 4 * MIB, "{fs}: the clone used {} KiB", grown / 1024);
    drop(clone);

    // Same content; writing to the clone leaves the base alone.
    let committed = store.path(&key("result/c")).unwrap().unwrap();
    let mut f = File::options().read(true).write(true).open(committed.join("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 512 * MIB);
    let mut head = [0u8; 8];
    f.seek(SeekFrom::Start(300 * MIB)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert_eq!(u64::from_le_bytes(head), 300);
    f.seek(SeekFrom::Start(300 * MIB)).unwrap();
    f.write_all(b"changed!").unwrap();
    drop(f);
    let base = store.path(&key("result/base")).unwrap().unwrap();
    let mut g = File::open(base.join("big")).unwrap();
    g.seek(SeekFrom::Start(300 * MIB)).unwrap();
    g.read_exact(&mut head).unwrap();
    assert_eq!(u64::from_le_bytes(head), 300, "{fs}: writing to the clone changed the base");

    // Deleting the base keeps the clone whole.
    store.remove(&key("result/base")).unwrap();
    store.complete_deletes().unwrap();
    let mut h = File::open(committed.join("big")).unwrap();
    h.seek(SeekFrom::Start(511 * MIB)).unwrap();
    h.read_exact(&mut head).unwrap();
    assert_eq!(u64::from_le_bytes(head), 511);
}

#[test]
fn sharing_xfs() {
    sharing("sharing_xfs", "xfs");
}

#[test]
fn sharing_btrfs() {
    sharing("sharing_btrfs", "btrfs");
}
