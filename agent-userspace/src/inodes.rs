//! Files that path rules can't fully describe: another hard link to a denied file reaches the
//! same data under a name no rule mentions. The daemon identifies such files by inode when it
//! loads a policy, and the kernel checks the inode of any file that has more than one link.
//!
//! Covered: every file named by an exact deny path, and files with several links found beneath
//! a denied tree (a bounded walk). Not covered: a file created beneath a denied tree after the
//! load and then hard-linked by an unlabelled process.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use agent_common::{Action, InodeKey};
use agent_policy::{PathPattern, Policy};

/// Capacity of the kernel's INODE_RULES map.
pub const MAX_ENTRIES: u32 = 1 << 16;
/// Most directory entries one tree walk visits, so a huge denied tree can't stall a load.
const WALK_BUDGET: usize = 100_000;

/// The kernel's `dev_t` for a `stat` st_dev (MKDEV: major << 20 | minor).
fn kernel_dev(st_dev: u64) -> u64 {
    (u64::from(libc::major(st_dev)) << 20) | u64::from(libc::minor(st_dev))
}

fn key(meta: &fs::Metadata, ruleset: u16, action: Action) -> InodeKey {
    InodeKey {
        dev: kernel_dev(meta.dev()),
        ino: meta.ino(),
        ruleset,
        action: action as u8,
        _pad: [0; 5],
    }
}

fn walk(dir: &Path, budget: &mut usize, found: &mut Vec<fs::Metadata>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            walk(&entry.path(), budget, found);
        } else if meta.is_file() && meta.nlink() > 1 {
            found.push(meta);
        }
    }
}

/// The inode entries of one policy's deny rules.
pub fn denied_inodes(policy: &Policy, ruleset: u16) -> Vec<InodeKey> {
    let mut keys = Vec::new();
    let mut budget = WALK_BUDGET;
    for (action, rules) in [
        (Action::Exec, &policy.exec),
        (Action::FileWrite, &policy.file_write),
        (Action::FileRead, &policy.file_read),
    ] {
        for pattern in &rules.deny {
            match pattern {
                PathPattern::Exact(p) => {
                    if let Ok(meta) = fs::metadata(p) {
                        keys.push(key(&meta, ruleset, action));
                    }
                }
                PathPattern::Tree(d) => {
                    let mut found = Vec::new();
                    let dir = if d.is_empty() { "/" } else { d.as_str() };
                    walk(Path::new(dir), &mut budget, &mut found);
                    keys.extend(found.iter().map(|m| key(m, ruleset, action)));
                }
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
        // 8:1 (sda1) in the glibc encoding is 0x801; the kernel keeps 8 << 20 | 1.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }
}
