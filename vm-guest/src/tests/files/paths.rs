//! The ways a path can dodge a rule: symlinks, relative paths, `..`, /proc magic links.

use super::{LABEL, create_is_denied, exists, expect_verdicts, f, labelled, mode, read};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
};

pub(super) fn labelled_file_access_through_symlink_is_judged_on_target(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[
            (
                "open-read",
                "ws/link-to-secret",
                "EPERM",
                "read through a symlink to the secret",
            ),
            (
                "open-write",
                "ws/link-to-locked",
                "EPERM",
                "write through a symlink into the locked tree",
            ),
        ],
    )?;
    expect_eq!(
        labelled(ctx, &["chmod", &f(ctx, "ws/link-to-locked"), "600"]),
        "EPERM",
        "chmod through a symlink into the locked tree"
    );
    expect_eq!(
        mode(&f(ctx, "ws/locked/file.txt")),
        Some(0o644),
        "mode of the locked file"
    );
    for rel in [
        "ws/link-to-locked-dir/via.txt",
        "ws/link-to-outside/via.txt",
    ] {
        create_is_denied(ctx, rel)?;
    }
    // The other way round: a symlink outside the workspace to a workspace file is writable.
    expect_eq!(
        labelled(ctx, &["open-write", &f(ctx, "outside/link-to-ws")]),
        "OK",
        "write through a symlink from outside into the workspace"
    );
    Ok(())
}

pub(super) fn labelled_file_access_through_relative_path_is_judged_on_resolved_file(
    ctx: &Ctx,
) -> Outcome {
    let g = ctx.guest.display().to_string();
    let cases = [
        ("vault", "open-read doc.txt", "EPERM"),
        ("vault/sub", "open-read ../doc.txt", "EPERM"),
        ("ws", "open-read ../secret.key", "EPERM"),
        ("ws", "open-read private/token.txt", "EPERM"),
        ("ws/locked", "open-write ./file.txt", "EPERM"),
        ("ws/locked", "create rel-new.txt", "EPERM"),
        ("ws", "create ../outside/rel-new.txt", "EPERM"),
        ("ws/locked", "open-write ../a.txt", "OK"),
    ];
    for (dir, action, want) in cases {
        let script = format!("cd {} && {g} try {action}", f(ctx, dir));
        expect_eq!(ctx.labelled_sh(LABEL, &script), want, "`{action}` in {dir}");
    }
    expect_eq!(
        exists(&f(ctx, "ws/locked/rel-new.txt")),
        false,
        "ws/locked/rel-new.txt"
    );
    expect_eq!(
        exists(&f(ctx, "outside/rel-new.txt")),
        false,
        "outside/rel-new.txt"
    );
    Ok(())
}

pub(super) fn labelled_file_access_through_dotdot_is_judged_on_resolved_file(ctx: &Ctx) -> Outcome {
    let cases = [
        ("open-read", "ws/../secret.key", "EPERM"),
        ("open-read", "outside/../vault/doc.txt", "EPERM"),
        ("open-read", "ws/locked/../private/token.txt", "EPERM"),
        ("open-write", "ws/../outside/readme.txt", "EPERM"),
        ("open-write", "ws/private/../locked/file.txt", "EPERM"),
        ("create", "ws/../outside/dotdot-new.txt", "EPERM"),
        ("open-write", "ws/locked/../a.txt", "OK"),
        ("open-read", "vault/../outside/readme.txt", "OK"),
    ];
    for (action, rel, want) in cases {
        expect_eq!(
            labelled(ctx, &[action, &f(ctx, rel)]),
            want,
            "{action} of {rel}"
        );
    }
    expect_eq!(
        exists(&f(ctx, "outside/dotdot-new.txt")),
        false,
        "outside/dotdot-new.txt"
    );
    Ok(())
}

pub(super) fn labelled_reopen_through_proc_magic_link_is_judged_on_the_file(ctx: &Ctx) -> Outcome {
    // The shell opens fd 3 as the policy allows; the probe then reopens /proc/self/fd/3 (a
    // magic link to the file) with the access the policy denies.
    let g = ctx.guest.display().to_string();
    let cases = [
        (
            "exec 3>>",
            "ws/private/token.txt",
            "open-read /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "ws/locked/file.txt",
            "open-write /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "outside/readme.txt",
            "open-append /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "vault",
            "open-read /proc/self/fd/3/doc.txt",
            "EPERM",
        ),
        (
            "cd ",
            "vault",
            "open-read /proc/self/cwd/sub/deep.txt",
            "EPERM",
        ),
        ("exec 3>>", "ws/a.txt", "open-read /proc/self/fd/3", "OK"),
        ("exec 3<", "ws/a.txt", "open-write /proc/self/fd/3", "OK"),
    ];
    for (how, rel, action, want) in cases {
        let setup = format!("{how}{}", f(ctx, rel));
        let script = format!("{setup} && {g} try {action}");
        expect_eq!(
            ctx.labelled_sh(LABEL, &script),
            want,
            "`{action}` after `{setup}`"
        );
    }
    expect_eq!(
        read(&f(ctx, "ws/locked/file.txt")),
        Some("locked\n".to_string()),
        "the locked file"
    );
    Ok(())
}
