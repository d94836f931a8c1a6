//! Loading a plugin as root: what is loaded is the file that was checked,
//! reached only through directories that nobody but root can change.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A store whose config loads the plugin at `plugin` (a path, or a name
/// found in `plugin_dirs`).
fn store_loading(dir: tempfile::TempDir, backend: &str, plugin_dirs: &[&Path]) -> Fixture {
    let root = dir.path().join("store");
    let dirs: Vec<String> = plugin_dirs.iter().map(|d| format!("{:?}", d.display().to_string())).collect();
    let text =
        format!("[store]\nroot = \"store\"\nbackend = \"{backend}\"\nplugin_dirs = [{}]\n", dirs.join(", "));
    Fixture::with_config(dir, &root, &text)
}

fn needs_root() -> bool {
    if !is_root() {
        skip("the plugin ownership rules apply to a host run as root");
        return false;
    }
    require_plugin("rsync");
    true
}

/// `DIR/<path>/libsnapstore_rsync.so`, each directory 0755.
fn plugin_under(dir: &Path, path: &str) -> std::path::PathBuf {
    let plugins = dir.join(path);
    fs::create_dir_all(&plugins).unwrap();
    for d in plugins.ancestors().take_while(|d| d.starts_with(dir) && *d != dir) {
        chmod(d, 0o755);
    }
    let lib = plugins.join("libsnapstore_rsync.so");
    fs::copy(plugin_dir().join("libsnapstore_rsync.so"), &lib).unwrap();
    chmod(&lib, 0o755);
    lib
}

#[test]
fn a_plugin_below_a_directory_others_can_write_is_refused() {
    if !needs_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = plugin_under(dir.path(), "open/inner/plugins");
    let open = dir.path().join("open");
    let f = store_loading(dir, &lib.display().to_string(), &[]);
    f.ok(&["root"]);
    // Not the parent: a directory further up.
    chmod(&open, 0o757);
    let err = f.fails(&["root"], EXIT_USAGE);
    assert!(err.contains(&format!("{} is writable by other users", open.display())), "{err}");
    // Sticky and root's, like /tmp: nobody can rename what is not theirs.
    chmod(&open, 0o1777);
    f.ok(&["root"]);
    chmod(&open, 0o755);
    std::os::unix::fs::chown(&open, Some(1000), None).unwrap();
    let err = f.fails(&["root"], EXIT_USAGE);
    assert!(err.contains("not owned by root"), "{err}");
}

#[test]
fn a_symlink_in_a_world_writable_directory_is_refused() {
    if !needs_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = plugin_under(dir.path(), "safe/plugins");
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::symlink(lib.parent().unwrap(), shared.join("plugins")).unwrap();
    let linked = shared.join("plugins");
    for mode in [0o1777, 0o777, 0o775] {
        chmod(&shared, mode);
        // By path, and found by name in plugin_dirs.
        let by_path = store_loading(
            tempfile::tempdir().unwrap(),
            &linked.join("libsnapstore_rsync.so").display().to_string(),
            &[],
        );
        let err = by_path.fails(&["root"], EXIT_USAGE);
        assert!(err.contains("a symlink in") && err.contains("other users can write"), "{mode:o}: {err}");
        let by_name = store_loading(tempfile::tempdir().unwrap(), "rsync", &[&linked]);
        let err = by_name.fails(&["root"], EXIT_USAGE);
        assert!(err.contains("a symlink in"), "{mode:o}: {err}");
    }
    // The same link in a directory only root can write is fine.
    chmod(&shared, 0o755);
    store_loading(tempfile::tempdir().unwrap(), "rsync", &[&linked]).ok(&["root"]);
}
