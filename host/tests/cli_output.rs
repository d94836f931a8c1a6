//! What the CLI prints: one JSON object per command with `--json` (on
//! success and on failure), the help, version, completions and man page,
//! `info`, `df` and `list`.

mod support;

use std::process::{Command, Output};

use serde_json::Value;
use support::*;

const EXIT_UNAVAILABLE: i32 = 69;

/// Stdout of `out` as exactly one JSON object (serde_json refuses
/// anything after it).
fn one_object(args: &[&str], out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON object ({e}): {stdout:?}"));
    assert!(value.is_object(), "{args:?}: {value}");
    value
}

fn json_run(f: &Fixture, args: &[&str]) -> (Value, Option<i32>, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = f.run(&all);
    (one_object(args, &out), out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A failure: `{"error": {"kind", "message", "exit"}}` with the exit status,
/// and the one-line `error:` on stderr.
fn json_failure(f: &Fixture, args: &[&str], code: i32, kind: &str) -> String {
    let (value, status, stderr) = json_run(f, args);
    assert_eq!(status, Some(code), "{args:?}: {value} {stderr}");
    let error = &value["error"];
    assert_eq!(error["kind"], kind, "{args:?}: {value}");
    assert_eq!(error["exit"], code, "{args:?}: {value}");
    let message = error["message"].as_str().unwrap();
    assert!(stderr.lines().any(|l| l == format!("error: {message}")), "{args:?}: {stderr}");
    message.to_string()
}

#[test]
fn every_command_prints_one_json_object() {
    let f = Fixture::rsync();
    // A command's own output goes to stderr, never into the object.
    let (built, status, stderr) = json_run(&f, &["build", "a", "--", "echo", "hello"]);
    assert_eq!((status, &built["status"]), (Some(0), &Value::from(0)), "{built}");
    assert!(built["path"].is_string() && stderr.contains("hello"), "{built} {stderr}");
    let (cached, _, stderr) = json_run(&f, &["cache", "run", "c", "--", "echo", "from the cache"]);
    assert_eq!(cached["status"], 0);
    assert!(stderr.contains("from the cache"), "{stderr}");
    // The command's failure is a status, not an error of snapstore.
    let (failed, status, _) = json_run(&f, &["build", "b", "--", "sh", "-c", "echo noise; exit 66"]);
    assert_eq!(status, Some(66));
    assert_eq!((failed["status"].as_u64(), failed["path"].is_null()), (Some(66), true), "{failed}");
    assert!(failed.get("error").is_none(), "{failed}");
    let (failed, status, _) = json_run(&f, &["cache", "run", "c", "--", "sh", "-c", "exit 66"]);
    assert_eq!((status, failed["status"].as_u64()), (Some(66), Some(66)), "{failed}");
    // snapstore's own failure with the same exit status is an error.
    let message =
        json_failure(&f, &["build", "b", "--base", "nosuch", "--", "true"], EXIT_NOT_FOUND, "not_found");
    assert!(message.contains("nosuch"), "{message}");
    json_failure(&f, &["build", "a", "--", "true"], EXIT_EXISTS, "already_exists");
    json_failure(&f, &["result", "bad/id"], EXIT_USAGE, "usage");
    json_failure(&f, &["cache", "release", "0000000000000000"], EXIT_NOT_FOUND, "not_found");
    json_failure(&f, &["no-such-command"], EXIT_USAGE, "usage");
    json_failure(&f, &["build", "x"], EXIT_USAGE, "usage");

    let lease = f.json(&["cache", "acquire", "c"]);
    let lease = lease["lease"].as_str().unwrap().to_string();
    let successes: &[&[&str]] = &[
        &["result", "a"],
        &["result", "absent"],
        &["cache", "release", "--discard", &lease],
        &["delete", "a"],
        &["delete", "never-built"],
        &["cache", "delete", "c"],
        &["complete-deletes"],
        &["df"],
        &["root"],
        &["state-dir"],
        &["list"],
        &["prune", "--limit", "1"],
        &["check"],
        &["backends"],
        &["info"],
        &["completions", "bash"],
        &["man"],
        &["stress", "--jobs", "2", "--parallel", "1"],
    ];
    for args in successes {
        let (value, status, stderr) = json_run(&f, args);
        assert_eq!(status, Some(0), "{args:?}: {value} {stderr}");
        assert!(value.get("error").is_none(), "{args:?}: {value}");
    }
    let (deleted, ..) = json_run(&f, &["delete", "x"]);
    assert_eq!(deleted, serde_json::json!({"id": "x", "deleted": true}));

    // A config that names a missing plugin: unavailable, not a usage error.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let missing = Fixture::with_config(dir, &root, "[store]\nroot = \"s\"\nbackend = \"nosuch\"\n");
    for args in [&["list"][..], &["info"], &["check"]] {
        let message = json_failure(&missing, args, EXIT_UNAVAILABLE, "unavailable");
        assert!(message.contains("libsnapstore_nosuch.so"), "{message}");
    }
}

#[test]
fn conformance_prints_one_json_object() {
    let f = Fixture::rsync();
    let (report, status, _) = json_run(&f, &["conformance"]);
    assert_eq!(status, Some(0), "{report}");
    assert_eq!(report["failures"], 0);
    assert!(!report["cases"].as_array().unwrap().is_empty());
}

/// The subcommands `snapstore --help` lists.
fn subcommands() -> Vec<String> {
    let out = Command::new(snapstore_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let list = help.split("Commands:").nth(1).unwrap().split("\n\n").next().unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next().map(str::to_string))
        .filter(|name| name != "help")
        .collect();
    assert!(names.len() > 10 && names.iter().any(|n| n == "build"), "{names:?}");
    names
}

fn help_of(args: &[&str], flag: &str) -> String {
    let out = Command::new(snapstore_bin()).args(args).arg(flag).output().unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_describes_every_argument() {
    let mut commands: Vec<Vec<String>> = subcommands().into_iter().map(|c| vec![c]).collect();
    for sub in ["acquire", "release", "run", "delete"] {
        commands.push(vec!["cache".into(), sub.into()]);
    }
    for command in commands {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let help = help_of(&args, "-h");
        for section in ["Arguments:", "Options:"] {
            let Some(body) = help.split(section).nth(1) else { continue };
            for line in body.split("\n\n").next().unwrap().lines().filter(|l| !l.is_empty()) {
                let entry = line.trim_start();
                // `<ID>  The new result's id`: a name, two spaces, words.
                let described = entry.split_once("  ").is_some_and(|(_, words)| !words.trim().is_empty());
                assert!(described, "snapstore {command:?} --help: `{entry}` is not described");
            }
        }
    }
    let long = help_of(&[], "--help");
    for needle in ["64", "66", "69", "70", "73", "74", "75", "77", "conformance", "RUST_LOG", "Examples:"] {
        assert!(long.contains(needle), "--help lacks {needle}: {long}");
    }
}

#[test]
fn version_names_the_store_api_and_the_plugin_path() {
    let out = Command::new(snapstore_bin()).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("store-api {}", store_api::API_VERSION)), "{text}");
    assert!(text.contains(plugin_dir().to_str().unwrap()), "{text}");
}

#[test]
fn completions_and_man_page_cover_every_subcommand() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(snapstore_bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell} completions lack {name}");
        }
    }
    let out = Command::new(snapstore_bin()).arg("man").output().unwrap();
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.starts_with(".ie") && page.contains(".TH snapstore 1"), "not a man page: {page:.200}");
    assert!(page.contains("Exit status") && page.contains("75"), "no exit statuses in the man page");
    for name in &names {
        assert!(page.contains(&format!("snapstore\\-{}", name.replace('-', "\\-"))), "man page lacks {name}");
    }
}

#[test]
fn rust_log_is_accepted_as_well_as_snapstore_log() {
    let f = Fixture::rsync();
    f.ok(&["root"]);
    for var in ["SNAPSTORE_LOG", "RUST_LOG"] {
        let out = f
            .command(&["build", "x", "--", "true"])
            .env_remove("SNAPSTORE_LOG")
            .env(var, "debug")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("DEBUG"), "{var}=debug logs nothing: {stderr}");
        f.ok(&["delete", "x"]);
    }
    let quiet = f
        .command(&["build", "y", "--", "true"])
        .env_remove("SNAPSTORE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("DEBUG"));
}

#[test]
fn info_says_where_the_config_came_from() {
    let f = Fixture::rsync();
    f.ok(&["build", "a", "--", "true"]);
    let info = f.json(&["info"]);
    assert_eq!(info["config"]["file"], f.config.to_str().unwrap());
    assert!(info["config"]["chosen_because"].as_str().unwrap().contains("--config"), "{info}");
    assert_eq!((info["results"].as_u64(), info["caches"].as_u64()), (Some(1), Some(0)), "{info}");
    assert_eq!(info["plugin"]["name"], "rsync");
    assert_eq!(info["store_api"], store_api::API_VERSION);
    assert!(info["space"]["free_bytes"].as_u64() <= info["space"]["total_bytes"].as_u64());
    let by = |cmd: &mut Command| {
        let out = cmd.arg("info").env_remove("SNAPSTORE_PLUGIN_PATH").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = by(Command::new(snapstore_bin()).env("SNAPSTORE_CONFIG", &f.config));
    assert!(text.contains("$SNAPSTORE_CONFIG") && text.contains("results:   1"), "{text}");
    let text = by(Command::new(snapstore_bin()).current_dir(f.dir.path()).env_remove("SNAPSTORE_CONFIG"));
    assert!(text.contains("./snapstore.toml"), "{text}");
}

#[test]
fn df_gives_bytes_beside_the_percentage() {
    let f = Fixture::rsync();
    let df = f.json(&["df"]);
    let (free, total) = (df["free_bytes"].as_u64().unwrap(), df["total_bytes"].as_u64().unwrap());
    assert!(free <= total && total > 0, "{df}");
    let percent = df["free_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&percent), "{df}");
    let text = f.ok(&["df"]);
    assert!(text.contains("% free (") && text.contains(" of "), "{text}");
}

#[test]
fn list_shows_columns_children_and_sorts() {
    let f = Fixture::rsync();
    f.ok(&["build", "a", "--", "true"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.ok(&["build", "b", "--base", "a", "--", "true"]);
    let text = f.ok(&["list", "--sort", "created", "--reverse"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("RESULT") && lines[0].contains("CHILDREN"), "{text}");
    let cells = |line: &str| line.split_whitespace().take(3).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(cells(lines[1]), ["b", "a", "0"], "{text}");
    assert_eq!(cells(lines[2]), ["a", "-", "1"], "{text}");
    let ids = |args: &[&str]| -> Vec<String> {
        let listing = f.json(args);
        listing["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&["list", "--sort", "created"]), ["a", "b"]);
    assert_eq!(ids(&["list", "--sort", "created", "--reverse"]), ["b", "a"]);
}

#[test]
fn a_wait_for_another_build_says_what_it_waits_for() {
    if Command::new("script").arg("--version").output().is_err() {
        skip("no `script` (util-linux) to give snapstore a terminal");
        return;
    }
    let f = Fixture::rsync();
    let mut first =
        f.command(&["build", "x", "--", "sleep", "3"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    while !f.root.join(".snapstore/locks/build/x").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The second build of `x`, with stderr on a terminal, as an operator runs it.
    let line = format!("{} --config {} build x -- true", snapstore_bin().display(), f.config.display());
    let out = Command::new("script").args(["-qec", &line, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    let expected =
        format!("waiting for result `x` (a build, clone or delete of it) held by process {}", first.id());
    assert!(shown.contains(&expected), "{shown}");
    first.wait().unwrap();
    // Without a terminal, nothing of the kind.
    let mut again =
        f.command(&["build", "y", "--", "sleep", "2"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    while !f.root.join(".snapstore/locks/build/y").exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = f.run(&["build", "y", "--", "true"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("waiting"), "{out:?}");
    again.wait().unwrap();
}

#[test]
fn check_warns_of_missing_plugin_dirs_and_backends_of_misnamed_plugins() {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // An rsync plugin saved under the btrfs plugin's name.
    std::fs::copy(plugin_dir().join("libsnapstore_rsync.so"), plugins.join("libsnapstore_btrfs.so")).unwrap();
    let text = "[store]\nroot = \"s\"\nplugin_dirs = [\"nowhere\", \"plugins\"]\n";
    let root = dir.path().join("s");
    let f = Fixture::with_config(dir, &root, text);
    let check = f.json(&["check"]);
    let warnings = check["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{check}");
    assert!(warnings[0].as_str().unwrap().contains("nowhere"), "{check}");
    let stderr = String::from_utf8_lossy(&f.run(&["check"]).stderr).into_owned();
    assert!(stderr.lines().any(|l| l.starts_with("warning:") && l.contains("nowhere")), "{stderr}");
    let backends = f.json(&["backends"]);
    let misnamed = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["file"] == plugins.join("libsnapstore_btrfs.so").to_str().unwrap())
        .unwrap_or_else(|| panic!("not listed: {backends}"))
        .clone();
    assert!(misnamed["error"].as_str().unwrap().contains("declares itself as `rsync`"), "{misnamed}");
}

#[test]
fn an_unwritable_root_says_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !is_root() {
        skip("not root: cannot run snapstore as another user");
        return;
    }
    let f = Fixture::rsync();
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(&f.root).unwrap();
    let mut as_nobody = f.command(&["build", "x", "--", "true"]);
    let out = as_nobody.uid(65534).gid(65534).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("must be writable by this user (uid 65534)"), "{stderr}");
}

#[test]
fn a_btrfs_root_elsewhere_is_reported_against_the_root() {
    require_plugin("btrfs");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not/yet/there");
    let f = Fixture::with_config(dir, &root, "[store]\nbackend = \"btrfs\"\nroot = \"not/yet/there\"\n");
    // `init` runs the backend's checks (`check` does not, before a store exists).
    let out = f.run(&["init"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        skip("the temporary directory is on btrfs");
        return;
    }
    assert_eq!(out.status.code(), Some(EXIT_UNAVAILABLE), "{stderr}");
    assert!(stderr.contains(&format!("the store root {} would not be on btrfs", root.display())), "{stderr}");
    assert!(!root.exists(), "the root was created on the wrong filesystem");
}

#[test]
fn list_gives_sizes_on_request() {
    let f = Fixture::rsync();
    f.ok(&["build", "big", "--", "sh", "-c", "head -c 1000000 /dev/urandom > f"]);
    f.ok(&["build", "small", "--", "sh", "-c", "echo x > f"]);
    let plain = f.json(&["list"]);
    assert!(plain["results"][0].get("size").is_none(), "sizes walked unasked: {plain}");
    let listing = f.json(&["list", "--sort", "size", "--reverse"]);
    let results = listing["results"].as_array().unwrap();
    assert_eq!(results[0]["id"], "big", "{listing}");
    let (big, small) = (results[0]["size"].as_u64().unwrap(), results[1]["size"].as_u64().unwrap());
    assert!(big >= 1_000_000 && small < 100_000, "{listing}");
    let text = f.ok(&["list", "--sizes"]);
    assert!(text.lines().next().unwrap().contains("SIZE"), "{text}");
    assert!(text.contains("MiB") || text.contains("KiB"), "{text}");
}
