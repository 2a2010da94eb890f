//! Watching the cgroup hierarchy so selected cgroups created (or re-created) after a bundle
//! arrived are put into the cgroups map at once, not at the next rescan: a container runtime
//! creates a cgroup, moves a process in and execs it within milliseconds.
//!
//! For every selected path the watcher watches the path itself if it exists (to see it go)
//! and otherwise its deepest existing ancestor (to see the next component appear). Any event
//! means "rescan and re-arm"; the rescan is cheap (a stat per selected path).

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

/// An inotify instance over cgroup directories.
#[derive(Debug)]
pub struct CgroupWatch {
    fd: OwnedFd,
    watches: HashMap<PathBuf, i32>,
}

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE_SELF
    | libc::IN_ONLYDIR;

/// The directory to watch for `path` (relative to `root`): the path itself if it exists,
/// else its deepest existing ancestor.
pub fn watch_target(root: &Path, path: &str) -> PathBuf {
    let mut dir = root.join(path.trim_start_matches('/'));
    while !dir.is_dir() && dir != root {
        if !dir.pop() {
            break;
        }
    }
    dir
}

impl CgroupWatch {
    /// A new, empty watcher.
    pub fn new() -> io::Result<Self> {
        // SAFETY: inotify_init1 has no pointer arguments.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, watches: HashMap::new() })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches exactly the targets of `paths` under `root`.
    pub fn rearm(&mut self, root: &Path, paths: &[String]) {
        let wanted: Vec<PathBuf> = paths.iter().map(|p| watch_target(root, p)).collect();
        self.watches.retain(|dir, wd| {
            let keep = wanted.contains(dir);
            if !keep {
                // SAFETY: valid inotify fd and a watch descriptor it returned.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), *wd) };
            }
            keep
        });
        for dir in wanted {
            if self.watches.contains_key(&dir) {
                continue;
            }
            let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: valid inotify fd and NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
            if wd >= 0 {
                self.watches.insert(dir, wd);
            }
        }
    }

    /// Consumes pending events; true if there were any.
    pub fn drain(&self) -> bool {
        let mut buf = [0_u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: reading into a local buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_target_is_the_deepest_existing_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("a/b")).expect("dirs");
        assert_eq!(watch_target(root.path(), "/a/b"), root.path().join("a/b"));
        assert_eq!(watch_target(root.path(), "/a/b/c/d"), root.path().join("a/b"));
        assert_eq!(watch_target(root.path(), "/x/y"), root.path());
    }

    #[test]
    fn drain_reports_a_directory_created_under_a_watched_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut watch = CgroupWatch::new().expect("inotify");
        watch.rearm(root.path(), &["/late/child".to_owned()]);
        assert!(!watch.drain(), "nothing happened yet");
        std::fs::create_dir(root.path().join("late")).expect("mkdir");
        assert!(watch.drain(), "the creation is reported");
        watch.rearm(root.path(), &["/late/child".to_owned()]);
        assert!(watch.watches.contains_key(&root.path().join("late")), "re-armed one level deeper");
    }
}
