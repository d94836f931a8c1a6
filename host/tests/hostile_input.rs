//! Hostile input: property tests over ids, cache names, owners and config
//! files find no panic and no path outside the store; plugin loading is
//! safe for a root-run host.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use proptest::prelude::*;
use snapstore::internal::{check_id, escape_cache_name, is_hashed, parse_owner, unescape_cache_name};
use snapstore::Config;
use support::*;

/// Whether `name` joined to a root could leave it or name the root itself.
fn escapes(name: &str) -> bool {
    Path::new(name).components().any(|c| !matches!(c, Component::Normal(_))) || name.contains('/')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_ids_stay_inside(id in ".{0,300}") {
        if check_id(&id).is_ok() {
            prop_assert!(!escapes(&id) && !id.starts_with('.') && id.len() <= 255);
        }
    }

    #[test]
    fn dotted_and_slashed_ids_are_refused(a in "[a-z.]{0,5}", b in "[a-z.]{0,5}") {
        let (slashed, dotted) = (format!("{a}/{b}"), format!(".{a}"));
        prop_assert!(check_id(&slashed).is_err());
        prop_assert!(check_id(&dotted).is_err());
    }

    #[test]
    fn cache_names_escape_injectively(a in any::<String>(), b in any::<String>()) {
        let (ea, eb) = (escape_cache_name(&a), escape_cache_name(&b));
        prop_assert!(!escapes(&ea) && !ea.contains('.') && !ea.is_empty() || a.is_empty());
        let snapshot_key = format!("{ea}.18446744073709551615");
        prop_assert!(store_api::key::check_name(&snapshot_key).is_ok() || a.is_empty());
        if a != b {
            prop_assert_ne!(&ea, &eb);
        }
        if !is_hashed(&ea) {
            prop_assert_eq!(unescape_cache_name(&ea), Some(a.clone()));
        }
    }

    #[test]
    fn owner_specs_never_panic(spec in ".{0,40}") {
        let _ = parse_owner(&spec);
    }

    #[test]
    fn config_text_never_panics(text in ".{0,200}") {
        let _ = Config::parse(Path::new("/x/snapstore.toml"), &text);
    }

    #[test]
    fn config_like_text_never_panics(
        key in "[a-z_]{1,10}",
        value in prop_oneof!["\"[^\"\\\\]{0,20}\"", "[0-9]{1,5}", "\\[\\]", "true"],
    ) {
        let text = format!("[store]\nroot = \"r\"\n{key} = {value}\n[backend]\n{key} = {value}\n");
        if let Err(e) = Config::parse(Path::new("/x/snapstore.toml"), &text) {
            prop_assert!(!e.message().contains('\n'));
            prop_assert!(e.message().contains("/x/snapstore.toml"));
        }
    }
}

#[test]
fn hostile_names_through_the_cli_stay_inside_the_store() {
    let f = Fixture::rsync();
    f.ok(&["build", "seed", "--", "true"]);
    let outside: Vec<_> = fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    let names =
        ["../../../tmp/x", "/etc", "..", ".", "a/../../b", "\u{202e}evil", "%2e%2e", "_2E_2E", "__", "x\ty"];
    for name in names {
        let out = f.run(&["--json", "cache", "acquire", name]);
        assert!(out.status.success(), "{name:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // The name becomes one plain file name, wherever it is used.
        let escaped = escape_cache_name(name);
        assert!(!escapes(&escaped) && !escaped.starts_with('.'), "{name:?} escapes as {escaped:?}");
        f.ok(&["cache", "release", v["lease"].as_str().unwrap()]);
        let out = f.run(&["build", name, "--", "true"]);
        assert!(!out.status.success() || check_id(name).is_ok());
    }
    let after: Vec<_> = fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(outside, after, "something was created outside the store");
    // Each name has its own cache, in the store's cache directory.
    let listing = f.json(&["list"]);
    let caches = listing["caches"].as_array().unwrap();
    assert_eq!(caches.len(), names.len());
    for cache in caches {
        let path = Path::new(cache["path"].as_str().unwrap());
        let name = cache["name"].as_str().unwrap();
        assert_eq!(path.parent(), Some(f.root.join("cache").as_path()), "{name:?}: {}", path.display());
        let file = path.file_name().unwrap().to_str().unwrap();
        assert!(file.starts_with(&escape_cache_name(name)), "{name:?}: {file}");
    }
    assert!(!Path::new("/tmp/x").exists() && !Path::new("/b").exists(), "a name reached outside");
}

#[test]
fn hostile_ids_given_to_push_and_pull_are_refused_in_one_line() {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    // Nobody listens there: an id must be refused before any request.
    let text = "[store]\nbackend = \"rsync\"\nroot = \"store\"\n\
                [remote]\nurl = \"docker://127.0.0.1:1/ci/results\"\ninsecure = true\n";
    let f = Fixture::with_config(dir, &root, text);
    // Long enough to become a hashed tag, with a character that is not
    // ASCII where the tag's cut falls.
    let long_with_accent = format!("{}é{}", "a".repeat(62), "a".repeat(70));
    let too_long = "x".repeat(300);
    for id in [long_with_accent.as_str(), "bad/id", "..", "a b", &too_long] {
        for command in ["push", "pull"] {
            let line = f.fails(&[command, id], 64);
            assert!(line.contains("invalid id"), "{command} {id:?}: {line}");
        }
    }
}

#[test]
fn a_plugin_writable_by_others_is_refused_when_root() {
    if !is_root() {
        skip("the ownership rule applies to a host run as root");
        return;
    }
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let lib = plugins.join("libsnapstore_rsync.so");
    fs::copy(plugin_dir().join("libsnapstore_rsync.so"), &lib).unwrap();
    let root = dir.path().join("store");
    let text = format!("[store]\nroot = \"store\"\nbackend = \"{}\"\n", lib.display());
    let f = Fixture::with_config(dir, &root, &text);
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&plugins, fs::Permissions::from_mode(0o755)).unwrap();
    f.ok(&["root"]);
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o757)).unwrap();
    let err = f.fails(&["root"], EXIT_USAGE);
    assert!(err.contains("writable by other users") && err.contains("chmod"), "{err}");
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&plugins, fs::Permissions::from_mode(0o777)).unwrap();
    let err = f.fails(&["root"], EXIT_USAGE);
    assert!(err.contains("writable by other users"), "{err}");
    fs::set_permissions(&plugins, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&lib, Some(1000), None).unwrap();
    let err = f.fails(&["root"], EXIT_USAGE);
    assert!(err.contains("not owned by root"), "{err}");
}

#[test]
fn the_current_directory_is_never_searched() {
    require_plugin("rsync");
    let f = Fixture::rsync();
    let cwd = tempfile::tempdir().unwrap();
    fs::copy(plugin_dir().join("libsnapstore_rsync.so"), cwd.path().join("libsnapstore_cwdonly.so")).unwrap();
    let root = cwd.path().join("store");
    let config = cwd.path().join("c.toml");
    fs::write(&config, format!("[store]\nroot = \"{}\"\nbackend = \"cwdonly\"\n", root.display())).unwrap();
    let out = std::process::Command::new(snapstore_bin())
        .args(["--config", config.to_str().unwrap(), "root"])
        .current_dir(cwd.path())
        .env_remove("SNAPSTORE_PLUGIN_PATH")
        .output()
        .unwrap();
    // Not found anywhere it is looked for: unavailable.
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin libsnapstore_cwdonly.so"));
    drop(f);
}
