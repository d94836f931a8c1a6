//! Layers, the links from keys to them, and freeing the layers no key
//! needs any more.
//!
//! A layer is `ROOT/layers/NAME/` (NAME: a random 16-hex-digit token)
//! holding `diff/` (what its step wrote: the upper directory of its build,
//! later a lower layer of its children), `lower` (the name of its base's
//! layer; absent for a layer that stands alone), `tree/` (where its overlay
//! is mounted) and, during a build, `work/` (overlay's work directory).
//! A key `ROOT/NS/NAME` is a symlink `../layers/LAYER`: it appears and goes
//! in one step (a rename, an unlink), and deleting it never touches the
//! layer, which stays as long as a chain needs it.
//!
//! A layer is needed while a key links to it or to a layer whose chain
//! (following `lower`) holds it. [`Layers::collect`] moves the others to
//! the trash under an exclusive `flock` on the `layers` directory itself
//! (no lock file: an empty store holds nothing); every call that
//! makes a layer or a link, or mounts one, holds that lock shared, so a
//! layer is never collected between its creation and its link.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, open, renameat_with, FlockOperation, Mode, OFlags, RenameFlags, CWD};
use store_api::util::mounts::detach_mounts_under;
use store_api::util::{random_token, unique_name};
use store_api::{IoContext, Key, Namespace, StoreError};

use crate::mount;

pub const LAYERS: &str = "layers";
pub const TRASH: &str = "trash";
/// A chain longer than this is corrupt (commit flattens far earlier).
const MAX_CHAIN: usize = 1000;

pub struct Layers {
    root: PathBuf,
}

impl Layers {
    pub fn new(root: &Path) -> Layers {
        Layers { root: root.to_path_buf() }
    }

    pub fn dir(&self, layer: &str) -> PathBuf {
        self.root.join(LAYERS).join(layer)
    }
    pub fn diff(&self, layer: &str) -> PathBuf {
        self.dir(layer).join("diff")
    }
    pub fn tree(&self, layer: &str) -> PathBuf {
        self.dir(layer).join("tree")
    }
    pub fn work(&self, layer: &str) -> PathBuf {
        self.dir(layer).join("work")
    }
    pub fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }
    pub fn key_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.namespace().as_str()).join(key.name())
    }

    /// Held (shared) by every call that makes layers or links or mounts a
    /// layer's tree: the collector waits for them.
    pub fn hold(&self) -> Result<DirLock, StoreError> {
        DirLock::take(&self.root.join(LAYERS), FlockOperation::LockShared).map(Option::unwrap)
    }

    /// Makes the directory of a new layer, with its `lower` link written,
    /// and returns its name. Its `diff/` is the caller's to make.
    pub fn new_layer(&self, lower: Option<&str>) -> Result<String, StoreError> {
        let layer = random_token();
        let dir = self.dir(&layer);
        fs::create_dir(&dir).context(format_args!("cannot create {}", dir.display()))?;
        if let Some(lower) = lower {
            let file = dir.join("lower");
            fs::write(&file, lower).context(format_args!("cannot write {}", file.display()))?;
        }
        fs::create_dir(self.tree(&layer)).context(format_args!("cannot create {}/tree", dir.display()))?;
        Ok(layer)
    }

    /// The layer `key` links to, or `None` if the key does not exist.
    pub fn of_key(&self, key: &Key) -> Result<Option<String>, StoreError> {
        read_link(&self.key_path(key))
    }

    /// The base layer of `layer`, if it has one.
    pub fn lower(&self, layer: &str) -> Result<Option<String>, StoreError> {
        let file = self.dir(layer).join("lower");
        match fs::read_to_string(&file) {
            Ok(name) if is_layer_name(&name) => Ok(Some(name)),
            Ok(_) => Err(StoreError::other(format!("{} does not name a layer", file.display()))),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format_args!("cannot read {}", file.display()), &e)),
        }
    }

    /// `layer` and the layers under it, top first.
    pub fn chain(&self, layer: &str) -> Result<Vec<String>, StoreError> {
        let mut chain = vec![layer.to_string()];
        while let Some(lower) = self.lower(chain.last().unwrap())? {
            if chain.len() >= MAX_CHAIN {
                return Err(StoreError::other(format!(
                    "the chain of layer {layer} is longer than {MAX_CHAIN}"
                )));
            }
            chain.push(lower);
        }
        Ok(chain)
    }

    /// Makes `key` link to `layer`, in one step, never replacing an
    /// existing key (`ALREADY_EXISTS`).
    pub fn link(&self, key: &Key, layer: &str) -> Result<(), StoreError> {
        let staged = self.dir(layer).join(unique_name("link"));
        let target = format!("../{LAYERS}/{layer}");
        std::os::unix::fs::symlink(&target, &staged)
            .context(format_args!("cannot create {}", staged.display()))?;
        let path = self.key_path(key);
        match renameat_with(CWD, &staged, CWD, &path, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&staged);
                if e == rustix::io::Errno::EXIST {
                    Err(StoreError::already_exists(format!("`{key}` already exists")))
                } else {
                    Err(StoreError::io(format_args!("cannot create {}", path.display()), &e.into()))
                }
            }
        }
    }

    /// Takes `key` from view (its layer stays until collected). Whether
    /// it existed.
    pub fn unlink(&self, key: &Key) -> Result<bool, StoreError> {
        let path = self.key_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == IoKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format_args!("cannot remove {}", path.display()), &e)),
        }
    }

    /// Moves every layer no key needs to the trash and unmounts the trees
    /// of layers kept only for their children, then returns the trash
    /// entries made (for the caller to delete). With `wait` false, gives up
    /// (returning nothing) while other calls hold the layers.
    pub fn collect(&self, wait: bool) -> Result<Vec<PathBuf>, StoreError> {
        let lock = self.root.join(LAYERS);
        let _held = if wait {
            DirLock::take(&lock, FlockOperation::LockExclusive)?.unwrap()
        } else {
            let mut tries = 0;
            loop {
                if let Some(held) = DirLock::take(&lock, FlockOperation::NonBlockingLockExclusive)? {
                    break held;
                }
                tries += 1;
                if tries == 20 {
                    return Ok(Vec::new()); // complete_deletes finishes later
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let keyed = self.keyed_layers()?;
        let mut needed: HashSet<String> = HashSet::new();
        for layer in &keyed {
            let mut next = Some(layer.clone());
            while let Some(layer) = next {
                if !needed.insert(layer.clone()) {
                    break; // the rest of this chain is already known
                }
                // A chain that cannot be read (an I/O error, a damaged
                // `lower` file) keeps every layer: nothing goes on a guess.
                next = self.lower(&layer)?;
            }
        }
        let dir = self.root.join(LAYERS);
        let mut trashed = Vec::new();
        for entry in fs::read_dir(&dir).context(format_args!("cannot list {}", dir.display()))? {
            let entry = entry.context(format_args!("cannot list {}", dir.display()))?;
            let Some(layer) = entry.file_name().to_str().filter(|n| is_layer_name(n)).map(str::to_string)
            else {
                continue;
            };
            if !needed.contains(&layer) {
                let to = self.trash().join(format!("del-{layer}"));
                fs::rename(entry.path(), &to).context(format_args!(
                    "cannot move {} to {}",
                    entry.path().display(),
                    to.display()
                ))?;
                trashed.push(to);
            } else if !keyed.contains(&layer) && mount::is_mounted(&self.tree(&layer))? {
                // Hidden (its key deleted), kept for its children: no view.
                detach_mounts_under(&self.tree(&layer))?;
            }
        }
        Ok(trashed)
    }

    /// The layers that keys link to, in every namespace.
    fn keyed_layers(&self) -> Result<HashSet<String>, StoreError> {
        let mut keyed = HashSet::new();
        for namespace in Namespace::ALL {
            let dir = self.root.join(namespace.as_str());
            for entry in fs::read_dir(&dir).context(format_args!("cannot list {}", dir.display()))? {
                let entry = entry.context(format_args!("cannot list {}", dir.display()))?;
                if let Some(layer) = read_link(&entry.path())? {
                    keyed.insert(layer);
                }
            }
        }
        Ok(keyed)
    }
}

/// A `flock` on a directory, held while this lives.
pub struct DirLock(#[allow(dead_code)] std::os::fd::OwnedFd);

impl DirLock {
    /// Takes the lock; `None` if a non-blocking `how` finds it held.
    fn take(dir: &Path, how: FlockOperation) -> Result<Option<DirLock>, StoreError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = open(dir, flags, Mode::empty()).context(format_args!("cannot open {}", dir.display()))?;
        loop {
            match flock(&fd, how) {
                Ok(()) => return Ok(Some(DirLock(fd))),
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(StoreError::io(format_args!("cannot lock {}", dir.display()), &e.into()))
                }
            }
        }
    }
}

/// A layer name: what [`random_token`] makes.
pub fn is_layer_name(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The layer the link at `path` names; `None` if there is no link.
fn read_link(path: &Path) -> Result<Option<String>, StoreError> {
    let target = match fs::read_link(path) {
        Ok(target) => target,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            // Not a link: nothing this backend made.
            return Ok(None);
        }
        Err(e) => return Err(StoreError::io(format_args!("cannot read {}", path.display()), &e)),
    };
    let layer = target.strip_prefix(format!("../{LAYERS}")).ok().and_then(|rest| rest.to_str());
    match layer {
        Some(layer) if is_layer_name(layer) => Ok(Some(layer.to_string())),
        // A link this backend did not make: no key.
        _ => Ok(None),
    }
}
