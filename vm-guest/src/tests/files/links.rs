//! Hard links and renames: a file keeps its rules under another name or in a moved tree.

use std::{fs, os::unix::fs::MetadataExt};

use anyhow::Context;

use super::{GUEST_TMP, exists, f, gone, labelled, read, unlabelled};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
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
