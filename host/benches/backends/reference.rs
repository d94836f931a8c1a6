//! obuilder's command sequences for the same work, the reference side.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{build_command, cmd, s};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Rsync,
    Btrfs,
    Xfs,
    Zfs,
}

/// obuilder's command sequences, on trees under `dir` (for zfs: datasets
/// under `dataset`, mounted at `dir`).
pub struct Reference {
    pub kind: Kind,
    pub dir: PathBuf,
    pub dataset: String,
}

impl Reference {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ds(&self, name: &str) -> String {
        format!("{}/{name}", self.dataset)
    }

    /// A committed tree `name` filled by `fill` (untimed).
    pub fn make_base(&self, name: &str, fill: fn(&Path) -> io::Result<()>) {
        let path = self.path(name);
        match self.kind {
            Kind::Btrfs => {
                let tmp = self.path(&format!("{name}-tmp"));
                cmd("btrfs", &["-q", "subvolume", "create", s(&tmp)]);
                fill(&tmp).expect("fill");
                cmd("btrfs", &["-q", "subvolume", "snapshot", "-r", s(&tmp), s(&path)]);
                cmd("btrfs", &["-q", "subvolume", "delete", s(&tmp)]);
            }
            Kind::Zfs => {
                cmd("zfs", &["create", &self.ds(name)]);
                fill(&path).expect("fill");
                cmd("zfs", &["snapshot", &format!("{}@snap", self.ds(name))]);
            }
            Kind::Rsync | Kind::Xfs => {
                fs::create_dir(&path).expect("mkdir");
                fill(&path).expect("fill");
            }
        }
    }

    /// Clones `base` into a temporary tree, runs the build command in it
    /// and commits it as `name`.
    pub fn build(&self, base: &str, name: &str) {
        let (base, result) = (self.path(base), self.path(name));
        let tmp = self.path(&format!("{name}-tmp"));
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "snapshot", s(&base), s(&tmp)]);
                build_command(&tmp);
                cmd("btrfs", &["subvolume", "snapshot", "-r", s(&tmp), s(&result)]);
                cmd("btrfs", &["subvolume", "delete", s(&tmp)]);
            }
            Kind::Xfs => {
                cmd("cp", &["-pRduT", "--reflink=always", s(&base), s(&tmp)]);
                build_command(&tmp);
                cmd("mv", &[s(&tmp), s(&result)]);
            }
            Kind::Rsync => {
                cmd("rsync", &["-aHq", &format!("{}/", s(&base)), &format!("{}/", s(&tmp))]);
                build_command(&tmp);
                cmd("mv", &[s(&tmp), s(&result)]);
            }
            Kind::Zfs => {
                // obuilder builds in the result's own dataset, a clone.
                let base_ds = self.path_ds(&base);
                let ds = self.ds(name);
                cmd("zfs", &["clone", &format!("{base_ds}@snap"), &ds]);
                build_command(&result);
                cmd("zfs", &["snapshot", &format!("{ds}@snap")]);
            }
        }
    }

    pub fn path_ds(&self, path: &Path) -> String {
        self.ds(path.file_name().and_then(|n| n.to_str()).expect("name"))
    }

    pub fn delete(&self, name: &str) {
        let path = self.path(name);
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "delete", s(&path)]);
            }
            Kind::Zfs => {
                // zfs-fuse often calls a dataset just used busy for a moment;
                // the retries are part of the cost.
                let ds = self.ds(name);
                for _ in 0..50 {
                    let out = Command::new("zfs").args(["destroy", "-r", &ds]).output().expect("zfs");
                    if out.status.success() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                cmd("zfs", &["destroy", "-r", &ds]);
            }
            Kind::Rsync | Kind::Xfs => {
                cmd("rm", &["-rf", s(&path)]);
            }
        }
    }

    /// obuilder's cache acquire: a writable copy `copy` of cache `cache`.
    pub fn acquire(&self, cache: &str, copy: &str) -> bool {
        let (cache, copy) = (self.path(cache), self.path(copy));
        match self.kind {
            Kind::Btrfs => cmd("btrfs", &["subvolume", "snapshot", s(&cache), s(&copy)]),
            Kind::Xfs => cmd("cp", &["-pRduT", "--reflink=always", s(&cache), s(&copy)]),
            Kind::Rsync => cmd("rsync", &["-aHq", &format!("{}/", s(&cache)), &format!("{}/", s(&copy))]),
            Kind::Zfs => return false, // see BENCHMARKS.md: no simple equivalent
        };
        true
    }

    /// obuilder's cache release: the copy replaces the cache.
    pub fn release(&self, cache: &str, copy: &str) {
        let (cache, copy) = (self.path(cache), self.path(copy));
        match self.kind {
            Kind::Btrfs => {
                cmd("btrfs", &["subvolume", "delete", s(&cache)]);
                cmd("btrfs", &["subvolume", "snapshot", "-r", s(&copy), s(&cache)]);
                cmd("btrfs", &["subvolume", "delete", s(&copy)]);
            }
            Kind::Xfs | Kind::Rsync => {
                cmd("rm", &["-rf", s(&cache)]);
                cmd("mv", &[s(&copy), s(&cache)]);
            }
            Kind::Zfs => {}
        }
    }
}
