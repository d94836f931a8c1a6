//! A store this user cannot write to: every command's error gives the fix,
//! not only `check`'s; and `check` warns of plugin_dirs that do not exist.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use support::*;

const NOBODY: u32 = 65534;

fn as_nobody(f: &Fixture, args: &[&str]) -> (Option<i32>, String) {
    let out = f.command(args).uid(NOBODY).gid(NOBODY).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).trim_end().to_string())
}

#[test]
fn an_unwritable_root_gives_the_fix() {
    if !is_root() {
        skip("an_unwritable_root_gives_the_fix needs root (to run as another user)");
        return;
    }
    let f = Fixture::rsync();
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Not made yet, in a directory nobody cannot write to.
    let (code, err) = as_nobody(&f, &["build", "x", "--", "true"]);
    assert_eq!(code, Some(77), "{err}");
    assert!(err.contains("mkdir -p") && err.contains(&format!("chown {NOBODY}")), "{err}");
    // Made by root, used by nobody.
    f.ok(&["init"]);
    for args in [&["build", "x", "--", "true"][..], &["cache", "run", "c", "--", "true"]] {
        let (code, err) = as_nobody(&f, args);
        assert_eq!(code, Some(77), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("uid 0") && err.contains("chown -R"), "{args:?}: {err}");
    }
}

#[test]
fn check_warns_of_missing_plugin_dirs() {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\nplugin_dirs = [\"/nonexistent/plugins\"]\n";
    let f = Fixture::with_config(dir, &root, text);
    let out = f.run(&["check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning") && stderr.contains("/nonexistent/plugins"), "{stderr}");
    let json = f.json(&["check"]);
    assert!(json["warnings"][0].as_str().unwrap().contains("/nonexistent/plugins"), "{json}");
}
