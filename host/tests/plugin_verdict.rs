//! The plugin verdict: what one command learns about the plugin file
//! (its layout passed the check; where its backend keeps results) spares
//! the next ones that work, and never outlives the file it was made for.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

/// An rsync store whose plugin is a copy in a directory of the test's own,
/// named by path, so the test can replace it.
fn store_on_a_copy() -> (Fixture, tempfile::TempDir) {
    require_plugin("rsync");
    let plugins = tempfile::tempdir().unwrap();
    let copy = plugins.path().join("libsnapstore_rsync.so");
    fs::copy(plugin_dir().join("libsnapstore_rsync.so"), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let backend = toml::Value::from(copy.to_str().unwrap());
    let f = Fixture::with_config(dir, &root, &format!("[store]\nbackend = {backend}\nroot = \"store\"\n"));
    (f, plugins)
}

fn verdict(f: &Fixture) -> String {
    fs::read_to_string(f.root.join(".snapstore/plugin-verdict")).unwrap_or_default()
}

#[test]
fn lookups_answer_from_the_verdict_and_only_for_results_that_exist() {
    let (f, _plugins) = store_on_a_copy();
    f.ok(&["build", "a", "--", "sh", "-c", "echo 1 > out"]);
    let kept = verdict(&f);
    let lines: Vec<&str> = kept.lines().collect();
    assert_eq!(lines.len(), 4, "{kept}");
    assert!(lines[0].starts_with("plugin ") && lines[1] == "rsync" && lines[2] == "current", "{kept}");
    assert_eq!(Path::new(lines[3]), f.root.join("result"), "{kept}");

    // Answered without opening the backend: rsync's open would make its
    // missing namespace directories again.
    fs::remove_dir(f.root.join("cache-tmp")).unwrap();
    assert_eq!(f.ok(&["result", "a"]).trim(), f.root.join("result/a").to_str().unwrap());
    assert!(!f.root.join("cache-tmp").exists(), "the lookup loaded the plugin and opened the backend");
    f.ok(&["list"]);
    assert!(f.root.join("cache-tmp").is_dir());
    let json = f.json(&["result", "a"]);
    assert_eq!(json["path"], f.root.join("result/a").to_str().unwrap());
    // A lookup is a use, for prune.
    let used = |f: &Fixture| f.json(&["list"])["results"][0]["last_used"].as_f64().unwrap();
    let before = used(&f);
    std::thread::sleep(std::time::Duration::from_millis(20));
    f.ok(&["result", "a"]);
    assert!(used(&f) > before, "the lookup was not recorded as a use");

    // Gone, a result is not found (through the plugin, which says so).
    f.ok(&["delete", "a"]);
    assert!(f.fails(&["result", "a"], 66).contains("no result `a`"));
    assert_eq!(f.json(&["result", "a"])["path"], serde_json::Value::Null);
    // Not a directory where a result would be: not a result.
    fs::write(f.root.join("result/file"), "").unwrap();
    f.fails(&["result", "file"], 66);
    // Invalid names are refused as before.
    f.fails(&["result", "../a"], 64);
}

#[test]
fn a_replaced_plugin_voids_the_verdict() {
    let (f, plugins) = store_on_a_copy();
    f.ok(&["build", "a", "--", "true"]);
    let first = verdict(&f);
    assert!(!first.is_empty());

    // The same bytes written again: a new change time, a new check.
    let plugin = plugins.path().join("libsnapstore_rsync.so");
    let fresh = plugins.path().join("fresh.so");
    fs::copy(&plugin, &fresh).unwrap();
    fs::rename(&fresh, &plugin).unwrap();
    assert!(f.ok(&["result", "a"]).trim().ends_with("result/a"));
    f.ok(&["list"]);
    let second = verdict(&f);
    assert_ne!(first.lines().next(), second.lines().next(), "the verdict still names the old file");

    // A verdict that does not match its file is ignored and rewritten.
    fs::write(
        f.root.join(".snapstore/plugin-verdict"),
        "plugin 1:2:3 exe 4:5:6 api 1.2.0\nrsync\ncurrent\n/elsewhere\n",
    )
    .unwrap();
    assert!(f.ok(&["result", "a"]).trim().ends_with("result/a"));
    f.ok(&["list"]);
    assert_eq!(verdict(&f), second);
}
