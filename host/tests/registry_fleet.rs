//! A fleet through a registry, with the `snapstore` binary: two stores on
//! different backends (rsync, and xfs-reflink on a loop device) share one
//! real registry as two workers; a push that fails after a build; the
//! remote's list and prune; config errors; concurrent pushes and pulls.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use test_support::fidelity::{assert_same, manifest, without_atimes};
use test_support::{installed, run, Registry};

/// The `[remote]` lines for `registry`.
fn remote_toml(registry: &Registry, pull: &str, push: &str) -> String {
    format!(
        "[remote]\nurl = \"{}\"\ninsecure = true\npull = \"{pull}\"\npush = \"{push}\"\n",
        registry.url("ci/results")
    )
}

fn rsync_worker(registry: &Registry, pull: &str, push: &str) -> Fixture {
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let text =
        format!("[store]\nbackend = \"rsync\"\nroot = \"store\"\n{}", remote_toml(registry, pull, push));
    Fixture::with_config(dir, &root, &text)
}

fn tree(f: &Fixture, id: &str) -> Vec<test_support::fidelity::Entry> {
    without_atimes(manifest(&f.result(id).unwrap_or_else(|| panic!("no result {id}")), false))
}

/// The steps of the chain: files, a directory, links, modes, an xattr, a
/// deletion (a whiteout in the layer) and a replaced directory (opaque).
const STEPS: [(&str, &str); 3] = [
    (
        "s1",
        "mkdir -p etc bin keep/sub && echo one > etc/conf && printf 'x%.0s' $(seq 1 5000) > bin/tool \
         && chmod 4755 bin/tool && ln -s ../etc/conf link && ln bin/tool hard && echo k > keep/sub/f \
         && setfattr -n user.mood -v calm etc/conf && touch -d '2001-02-03 04:05:06.123456789' etc/conf",
    ),
    ("s2", "echo two >> etc/conf && rm hard && mkdir var && echo log > var/log"),
    ("s3", "rm -r keep && mkdir keep && echo new > keep/g && rm link"),
];

#[test]
fn two_workers_on_different_backends_share_one_registry() {
    let Some(registry) = Registry::plain() else { return };
    if !installed("setfattr") {
        return test_support::skip("setfattr (attr) is not installed");
    }
    // Worker A: rsync, pushes after each build.
    let a = rsync_worker(&registry, "never", "after-build");
    // Worker B: xfs-reflink on a loop device, pulls on a miss.
    let Some((_fs, b_plain)) = loop_store(&["mkfs.xfs", "-q", "-m", "reflink=1"], "512M", "xfs-reflink", "")
    else {
        return;
    };
    let text =
        std::fs::read_to_string(&b_plain.config).unwrap() + &remote_toml(&registry, "on-miss", "after-build");
    std::fs::write(&b_plain.config, text).unwrap();
    let b = b_plain;

    let mut base: Option<&str> = None;
    for (id, script) in STEPS {
        let mut args = vec!["build", id];
        if let Some(base) = base {
            args.extend(["--base", base]);
        }
        args.extend(["--", "sh", "-c", script]);
        a.ok(&args);
        base = Some(id);
    }
    assert_eq!(a.json(&["list"])["not_pushed"], serde_json::json!([]), "a push after a build failed");
    assert_eq!(registry.stored_tags("ci/results"), vec!["s1", "s2", "s3"]);

    // B pulls s2 explicitly after s1: only s2's layer is downloaded.
    let pulled = b.json(&["pull", "s1"]);
    assert_eq!(pulled["layers_applied"], 1);
    let pulled = b.json(&["pull", "s2"]);
    assert_eq!((pulled["layers_applied"].as_u64(), pulled["layers_skipped"].as_u64()), (Some(1), Some(1)));
    // `result s3` misses and pulls: the last layer only, and the tree is
    // A's, entry by entry.
    let path = b.ok(&["result", "s3"]);
    assert!(Path::new(&path).is_dir());
    for (id, _) in STEPS {
        assert_same(&tree(&a, id), &tree(&b, id), id);
    }
    // An id nobody has: not found, after asking the remote.
    let err = b.fails(&["result", "nobody"], EXIT_NOT_FOUND);
    assert!(err.contains("nobody"), "{err}");

    // B builds on the pulled step and pushes; A pulls it, one layer.
    b.ok(&["build", "s4", "--base", "s3", "--", "sh", "-c", "echo four > four"]);
    let pulled = a.json(&["pull", "s4"]);
    assert_eq!((pulled["layers_applied"].as_u64(), pulled["layers_skipped"].as_u64()), (Some(1), Some(3)));
    assert_same(&tree(&b, "s4"), &tree(&a, "s4"), "s4");

    // What snapstore pushed is an image skopeo reads.
    if installed("skopeo") {
        let image = format!("{}:s4", registry.url("ci/results"));
        let inspect = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &image])).unwrap();
        let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(4), "{inspect}");
        // The remote's listing names the manifest as skopeo does.
        let listed = a.json(&["remote", "list"]);
        let s4 = listed["images"].as_array().unwrap().iter().find(|i| i["tag"] == "s4").cloned();
        assert_eq!(s4.map(|i| i["digest"].clone()), Some(inspect["Digest"].clone()), "{listed}");
    }

    // An image that skopeo pushed (a copy of an export) imports, and equals.
    if installed("skopeo") {
        let layout = format!("oci:{}:s2", a.dir.path().join("layout").display());
        a.ok(&["export", "s2", &layout]);
        let copied = format!("{}:v1", registry.url("other/copied"));
        run(Command::new("skopeo").args(["copy", "--dest-tls-verify=false", &layout, &copied])).unwrap();
        b.ok(&["import", "copied", &copied]);
        assert_same(&tree(&a, "s2"), &tree(&b, "copied"), "copied by skopeo");
    }

    // The remote lists the four, with their ids and sizes.
    let listed = a.json(&["remote", "list"]);
    let images = listed["images"].as_array().unwrap();
    assert_eq!(images.len(), 4, "{listed}");
    assert!(images.iter().all(|i| i["size"].as_u64().unwrap() > 0 && i["id"] == i["tag"]), "{listed}");
    // Nothing is that old; then everything is.
    assert_eq!(a.json(&["remote", "prune", "--older-than", "3650d"])["deleted"], serde_json::json!([]));
    let deleted = a.json(&["remote", "prune", "--older-than", "1s", "--dry-run"]);
    assert_eq!(deleted["deleted"].as_array().map(Vec::len), Some(4), "{deleted}");
    assert_eq!(a.json(&["remote", "list"])["images"].as_array().map(Vec::len), Some(4));
    a.ok(&["remote", "prune", "--older-than", "1s"]);
    assert_eq!(a.json(&["remote", "list"])["images"], serde_json::json!([]));
}

#[test]
fn a_push_that_fails_after_a_build_keeps_the_result_as_not_pushed() {
    let Some(mut registry) = Registry::plain() else { return };
    let a = rsync_worker(&registry, "never", "after-build");
    registry.kill();
    let out = a.run(&["build", "x", "--", "sh", "-c", "echo x > x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the build failed with its push: {stderr}");
    assert!(stderr.contains("not pushed") && stderr.contains("push --pending"), "{stderr}");
    assert!(a.result("x").is_some());
    assert_eq!(a.json(&["list"])["not_pushed"], serde_json::json!(["x"]));
    assert!(a.ok(&["list"]).contains("not pushed"));
    // A build that fails leaves no mark; one refused (`x` is there) keeps
    // `x`'s; a snapstore killed right after its commit leaves its result
    // marked, for `push --pending`.
    assert_eq!(a.run(&["build", "y", "--", "false"]).status.code(), Some(1));
    assert!(!a.run(&["build", "x", "--", "true"]).status.success());
    let killed =
        a.command(&["build", "z", "--", "true"]).env("SNAPSTORE_KILL_AT", "build:committed").output();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed.unwrap().status), Some(9));
    assert!(a.result("z").is_some(), "the kill came before the commit");
    assert_eq!(a.json(&["list"])["not_pushed"], serde_json::json!(["x", "z"]));
    // An explicit push fails in one line naming the registry.
    let err = a.fails(&["push", "x"], 74);
    assert!(err.contains(&registry.host), "{err}");

    registry.restart();
    let pushed = a.json(&["push", "--pending"]);
    assert_eq!(pushed["pushed"][0]["pushed"], true, "{pushed}");
    assert_eq!(pushed["pushed"][1]["pushed"], true, "{pushed}");
    assert_eq!(a.json(&["list"])["not_pushed"], serde_json::json!([]));
    assert_eq!(registry.stored_tags("ci/results"), vec!["x", "z"]);

    // A pull that fails half-way (the registry gone) leaves no result.
    let b = rsync_worker(&registry, "never", "never");
    registry.kill();
    let err = b.fails(&["pull", "x"], 74);
    assert!(err.contains(&registry.host), "{err}");
    assert!(b.result("x").is_none());
    registry.restart();
    b.ok(&["pull", "x"]);
    assert_eq!(b.read_result("x", "x"), "x\n");
}

#[test]
fn a_bad_remote_is_a_one_line_config_error() {
    require_plugin("rsync");
    for (remote, wanted) in [
        ("url = \"docker://reg:5000/ci\"\npull = \"sometimes\"\n", "sometimes"),
        ("url = \"oci:/srv/images\"\n", "not a registry"),
        ("url = \"docker://reg:5000/ci:tag\"\n", "names a tag"),
        ("url = \"docker://reg:5000/ci\"\npush = \"always\"\n", "always"),
        ("url = \"docker://reg:5000/ci\"\ncolour = \"red\"\n", "colour"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let text = format!("[store]\nbackend = \"rsync\"\nroot = \"store\"\n[remote]\n{remote}");
        let f = Fixture::with_config(dir, &root, &text);
        let err = f.fails(&["root"], EXIT_USAGE);
        assert!(err.contains(wanted) && err.contains("snapstore.toml"), "{remote}: {err}");
    }
    // Push and pull without a [remote] say how to add one.
    let f = Fixture::rsync();
    let err = f.fails(&["pull", "x"], EXIT_USAGE);
    assert!(err.contains("[remote]") && err.contains("docker://"), "{err}");
}

/// Four processes on two stores push and pull overlapping ids for a
/// minute, as the issue asks: none fails, and every pulled result is whole.
#[test]
fn concurrent_pushes_and_pulls_on_two_stores() {
    let Some(registry) = Registry::plain() else { return };
    let stores = [rsync_worker(&registry, "on-miss", "never"), rsync_worker(&registry, "on-miss", "never")];
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let store = &stores[worker % 2];
            scope.spawn(move || {
                let mut round = 0;
                while Instant::now() < deadline {
                    // Ids shared by all workers: whoever lacks one builds it
                    // (or pulls it on the miss) and pushes it.
                    let id = format!("c{}", round % 6);
                    let content = format!("{id}\n");
                    if store.result(&id).is_none() {
                        let out = store.run(&["build", &id, "--", "sh", "-c", &format!("echo {id} > f")]);
                        // Made meanwhile by the other worker on this store.
                        assert!(
                            out.status.success() || out.status.code() == Some(EXIT_EXISTS),
                            "worker {worker}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    store.ok(&["push", &id]);
                    assert_eq!(store.read_result(&id, "f"), content, "worker {worker}: {id} incomplete");
                    round += 1;
                }
            });
        }
    });
    // Each store ends with whole results for what it holds; the registry
    // with one complete image per id pushed.
    for id in registry.stored_tags("ci/results") {
        for store in &stores {
            if store.result(&id).is_none() {
                store.ok(&["pull", &id]);
            }
            assert_eq!(store.read_result(&id, "f"), format!("{id}\n"));
        }
    }
}

/// A remote behind htpasswd auth and TLS: the CA from the config's
/// certs_dir (or $SNAPSTORE_REGISTRY_CERTS_DIR), the credentials from
/// $REGISTRY_AUTH_FILE; wrong ones, or an untrusted CA, are one-line errors.
#[test]
fn a_secured_remote_with_an_auth_file_and_a_certs_dir() {
    use base64::Engine as _;
    let Some(registry) = Registry::secured("fleet", "s3cret") else { return };
    require_plugin("rsync");
    let dir = tempfile::tempdir().unwrap();
    let auth = |password: &str| {
        let file = dir.path().join(format!("auth-{password}.json"));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("fleet:{password}"));
        let json = serde_json::json!({"auths": {registry.host.as_str(): {"auth": token}}});
        std::fs::write(&file, json.to_string()).unwrap();
        file
    };
    let (right, wrong) = (auth("s3cret"), auth("guess"));
    let certs = registry.certs_d().unwrap();
    let store = |certs_dir: Option<&Path>| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let certs = certs_dir.map(|d| format!("certs_dir = \"{}\"\n", d.display())).unwrap_or_default();
        let text = format!(
            "[store]\nbackend = \"rsync\"\nroot = \"store\"\n[remote]\nurl = \"{}\"\n{certs}",
            registry.url("ci/results")
        );
        Fixture::with_config(dir, &root, &text)
    };
    let run_with = |f: &Fixture, args: &[&str], auth_file: &Path, certs_env: Option<&Path>| {
        let mut cmd = f.command(args);
        cmd.env("REGISTRY_AUTH_FILE", auth_file).env_remove("SNAPSTORE_REGISTRY_CERTS_DIR");
        if let Some(dir) = certs_env {
            cmd.env("SNAPSTORE_REGISTRY_CERTS_DIR", dir);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };

    let a = store(Some(&certs));
    a.ok(&["build", "x", "--", "sh", "-c", "echo x > x"]);
    assert_eq!(run_with(&a, &["push", "x"], &right, None), (Some(0), String::new()));
    let (status, err) = run_with(&a, &["push", "x"], &wrong, None);
    assert_eq!(status, Some(77), "{err}");
    assert!(err.starts_with("error: ") && err.contains("401") && err.contains("podman login"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Without the CA: refused as untrusted, saying where the CA goes.
    let b = store(None);
    let (status, err) = run_with(&b, &["pull", "x"], &right, None);
    assert_eq!(status, Some(77), "{err}");
    assert!(err.contains("TLS") && err.contains("ca.crt"), "{err}");
    assert!(b.result("x").is_none());
    // The CA through the variable: the pull works.
    let (status, err) = run_with(&b, &["pull", "x"], &right, Some(&certs));
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(b.read_result("x", "x"), "x\n");
}

/// A pull onto a full disk fails in one line and leaves no result; the
/// store works on afterwards.
#[test]
fn a_pull_onto_a_full_disk_leaves_nothing() {
    let Some(registry) = Registry::plain() else { return };
    let a = rsync_worker(&registry, "never", "never");
    a.ok(&["build", "big", "--", "sh", "-c", "head -c 48M /dev/urandom > big"]);
    a.ok(&["push", "big"]);
    // Worker B: an rsync store on a 32 MB filesystem.
    let Some((_fs, b)) = loop_store(&["mkfs.ext4", "-q"], "32M", "rsync", "") else { return };
    let text = std::fs::read_to_string(&b.config).unwrap() + &remote_toml(&registry, "never", "never");
    std::fs::write(&b.config, text).unwrap();
    let err = b.fails(&["pull", "big"], 74);
    assert!(err.to_lowercase().contains("space"), "{err}");
    assert!(b.result("big").is_none());
    assert_eq!(b.json(&["list"])["results"], serde_json::json!([]));
    b.ok(&["build", "small", "--", "sh", "-c", "echo ok > f"]);
    assert_eq!(b.read_result("small", "f"), "ok\n");
}
