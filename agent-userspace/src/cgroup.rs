//! Labels are cgroup v2 subtrees: `<cgroup2 mount>/actgate/<label>/`, and the cgroups a policy
//! binds (see `binding`).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Name of actgate's own cgroup beneath the cgroup v2 root.
const ROOT_NAME: &str = "actgate";

/// Where label cgroups live, and how deep they sit in the cgroup v2 hierarchy.
#[derive(Clone, Debug)]
pub struct LabelRoot {
    /// The cgroup v2 mount.
    pub mount: PathBuf,
    /// `<cgroup2 mount>/actgate`.
    pub dir: PathBuf,
    /// Level of the mount's root in the hierarchy, as `bpf_get_current_ancestor_cgroup_id`
    /// counts it (the root is level 0; a mount inside a cgroup namespace sits deeper).
    pub mount_level: u32,
}

impl LabelRoot {
    /// Finds the cgroup v2 mount; hosts may run v1 and v2 side by side (hybrid), so the mount
    /// point is read from /proc/self/mountinfo, never assumed.
    pub fn discover() -> Result<Self> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo to find the cgroup v2 mount")?;
        let (mount, root) = cgroup2_mount(&info).context(
            "no cgroup v2 file system is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup)",
        )?;
        // A mount of a sub-tree (inside a cgroup namespace) sits deeper than level 0.
        let mount_level = Path::new(&root).components().count().saturating_sub(1) as u32;
        Ok(Self {
            dir: PathBuf::from(&mount).join(ROOT_NAME),
            mount: mount.into(),
            mount_level,
        })
    }

    /// The level of a label's own cgroup, `<mount>/actgate/<label>`.
    pub fn label_level(&self) -> u32 {
        self.level_of(Path::new(ROOT_NAME).join("x").as_path())
    }

    /// The level of the cgroup at `path`, relative to the mount.
    pub fn level_of(&self, path: &Path) -> u32 {
        self.mount_level + path.components().count() as u32
    }

    pub fn label_dir(&self, label: &str) -> PathBuf {
        self.dir.join(label)
    }

    /// Creates the label's cgroup if needed and returns its cgroup id (its inode number).
    pub fn ensure_label(&self, label: &str) -> Result<u64> {
        let dir = self.label_dir(label);
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating the cgroup for label {label:?} at {}",
                dir.display()
            )
        })?;
        Ok(fs::metadata(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .ino())
    }

    /// The label whose subtree holds the cgroup at `path` (as /proc/PID/cgroup names it,
    /// "/actgate/<label>/…"), if any.
    pub fn label_of(&self, path: &str) -> Option<String> {
        let full = self.dir.parent()?.join(path.trim_start_matches('/'));
        let beneath = full.strip_prefix(&self.dir).ok()?;
        beneath
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    }

    /// The path of the cgroup with this id beneath actgate's cgroup, as /proc/PID/cgroup
    /// names it ("/actgate/<label>/…"). It outlives the process, unlike /proc/PID/cgroup.
    pub fn cgroup_path(&self, id: u64) -> Option<String> {
        self.path_beneath(&self.dir, id)
    }

    /// The path of the cgroup with this id beneath `dir`, as /proc/PID/cgroup names it.
    pub fn path_beneath(&self, dir: &Path, id: u64) -> Option<String> {
        let found = find_by_id(dir, id, 16)?;
        Some(format!(
            "/{}",
            found.strip_prefix(&self.mount).ok()?.display()
        ))
    }
}

/// A directory beneath `dir` (or `dir` itself) whose inode number is `id`, at most `depth`
/// levels down.
fn find_by_id(dir: &Path, id: u64, depth: u32) -> Option<PathBuf> {
    if fs::metadata(dir).ok()?.ino() == id {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_by_id(&e.path(), id, depth - 1))
}

/// The mount point and hierarchy root of the first cgroup2 entry of a mountinfo text.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup2 none rw"
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = before.split_whitespace();
        let root = fields.nth(3)?;
        let mount = fields.next()?;
        Some((unescape(mount), unescape(root)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Moves the calling process into a cgroup.
pub fn enter(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, "0").with_context(|| format!("moving into cgroup {}", dir.display()))?;
    Ok(())
}

/// Removes a cgroup and every cgroup beneath it; fails (EBUSY) where a process runs. A cgroup
/// already gone is fine.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let children = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in children.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Ends every process in a cgroup and beneath it (`cgroup.kill`: SIGKILL, which new forks
/// can't escape) and waits until they are gone, up to 5 s. Returns how many there were.
pub fn kill(dir: &Path) -> Result<usize> {
    let before = process_count(dir);
    let file = dir.join("cgroup.kill");
    fs::write(&file, "1").with_context(|| format!("writing {}", file.display()))?;
    for _ in 0..500 {
        if process_count(dir) == 0 {
            return Ok(before);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!(
        "{} process(es) still run in {} 5 s after cgroup.kill",
        process_count(dir),
        dir.display()
    )
}

/// Number of processes in a cgroup and every cgroup beneath it.
pub fn process_count(dir: &Path) -> usize {
    let own = fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let children: usize = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| process_count(&e.path()))
        .sum();
    own + children
}

/// The cgroup v2 path of the current process, relative to the hierarchy root ("0::/x/y").
pub fn current_path() -> Result<String> {
    path_of("self")
}

/// The cgroup v2 path of process `pid` ("self" for this one), as its /proc/PID/cgroup names it.
pub fn path_of(pid: &str) -> Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    match text.lines().find_map(|l| l.strip_prefix("0::")) {
        Some(p) => Ok(p.to_string()),
        None => bail!("process {pid} has no cgroup v2 membership"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_host() {
        let info = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                    27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(("/sys/fs/cgroup/unified".into(), "/".into()))
        );
    }

    #[test]
    fn finds_cgroup2_with_escaped_mount_point() {
        let info = "26 25 0:23 /a\\040b /mnt/c\\040g rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(("/mnt/c g".into(), "/a b".into()))
        );
    }

    #[test]
    fn a_cgroup_path_names_the_label_it_lies_beneath() {
        let root = LabelRoot {
            mount: PathBuf::from("/sys/fs/cgroup"),
            dir: PathBuf::from("/sys/fs/cgroup/actgate"),
            mount_level: 0,
        };
        assert_eq!(root.label_level(), 2);
        assert_eq!(root.level_of(Path::new("system.slice/docker-1.scope")), 2);
        assert_eq!(root.label_of("/actgate/coder"), Some("coder".into()));
        assert_eq!(root.label_of("/actgate/coder/a/b"), Some("coder".into()));
        assert_eq!(root.label_of("/actgate"), None);
        assert_eq!(root.label_of("/"), None);
        assert_eq!(root.label_of("/user.slice/actgate/coder"), None);
        assert_eq!(root.label_of("/actgate-other/x"), None);
    }

    #[test]
    fn no_cgroup2_is_none() {
        assert_eq!(
            cgroup2_mount("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
    }
}
