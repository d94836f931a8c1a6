//! The plugin boundary, with real plugins built at test time and the real
//! `snapstore` binary: incompatible and foreign libraries are refused with
//! one line, a plugin's declared name must match the config, panics in a
//! plugin become errors, plugins built against store-api 1.0 keep working,
//! `snapstore backends` reports all of it, and the out-of-tree example
//! backend builds on its own and passes the conformance suite.
//!
//! Fixture plugins (`tests/fixtures/*`, and `examples/copy-backend`) are
//! built with cargo into `target/fixtures`, one target directory for all
//! of them so that abi_stable compiles only once, and each is built at most
//! once per test run. The first run takes a few minutes.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use snapstore::{BlockingStore, Config};
use store_api::{Change, ChangeKind};
use support::*;

/// Exit status of an internal error, such as a caught plugin panic.
const EXIT_SOFTWARE: i32 = 70;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn fixtures_target() -> PathBuf {
    repo().join("target/fixtures")
}

fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

// ----- building fixture plugins -----

/// Serialises fixture builds: they share target directories.
static BUILDS: Mutex<()> = Mutex::new(());

/// Runs `cargo build ARGS --target-dir TARGET` in `dir`, then copies the
/// `lib{lib}.so` it made to `target/fixtures/plugins/{variant}/{file}` and
/// returns that path.
///
/// Cargo names a cdylib (and the rlib beside it) without a hash, so two
/// builds of one crate with different features or dependencies must not
/// share a target directory: they would overwrite each other's output.
fn build_plugin(dir: &Path, args: &[&str], target: &Path, lib: &str, variant: &str, file: &str) -> PathBuf {
    let _serial = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .current_dir(dir)
        .arg("build")
        .arg("--target-dir")
        .arg(target)
        .args(args)
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built fixture plugin {variant} in {:.1}s", started.elapsed().as_secs_f64());
    let built = target.join("debug").join(format!("lib{lib}.so"));
    let dest_dir = fixtures_target().join("plugins").join(variant);
    fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join(file);
    // A new file, not an overwrite: a running snapstore may have the old one mapped.
    let _ = fs::remove_file(&dest);
    fs::copy(&built, &dest).unwrap();
    // Running as root, the host refuses plugins that others could write.
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

/// The copy backend wrapped to panic on demand (`SNAPSTORE_FIXTURE_PANIC`).
fn wrap_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        build_plugin(
            &fixture_source("wrap"),
            &[],
            &fixtures_target(),
            "snapstore_wrap",
            "wrap",
            "libsnapstore_wrap.so",
        )
    })
}

/// The same, built against the store-api 1.0 interface (no `recover`); in
/// a target directory of its own, since its dependencies are built with
/// other features.
fn wrap_1_0_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let (args, target) = (["--features", "abi-1-0"], fixtures_target().join("abi-1-0"));
        build_plugin(
            &fixture_source("wrap"),
            &args,
            &target,
            "snapstore_wrap",
            "wrap-1-0",
            "libsnapstore_wrap_1_0.so",
        )
    })
}

/// The same, built against the store-api 1.1 interface (no `changes`, no
/// `size`).
fn wrap_1_1_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let (args, target) = (["--features", "abi-1-1"], fixtures_target().join("abi-1-1"));
        build_plugin(
            &fixture_source("wrap"),
            &args,
            &target,
            "snapstore_wrap",
            "wrap-1-1",
            "libsnapstore_wrap_1_1.so",
        )
    })
}

/// A minimal plugin against the current store-api.
fn bare_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        build_plugin(
            &fixture_source("bare"),
            &[],
            &fixtures_target(),
            "snapstore_bare",
            "bare",
            "libsnapstore_bare.so",
        )
    })
}

/// The minimal plugin, built against a copy of store-api whose version is
/// 2.0.0 (under another library name, so it can share the target directory).
fn bare_v2_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let source = bare_v2_source();
        build_plugin(
            &source,
            &[],
            &fixtures_target(),
            "snapstore_bare_v2",
            "bare-v2",
            "libsnapstore_bare_v2.so",
        )
    })
}

/// The example backend, built as its guide says: `cargo build` in its own
/// directory (`--target-dir` only spells out cargo's default, in case
/// CARGO_TARGET_DIR is set).
fn copy_plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let dir = repo().join("examples/copy-backend");
        build_plugin(&dir, &[], &dir.join("target"), "snapstore_copy", "copy", "libsnapstore_copy.so")
    })
}

/// Writes `contents` to `path` unless it already holds them (an unchanged
/// mtime spares cargo a rebuild on the next run).
fn write_if_changed(path: &Path, contents: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(contents) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }
}

fn copy_sources(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_sources(&entry.path(), &to.join(entry.file_name()));
        } else {
            write_if_changed(&to.join(entry.file_name()), &fs::read(entry.path()).unwrap());
        }
    }
}

fn read_toml(path: &Path) -> toml::Table {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// Sets up, under `target/fixtures/src`, a copy of store-api with version
/// 2.0.0 (made standalone: the workspace values it inherits are filled
/// in) and a copy of the bare fixture that depends on it and names its
/// library `snapstore_bare_v2`.
fn bare_v2_source() -> PathBuf {
    let src = fixtures_target().join("src");
    let api = src.join("store-api-2");
    copy_sources(&repo().join("store-api/src"), &api.join("src"));
    let workspace = read_toml(&repo().join("Cargo.toml"))["workspace"].as_table().unwrap().clone();
    let mut manifest = read_toml(&repo().join("store-api/Cargo.toml"));
    let inherited = |v: &toml::Value| v.get("workspace").and_then(toml::Value::as_bool) == Some(true);
    let package = manifest["package"].as_table_mut().unwrap();
    for (key, value) in package.iter_mut() {
        if inherited(value) {
            *value = workspace["package"][key.as_str()].clone();
        }
    }
    package.insert("version".into(), "2.0.0".into());
    for (name, dep) in manifest["dependencies"].as_table_mut().unwrap().iter_mut() {
        if inherited(dep) {
            let mut spec = match workspace["dependencies"][name.as_str()].clone() {
                version @ toml::Value::String(_) => {
                    toml::Table::from_iter([("version".to_string(), version)])
                }
                toml::Value::Table(table) => table,
                other => panic!("unexpected workspace dependency {name} = {other}"),
            };
            // Keys given beside `workspace = true` (features, optional) still apply.
            for (key, value) in dep.as_table().unwrap() {
                if key != "workspace" {
                    spec.insert(key.clone(), value.clone());
                }
            }
            *dep = spec.into();
        }
    }
    manifest.insert("workspace".into(), toml::Table::new().into());
    write_if_changed(&api.join("Cargo.toml"), toml::to_string(&manifest).unwrap().as_bytes());

    let bare = src.join("bare-2");
    copy_sources(&fixture_source("bare").join("src"), &bare.join("src"));
    let mut manifest = read_toml(&fixture_source("bare").join("Cargo.toml"));
    manifest["dependencies"]["store-api"]["path"] = api.to_str().unwrap().into();
    manifest["package"]["name"] = "fixture-bare-v2".into();
    manifest["lib"]["name"] = "snapstore_bare_v2".into();
    write_if_changed(&bare.join("Cargo.toml"), toml::to_string(&manifest).unwrap().as_bytes());
    bare
}

// ----- running snapstore -----

/// A store whose config names `backend` (a name or a path).
fn store_with(backend: &str, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let backend = toml::Value::from(backend);
    Fixture::with_config(dir, &root, &format!("[store]\nbackend = {backend}\nroot = \"store\"\n{extra}"))
}

fn store_on(plugin: &Path) -> Fixture {
    store_with(plugin.to_str().unwrap(), "")
}

/// A fresh, root-owned, non-writable-by-others directory for plugins.
fn plugin_dir_with(files: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, name) in files {
        let to = dir.path().join(name);
        fs::copy(from, &to).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn plugin_dirs_line(dir: &Path) -> String {
    format!("plugin_dirs = [{}]\n", toml::Value::from(dir.to_str().unwrap()))
}

/// Asserts that `out` failed with `code` and exactly one line on stderr,
/// an `error:` line; returns it.
fn one_line_error(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error: "), "{what}: not one error line:\n{stderr}");
    lines[0].to_string()
}

/// The system's libz, which is a shared library but not a snapstore plugin.
fn system_libz() -> Option<PathBuf> {
    let known = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib64/libz.so.1",
        "/usr/lib/libz.so.1",
    ];
    if let Some(found) = known.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(found);
    }
    let out = Command::new("ldconfig").arg("-p").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.trim_start().starts_with("libz.so.1 "))?;
    line.rsplit_once("=> ").map(|(_, path)| PathBuf::from(path.trim()))
}

// ----- the tests -----

#[test]
fn a_plugin_built_against_another_major_version_is_refused() {
    let plugin = bare_v2_plugin();
    let f = store_on(plugin);
    for command in [&["list"][..], &["check"], &["conformance"]] {
        let line = one_line_error(&f.run(command), EXIT_USAGE, "v2 plugin");
        assert!(line.contains(plugin.to_str().unwrap()), "no file name: {line}");
        assert!(line.contains("2.0.0") && line.contains(store_api::API_VERSION), "not both versions: {line}");
    }
    // Nothing of the store was made with it.
    assert!(!f.root.join(".snapstore/store.toml").exists());
}

#[test]
fn a_library_that_is_not_a_plugin_is_refused() {
    let Some(libz) = system_libz() else {
        skip("no libz.so.1 on this system");
        return;
    };
    let junk = tempfile::NamedTempFile::new().unwrap();
    fs::write(junk.path(), "not an ELF file").unwrap();
    let dir = plugin_dir_with(&[(&libz, "libsnapstore_z.so"), (junk.path(), "libsnapstore_junk.so")]);
    let extra = plugin_dirs_line(dir.path());
    for (backend, needle) in [("z", "not a snapstore plugin"), ("junk", "cannot load plugin")] {
        let f = store_with(backend, &extra);
        let line = one_line_error(&f.run(&["list"]), EXIT_USAGE, backend);
        let file = dir.path().join(format!("libsnapstore_{backend}.so"));
        assert!(line.contains(file.to_str().unwrap()) && line.contains(needle), "{line}");
        assert!(!line.ends_with(':'), "no reason given: {line}");
    }
    // The same, by path, for the library where the system keeps it.
    let f = store_on(&libz);
    let line = one_line_error(&f.run(&["list"]), EXIT_USAGE, "libz by path");
    assert!(line.contains("not a snapstore plugin"), "{line}");
}

#[test]
fn a_plugin_declaring_another_name_is_refused() {
    require_plugin("rsync");
    let dir = plugin_dir_with(&[(&plugin_dir().join("libsnapstore_rsync.so"), "libsnapstore_other.so")]);
    let f = store_with("other", &plugin_dirs_line(dir.path()));
    let line = one_line_error(&f.run(&["list"]), EXIT_USAGE, "renamed plugin");
    let file = dir.path().join("libsnapstore_other.so");
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    assert!(line.contains("\"other\"") && line.contains("`rsync`"), "{line}");
}

/// Runs snapstore with the wrap plugin panicking in `op`.
fn panicking(f: &Fixture, op: &str, args: &[&str]) -> String {
    let out = f.command(args).env("SNAPSTORE_FIXTURE_PANIC", op).output().unwrap();
    let line = one_line_error(&out, EXIT_SOFTWARE, &format!("panic in {op}, snapstore {args:?}"));
    assert!(line.contains("panic") && line.contains(op), "{line}");
    line
}

/// What the store shows: result ids, cache names, lease count; and that no
/// temporary tree was left behind.
fn state(f: &Fixture) -> (Vec<String>, Vec<String>, usize) {
    let list = f.json(&["list"]);
    let names = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v.as_array().unwrap().iter().map(|x| x[key].as_str().unwrap().to_string()).collect()
    };
    for ns in ["result-tmp", "cache-tmp"] {
        let left: Vec<_> = fs::read_dir(f.root.join(ns)).unwrap().collect();
        assert!(left.is_empty(), "{ns} holds {left:?}");
    }
    (names(&list["results"], "id"), names(&list["caches"], "name"), list["leases"].as_array().unwrap().len())
}

#[test]
fn a_panicking_plugin_gives_an_error_and_the_store_stays_consistent() {
    let f = store_on(wrap_plugin());
    f.ok(&["build", "base", "--", "sh", "-c", "echo 1 > out"]);
    let lease = f.json(&["cache", "acquire", "c"])["lease"].as_str().unwrap().to_string();
    f.ok(&["cache", "release", &lease]);
    let before = (vec!["base".to_string()], vec!["c".to_string()], 0);
    assert_eq!(state(&f), before);

    panicking(&f, "open", &["list"]);
    panicking(&f, "create", &["build", "x", "--", "true"]);
    panicking(&f, "clone_tree", &["build", "x", "--base", "base", "--", "true"]);
    panicking(&f, "commit", &["build", "x", "--", "sh", "-c", "echo 2 > out"]);
    panicking(&f, "remove", &["delete", "base"]);
    panicking(&f, "path", &["result", "base"]);
    panicking(&f, "list", &["list"]);
    panicking(&f, "free_percent", &["df"]);
    panicking(&f, "check", &["check"]);
    panicking(&f, "recover", &["complete-deletes"]);
    panicking(&f, "complete_deletes", &["complete-deletes"]);
    panicking(&f, "create", &["cache", "acquire", "new-cache"]);
    panicking(&f, "clone_tree", &["cache", "acquire", "c"]);
    assert_eq!(state(&f), before, "after panics in builds and deletes");

    // A copy whose publication panics is discarded; the cache keeps its state.
    let copy = f.json(&["cache", "acquire", "c"]);
    fs::write(Path::new(copy["path"].as_str().unwrap()).join("data"), "lost").unwrap();
    panicking(&f, "commit", &["cache", "release", copy["lease"].as_str().unwrap()]);
    assert_eq!(state(&f), before, "after a panic in a cache release");
    f.ok(&["cache", "run", "c", "--", "sh", "-c", "test ! -e data"]);

    // With the panics switched off, everything works again.
    assert_eq!(f.read_result("base", "out"), "1\n");
    f.ok(&["build", "x", "--base", "base", "--", "sh", "-c", "echo 2 >> out"]);
    assert_eq!(f.read_result("x", "out"), "1\n2\n");
    f.ok(&["delete", "base"]);
    f.ok(&["cache", "run", "new-cache", "--", "true"]);
    f.ok(&["complete-deletes"]);
    assert_eq!(state(&f).0, ["x"]);
    assert!(f.ok(&["conformance"]).ends_with("0 failed"));
}

/// A plugin that reports a failed commit after it published the tree (a
/// sync that failed after its rename): the build, and the cache release,
/// count as done, with a warning, rather than lost while they are there.
#[test]
fn a_commit_reported_failed_after_publishing_counts_as_done() {
    let f = store_on(wrap_plugin());
    let failing_after = |args: &[&str]| {
        let out = f.command(args).env("SNAPSTORE_FIXTURE_FAIL_AFTER", "commit").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "snapstore {args:?}: {stderr}");
        assert!(stderr.contains("reported a failed commit"), "no warning: {stderr}");
    };
    failing_after(&["build", "x", "--", "sh", "-c", "echo 1 > out"]);
    assert_eq!(f.read_result("x", "out"), "1\n");
    let copy = f.json(&["cache", "acquire", "c"]);
    fs::write(Path::new(copy["path"].as_str().unwrap()).join("data"), "kept").unwrap();
    failing_after(&["cache", "release", copy["lease"].as_str().unwrap()]);
    f.ok(&["cache", "run", "c", "--", "grep", "-q", "kept", "data"]);
    // Recorded, not merely found: a result only adopted from the backend
    // has no base in the record.
    failing_after(&["build", "y", "--base", "x", "--", "true"]);
    assert_eq!(state(&f), (vec!["x".to_string(), "y".to_string()], vec!["c".to_string()], 0));
    let listed = f.json(&["list"]);
    assert_eq!(listed["results"][1]["id"], "y");
    assert_eq!(listed["results"][1]["base"], "x");
}

#[test]
fn a_plugin_built_against_store_api_1_0_still_works() {
    let old = store_on(wrap_1_0_plugin());
    let check = old.json(&["check"]);
    assert_eq!(check["plugin"]["api_version"], "1.0.0", "{check}");
    assert_eq!(check["plugin"]["name"], "wrap-1-0");
    let out = old.ok(&["conformance"]);
    assert!(out.ends_with("0 failed"), "{out}");
    // The host calls `recover` (added in 1.1) on every recovery pass; for
    // this plugin the call falls back to the default instead of reaching it.
    old.ok(&["complete-deletes"]);
    assert!(!old.root.join("recover-calls").exists(), "a 1.0 plugin's vtable has no recover");

    // Built against 1.1 or later, the same plugin does get the calls.
    for plugin in [wrap_1_1_plugin(), wrap_plugin()] {
        let new = store_on(plugin);
        new.ok(&["complete-deletes"]);
        assert!(new.root.join("recover-calls").exists(), "recover did not reach {}", plugin.display());
    }
}

/// The sizes `list --sizes` shows, by result id.
fn listed_sizes(f: &Fixture) -> Vec<(String, u64)> {
    let listing = f.json(&["list", "--sizes"]);
    let results = listing["results"].as_array().unwrap();
    results.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r["size"].as_u64().unwrap())).collect()
}

#[test]
fn a_plugin_built_against_store_api_1_1_still_works() {
    let old = store_on(wrap_1_1_plugin());
    let check = old.json(&["check"]);
    assert_eq!(check["plugin"]["api_version"], "1.1.0", "{check}");
    assert_eq!(check["plugin"]["name"], "wrap-1-1");
    let out = old.ok(&["conformance"]);
    assert!(out.ends_with("0 failed"), "{out}");
    // `size` (added in 1.2) falls back to the host's count of the tree's
    // blocks: a 64 KiB file takes at least 64 KiB.
    old.ok(&["build", "big", "--", "sh", "-c", "head -c 65536 /dev/urandom > blob"]);
    let sizes = listed_sizes(&old);
    assert!(sizes.len() == 1 && sizes[0].1 >= 65536, "{sizes:?}");

    // Built against 1.2, the same plugin answers `size` itself.
    let new = store_on(wrap_plugin());
    new.ok(&["build", "big", "--", "sh", "-c", "head -c 65536 /dev/urandom > blob"]);
    assert_eq!(listed_sizes(&new), [("big".to_string(), 4242)]);
}

#[test]
fn changes_reach_a_1_2_plugin_and_fall_back_before() {
    for (plugin, reached) in [(wrap_plugin(), true), (wrap_1_1_plugin(), false), (wrap_1_0_plugin(), false)] {
        let f = store_on(plugin);
        f.ok(&["build", "base", "--", "true"]);
        f.ok(&["build", "step", "--base", "base", "--", "touch", "new"]);
        let store = BlockingStore::open(&Config::load(&f.config).unwrap()).unwrap();
        let changes = store.result_changes("step", "base").unwrap();
        let want =
            reached.then(|| vec![Change { kind: ChangeKind::Added, path: "reported-by-the-plugin".into() }]);
        assert_eq!(changes, want, "{}", plugin.display());
    }
}

#[test]
fn backends_lists_every_plugin_and_why_some_cannot_load() {
    let libz = system_libz();
    let junk = tempfile::NamedTempFile::new().unwrap();
    fs::write(junk.path(), "not an ELF file").unwrap();
    let mut files = vec![
        (bare_plugin(), "libsnapstore_bare.so"),
        (wrap_1_0_plugin(), "libsnapstore_wrap_1_0.so"),
        (bare_v2_plugin(), "libsnapstore_bare_v2.so"),
        (junk.path(), "libsnapstore_junk.so"),
    ];
    if let Some(libz) = &libz {
        files.push((libz, "libsnapstore_z.so"));
    }
    let dir = plugin_dir_with(&files);
    let f = store_with("bare", "");
    let backends = |json: bool| {
        let mut cmd = f.command(if json { &["--json", "backends"][..] } else { &["backends"][..] });
        let out = cmd.env("SNAPSTORE_PLUGIN_PATH", dir.path()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    let text = backends(false);
    let line_of = |name: &str| {
        let file = dir.path().join(name);
        let file = file.to_str().unwrap();
        text.lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"))
            .to_string()
    };
    let api = store_api::API_VERSION;
    assert!(line_of("libsnapstore_bare.so").starts_with(&format!("bare 0.1.0 store-api {api} ")), "{text}");
    let v2 = line_of("libsnapstore_bare_v2.so");
    assert!(v2.starts_with("unusable ") && v2.contains("2.0.0") && v2.contains(api), "{v2}");
    assert!(line_of("libsnapstore_junk.so").starts_with("unusable "), "{text}");
    if libz.is_some() {
        assert!(line_of("libsnapstore_z.so").contains("not a snapstore plugin"), "{text}");
    }
    // The plugins beside the executable are in the search path too.
    require_plugin("rsync");
    assert!(text.lines().any(|l| l.starts_with("rsync ")), "{text}");

    let json: serde_json::Value = serde_json::from_str(&backends(true)).unwrap();
    let entry = |name: &str| {
        let file = dir.path().join(name);
        json["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["file"] == file.to_str().unwrap())
            .unwrap_or_else(|| panic!("{name} not in {json}"))
            .clone()
    };
    let bare = entry("libsnapstore_bare.so");
    assert_eq!(bare["name"], "bare");
    assert_eq!(bare["version"], "0.1.0");
    assert_eq!(bare["api_version"], api);
    assert!(bare["error"].is_null(), "{bare}");
    let v2 = entry("libsnapstore_bare_v2.so");
    assert!(v2["name"].is_null() && v2["error"].as_str().unwrap().contains("2.0.0"), "{v2}");
    assert!(entry("libsnapstore_junk.so")["error"].is_string());

    // A plugin built against the previous minor version is usable, and
    // shown with the store-api version it was built against.
    let old = entry("libsnapstore_wrap_1_0.so");
    assert_eq!(old["api_version"], "1.0.0", "{old}");
    assert!(line_of("libsnapstore_wrap_1_0.so").starts_with("wrap-1-0 0.1.0 store-api 1.0.0 "), "{text}");
}

#[test]
fn the_example_backend_builds_on_its_own_and_passes_conformance() {
    let f = store_on(copy_plugin());
    let out = f.ok(&["conformance"]);
    assert!(out.ends_with(" 0 failed"), "{out}");
    let check = f.json(&["check"]);
    assert_eq!(check["plugin"]["name"], "copy");
    // And it is a real backend: a result built on a base keeps the base's files.
    f.ok(&["build", "base", "--", "sh", "-c", "mkdir d && echo x > d/f && ln -s d/f link && chmod 4755 d/f"]);
    f.ok(&["build", "child", "--base", "base", "--", "sh", "-c", "echo y >> d/f"]);
    assert_eq!(f.read_result("base", "d/f"), "x\n");
    assert_eq!(f.read_result("child", "link"), "x\ny\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(f.result("child").unwrap().join("d/f")).unwrap().mode() & 0o7777, 0o4755);
}
