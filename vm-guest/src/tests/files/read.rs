//! Reads: the default, denied files and trees, and opens for reading and writing.

use super::{expect_verdicts, f, labelled, read};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
};

pub(super) fn labelled_read_outside_every_rule_is_allowed(ctx: &Ctx) -> Outcome {
    for rel in ["outside/readme.txt", "ws/a.txt", "ws/locked/file.txt"] {
        expect_eq!(
            labelled(ctx, &["open-read", &f(ctx, rel)]),
            "OK",
            "read of {rel}"
        );
    }
    Ok(())
}

pub(super) fn labelled_read_of_denied_file_is_eperm(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[(
            "open-read",
            "secret.key",
            "EPERM",
            "read of the exact denied file",
        )],
    )
}

pub(super) fn labelled_read_in_denied_tree_is_eperm(ctx: &Ctx) -> Outcome {
    for rel in [
        "vault/doc.txt",
        "vault/sub/deep.txt",
        "ws/private/token.txt",
    ] {
        expect_eq!(
            labelled(ctx, &["open-read", &f(ctx, rel)]),
            "EPERM",
            "read of {rel}"
        );
    }
    Ok(())
}

pub(super) fn labelled_read_write_open_needs_read_and_write_allowed(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[
            ("open-rdwr", "ws/a.txt", "OK", "O_RDWR in the workspace"),
            (
                "open-rdwr",
                "outside/readme.txt",
                "EPERM",
                "O_RDWR of a readable file that may not be written",
            ),
            (
                "open-rdwr",
                "ws/private/token.txt",
                "EPERM",
                "O_RDWR of a writable file that may not be read",
            ),
        ],
    )?;
    expect_eq!(
        read(&f(ctx, "ws/private/token.txt")),
        Some("token\n".to_string()),
        "the private token"
    );
    Ok(())
}
