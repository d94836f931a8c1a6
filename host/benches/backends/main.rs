//! Every backend available on this machine, on its real filesystem, against
//! the command sequence obuilder runs for the same work: medians of one run
//! in which the sides alternate, printed as one Markdown table (see
//! BENCHMARKS.md).
//!
//! Needs root (loop devices, mounts). Builds nothing itself:
//!
//!     cargo build --release --workspace
//!     cargo bench -p snapstore --bench backends [-- KEY=VALUE ...]
//!
//! Settings, as arguments or as `SNAPSTORE_BENCH_<KEY>` variables:
//!
//! * `backends=rsync,rsync-native,btrfs,xfs-reflink,zfs` — what to run
//!   (`rsync` copies with the rsync command, `rsync-native` with the
//!   backend's native copy; `rsync-xfs` is the rsync backend on XFS instead
//!   of ext4; `overlayfs`, not run by
//!   default, has its own tables: see `overlay.rs`);
//! * `iters=11` — iterations of the small operations;
//! * `big=5` — iterations of the 10 000-file clone and cache;
//! * `zfs_iters=3` — iterations of everything on zfs-fuse, which is slow;
//! * `scale=10000`, `scale_iters=5`, `scale_backends=rsync,btrfs` — the
//!   scale test (`scale=0` skips it).
//!
//! Everything it makes (image files, loop devices, mounts, a zfs pool, a
//! zfs-fuse daemon if none was running) is removed by Drop guards, also on
//! a panic or Ctrl-C.

mod measure;
mod operations;
// The overlayfs backend's own tables (issue 17).
mod overlay;
mod reference;
mod scale;
mod settings;
mod table;
mod target;
mod trees;
mod util;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use test_support::{LoopFs, ZfsPool};

use crate::operations::measure;
use crate::reference::{Kind, Reference};
use crate::scale::{print_scale_table, scale};
use crate::settings::Settings;
use crate::table::print_table;
use crate::target::{open_store, Target};
use crate::util::{catch_interrupts, cmd};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the backends benchmark needs root (loop devices and mounts): skipped");
        return;
    }
    catch_interrupts();
    let settings = Settings::load();
    // Cargo builds the CLI for benches; the plugins come from `cargo build
    // --release --workspace` and must sit beside it.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_snapstore"));
    let plugin_dir = bin.parent().expect("bin dir").to_path_buf();
    let work =
        tempfile::Builder::new().prefix("snapstore-bench.").tempdir_in("/var/tmp").expect("scratch dir");
    let work_path = work.path().to_path_buf();

    let mut rows = Vec::new();
    let mut scale_rows = Vec::new();
    let started = Instant::now();
    for name in &settings.backends {
        // overlayfs (issue 17): its own measurements and tables.
        if name == "overlayfs" {
            overlay::run(&bin, &work_path, &settings);
            continue;
        }
        let (kind, plugin) = match name.as_str() {
            "rsync" | "rsync-xfs" | "rsync-native" => (Kind::Rsync, "rsync"),
            "btrfs" => (Kind::Btrfs, "btrfs"),
            "xfs-reflink" => (Kind::Xfs, "xfs_reflink"),
            "zfs" => (Kind::Zfs, "zfs"),
            other => panic!("unknown backend `{other}` in backends="),
        };
        if !plugin_dir.join(format!("libsnapstore_{plugin}.so")).is_file() {
            eprintln!(
                "[{name}] skipped: no libsnapstore_{plugin}.so beside {} (cargo build --release --workspace)",
                bin.display()
            );
            continue;
        }
        let tool = match kind {
            Kind::Rsync => "rsync",
            Kind::Btrfs => "mkfs.btrfs",
            Kind::Xfs => "mkfs.xfs",
            Kind::Zfs => "zfs-fuse",
        };
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            eprintln!("[{name}] skipped: `{tool}` is not installed");
            continue;
        }
        // Guards first, so that they outlive the stores opened on them.
        let mut loop_fs = None;
        let mut pool = None;
        let (label, mnt) = match name.as_str() {
            "rsync" | "rsync-native" => {
                let dir = work_path.join(format!("ext4-{name}"));
                fs::create_dir(&dir).expect("mkdir");
                let label = if name == "rsync" { "rsync (ext4)" } else { "rsync, native copy (ext4)" };
                (label.to_string(), dir)
            }
            "rsync-xfs" | "xfs-reflink" => {
                let fs = loop_fs.insert(loop_fs_in(&work_path, &["mkfs.xfs", "-q", "-m", "reflink=1"]));
                let label = if kind == Kind::Rsync { "rsync (xfs)" } else { "xfs-reflink (xfs)" };
                (label.to_string(), fs.mount.clone())
            }
            "btrfs" => {
                let fs = loop_fs.insert(loop_fs_in(&work_path, &["mkfs.btrfs", "-q"]));
                ("btrfs".to_string(), fs.mount.clone())
            }
            _ => match ZfsPool::create_in(&work_path, "snapbench", "3G") {
                Ok(p) => ("zfs (zfs-fuse)".to_string(), pool.insert(p.stop_daemon_on_drop()).mount.clone()),
                Err(why) => {
                    eprintln!("[{name}] skipped: {why}");
                    continue;
                }
            },
        };
        let (root, reference_dir, options, dataset) = if kind == Kind::Zfs {
            let pool_name = pool.as_ref().expect("pool").name.clone();
            cmd("zfs", &["create", &format!("{pool_name}/store")]);
            cmd("zfs", &["create", &format!("{pool_name}/ref")]);
            let options = format!("[backend]\ndataset = \"{pool_name}/store\"\n");
            (mnt.join("store"), mnt.join("ref"), options, format!("{pool_name}/ref"))
        } else {
            fs::create_dir(mnt.join("ref")).expect("mkdir");
            // The rsync backend's two ways to copy a tree, each named.
            let options = match name.as_str() {
                "rsync-native" => "[backend]\ncopy = \"native\"\n",
                "rsync" | "rsync-xfs" => "[backend]\ncopy = \"rsync\"\n",
                _ => "",
            };
            (mnt.join("store"), mnt.join("ref"), options.to_string(), String::new())
        };
        let (cli, api, config) =
            open_store(&bin, &work_path, name, plugin.replace('_', "-").as_str(), &root, &options);
        let backend = snapstore::internal::Plugin::for_config(&config)
            .and_then(|p| p.open(&config.root, &config.backend_options))
            .expect("backend");
        let (iters, big) = if kind == Kind::Zfs {
            (settings.zfs_iters, settings.zfs_iters)
        } else {
            (settings.iters, settings.big)
        };
        let target = Target {
            label,
            kind,
            mnt: mnt.clone(),
            cli,
            api,
            backend,
            reference: Reference { kind, dir: reference_dir, dataset },
            iters,
            big,
        };
        measure(&target, &mut rows);
        if settings.scale > 10 && settings.scale_backends.contains(name) && kind != Kind::Zfs {
            scale(&target, &bin, &work_path, settings.scale, settings.scale_iters, &mut scale_rows);
        }
        // The table so far, in case a later backend fails.
        eprintln!("[{name}] done after {:.0} s\n{}", started.elapsed().as_secs_f64(), print_table(&rows));
        if !scale_rows.is_empty() {
            eprintln!("{}", print_scale_table(&scale_rows, settings.scale));
        }
        // Stores close before their filesystem goes.
        drop(target);
        drop(loop_fs);
        drop(pool);
    }

    println!("\nMedian milliseconds per operation (one run, sides alternating):\n");
    println!("{}", print_table(&rows));
    if !scale_rows.is_empty() {
        println!("Scale: median milliseconds through the CLI, {} results against 10:\n", settings.scale);
        println!("{}", print_scale_table(&scale_rows, settings.scale));
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
}

/// A 3 GiB filesystem made by `mkfs` on a loop device, its image under
/// `work` (on disk, not a tmpfs).
fn loop_fs_in(work: &std::path::Path, mkfs: &[&str]) -> LoopFs {
    LoopFs::create_in(work, mkfs, "3G", "").unwrap_or_else(|e| panic!("{e}"))
}
