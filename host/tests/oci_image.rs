//! Results as OCI images through the CLI, on rsync stores: round trips through
//! `oci:` and `oci-archive:`, only missing layers applied, skopeo and umoci as
//! outside readers and writers, hostile images, an interrupted import.

#[path = "oci_support/mod.rs"]
mod oci_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_support::*;
use support::*;
use test_support::sandbox::Outside;

fn root_or_skip() -> bool {
    if !is_root() {
        skip("the image tests need root (owners, devices, xattrs)");
        return false;
    }
    true
}

fn tools_or_skip(tools: &[&str]) -> bool {
    for tool in tools {
        if !have(tool) {
            skip(&format!("{tool} is not installed (scripts/install-test-deps installs it)"));
            return false;
        }
    }
    true
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn path_of(f: &Fixture, id: &str) -> PathBuf {
    f.result(id).unwrap_or_else(|| panic!("no result {id}"))
}

fn result_ids(f: &Fixture) -> Vec<String> {
    let list = f.json(&["list"]);
    let mut ids: Vec<String> =
        list["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn round_trip_through_an_oci_dir_applies_only_missing_layers() {
    if !root_or_skip() {
        return;
    }
    let a = Fixture::rsync();
    build_chain(&a);
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("layout");
    let image = format!("oci:{}", dir.display());

    // The base alone, then the step: the base's layer is not written again.
    let base = a.json(&["export", "base", &image]);
    assert_eq!((base["layers_written"].as_u64(), base["layers_skipped"].as_u64()), (Some(1), Some(0)));
    let step = a.json(&["export", "step", &image]);
    assert_eq!((step["layers_written"].as_u64(), step["layers_skipped"].as_u64()), (Some(1), Some(1)));
    assert_eq!(step["reference"], format!("{image}:step"));
    assert!(step["digest"].as_str().unwrap().starts_with("sha256:"));

    // A store holding neither: two results, equal entry by entry.
    let b = Fixture::rsync();
    let imported = b.json(&["import", "step", &image]);
    assert_eq!(imported["layers_applied"].as_u64(), Some(2));
    assert_eq!(result_ids(&b), ["base", "step"]);
    for id in ["base", "step"] {
        assert_same_tree(&path_of(&a, id), &path_of(&b, id), id);
    }
    // (The step's is not: the rsync backend's clone of a base fills holes.)
    assert_sparse(&path_of(&b, "base"));

    // A store holding the base applies one layer.
    let c = Fixture::rsync();
    c.json(&["import", "base", &format!("{image}:base")]);
    let imported = c.json(&["import", "step", &image]);
    assert_eq!(
        (imported["layers_applied"].as_u64(), imported["layers_skipped"].as_u64()),
        (Some(1), Some(1))
    );
    assert_same_tree(&path_of(&a, "step"), &path_of(&c, "step"), "step on a held base");

    // An existing result is refused, not overwritten.
    let err = c.fails(&["import", "step", &image], EXIT_EXISTS);
    assert!(err.contains("already exists"), "{err}");
    // Under another name: the chain's results, and the name on the last one.
    let d = Fixture::rsync();
    d.json(&["import", "renamed", &format!("{image}:step")]);
    assert_eq!(result_ids(&d), ["base", "renamed", "step"]);
    assert_same_tree(&path_of(&a, "step"), &path_of(&d, "renamed"), "renamed");
}

#[test]
fn a_one_file_step_exports_a_small_layer() {
    if !root_or_skip() {
        return;
    }
    let a = Fixture::rsync();
    // A base of 20 MB that does not compress.
    a.ok(&[
        "build",
        "big",
        "--",
        "sh",
        "-c",
        "head -c 20000000 /dev/urandom > blob && mkdir d && echo 1 > d/one",
    ]);
    a.ok(&["build", "small", "--base", "big", "--", "sh", "-c", "echo 2 > d/one"]);
    let images = tempfile::tempdir().unwrap();
    let image = format!("oci:{}", images.path().join("l").display());
    a.json(&["export", "big", &image]);
    let step = a.json(&["export", "small", &image]);
    assert_eq!(step["layers_written"].as_u64(), Some(1));
    let written = step["bytes_written"].as_u64().unwrap();
    assert!(written < 1 << 20, "a one-file step wrote {written} bytes");
}

#[test]
fn oci_archive_round_trip_and_long_ids() {
    if !root_or_skip() {
        return;
    }
    let a = Fixture::rsync();
    let long = format!("v1-{}", "x".repeat(200));
    a.ok(&["build", &long, "--", "sh", "-c", "echo hi > f && mkfifo p && ln -s f l"]);
    let images = tempfile::tempdir().unwrap();
    let file = images.path().join("img.tar");
    let out = a.json(&["export", &long, &format!("oci-archive:{}", file.display())]);
    let tag = out["reference"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    assert_eq!(tag.len(), 128, "{tag}");
    // Nothing but the archive is left beside it.
    let left: Vec<_> = fs::read_dir(images.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("img.tar")]);
    let b = Fixture::rsync();
    b.json(&["import", &long, &format!("oci-archive:{}", file.display())]);
    assert_same_tree(&path_of(&a, &long), &path_of(&b, &long), "archive");
    if have("skopeo") {
        let inspect = run_ok(
            Command::new("skopeo").args(["inspect", &format!("oci-archive:{}:{tag}", file.display())]),
        );
        assert!(inspect.contains("\"Layers\""), "{inspect}");
    }
}

#[test]
fn skopeo_copies_and_umoci_unpacks_an_export() {
    if !root_or_skip() || !tools_or_skip(&["skopeo", "umoci"]) {
        return;
    }
    let a = Fixture::rsync();
    build_chain(&a);
    let images = tempfile::tempdir().unwrap();
    let (one, two) = (images.path().join("one"), images.path().join("two"));
    // gzip: the umoci Debian ships (0.4) reads no zstd layers.
    a.json(&["export", "step", &format!("oci:{}", one.display()), "--compression", "gzip"]);
    let inspect: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new("skopeo").args(["inspect", &format!("oci:{}:step", one.display())]),
    ))
    .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2, "{inspect}");

    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:step", one.display()),
        &format!("oci:{}:copied", two.display()),
    ]));
    let b = Fixture::rsync();
    b.json(&["import", "step", &format!("oci:{}:copied", two.display())]);
    assert_same_tree(&path_of(&a, "step"), &path_of(&b, "step"), "after skopeo copy");

    let bundle = images.path().join("bundle");
    run_ok(
        Command::new("umoci").args(["unpack", "--image", &format!("{}:step", one.display())]).arg(&bundle),
    );
    assert_same_tree(&path_of(&a, "step"), &bundle.join("rootfs"), "umoci's rootfs");
}

#[test]
fn an_image_umoci_made_imports_as_umoci_unpacks_it() {
    if !root_or_skip() || !tools_or_skip(&["umoci"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let umoci = |args: &[&str]| run_ok(Command::new("umoci").args(args));
    let l = layout.to_str().unwrap();
    umoci(&["init", "--layout", l]);
    umoci(&["new", "--image", &format!("{l}:t")]);
    umoci(&["unpack", "--image", &format!("{l}:t"), bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    sh(&format!(
        "cd {} && mkdir -p etc d/e && echo one > etc/a && echo two > d/e/b && ln -s a etc/l && \
         ln etc/a etc/hard && mkfifo p && chown 7:8 d/e/b && chmod 4711 etc/a && setfattr -n user.k -v v d",
        rootfs.display()
    ));
    // --refresh-bundle: the next repack is a diff against this one.
    umoci(&["repack", "--refresh-bundle", "--image", &format!("{l}:t"), bundle.to_str().unwrap()]);
    // A second layer that deletes a file and a directory (whiteouts) and adds one.
    // A second later, so that umoci (which compares whole seconds) puts the changed
    // directories in the layer: applying a whiteout under a directory the layer
    // does not name still moves that directory's mtime (a known gap of apply_layer).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sh(&format!("cd {} && rm etc/l && rm -r d/e && echo three > c", rootfs.display()));
    umoci(&["repack", "--image", &format!("{l}:t"), bundle.to_str().unwrap()]);
    let fresh = work.path().join("fresh");
    umoci(&["unpack", "--image", &format!("{l}:t"), fresh.to_str().unwrap()]);

    // Not in the second the layer's directories were written: an rsync clone
    // (of the last layer's result into `mine`) within that second can leave a
    // directory holding hard links with the clone's sub-second mtime.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let f = Fixture::rsync();
    let out = f.json(&["import", "mine", &format!("oci:{l}:t")]);
    // One result per layer, named by ChainIDs, and `mine` on the last.
    let results = out["results"].as_array().unwrap();
    assert_eq!(out["layers_applied"].as_u64(), Some(2), "{out}");
    assert_eq!(results.len(), 3, "{out}");
    assert!(results[0].as_str().unwrap().starts_with("chain-sha256-"), "{out}");
    // umoci 0.4 sets some directories' times in whole seconds when it
    // unpacks (it lost the layer's nanoseconds in one run of three): the
    // times are compared to the second.
    assert_same_tree_within(&fresh.join("rootfs"), &path_of(&f, "mine"), "umoci's image", true);
    assert!(!path_of(&f, "mine").join("d/e").exists());

    // Another image on the same base layers shares their results.
    let g = f.json(&["import", "again", &format!("oci:{l}:t")]);
    assert_eq!(g["layers_applied"].as_u64(), Some(0), "{g}");
}

/// Rewrites the manifest tagged `tag` in `dir` with `edit`, updating the index.
fn edit_manifest(dir: &Path, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let digest = entry["digest"].as_str().unwrap().to_string();
    let blob = dir.join("blobs/sha256").join(&digest[7..]);
    let mut manifest: serde_json::Value = serde_json::from_slice(&fs::read(&blob).unwrap()).unwrap();
    edit(&mut manifest);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let hex = sha256_hex(&bytes);
    fs::write(dir.join("blobs/sha256").join(&hex), &bytes).unwrap();
    entry["digest"] = format!("sha256:{hex}").into();
    entry["size"] = bytes.len().into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn layer_blob(dir: &Path, tag: &str, index: usize) -> PathBuf {
    let index_json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let digest = index_json["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&digest[7..])).unwrap()).unwrap();
    let layer = manifest["layers"][index]["digest"].as_str().unwrap();
    dir.join("blobs/sha256").join(&layer[7..])
}

#[test]
fn hostile_images_are_refused_with_one_line_and_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let a = Fixture::rsync();
    a.ok(&["build", "base", "--", "sh", "-c", "head -c 3000000 /dev/urandom > blob && echo a > a"]);
    a.ok(&["build", "step", "--base", "base", "--", "sh", "-c", "echo b > b && rm a"]);
    let images = tempfile::tempdir().unwrap();
    let pristine = images.path().join("pristine");
    a.json(&["export", "step", &format!("oci:{}", pristine.display())]);

    type Spoil = fn(&Path);
    let cases: &[(&str, Spoil, &str)] = &[
        ("missing blob", |d| fs::remove_file(layer_blob(d, "step", 1)).unwrap(), "does not hold"),
        (
            "wrong digest",
            |d| {
                let blob = layer_blob(d, "step", 0);
                let mut bytes = fs::read(&blob).unwrap();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                fs::write(&blob, bytes).unwrap();
            },
            "its descriptor declares: the image is corrupt",
        ),
        (
            "truncated blob",
            |d| {
                let blob = layer_blob(d, "step", 0);
                let bytes = fs::read(&blob).unwrap();
                fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
            },
            "is truncated",
        ),
        (
            "huge config",
            |d| edit_manifest(d, "step", |m| m["config"]["size"] = (1u64 << 40).into()),
            "at most",
        ),
        (
            "huge layer",
            |d| edit_manifest(d, "step", |m| m["layers"][0]["size"] = (1u64 << 50).into()),
            "truncated",
        ),
        (
            "unknown media type",
            |d| edit_manifest(d, "step", |m| m["layers"][1]["mediaType"] = "application/x-evil".into()),
            "media type",
        ),
        (
            "bad digest string",
            |d| edit_manifest(d, "step", |m| m["layers"][0]["digest"] = "sha256:../../../etc".into()),
            "not valid JSON of an image manifest",
        ),
        (
            "bad JSON",
            |d| {
                let index_path = d.join("index.json");
                let index = fs::read_to_string(&index_path).unwrap();
                let garbage = b"{\"schemaVersion\": 2, \"layers\": [tru";
                let hex = sha256_hex(garbage);
                fs::write(d.join("blobs/sha256").join(&hex), garbage).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&index).unwrap();
                v["manifests"][0]["digest"] = format!("sha256:{hex}").into();
                v["manifests"][0]["size"] = garbage.len().into();
                fs::write(&index_path, v.to_string()).unwrap();
            },
            "not valid JSON of an image manifest",
        ),
        (
            "manifest of the wrong size",
            |d| {
                let index_path = d.join("index.json");
                let mut v: serde_json::Value =
                    serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
                v["manifests"][0]["size"] = 10.into();
                fs::write(&index_path, v.to_string()).unwrap();
            },
            "is longer than the 10 bytes",
        ),
    ];
    for (what, spoil, needle) in cases {
        let dir = images.path().join(what.replace(' ', "-"));
        sh(&format!("cp -a {} {}", pristine.display(), dir.display()));
        spoil(&dir);
        let outside = Outside::new(images.path());
        let b = Fixture::rsync();
        let out = b.run(&["import", "step", &format!("oci:{}", dir.display())]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{what}: imported");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        assert!(result_ids(&b).is_empty(), "{what}: left {:?}", result_ids(&b));
        let tmp: Vec<_> = fs::read_dir(b.root.join("result-tmp")).map(|d| d.count()).into_iter().collect();
        assert!(tmp.iter().all(|n| *n == 0), "{what}: a build tree was left");
        outside.assert_intact(what);
    }
}

#[test]
fn an_import_killed_midway_leaves_complete_results_only() {
    if !root_or_skip() {
        return;
    }
    let a = Fixture::rsync();
    a.ok(&["build", "base", "--", "sh", "-c", "echo a > a"]);
    a.ok(&["build", "step", "--base", "base", "--", "sh", "-c", "head -c 5000000 /dev/urandom > blob"]);
    let images = tempfile::tempdir().unwrap();
    let image = format!("oci:{}", images.path().join("l").display());
    a.json(&["export", "step", &image]);

    let b = Fixture::rsync();
    // Killed after the second layer was applied, before its commit.
    let out =
        b.command(&["import", "step", &image]).env("SNAPSTORE_KILL_AT", "import:applied-2").output().unwrap();
    assert_eq!(out.status.code(), None, "not killed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(result_ids(&b), ["base"]);
    // The next import finishes the job with the missing layer only.
    let done = b.json(&["import", "step", &image]);
    assert_eq!(done["layers_applied"].as_u64(), Some(1));
    assert_same_tree(&path_of(&a, "step"), &path_of(&b, "step"), "after a kill");
    let tmp = fs::read_dir(b.root.join("result-tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(tmp, 0, "the killed build's tree was not recovered");
}

#[test]
fn bad_references_and_missing_images_are_one_line_errors() {
    let a = Fixture::rsync();
    a.ok(&["build", "x", "--", "true"]);
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("l");
    let err = a.fails(&["export", "x", "tar:/nowhere"], EXIT_USAGE);
    assert!(err.contains("transport"), "{err}");
    a.fails(&["export", "x", &format!("oci:{}:-bad", dir.display())], EXIT_USAGE);
    let err = a.fails(&["export", "missing", &format!("oci:{}", dir.display())], EXIT_NOT_FOUND);
    assert!(err.contains("missing"), "{err}");
    a.json(&["export", "x", &format!("oci:{}", dir.display())]);
    let b = Fixture::rsync();
    let err = b.fails(&["import", "y", &format!("oci:{}", dir.display())], EXIT_NOT_FOUND);
    assert!(err.contains("no image"), "{err}");
    let err =
        b.fails(&["import", "y", &format!("oci:{}", images.path().join("none").display())], EXIT_NOT_FOUND);
    assert!(err.contains("not an OCI image layout"), "{err}");
    // A non-empty directory that is no layout is not written into.
    fs::write(images.path().join("file"), "x").unwrap();
    a.fails(&["export", "x", &format!("oci:{}", images.path().display())], EXIT_USAGE);
}

#[tokio::test]
async fn the_rust_api_exports_and_imports() {
    use snapstore::{BlockingStore, ExportOptions, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let root = dir.path().join(name);
        let backend = snapstore_rsync::open(&root, "").unwrap();
        Store::from_blocking(BlockingStore::with_backend(&root, "rsync", Box::new(backend)).unwrap())
    };
    let (a, b) = (open("a"), open("b"));
    a.build(None, "one", |tree| async move {
        tokio::fs::write(tree.join("f"), "hello").await.map_err(|e| StoreError::io("write", &e))
    })
    .await
    .unwrap();
    let image = format!("oci-archive:{}", dir.path().join("one.tar").display());
    let exported = a.export("one", &image, ExportOptions::default()).await.unwrap();
    assert_eq!((exported.layers_written, exported.layers_skipped), (1, 0));
    let imported = b.import("one", &image).await.unwrap();
    assert_eq!(imported.digest, exported.digest);
    let path = b.result("one").await.unwrap().unwrap();
    assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "hello");
}
