//! `snapstore prune` and the result record, on rsync and on btrfs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

fn prune_once(f: &Fixture) -> Vec<String> {
    let out = f.json(&["prune", "--limit", "1"]);
    out["deleted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn ids(f: &Fixture) -> Vec<String> {
    let listing = f.json(&["list"]);
    listing["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// B with children C1 and C2; C1 looked up after C2 was built.
fn least_recently_used_leaves_go_first(f: &Fixture) {
    f.ok(&["build", "b", "--", "sh", "-c", "echo b > f"]);
    f.ok(&["build", "c1", "--base", "b", "--", "true"]);
    f.ok(&["build", "c2", "--base", "b", "--", "true"]);
    f.ok(&["result", "c1"]);
    let listing = f.json(&["list", "--sort", "last-used"]);
    let b = &listing["results"][0];
    assert_eq!((b["id"].as_str(), b["children"].as_u64()), (Some("b"), Some(2)), "{listing}");
    assert_eq!(listing["results"][1]["base"], "b");
    assert_eq!(prune_once(f), ["c2"]);
    assert_eq!(prune_once(f), ["c1"]);
    assert_eq!(prune_once(f), ["b"]);
    let out = f.json(&["prune", "--all"]);
    assert_eq!(out["deleted"].as_array().unwrap().len(), 0);
    assert!(out["stopped"].as_str().unwrap().contains("nothing left"), "{out}");
}

/// With no stopping condition prune refuses; --dry-run tells the order
/// and deletes nothing.
fn refusals_and_dry_run(f: &Fixture) {
    f.ok(&["build", "b", "--", "true"]);
    f.ok(&["build", "c1", "--base", "b", "--", "true"]);
    f.ok(&["build", "c2", "--base", "b", "--", "true"]);
    f.ok(&["result", "c1"]);
    for args in [&["prune"][..], &["prune", "--dry-run"]] {
        let err = f.fails(args, EXIT_USAGE);
        for way_out in ["--limit", "--older-than", "--until-free", "--all"] {
            assert!(err.contains(way_out), "{args:?}: {err}");
        }
    }
    let out = f.run(&["prune", "--all", "--limit", "1"]);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "--all with --limit accepted");
    assert_eq!(ids(f), ["b", "c1", "c2"], "a refused prune deleted something");

    let planned = f.json(&["prune", "--all", "--dry-run"]);
    assert_eq!(planned["deleted"], serde_json::json!(["c2", "c1", "b"]), "{planned}");
    assert_eq!(planned["dry_run"], true, "{planned}");
    let text = f.ok(&["prune", "--dry-run", "--limit", "2"]);
    assert_eq!(text.lines().take(2).collect::<Vec<_>>(), ["would delete c2", "would delete c1"], "{text}");
    assert_eq!(ids(f), ["b", "c1", "c2"], "a dry run deleted something");

    let done = f.json(&["prune", "--all"]);
    assert_eq!(done["deleted"], planned["deleted"], "the dry run foretold another order");
    assert_eq!(done["dry_run"], false, "{done}");
    assert!(ids(f).is_empty());
}

/// A prune racing a build never takes the build's base.
fn a_base_in_use_is_kept(f: &Fixture) {
    f.ok(&["build", "b", "--", "sh", "-c", "echo b > f"]);
    let build = f
        .command(&["build", "x", "--base", "b", "--", "sh", "-c", "sleep 1.5; cat f > g"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = f.json(&["prune", "--all"]);
    assert_eq!(out["deleted"].as_array().unwrap().len(), 0, "pruned a base in use: {out}");
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert_eq!(f.read_result("x", "g"), "b\n");
    // Once the build is done, its base is prunable after its child.
    let out = f.json(&["prune", "--all"]);
    assert_eq!(out["deleted"], serde_json::json!(["x", "b"]));
}

fn older_than_spares_recent_use(f: &Fixture) {
    f.ok(&["build", "old", "--", "true"]);
    f.ok(&["build", "used", "--", "true"]);
    std::thread::sleep(Duration::from_millis(3000));
    f.ok(&["result", "used"]);
    f.ok(&["build", "new", "--", "true"]);
    let out = f.json(&["prune", "--older-than", "2s"]);
    assert_eq!(out["deleted"], serde_json::json!(["old"]), "{out}");
    assert!(out["stopped"].as_str().unwrap().contains("older than 2s"), "{out}");
    f.ok(&["prune", "--all"]);
}

/// The record follows the backend: results without a record are adopted,
/// records without a result are dropped.
fn the_record_is_repaired(f: &Fixture) {
    f.ok(&["build", "a", "--", "true"]);
    f.ok(&["build", "b", "--", "true"]);
    // As if the record had never existed (or was lost with a crash).
    for file in ["results.sqlite", "results.sqlite-wal", "results.sqlite-shm"] {
        let _ = std::fs::remove_file(f.root.join(".snapstore").join(file));
    }
    assert_eq!(ids(f), ["a", "b"]);
    // A result that vanished behind the record's back: a ghost.
    f.ok(&["build", "ghost", "--", "true"]);
    vanish(&f.result("ghost").unwrap());
    assert_eq!(ids(f), ["a", "b"]);
    let out = f.json(&["prune", "--all"]);
    assert_eq!(out["deleted"].as_array().unwrap().len(), 2, "{out}");
}

/// A bounded prune does not walk the whole store first: a result removed
/// behind the record's back is dropped when met, never reported deleted.
fn a_bounded_prune_steps_over_ghosts(f: &Fixture) {
    f.ok(&["build", "ghost", "--", "true"]);
    f.ok(&["build", "real", "--", "true"]);
    vanish(&f.result("ghost").unwrap());
    assert_eq!(prune_once(f), ["real"]);
    let out = f.json(&["prune", "--limit", "1"]);
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    assert!(ids(f).is_empty());
}

/// Removes a result's tree as something other than snapstore would.
fn vanish(path: &std::path::Path) {
    let gone = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("btrfs property set -ts {0} ro false 2>/dev/null; btrfs subvolume delete {0} >/dev/null 2>&1 || rm -rf {0}", path.display()))
        .status()
        .unwrap();
    assert!(gone.success() && !path.exists());
}

/// kill -9 of builds at random moments leaves record and store agreeing.
fn kills_leave_no_ghosts(f: &Fixture) {
    f.ok(&["build", "base", "--", "sh", "-c", "seq 1 2000 > f"]);
    for i in 0..12u64 {
        let id = format!("k{i}");
        let mut child =
            f.command(&["build", &id, "--base", "base", "--", "true"]).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(3 + (i * 7919) % 60));
        let _ = child.kill();
        let _ = child.wait();
    }
    let listed = ids(f);
    for id in &listed {
        assert!(f.result(id).is_some(), "{id} listed but absent");
    }
    let on_disk = std::fs::read_dir(f.root.join("result")).unwrap().filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        (!name.starts_with('.')).then_some(name)
    });
    let mut on_disk: Vec<String> = on_disk.collect();
    on_disk.sort();
    assert_eq!(listed, on_disk);
    f.ok(&["prune", "--all"]);
    assert!(ids(f).is_empty());
}

fn all_scenarios(f: &Fixture) {
    refusals_and_dry_run(f);
    least_recently_used_leaves_go_first(f);
    a_base_in_use_is_kept(f);
    older_than_spares_recent_use(f);
    the_record_is_repaired(f);
    a_bounded_prune_steps_over_ghosts(f);
    kills_leave_no_ghosts(f);
}

#[test]
fn prune_on_rsync() {
    all_scenarios(&Fixture::rsync());
}

#[test]
fn prune_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else {
        return;
    };
    all_scenarios(&f);

    // --until-free stops as soon as the goal is reached.
    for i in 0..4 {
        let cmd = "head -c 150000000 /dev/urandom > blob";
        f.ok(&["build", &format!("big{i}"), "--", "sh", "-c", cmd]);
    }
    f.ok(&["complete-deletes"]);
    let free = f.json(&["df"])["free_percent"].as_f64().unwrap();
    let goal = free + 20.0;
    let out = f.json(&["prune", "--until-free", &goal.to_string()]);
    let deleted = out["deleted"].as_array().unwrap().len();
    let now = f.json(&["df"])["free_percent"].as_f64().unwrap();
    assert!(now >= goal, "stopped at {now}% < {goal}%: {out}");
    assert!((1..4).contains(&deleted), "deleted {deleted} for a 20% goal: {out}");
    assert!(out["stopped"].as_str().unwrap().contains("free"), "{out}");
    f.ok(&["prune", "--all"]);
}

/// --until-free counts the space of a pending delete before deleting more:
/// when completing it alone reaches the goal, nothing else goes.
#[test]
fn until_free_counts_pending_deletes_on_btrfs() {
    let Some((_fs, f)) = loop_store(&["mkfs.btrfs", "-q"], "1G", "btrfs", "") else {
        return;
    };
    for i in 1..=4 {
        let cmd = "head -c 150000000 /dev/urandom > blob";
        f.ok(&["build", &format!("r{i}"), "--", "sh", "-c", cmd]);
    }
    f.ok(&["complete-deletes"]);
    let full: f64 = f.json(&["df"])["free_percent"].as_f64().unwrap();
    f.ok(&["delete", "r4"]);
    let pending: f64 = f.json(&["df"])["free_percent"].as_f64().unwrap();
    // One result is about 14% of the filesystem; half of that is the goal.
    let goal = full + 7.0;
    if pending >= goal {
        eprintln!("note: btrfs freed r4 at once ({pending}% free); the pending case was not exercised");
    }
    let out = f.json(&["prune", "--until-free", &goal.to_string()]);
    assert_eq!(out["deleted"], serde_json::json!([]), "deleted more than the goal needed: {out}");
    let now: f64 = f.json(&["df"])["free_percent"].as_f64().unwrap();
    assert!(now >= goal, "stopped at {now}% < {goal}%: {out}");
    assert_eq!(ids(&f), ["r1", "r2", "r3"]);

    // A goal beyond one result: exactly the results it needs go.
    let goal = now + 20.0;
    let out = f.json(&["prune", "--until-free", &goal.to_string()]);
    assert_eq!(out["deleted"], serde_json::json!(["r1", "r2"]), "{out}");
    f.ok(&["prune", "--all"]);
}
