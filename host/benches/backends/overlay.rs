//! The overlayfs backend (issue 17), on one loop ext4: a build on the
//! 2000-file base + delete against obuilder's overlayfs store commands
//! (`mkdir`, `mount -t overlay`, the build, `umount`, `mv`, `rm -rf`), and
//! the clone of a base at 1×, 10× and 100× its size against the rsync
//! backend on the same filesystem. Printed as its own tables.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use store_api::{Namespace, SnapshotBackend};
use test_support::LoopFs;

use crate::measure::{interleave, median_ms, timed, Variant};
use crate::settings::Settings;
use crate::table::ms;
use crate::target::open_store;
use crate::trees::fill_2k;
use crate::util::{build_command, cmd, key, s};

/// Files in the 1× base (1 KiB each); 10× and 100× have 10 and 100 times
/// as many.
const UNIT_FILES: usize = 2000;

/// `n` files of 1 KiB in directories of 100.
fn fill_n(dir: &Path, n: usize) -> io::Result<()> {
    for d in 0..n.div_ceil(100) {
        let sub = dir.join(format!("d{d:05}"));
        fs::create_dir(&sub)?;
        for f in 0..100.min(n - d * 100) {
            fs::write(sub.join(format!("f{f:03}")), [b'x'; 1024])?;
        }
    }
    Ok(())
}

pub fn run(bin: &Path, work: &Path, settings: &Settings) {
    let plugins = bin.parent().expect("bin dir");
    for plugin in ["overlayfs", "rsync"] {
        if !plugins.join(format!("libsnapstore_{plugin}.so")).is_file() {
            eprintln!("[overlayfs] skipped: no libsnapstore_{plugin}.so (cargo build --release --workspace)");
            return;
        }
    }
    // One inode per 4 KiB: the 100× bases and an rsync copy of one are
    // 600 000 small files.
    let lfs = LoopFs::create_in(work, &["mkfs.ext4", "-q", "-i", "4096"], "8G", "")
        .unwrap_or_else(|e| panic!("{e}"));
    let mnt = lfs.mount.clone();
    let (cli, api, config) = open_store(bin, work, "overlayfs", "overlayfs", &mnt.join("store"), "");
    let (_, rsync_api, rsync_config) = open_store(bin, work, "rsync-ext4", "rsync", &mnt.join("rsync"), "");
    // The same without the flush before each commit (obuilder does none).
    let nosync_options = "[backend]\nsync_on_commit = false\n";
    let (nosync_cli, nosync_api, nosync_config) =
        open_store(bin, work, "overlayfs-nosync", "overlayfs", &mnt.join("nosync"), nosync_options);
    let open = |config: &snapstore::Config| {
        snapstore::internal::Plugin::for_config(config)
            .and_then(|p| p.open(&config.root, &config.backend_options))
            .expect("backend")
    };
    let (overlay, rsync, nosync) = (open(&config), open(&rsync_config), open(&nosync_config));
    let reference = mnt.join("ref");
    fs::create_dir(&reference).expect("mkdir");

    eprintln!("[overlayfs] build + delete on 2000 files, {} iterations", settings.iters);
    api.build(None, "base2k", fill_2k).expect("store").expect("fill");
    nosync_api.build(None, "base2k", fill_2k).expect("store").expect("fill");
    let ref_base = reference.join("base2k");
    fs::create_dir(&ref_base).expect("mkdir");
    fill_2k(&ref_base).expect("fill");
    let base_key = key(Namespace::Result, "base2k");
    let mut variants: Vec<Variant> = vec![
        // obuilder's overlayfs store: a result is the upper directory.
        Box::new(|name| {
            let dir = |part: &str| reference.join(format!("{name}-{part}"));
            let (upper, work, merged, result) =
                (dir("upper"), dir("work"), dir("merged"), reference.join(name));
            let a = timed(|| {
                cmd("mkdir", &["-p", s(&upper), s(&work), s(&merged)]);
                let options =
                    format!("lowerdir={},upperdir={},workdir={}", s(&ref_base), s(&upper), s(&work));
                cmd("mount", &["-t", "overlay", "overlay", "-o", &options, s(&merged)]);
                build_command(&merged);
                cmd("umount", &[s(&merged)]);
                cmd("mv", &[s(&upper), s(&result)]);
            });
            let b = timed(|| {
                cmd("rm", &["-rf", s(&result), s(&work), s(&merged)]);
            });
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                cli.run(&["build", name, "--base", "base2k", "--", "true"]);
            });
            let b = timed(|| {
                cli.run(&["delete", name]);
            });
            [a, b]
        }),
        Box::new(|name| {
            let (tmp, result) = (key(Namespace::ResultTmp, name), key(Namespace::Result, name));
            let a = timed(|| {
                overlay.clone_tree(&base_key, &tmp).expect("clone");
                overlay.commit(&tmp, &result, Some(&base_key)).expect("commit");
            });
            let b = timed(|| overlay.remove(&result).expect("remove"));
            [a, b]
        }),
        Box::new(|name| {
            let a = timed(|| {
                nosync_cli.run(&["build", name, "--base", "base2k", "--", "true"]);
            });
            let b = timed(|| {
                nosync_cli.run(&["delete", name]);
            });
            [a, b]
        }),
        Box::new(|name| {
            let (tmp, result) = (key(Namespace::ResultTmp, name), key(Namespace::Result, name));
            let a = timed(|| {
                nosync.clone_tree(&base_key, &tmp).expect("clone");
                nosync.commit(&tmp, &result, Some(&base_key)).expect("commit");
            });
            let b = timed(|| nosync.remove(&result).expect("remove"));
            [a, b]
        }),
    ];
    let m: Vec<[Option<f64>; 3]> = interleave(&mnt, settings.iters, &mut variants)
        .iter()
        .map(|s| [median_ms(&s[0]), median_ms(&s[1]), median_ms(&s[2])])
        .collect();
    drop(variants);
    let mut table = String::from(
        "| overlayfs (ext4) | obuilder overlay | CLI | backend calls | CLI, no sync | backend calls, no sync | CLI / obuilder | no sync: CLI / obuilder | goal |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (op, i) in [("build on 2000 files", 0), ("delete it", 1), ("**build + delete**", 2)] {
        let ratio = |side: usize| match (m[0][i], m[side][i]) {
            (Some(r), Some(c)) => format!("{:.2}", c / r),
            _ => "–".into(),
        };
        let goal = if i == 2 { "≤ 0.5" } else { "" };
        table += &format!(
            "| {op} | {} | {} | {} | {} | {} | {} | {} | {goal} |\n",
            ms(m[0][i]),
            ms(m[1][i]),
            ms(m[2][i]),
            ms(m[3][i]),
            ms(m[4][i]),
            ratio(1),
            ratio(3)
        );
    }

    eprintln!("{table}");
    let mut clones = String::from(
        "| clone of a base (backend `clone_tree`) | overlayfs | rsync (ext4) | goal |\n|---|---|---|---|\n",
    );
    for factor in [1, 10, 100] {
        let files = UNIT_FILES * factor;
        eprintln!("[overlayfs] clone of {files} files, {} iterations", settings.big);
        let name = format!("size{factor}");
        api.build(None, &name, |dir| fill_n(dir, files)).expect("store").expect("fill");
        rsync_api.build(None, &name, |dir| fill_n(dir, files)).expect("store").expect("fill");
        let base = key(Namespace::Result, &name);
        // rsync copies the whole base: at 100× one sample is enough.
        let rsync_iters = if factor == 100 { 1 } else { settings.big };
        let clone_of = |backend: &store_api::plugin::RemoteBackend, iters: usize| {
            let mut variants: Vec<Variant> = vec![Box::new(|name| {
                let tmp = key(Namespace::ResultTmp, name);
                let a = timed(|| {
                    backend.clone_tree(&base, &tmp).expect("clone");
                });
                backend.remove(&tmp).expect("remove");
                [a, Duration::ZERO]
            })];
            median_ms(&interleave(&mnt, iters, &mut variants)[0][0])
        };
        let (o, r) = (clone_of(&overlay, settings.big), clone_of(&rsync, rsync_iters));
        let goal = if factor == 1 { "≤ 20 ms, flat in size" } else { "" };
        clones += &format!("| {factor}× ({files} files of 1 KiB) | {} | {} | {goal} |\n", ms(o), ms(r));
        api.delete(&name).expect("delete");
        rsync_api.delete(&name).expect("delete");
    }
    println!("\noverlayfs: median milliseconds (one run on one loop ext4, sides alternating):\n\n{table}\n{clones}");
    drop((cli, api, rsync_api, overlay, rsync, nosync_cli, nosync_api, nosync));
    drop(lfs);
}
