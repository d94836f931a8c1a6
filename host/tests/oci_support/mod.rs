//! Shared by the image tests: the fidelity tree as a chain of two results
//! (base, and a step with every kind of change), and tree comparison.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use test_support::fidelity::{build_fidelity_tree, manifest, set_times, Entry};

use crate::support::Fixture;

/// The changes of the step over the base: added, modified (one with its size and
/// mtime put back), deleted files and directories, replaced types, metadata only.
pub const STEP_CHANGES: &str = r#"set -e
echo new > new-file
mkdir -p newdir/inner && echo x > newdir/inner/x
truncate -s 8M newdir/sparse2 && printf data | dd of=newdir/sparse2 bs=1 seek=4194304 conv=notrunc 2>/dev/null
echo changed > many/f1
ref=$(mktemp) && touch -r many/f2 "$ref" && printf X > many/f2 && touch -r "$ref" many/f2 && rm "$ref"
rm many/f3
rm -rf deep/a/b
chmod u+w ro && rm -rf ro/d && echo 'now a file' > ro/d && chmod u-w ro
rm empty && mkdir empty && echo i > empty/inside
rm -rf sticky && mkdir sticky && echo f > sticky/fresh
setfattr -n user.color -v red hard1
chmod 640 noperm
chown 42:43 many/f4
rm link && ln -s hard1 link
"#;

pub fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(st.success(), "sh -c {cmd}");
}

/// Builds result `base` (the fidelity tree) and `step` on it (STEP_CHANGES) in `f`.
pub fn build_chain(f: &Fixture) {
    build_chain_with(f, true);
}

/// [`build_chain`], without any xattr or ACL when `xattrs` is false (for
/// filesystems without them, such as zfs-fuse's).
pub fn build_chain_with(f: &Fixture, xattrs: bool) {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir(&tree).unwrap();
    build_fidelity_tree(&tree);
    if !xattrs {
        strip_xattrs(&tree);
    }
    let mut counter = 0;
    set_times(&tree, &mut counter);
    f.ok(&["build", "base", "--", "cp", "-a", &format!("{}/.", tree.display()), "."]);
    let changes: String = STEP_CHANGES
        .lines()
        .filter(|l| xattrs || !l.contains("setfattr"))
        .map(|l| format!("{l}\n"))
        .collect();
    f.ok(&["build", "step", "--base", "base", "--", "sh", "-c", &changes]);
}

fn strip_xattrs(path: &Path) {
    for name in xattr::list(path).unwrap() {
        xattr::remove(path, &name).unwrap();
    }
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            strip_xattrs(&entry.unwrap().path());
        }
    }
}

/// The entries compared between stores: atimes aside (images do not keep them),
/// the root's own metadata aside (layers describe what is in the root, as
/// Docker's do), block counts aside (filesystems allocate differently; sparse
/// files are checked on their own by [`assert_sparse`]).
/// Sockets aside too: tar has no entry type for them.
pub fn comparable(root: &Path) -> Vec<Entry> {
    manifest(root, false)
        .into_iter()
        .filter(|e| !e.path.as_os_str().is_empty() && e.mode & 0o170000 != 0o140000)
        // A directory's link count is the filesystem's business (btrfs: always 1).
        .map(|mut e| {
            // XFS also lists its ACLs in their on-disk form; they are the
            // `system.posix_acl_*` ones, which are compared.
            e.xattrs.retain(|name, _| !name.starts_with(b"trusted.SGI_ACL_"));
            Entry {
                atime: None,
                blocks: None,
                nlink: if e.mode & 0o170000 == 0o040000 { 0 } else { e.nlink },
                ..e
            }
        })
        .collect()
}

/// Compares two trees entry by entry; a difference is reported by path and
/// field, without the contents.
pub fn assert_same_tree(want: &Path, got: &Path, what: &str) {
    assert_same_tree_within(want, got, what, false)
}

/// The same, where one side is on zfs-fuse, which keeps some times in whole
/// seconds only (those set by name, without opening the entry).
pub fn assert_same_tree_within(want: &Path, got: &Path, what: &str, mtime_seconds: bool) {
    let (want, got) = (comparable(want), comparable(got));
    let paths = |entries: &[Entry]| entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&want), paths(&got), "{what}: the trees have different entries");
    for (a, b) in want.iter().zip(&got) {
        let mut fields = Vec::new();
        if a.mode != b.mode {
            fields.push(format!("mode {:o} vs {:o}", a.mode, b.mode));
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            fields.push(format!("owner {}:{} vs {}:{}", a.uid, a.gid, b.uid, b.gid));
        }
        if a.nlink != b.nlink || a.same_as != b.same_as {
            fields.push(format!("links {} {:?} vs {} {:?}", a.nlink, a.same_as, b.nlink, b.same_as));
        }
        if a.size != b.size || a.content != b.content {
            fields.push(format!("content ({:?} vs {:?} bytes)", a.size, b.size));
        }
        if a.rdev != b.rdev {
            fields.push("rdev".into());
        }
        let seconds_only = mtime_seconds;
        if a.mtime != b.mtime && !(seconds_only && a.mtime.0 == b.mtime.0) {
            fields.push(format!("mtime {:?} vs {:?}", a.mtime, b.mtime));
        }
        if a.xattrs != b.xattrs {
            let names = |e: &Entry| {
                e.xattrs.keys().map(|k| String::from_utf8_lossy(k).to_string()).collect::<Vec<_>>()
            };
            fields.push(format!("xattrs {:?} vs {:?}", names(a), names(b)));
        }
        if a.target != b.target {
            fields.push(format!("target {:?} vs {:?}", a.target, b.target));
        }
        assert!(fields.is_empty(), "{what}: {} differs: {}", a.path.display(), fields.join("; "));
    }
}

/// The fidelity tree's sparse file still has its holes.
pub fn assert_sparse(root: &Path) {
    let meta = fs::metadata(root.join("sparse")).unwrap();
    assert!(meta.blocks() * 512 < meta.len() / 2, "sparse file not sparse: {} blocks", meta.blocks());
}

pub fn have(tool: &str) -> bool {
    test_support::installed(tool)
}
