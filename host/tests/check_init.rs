//! `check` changes nothing; `init` creates the store.

mod support;

use std::fs;

use support::*;

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn check_leaves_an_empty_root_empty() {
    let f = Fixture::rsync();
    fs::create_dir(&f.root).unwrap();
    let text = f.ok(&["check"]);
    assert!(text.contains("snapstore init"), "check does not say how the store is created: {text}");
    let json = f.json(&["check"]);
    assert_eq!(json["store_exists"], false, "{json}");
    assert!(entries(&f.root).is_empty(), "check wrote into the root: {:?}", entries(&f.root));
}

#[test]
fn check_does_not_create_a_missing_root() {
    let f = Fixture::rsync();
    f.ok(&["check"]);
    assert!(!f.root.exists(), "check created the root");
    // Nor the config's directory: only the config file is there.
    assert_eq!(entries(f.dir.path()), ["snapstore.toml"]);
}

#[test]
fn init_creates_the_store_and_check_then_checks_it() {
    let f = Fixture::rsync();
    let made = f.json(&["init"]);
    assert_eq!(made["created"], true, "{made}");
    assert!(f.root.join(".snapstore/store.toml").is_file(), "init made no store");
    let again = f.json(&["init"]);
    assert_eq!(again["created"], false, "{again}");
    let before = entries(&f.root);
    let json = f.json(&["check"]);
    assert_eq!(json["store_exists"], true, "{json}");
    assert!(!json["checks"].as_array().unwrap().is_empty(), "{json}");
    assert_eq!(entries(&f.root), before, "check changed the store");
}

#[test]
fn the_first_use_still_creates_the_store() {
    let f = Fixture::rsync();
    f.ok(&["build", "a", "--", "true"]);
    assert!(f.root.join(".snapstore/store.toml").is_file());
}

#[test]
fn check_refuses_a_root_that_is_not_a_store_and_leaves_it_alone() {
    let f = Fixture::rsync();
    fs::create_dir(&f.root).unwrap();
    fs::write(f.root.join("precious"), "x").unwrap();
    let err = f.fails(&["check"], EXIT_USAGE);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(entries(&f.root), ["precious"]);
}
