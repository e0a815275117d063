//! Files on overlayfs: judged on the path the process sees, not on the layers' files.

use super::{OVL, f, gone, labelled, read};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
};

pub(super) fn labelled_write_open_on_overlayfs_is_judged_on_the_visible_path(ctx: &Ctx) -> Outcome {
    // Writing a file that is only in the lower layer copies it up first: the kernel's own
    // opens of the layers' files must not be judged as if the process had named them.
    let o = |rel: &str| f(ctx, &format!("{OVL}/{rel}"));
    let new = o("ws/new.txt");
    gone(&new);
    for (probe, path, want) in [
        ("open-write", o("ws/lower.txt"), "OK"),
        ("open-append", o("ws/upper.txt"), "OK"),
        ("open-rdwr", o("ws/lower.txt"), "OK"),
        ("create", new.clone(), "OK"),
        ("open-write", o("outside.txt"), "EPERM"),
        ("open-read", o("secret.key"), "EPERM"),
        ("open-read", o("ws/lower.txt"), "OK"),
    ] {
        expect_eq!(
            labelled(ctx, &[probe, &path]),
            want,
            "{probe} of {path} on overlayfs"
        );
    }
    expect_eq!(
        read(&o("ws/lower.txt")),
        Some("lower\n".to_string()),
        "ws/lower.txt"
    );
    expect_eq!(
        read(&new),
        Some(String::new()),
        "the file created on overlayfs"
    );
    expect_eq!(
        read(&o("outside.txt")),
        Some("outside\n".to_string()),
        "outside.txt"
    );
    Ok(())
}

pub(super) fn labelled_access_through_hard_link_on_overlayfs_made_before_start_is_eperm(
    ctx: &Ctx,
) -> Outcome {
    let link = f(ctx, &format!("{OVL}/ws/key-link"));
    for probe in ["open-read", "open-write"] {
        expect_eq!(
            labelled(ctx, &[probe, &link]),
            "EPERM",
            "{probe} through a hard link to the secret on overlayfs"
        );
    }
    expect_eq!(
        read(&f(ctx, &format!("{OVL}/secret.key"))),
        Some("ovl secret\n".to_string()),
        "the overlay secret"
    );
    Ok(())
}
