//! Files that path rules can't fully describe: another hard link to a denied file reaches the
//! same data under a name no rule mentions. The daemon identifies such files by inode when it
//! loads a policy, and the kernel checks the inode of any file that has more than one link.
//!
//! Covered: every file named by an exact deny path, and files with several links found beneath
//! a denied tree (a bounded walk), as they are at each load. Not covered until the next load: a
//! file created at a denied path or beneath a denied tree after the load and then hard-linked by
//! an unlabelled process.

use std::{collections::HashMap, ffi::CString, fs, os::unix::ffi::OsStrExt, path::Path};

use agent_common::{Action, InodeKey};
use agent_policy::PathPattern;

/// Capacity of the kernel's INODE_RULES map.
pub const MAX_ENTRIES: u32 = 1 << 16;
/// Most directory entries one tree walk visits, so a huge denied tree can't stall a load.
const WALK_BUDGET: usize = 100_000;

/// The kernel's `dev_t` for a major and minor number (MKDEV: major << 20 | minor).
fn kernel_dev(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 20) | u64::from(minor)
}

/// A file as the kernel's hooks see it: `inode->i_sb->s_dev` and `inode->i_ino`.
struct FileId {
    dev: u64,
    ino: u64,
    nlink: u32,
    mode: u32,
}

/// Finds the kernel's identity of files.
///
/// `stat`'s `st_dev` is not always the `s_dev` of the superblock the hooks see. An overlayfs
/// whose layers are on different file systems reports a regular file's st_dev as its layer's
/// (the guest's /tmp under virtme-ng is such an overlay); btrfs reports a subvolume's. The
/// mount a file is on names the superblock's device in mountinfo, so the device comes from
/// there. The inode number needs no such care: overlayfs gives its inodes the st_ino it reports.
pub struct Identities {
    /// mountinfo's mount ID → the kernel dev_t of the mount's superblock.
    mounts: HashMap<u64, u64>,
}

impl Identities {
    pub fn load() -> Identities {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Identities {
            mounts: parse_mountinfo(&text),
        }
    }

    /// statx(2) of `path` (of the link itself unless `follow`), with the device of its mount.
    fn of(&self, path: &Path, follow: bool) -> Option<FileId> {
        let c = CString::new(path.as_os_str().as_bytes()).ok()?;
        let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
        let mask = libc::STATX_TYPE | libc::STATX_INO | libc::STATX_NLINK | libc::STATX_MNT_ID;
        // SAFETY: an all-zero statx is a valid value of a plain C struct.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a statx buffer, both outliving the call.
        if unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, mask, &mut st) } != 0 {
            return None;
        }
        // Without a mount ID (kernels before 5.8) st_dev is the best there is; it is right on
        // every file system but the stacked ones above.
        let dev = (st.stx_mask & libc::STATX_MNT_ID != 0)
            .then(|| self.mounts.get(&st.stx_mnt_id).copied())
            .flatten()
            .unwrap_or_else(|| kernel_dev(st.stx_dev_major, st.stx_dev_minor));
        Some(FileId {
            dev,
            ino: st.stx_ino,
            nlink: st.stx_nlink,
            mode: u32::from(st.stx_mode) & libc::S_IFMT,
        })
    }
}

/// Mount ID → kernel dev_t, from /proc/self/mountinfo lines
/// (`36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`).
fn parse_mountinfo(text: &str) -> HashMap<u64, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((id, kernel_dev(major.parse().ok()?, minor.parse().ok()?)))
        })
        .collect()
}

fn key(file: &FileId, ruleset: u16, action: Action) -> InodeKey {
    InodeKey {
        dev: file.dev,
        ino: file.ino,
        ruleset,
        action: action as u8,
        _pad: [0; 5],
    }
}

/// Files with more than one link beneath `dir`, within `budget` directory entries.
fn walk(ids: &Identities, dir: &Path, budget: &mut usize, found: &mut Vec<FileId>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = entry.path();
        let Some(file) = ids.of(&path, false) else {
            continue;
        };
        if file.mode == libc::S_IFDIR {
            walk(ids, &path, budget, found);
        } else if file.mode == libc::S_IFREG && file.nlink > 1 {
            found.push(file);
        }
    }
}

/// Whether `dir` is on procfs or sysfs where the kernel mounts them.
fn no_hard_links(dir: &str) -> bool {
    ["/proc", "/sys"]
        .iter()
        .any(|root| dir == *root || dir.strip_prefix(root).is_some_and(|r| r.starts_with('/')))
}

/// The inode entries of rule set `ruleset`'s deny patterns.
pub fn denied_inodes(
    ids: &Identities,
    ruleset: u16,
    denied: &[(Action, PathPattern)],
) -> Vec<InodeKey> {
    let mut keys = Vec::new();
    let mut budget = WALK_BUDGET;
    for (action, pattern) in denied {
        match pattern {
            PathPattern::Exact(p) => {
                if let Some(file) = ids.of(Path::new(p), true) {
                    keys.push(key(&file, ruleset, *action));
                }
            }
            // procfs and sysfs have no hard links, and walking them (the kernel settings every
            // policy protects) would spend the budget on every load.
            PathPattern::Tree(d) if no_hard_links(d) => {}
            PathPattern::Tree(d) => {
                let mut found = Vec::new();
                let dir = if d.is_empty() { "/" } else { d.as_str() };
                walk(ids, Path::new(dir), &mut budget, &mut found);
                keys.extend(found.iter().map(|file| key(file, ruleset, *action)));
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_matches_mkdev() {
        // 8:1 (sda1): the kernel keeps 8 << 20 | 1.
        assert_eq!(kernel_dev(8, 1), (8 << 20) | 1);
        assert_eq!(kernel_dev(259, 70000), (259 << 20) | 70000);
    }

    #[test]
    fn mountinfo_maps_mount_ids_to_devices() {
        let text = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw\n\
                    56 25 0:48 / /tmp rw,relatime - overlay ovl rw,lowerdir=/tmp\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[&36], kernel_dev(98, 0));
        assert_eq!(mounts[&56], 48);
    }

    #[test]
    fn a_file_gets_the_device_of_its_mount() {
        // On the host, whatever file system the build directory is on: the device must be
        // the one mountinfo gives its mount, and the inode the one stat gives.
        use std::os::unix::fs::MetadataExt;
        let ids = Identities::load();
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let file = ids.of(&here, true).expect("statx of Cargo.toml");
        let meta = fs::metadata(&here).unwrap();
        assert_eq!(file.ino, meta.ino());
        assert_eq!(file.mode, libc::S_IFREG);
        assert!(ids.mounts.values().any(|d| *d == file.dev));
    }
}
