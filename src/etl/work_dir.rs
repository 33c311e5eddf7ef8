//! Work directories under `etl.work_dir` (an extract's staged file and the child's output, a
//! preview's upload). Each holds an `.owner` file its process keeps an exclusive `flock` on:
//! the kernel drops the lock when the process ends — however it ends — so the sweeper can tell
//! a directory left by a killed process from one in use by any live process on the host, without
//! guessing from ages. A directory with no lock file yet (created a moment ago) is left alone
//! for `grace`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OWNER: &str = ".owner";
/// The prefixes of the directories this module makes (nothing else under the root is touched).
const PREFIXES: [&str; 2] = ["extract-", "preview-"];

/// A work directory, removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _owner: File,
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a file descriptor we own; no memory is shared.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl WorkDir {
    /// Creates `root/{prefix}{name}` and takes its lock. `prefix` is `extract-` or `preview-`.
    pub fn create(root: &Path, prefix: &str, name: &str) -> io::Result<WorkDir> {
        debug_assert!(PREFIXES.contains(&prefix));
        let path = root.join(format!("{prefix}{name}"));
        std::fs::create_dir_all(&path)?;
        let owner = File::create(path.join(OWNER))?;
        if !try_lock(&owner) {
            return Err(io::Error::other(
                "work directory is locked by another process",
            ));
        }
        Ok(WorkDir {
            path,
            _owner: owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub dirs: u64,
}

/// Removes the work directories under `root` that no live process holds (at most `limit`).
pub fn sweep(root: &Path, grace: Duration, limit: usize) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if swept.dirs as usize >= limit {
            break;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !PREFIXES.iter().any(|p| name.starts_with(p)) || !entry.path().is_dir() {
            continue;
        }
        let abandoned = match File::open(entry.path().join(OWNER)) {
            // Locked by nobody: its process is gone.
            Ok(owner) => try_lock(&owner),
            // No lock file: made a moment ago, or by a version before locks; age decides.
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > grace),
        };
        if abandoned && std::fs::remove_dir_all(entry.path()).is_ok() {
            swept.dirs += 1;
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_stays_and_an_abandoned_one_goes() {
        let root = tempfile::tempdir().unwrap();
        let held = WorkDir::create(root.path(), "extract-", "1-a").unwrap();
        // Left by a process that died: its lock file exists and nobody holds it.
        let dead = root.path().join("extract-2-b");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join(OWNER), b"").unwrap();
        std::fs::write(dead.join("source.xlsx"), b"x").unwrap();
        // Somebody else's directory is never touched.
        let other = root.path().join("keep-me");
        std::fs::create_dir_all(&other).unwrap();
        let swept = sweep(root.path(), Duration::from_secs(3600), 100).unwrap();
        assert_eq!(swept.dirs, 1);
        assert!(held.path().exists() && !dead.exists() && other.exists());
        let path = held.path().to_path_buf();
        drop(held);
        assert!(!path.exists());
    }
}
