//! Hard links and renames: a file keeps its rules under another name or in a moved tree.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use anyhow::Context;

use super::{GUEST_TMP, exists, f, gone, labelled, read, unlabelled};
use crate::{
    expect_eq,
    harness::{self, Ctx, Outcome},
};

pub(super) fn labelled_access_through_hard_link_made_before_start_is_eperm(ctx: &Ctx) -> Outcome {
    let link = f(ctx, "ws/key-link");
    let (a, b) = (fs::metadata(&link), fs::metadata(f(ctx, "secret.key")));
    expect_eq!(
        a.ok().map(|m| m.ino()),
        b.ok().map(|m| m.ino()),
        "inode of the hard link fixture and the secret"
    );
    expect_eq!(
        labelled(ctx, &["open-read", &link]),
        "EPERM",
        "read through a hard link to the secret"
    );
    for args in [
        vec!["open-write", link.as_str()],
        vec!["open-append", link.as_str()],
        vec!["open-trunc", link.as_str()],
        vec!["truncate", link.as_str(), "0"],
    ] {
        expect_eq!(
            labelled(ctx, &args),
            "EPERM",
            "{} through the hard link",
            args[0]
        );
    }
    expect_eq!(
        read(&f(ctx, "secret.key")),
        Some("secret\n".to_string()),
        "the secret after denied writes through its hard link"
    );
    Ok(())
}

pub(super) fn labelled_rename_or_link_of_read_denied_file_is_eperm(ctx: &Ctx) -> Outcome {
    let cases = [
        ("rename", "ws/private/token.txt", "ws/token-moved.txt"),
        ("link", "ws/private/token.txt", "ws/token-linked.txt"),
        ("rename", "secret.key", "ws/secret-moved.key"),
        ("link", "secret.key", "ws/secret-linked.key"),
        ("rename", "vault/doc.txt", "ws/doc-moved.txt"),
        ("link", "vault/doc.txt", "ws/doc-linked.txt"),
    ];
    for (action, from, to) in cases {
        gone(&f(ctx, to));
        expect_eq!(
            labelled(ctx, &[action, &f(ctx, from), &f(ctx, to)]),
            "EPERM",
            "{action} {from} -> {to}"
        );
        expect_eq!(exists(&f(ctx, to)), false, "a denied {action} made {to}");
        expect_eq!(
            exists(&f(ctx, from)),
            true,
            "a denied {action} removed {from}"
        );
    }
    expect_eq!(
        fs::metadata(f(ctx, "ws/private/token.txt"))
            .map(|m| m.nlink())
            .ok(),
        Some(1),
        "links to the private token"
    );
    Ok(())
}

/// Renames the directory of a denied tree (`dir` is not itself under its own `dir/**` rule, and
/// the workspace lets it be written), then asks whether the file inside is still protected.
fn renamed_tree_stays_protected(ctx: &Ctx, dir: &str, file: &str, probe: &str) -> Outcome {
    let (from, to) = (f(ctx, dir), f(ctx, &format!("{dir}-moved")));
    let verdict = labelled(ctx, &["rename", &from, &to]);
    if verdict == "OK" {
        let inside = format!("{to}/{file}");
        let after = labelled(ctx, &[probe, &inside]);
        fs::rename(&to, &from).context("moving the tree back")?;
        expect_eq!(
            after,
            "EPERM",
            "{probe} of {file} after the labelled process renamed {dir} to {dir}-moved (the rename was allowed)"
        );
    } else {
        expect_eq!(verdict, "EPERM", "rename of the directory {dir}");
        expect_eq!(exists(&from), true, "{dir} after a denied rename");
    }
    Ok(())
}

pub(super) fn labelled_renaming_read_denied_tree_does_not_expose_it(ctx: &Ctx) -> Outcome {
    renamed_tree_stays_protected(ctx, "ws/private", "token.txt", "open-read")
}

pub(super) fn labelled_renaming_write_denied_tree_does_not_unlock_it(ctx: &Ctx) -> Outcome {
    renamed_tree_stays_protected(ctx, "ws/locked", "file.txt", "open-write")
}

/// The kernel caches, per directory, what its entries' paths are judged to (`dircache.rs` in
/// agent-ebpf): the directory's dentry stays the same when it, or a directory above it, is
/// renamed, so the cache must notice the rename. The label reads a file twice (filling the
/// cache, then from it), a rename moves the file's directory, or the one above it, into the
/// read-denied tree, and the read under the new path must be refused.
pub(super) fn labelled_read_after_its_directory_moved_into_a_denied_tree_is_eperm(
    ctx: &Ctx,
) -> Outcome {
    // (directory renamed, file below it, who renames)
    for (dir, file, by_label) in [
        ("ws/cached", "f.txt", true),
        ("ws/outer", "inner/f.txt", true),
        ("ws/outer2", "inner/f.txt", false),
    ] {
        let from = f(ctx, dir);
        let name = dir.rsplit('/').next().unwrap_or(dir);
        let to = f(ctx, &format!("ws/private/{name}"));
        harness::write(Path::new(&format!("{from}/{file}")), "cached\n")?;
        for round in ["filling the cache", "from the cache"] {
            expect_eq!(
                labelled(ctx, &["open-read", &format!("{from}/{file}")]),
                "OK",
                "read of {dir}/{file}, {round}"
            );
        }
        if by_label {
            expect_eq!(
                labelled(ctx, &["rename", &from, &to]),
                "OK",
                "the label's rename of {dir} into ws/private"
            );
        } else {
            fs::rename(&from, &to).context("the unlabelled rename")?;
        }
        let after = labelled(ctx, &["open-read", &format!("{to}/{file}")]);
        fs::remove_dir_all(&to).context("removing the moved directory")?;
        expect_eq!(
            after,
            "EPERM",
            "read of {file} once {dir} moved into the denied ws/private (renamed by {})",
            if by_label {
                "the label"
            } else {
                "an unlabelled process"
            }
        );
    }
    Ok(())
}

/// The same for the hooks whose paths are rebuilt by a dentry walk (create, chmod): the label
/// creates files in a directory and changes their mode (filling the cache and using it), an
/// unlabelled process moves the directory into the write-locked tree, and neither a create
/// nor a chmod there may pass.
pub(super) fn labelled_create_after_its_directory_moved_into_a_locked_tree_is_eperm(
    ctx: &Ctx,
) -> Outcome {
    let (from, to) = (f(ctx, "ws/wcache"), f(ctx, "ws/locked/wcache"));
    fs::create_dir_all(&from).context("the directory")?;
    for name in ["a", "b"] {
        let file = format!("{from}/{name}");
        expect_eq!(labelled(ctx, &["create", &file]), "OK", "create of {name}");
        expect_eq!(
            labelled(ctx, &["chmod", &file, "600"]),
            "OK",
            "chmod of {name}"
        );
    }
    fs::rename(&from, &to).context("the unlabelled rename")?;
    let create = labelled(ctx, &["create", &format!("{to}/c")]);
    let chmod = labelled(ctx, &["chmod", &format!("{to}/a"), "644"]);
    let created = exists(&format!("{to}/c"));
    fs::remove_dir_all(&to).context("removing the moved directory")?;
    expect_eq!(
        create,
        "EPERM",
        "create in wcache once moved into ws/locked"
    );
    expect_eq!(created, false, "a denied create left a file");
    expect_eq!(chmod, "EPERM", "chmod in wcache once moved into ws/locked");
    Ok(())
}

/// A hard link to a read-denied secret made by an unlabelled process while the daemon enforces,
/// on the suite's tmpfs and in the guest's /tmp: the label can't read it under the new name.
pub(super) fn labelled_read_of_hard_link_made_while_enforcing_is_eperm(ctx: &Ctx) -> Outcome {
    let guest = |rel: &str| {
        ctx.path(&format!("{GUEST_TMP}/{rel}"))
            .display()
            .to_string()
    };
    for (secret, link) in [
        (f(ctx, "secret.key"), f(ctx, "ws/key-link-late")),
        (guest("secret.key"), guest("ws/key-link-late")),
    ] {
        let _ = fs::remove_file(&link);
        fs::hard_link(&secret, &link).with_context(|| format!("ln {secret} {link}"))?;
        expect_eq!(
            labelled(ctx, &["open-read", &link]),
            "EPERM",
            "labelled read of {link}, a hard link to {secret}"
        );
        expect_eq!(
            unlabelled(ctx, &["open-read", &link]),
            "OK",
            "unlabelled read of {link}"
        );
    }
    Ok(())
}
