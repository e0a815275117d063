//! Each write operation, allowed and denied.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
};

use anyhow::Result;

use super::{create_is_denied, exists, expect_verdicts, f, fresh, gone, labelled, mode, read};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
};

/// One write operation, tried on the file `name` in the workspace, where the policy allows
/// it, then outside every rule and in the locked tree, where it denies it.
struct WriteOp<A, D> {
    /// The probe, and its arguments after the path.
    probe: (&'static str, &'static [&'static str]),
    /// What failure messages call it.
    what: &'static str,
    name: &'static str,
    /// Makes each path's starting state.
    prepare: fn(&str) -> Result<()>,
    /// What the allowed operation must leave at its path, and how to read it.
    allowed: (fn(&str) -> A, A),
    /// What each denied operation must leave at its path.
    denied: (fn(&str) -> D, D),
}

impl<A: PartialEq + std::fmt::Debug, D: PartialEq + std::fmt::Debug> WriteOp<A, D> {
    fn check(&self, ctx: &Ctx) -> Outcome {
        let (probe, extra) = self.probe;
        let what = self.what;
        let try_at = |path: &str| {
            let mut args = vec![probe, path];
            args.extend_from_slice(extra);
            labelled(ctx, &args)
        };
        let path = f(ctx, &format!("ws/{}", self.name));
        (self.prepare)(&path)?;
        expect_eq!(try_at(&path), "OK", "{what} in the workspace");
        let (read, want) = &self.allowed;
        expect_eq!(read(&path), *want, "what {what} left in the workspace");
        for dir in ["outside", "ws/locked"] {
            let rel = format!("{dir}/{}", self.name);
            let path = f(ctx, &rel);
            (self.prepare)(&path)?;
            expect_eq!(try_at(&path), "EPERM", "{what} of {rel}");
            let (read, want) = &self.denied;
            expect_eq!(read(&path), *want, "{rel} after a denied {what}");
        }
        Ok(())
    }
}

fn is_dir(path: &str) -> Option<bool> {
    fs::metadata(path).map(|m| m.is_dir()).ok()
}

fn is_fifo(path: &str) -> Option<bool> {
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .ok()
}

fn owner(path: &str) -> Option<(u32, u32)> {
    fs::metadata(path).ok().map(|m| (m.uid(), m.gid()))
}

pub(super) fn labelled_open_for_write_follows_write_rules(ctx: &Ctx) -> Outcome {
    for probe in ["open-write", "open-append"] {
        let allowed = f(ctx, "ws/open-w.txt");
        fresh(&allowed, "kept\n")?;
        expect_eq!(
            labelled(ctx, &[probe, &allowed]),
            "OK",
            "{probe} in the workspace"
        );
        for rel in ["outside/open-w.txt", "ws/locked/open-w.txt", "secret.key"] {
            let denied = f(ctx, rel);
            let before = read(&denied);
            if before.is_none() {
                fresh(&denied, "kept\n")?;
            }
            let before = read(&denied);
            expect_eq!(
                labelled(ctx, &[probe, &denied]),
                "EPERM",
                "{probe} of {rel}"
            );
            expect_eq!(
                read(&denied),
                before,
                "content of {rel} after a denied {probe}"
            );
        }
    }
    Ok(())
}

pub(super) fn labelled_open_with_truncate_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("open-trunc", &[]),
        what: "O_TRUNC open",
        name: "trunc.txt",
        prepare: |p| fresh(p, "0123456789\n"),
        allowed: (read, Some(String::new())),
        denied: (read, Some("0123456789\n".to_string())),
    }
    .check(ctx)
}

pub(super) fn labelled_create_follows_write_rules(ctx: &Ctx) -> Outcome {
    for probe in ["create", "create-rdonly"] {
        let allowed = f(ctx, &format!("ws/{probe}-new.txt"));
        gone(&allowed);
        expect_eq!(
            labelled(ctx, &[probe, &allowed]),
            "OK",
            "{probe} in the workspace"
        );
        expect_eq!(
            read(&allowed),
            Some(String::new()),
            "the file {probe} made in the workspace"
        );
        for dir in ["outside", "ws/locked", "ws-other"] {
            let denied = f(ctx, &format!("{dir}/{probe}-new.txt"));
            gone(&denied);
            expect_eq!(
                labelled(ctx, &[probe, &denied]),
                "EPERM",
                "{probe} in {dir}"
            );
            expect_eq!(
                exists(&denied),
                false,
                "{probe} in {dir} made the file anyway"
            );
        }
    }
    Ok(())
}

pub(super) fn labelled_create_for_reading_in_read_denied_tree_is_eperm(ctx: &Ctx) -> Outcome {
    // O_CREAT|O_RDONLY in ws/private: the create is a write the workspace allows (judged by
    // path_mknod, which doesn't see the open flags), the open a read the private tree denies.
    // The call fails with EPERM; the empty file it created is one a write there may create.
    let path = f(ctx, "ws/private/created-ro.txt");
    gone(&path);
    expect_eq!(
        labelled(ctx, &["create-rdonly", &path]),
        "EPERM",
        "O_CREAT|O_RDONLY in a read-denied tree"
    );
    gone(&path);
    // Created for writing only, the same name is fine: no read is involved.
    expect_eq!(
        labelled(ctx, &["create", &path]),
        "OK",
        "O_CREAT|O_WRONLY in a read-denied but writable tree"
    );
    Ok(())
}

pub(super) fn labelled_truncate_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("truncate", &["4"]),
        what: "truncate(2)",
        name: "truncate.txt",
        prepare: |p| fresh(p, "0123456789"),
        allowed: (read, Some("0123".to_string())),
        denied: (read, Some("0123456789".to_string())),
    }
    .check(ctx)
}

pub(super) fn labelled_unlink_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("unlink", &[]),
        what: "unlink",
        name: "unlink-me.txt",
        prepare: |p| fresh(p, "x"),
        allowed: (exists, false),
        denied: (read, Some("x".to_string())),
    }
    .check(ctx)
}

pub(super) fn labelled_mkdir_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("mkdir", &[]),
        what: "mkdir",
        name: "new-dir",
        prepare: |p| {
            gone(p);
            Ok(())
        },
        allowed: (is_dir, Some(true)),
        denied: (exists, false),
    }
    .check(ctx)
}

pub(super) fn labelled_rmdir_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("rmdir", &[]),
        what: "rmdir",
        name: "rmdir-me",
        prepare: |p| Ok(fs::create_dir_all(p)?),
        allowed: (exists, false),
        denied: (exists, true),
    }
    .check(ctx)
}

pub(super) fn labelled_mkfifo_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("mkfifo", &[]),
        what: "mkfifo",
        name: "fifo",
        prepare: |p| {
            gone(p);
            Ok(())
        },
        allowed: (is_fifo, Some(true)),
        denied: (exists, false),
    }
    .check(ctx)
}

pub(super) fn labelled_rename_needs_both_paths_writable(ctx: &Ctx) -> Outcome {
    let (from, to) = (f(ctx, "ws/ren-from.txt"), f(ctx, "ws/ren-to.txt"));
    fresh(&from, "moved\n")?;
    gone(&to);
    expect_eq!(
        labelled(ctx, &["rename", &from, &to]),
        "OK",
        "rename within the workspace"
    );
    expect_eq!(
        exists(&from),
        false,
        "the renamed file is still at its old name"
    );
    expect_eq!(read(&to), Some("moved\n".to_string()), "the renamed file");
    for (from_rel, to_rel) in [
        ("outside/ren-in.txt", "ws/ren-in.txt"),
        ("ws/ren-out.txt", "outside/ren-out.txt"),
        ("ws/ren-lock.txt", "ws/locked/ren-lock.txt"),
        ("ws/locked/ren-unlock.txt", "ws/ren-unlock.txt"),
    ] {
        let (from, to) = (f(ctx, from_rel), f(ctx, to_rel));
        fresh(&from, "stays\n")?;
        gone(&to);
        expect_eq!(
            labelled(ctx, &["rename", &from, &to]),
            "EPERM",
            "rename {from_rel} -> {to_rel}"
        );
        expect_eq!(
            read(&from),
            Some("stays\n".to_string()),
            "{from_rel} after a denied rename"
        );
        expect_eq!(exists(&to), false, "a denied rename made {to_rel}");
    }
    // Replacing an existing file is a write to the target too.
    let (from, to) = (f(ctx, "ws/ren-over.txt"), f(ctx, "outside/ren-over.txt"));
    fresh(&from, "new\n")?;
    fresh(&to, "old\n")?;
    expect_eq!(
        labelled(ctx, &["rename", &from, &to]),
        "EPERM",
        "rename over a file outside the workspace"
    );
    expect_eq!(
        read(&to),
        Some("old\n".to_string()),
        "the file a denied rename would replace"
    );
    Ok(())
}

pub(super) fn labelled_link_needs_the_new_name_writable(ctx: &Ctx) -> Outcome {
    let from = f(ctx, "ws/link-src.txt");
    fresh(&from, "linked\n")?;
    let to = f(ctx, "ws/link-new.txt");
    gone(&to);
    expect_eq!(
        labelled(ctx, &["link", &from, &to]),
        "OK",
        "link within the workspace"
    );
    expect_eq!(read(&to), Some("linked\n".to_string()), "the new hard link");
    for rel in ["outside/link-new.txt", "ws/locked/link-new.txt"] {
        let to = f(ctx, rel);
        gone(&to);
        expect_eq!(
            labelled(ctx, &["link", &from, &to]),
            "EPERM",
            "link to the new name {rel}"
        );
        expect_eq!(exists(&to), false, "a denied link made {rel}");
    }
    expect_eq!(
        fs::metadata(&from).map(|m| m.nlink()).ok(),
        Some(2),
        "links to the source after one allowed and two denied links"
    );
    Ok(())
}

pub(super) fn labelled_symlink_needs_the_link_path_writable(ctx: &Ctx) -> Outcome {
    // A symlink only names its target, so one to the secret may be made in the workspace;
    // reading through it is judged on the secret.
    let allowed = f(ctx, "ws/sym-new");
    gone(&allowed);
    let secret = f(ctx, "secret.key");
    expect_eq!(
        labelled(ctx, &["symlink", &secret, &allowed]),
        "OK",
        "symlink in the workspace"
    );
    expect_eq!(
        fs::read_link(&allowed)
            .ok()
            .map(|p| p.display().to_string()),
        Some(secret.clone()),
        "the symlink made"
    );
    expect_eq!(
        labelled(ctx, &["open-read", &allowed]),
        "EPERM",
        "read through the new symlink to the secret"
    );
    for rel in ["outside/sym-new", "ws/locked/sym-new"] {
        let denied = f(ctx, rel);
        gone(&denied);
        expect_eq!(
            labelled(ctx, &["symlink", &f(ctx, "ws/a.txt"), &denied]),
            "EPERM",
            "symlink at {rel}"
        );
        expect_eq!(exists(&denied), false, "a denied symlink made {rel}");
    }
    Ok(())
}

pub(super) fn labelled_chmod_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("chmod", &["600"]),
        what: "chmod",
        name: "mode.txt",
        prepare: |p| fresh(p, "m"),
        allowed: (mode, Some(0o600)),
        denied: (mode, Some(0o644)),
    }
    .check(ctx)
}

pub(super) fn labelled_chown_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("chown", &["1000", "1000"]),
        what: "chown",
        name: "owner.txt",
        prepare: |p| fresh(p, "o"),
        allowed: (owner, Some((1000, 1000))),
        denied: (owner, Some((0, 0))),
    }
    .check(ctx)
}

pub(super) fn labelled_write_in_deny_tree_inside_allowed_tree_is_eperm(ctx: &Ctx) -> Outcome {
    let file = f(ctx, "ws/locked/file.txt");
    for args in [
        vec!["open-write", file.as_str()],
        vec!["open-append", file.as_str()],
        vec!["truncate", file.as_str(), "0"],
        vec!["unlink", file.as_str()],
        vec!["chmod", file.as_str(), "600"],
    ] {
        expect_eq!(
            labelled(ctx, &args),
            "EPERM",
            "{} in the denied subtree",
            args[0]
        );
    }
    expect_eq!(
        read(&file),
        Some("locked\n".to_string()),
        "the locked file after denied writes"
    );
    expect_eq!(mode(&file), Some(0o644), "mode of the locked file");
    // Reading it is still fine: only writes are denied there.
    expect_eq!(
        labelled(ctx, &["open-read", &file]),
        "OK",
        "read in the denied subtree"
    );
    Ok(())
}

pub(super) fn labelled_write_outside_every_rule_gets_default_deny(ctx: &Ctx) -> Outcome {
    for rel in [
        "default-new.txt",
        "outside/default-new.txt",
        "vault/default-new.txt",
    ] {
        gone(&f(ctx, rel));
        create_is_denied(ctx, rel)?;
    }
    expect_eq!(
        labelled(ctx, &["open-write", &f(ctx, "outside/readme.txt")]),
        "EPERM",
        "write to an existing file outside every rule"
    );
    Ok(())
}

pub(super) fn labelled_file_rules_match_whole_path_components(ctx: &Ctx) -> Outcome {
    // `ws/**` doesn't cover `ws-other/`, `ws/locked/**` doesn't cover `ws/locked-not/`.
    gone(&f(ctx, "ws-other/new.txt"));
    expect_verdicts(
        ctx,
        &[
            ("create", "ws-other/new.txt", "EPERM", "create in ws-other"),
            (
                "open-write",
                "ws/locked-not/file.txt",
                "OK",
                "write in ws/locked-not",
            ),
            // An exact rule is the path itself: `secret.key.bak` and the tree's sibling are
            // readable.
            (
                "open-read",
                "secret.key.bak",
                "OK",
                "read of secret.key.bak",
            ),
            (
                "open-read",
                "vault-public/doc.txt",
                "OK",
                "read of vault-public/doc.txt",
            ),
        ],
    )
}
