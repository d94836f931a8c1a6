//! Clones one committed tree of a store by hand, for profiling:
//!
//!     clone ROOT SRC_KEY DST_KEY [OPTIONS_TOML]
//!     e.g. clone /srv/store result/base result-tmp/copy "threads = 4"

use std::path::Path;
use std::time::Instant;

use store_api::{Key, SnapshotBackend};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, src, dst, rest @ ..] = args.as_slice() else {
        return Err("usage: clone ROOT SRC_KEY DST_KEY [OPTIONS_TOML]".into());
    };
    let store = snapstore_xfs_reflink::open(Path::new(root), rest.first().map_or("", |s| s))?;
    let start = Instant::now();
    let path = store.clone_tree(&Key::parse(src)?, &Key::parse(dst)?)?;
    println!("{} in {:?}", path.display(), start.elapsed());
    Ok(())
}
