//! `actgate attach --label L --pid PID`: moves a running process and every process it started
//! into label L's cgroup, for an agent that was started by hand rather than by `actgate exec`.
//!
//! The tree is moved from the top down: a process forks into its parent's cgroup, so once a
//! process is in the label, whatever it starts is born there. What a process not yet moved
//! starts meanwhile is caught by the next pass; the passes end when one finds nothing left.
//! A process under another label stays where it is: no process ever leaves its label.

use std::{
    collections::{BTreeMap, VecDeque},
    fs,
    io::ErrorKind,
    path::Path,
};

use anyhow::{Context, Result, bail};

use crate::{cgroup::LabelRoot, launch};

/// Passes over the tree before giving up on a tree that keeps forking outside the label.
const MAX_PASSES: usize = 16;

/// What `attach` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Processes moved into the label.
    pub moved: usize,
    /// Processes of the tree that were in the label before.
    pub already: usize,
    /// Processes of the tree left under another label, with it.
    pub other_labels: Vec<(u32, String)>,
}

/// Moves process `pid` and its descendants into `label`, which a running daemon must enforce.
pub fn attach(socket: &Path, label: &str, pid: u32) -> Result<Attached> {
    if pid <= 1 || pid == std::process::id() {
        bail!("refusing to attach process {pid}: init and actgate itself are never labelled");
    }
    let dir = launch::label_cgroup(socket, label)?;
    let root = LabelRoot::discover()?;
    let label_of = |pid: u32| -> Result<Option<String>> {
        crate::cgroup::path_of(&pid.to_string())
            .map(|path| root.label_of(&path))
            .with_context(|| format!("no process {pid}"))
    };
    match label_of(pid)? {
        Some(other) if other != label => bail!(
            "process {pid} runs under label {other:?}; a process never leaves its label \
             (end it, or `actgate revoke {other}`)"
        ),
        _ => {}
    }
    let procs = dir.join("cgroup.procs");
    let mut done = Attached::default();
    for pass in 0..MAX_PASSES {
        let mut moved = 0;
        let mut other_labels = Vec::new();
        for p in tree(pid)? {
            match label_of(p) {
                // Gone meanwhile.
                Err(_) => {}
                Ok(Some(l)) if l == label => done.already += usize::from(pass == 0),
                Ok(Some(l)) => other_labels.push((p, l)),
                Ok(None) => match fs::write(&procs, p.to_string()) {
                    Ok(()) => moved += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!(
                                "moving process {p} into {} ({} moved before it)",
                                dir.display(),
                                done.moved + moved
                            )
                        });
                    }
                },
            }
        }
        done.moved += moved;
        if moved == 0 {
            done.other_labels = other_labels;
            if label_of(pid).ok().flatten().as_deref() != Some(label) {
                bail!("process {pid} is not under label {label:?} after the move");
            }
            return Ok(done);
        }
    }
    bail!(
        "process {pid}'s tree kept starting processes outside the label for {MAX_PASSES} \
         passes; {} were moved",
        done.moved
    )
}

/// `pid` and every process beneath it, parents before their children.
fn tree(pid: u32) -> Result<Vec<u32>> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match fs::read_to_string(entry.path().join("stat")) {
            Ok(stat) => {
                if let Some(parent) = parent_of(&stat) {
                    children.entry(parent).or_default().push(p);
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading /proc/{p}/stat")),
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        out.push(p);
        queue.extend(children.get(&p).into_iter().flatten());
    }
    Ok(out)
}

/// The parent pid in the text of /proc/PID/stat: the field after the state, which follows the
/// command name in parentheses (a name that may itself hold spaces and parentheses).
fn parent_of(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_follows_a_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (sh) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("42 (a) b (c) R 1 42 42"), Some(1));
        assert_eq!(parent_of("42 (x"), None);
    }

    #[test]
    fn this_process_is_in_its_own_tree_first() {
        let me = std::process::id();
        assert_eq!(tree(me).unwrap().first(), Some(&me));
    }
}
