//! The store contract, checked through the CLI on any backend: the
//! sequence of obuilder's store test, plus caches, deletes and names.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;

pub fn run_contract(f: &Fixture) {
    results(f);
    deleting_a_base_keeps_its_children(f);
    caches(f);
    invalid_names_touch_nothing(f);
    nothing_left_after_deleting_everything(f);
}

fn results(f: &Fixture) {
    // An unknown id has no result.
    assert_eq!(f.result("base"), None);
    f.fails(&["result", "base"], EXIT_NOT_FOUND);

    // A build on nothing, then one on top of it.
    let path = f.ok(&["build", "base", "--", "sh", "-c", "printf ok > output"]);
    assert_eq!(f.result("base").unwrap(), Path::new(&path));
    assert_eq!(f.read_result("base", "output"), "ok");
    f.ok(&["build", "sub", "--base", "base", "--", "sh", "-c", "printf + >> output"]);
    assert_eq!(f.read_result("sub", "output"), "ok+");
    assert_eq!(f.read_result("base", "output"), "ok", "a child changed its base");

    // Deletes are idempotent.
    f.ok(&["delete", "sub"]);
    assert_eq!(f.result("sub"), None);
    f.ok(&["delete", "sub"]);

    // A failed build is not recorded; its status passes through; a retry works.
    let out = f.run(&["build", "retry", "--base", "base", "--", "sh", "-c", "echo half > output; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(f.result("retry"), None);
    f.ok(&["build", "retry", "--base", "base", "--", "sh", "-c", "printf again >> output"]);
    assert_eq!(f.read_result("retry", "output"), "okagain");

    // A second build of an existing id is refused and changes nothing.
    f.fails(&["build", "base", "--", "sh", "-c", "printf changed > output"], EXIT_EXISTS);
    assert_eq!(f.read_result("base", "output"), "ok");

    // A missing base is a clear error.
    let err = f.fails(&["build", "orphan", "--base", "nosuchbase", "--", "true"], EXIT_NOT_FOUND);
    assert!(err.contains("nosuchbase"), "{err}");
    assert_eq!(f.result("orphan"), None);

    // The build command sees its tree in $SNAPSTORE_DIR and as its cwd.
    f.ok(&["build", "env", "--", "sh", "-c", "test \"$SNAPSTORE_DIR\" = \"$(pwd)\" && touch here"]);
    assert!(f.result("env").unwrap().join("here").exists());
    for id in ["retry", "env"] {
        f.ok(&["delete", id]);
    }
}

fn deleting_a_base_keeps_its_children(f: &Fixture) {
    f.ok(&["build", "child", "--base", "base", "--", "sh", "-c", "printf 1 >> output"]);
    f.ok(&["delete", "base"]);
    assert_eq!(f.result("base"), None);
    assert_eq!(f.read_result("child", "output"), "ok1");
    f.ok(&["build", "grandchild", "--base", "child", "--", "sh", "-c", "printf 2 >> output"]);
    assert_eq!(f.read_result("grandchild", "output"), "ok12");
    f.ok(&["delete", "child"]);
    f.ok(&["delete", "grandchild"]);
}

fn acquire(f: &Fixture, name: &str) -> (String, std::path::PathBuf) {
    let out = f.json(&["cache", "acquire", name, "--user", &owner()]);
    (out["lease"].as_str().unwrap().to_string(), out["path"].as_str().unwrap().into())
}

fn release(f: &Fixture, lease: &str) -> bool {
    f.json(&["cache", "release", lease])["published"].as_bool().unwrap()
}

/// The owner caches are created with: someone else when we can chown.
fn owner() -> String {
    if is_root() {
        "1234:5678".into()
    } else {
        format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
    }
}

fn caches(f: &Fixture) {
    // A new cache is an empty directory owned by the requested user.
    let (lease, path) = acquire(f, "opam");
    assert!(path.starts_with(&f.root), "{path:?}");
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(format!("{}:{}", meta.uid(), meta.gid()), owner());
    fs::write(path.join("data"), "v1").unwrap();
    assert!(release(f, &lease), "the first release must publish");

    // The published write is seen by the next copy.
    let (lease, path) = acquire(f, "opam");
    assert_eq!(fs::read_to_string(path.join("data")).unwrap(), "v1");
    assert!(release(f, &lease));

    // Two copies from the same snapshot: the first released wins.
    let (a, path_a) = acquire(f, "opam");
    let (b, path_b) = acquire(f, "opam");
    fs::write(path_a.join("data"), "v2a").unwrap();
    fs::write(path_b.join("data"), "v2b").unwrap();
    assert!(release(f, &b));
    assert!(!release(f, &a), "a copy of an outdated snapshot must be discarded");
    let (lease, path) = acquire(f, "opam");
    assert_eq!(fs::read_to_string(path.join("data")).unwrap(), "v2b");
    assert!(release(f, &lease));
    // A released lease cannot be released again.
    f.fails(&["cache", "release", &a], EXIT_NOT_FOUND);

    // `cache run` publishes what the command wrote and passes its status on.
    f.ok(&["cache", "run", "opam", "--", "sh", "-c", "printf v3 > data"]);
    let out = f.run(&["cache", "run", "opam", "--", "sh", "-c", "test \"$(cat data)\" = v3 && exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));

    // Deleting a cache in use: either refused as busy (and possible after
    // release), or done, with the copy discarded on release.
    let (lease, path) = acquire(f, "opam");
    fs::write(path.join("data"), "stale").unwrap();
    let out = f.run(&["cache", "delete", "opam"]);
    match out.status.code() {
        Some(0) => assert!(!release(f, &lease), "a copy of a deleted cache must be discarded"),
        Some(EXIT_BUSY) => {
            release(f, &lease);
            f.ok(&["cache", "delete", "opam"]);
        }
        other => panic!("cache delete: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
    }
    let (lease, path) = acquire(f, "opam");
    assert_eq!(fs::read_dir(&path).unwrap().count(), 0, "a deleted cache comes back empty");
    assert!(release(f, &lease));
    f.ok(&["cache", "delete", "opam"]);
}

fn invalid_names_touch_nothing(f: &Fixture) {
    let before = tree_listing(&f.root);
    let long = "a".repeat(256);
    for bad in ["../x", "a/b", ".x", "", &long, "x y"] {
        f.fails(&["build", bad, "--", "true"], EXIT_USAGE);
        f.fails(&["result", bad], EXIT_USAGE);
        f.fails(&["delete", bad], EXIT_USAGE);
        f.fails(&["build", "fine", "--base", bad, "--", "true"], EXIT_USAGE);
    }
    f.fails(&["cache", "acquire", ""], EXIT_USAGE);
    f.fails(&["cache", "acquire", &"c".repeat(256)], EXIT_USAGE);
    f.fails(&["cache", "release", "../../etc"], EXIT_USAGE);
    assert_eq!(tree_listing(&f.root), before, "an invalid name changed the store");

    // A cache name is any string, kept inside the store.
    let outside = f.root.parent().unwrap().to_path_buf();
    let before_outside = fs::read_dir(&outside).unwrap().count();
    for name in ["../../x", "/etc/passwd", "..", "a/b/../c", "é ☃"] {
        let (lease, path) = acquire(f, name);
        assert!(path.starts_with(&f.root) && !path.to_string_lossy().contains(".."), "{path:?}");
        fs::write(path.join("mark"), name).unwrap();
        assert!(release(f, &lease));
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), before_outside);
    let listing = f.json(&["list"]);
    let mut names: Vec<&str> =
        listing["caches"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["..", "../../x", "/etc/passwd", "a/b/../c", "é ☃"]);
    for name in names {
        f.ok(&["cache", "delete", name]);
    }
}

fn nothing_left_after_deleting_everything(f: &Fixture) {
    let listing = f.json(&["list"]);
    for result in listing["results"].as_array().unwrap() {
        f.ok(&["delete", result["id"].as_str().unwrap()]);
    }
    for cache in listing["caches"].as_array().unwrap() {
        f.ok(&["cache", "delete", cache["name"].as_str().unwrap()]);
    }
    f.ok(&["complete-deletes"]);
    let listing = f.json(&["list"]);
    for what in ["results", "caches", "leases"] {
        assert_eq!(listing[what].as_array().unwrap().len(), 0, "{what} left: {listing}");
    }
    let free = f.json(&["df"])["free_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&free));
}

/// Every path under `root` except the host's lock files, sorted.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with(".snapstore/locks") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}
