//! files.write and files.read enforcement end to end: every write operation allowed and
//! denied, reads, the ways a path can dodge a rule, and exact decision counters.

mod links;
mod overlay;
mod paths;
mod read;
mod telemetry;
mod write;

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
};

use anyhow::{Context, Result};

use self::{links::*, overlay::*, paths::*, read::*, telemetry::*, write::*};
use super::{Enforcing, Suite, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, Outcome},
};

const LABEL: &str = "vmfiles";

/// A path under the suite's scratch directory.
fn f(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("files/{rel}")).display().to_string()
}

fn policy(ctx: &Ctx) -> String {
    format!(
        "name: vmtest-files
labels: [{LABEL}]
mode: enforce
files:
  write:
    default: deny
    allow: [{ws}/**, {ovl}/ws/**]
    deny: [{ws}/locked/**, {secret}, {ovl}/secret.key]
  read:
    default: allow
    deny: [{secret}, {vault}/**, {ws}/private/**, {ovl}/secret.key, {guest}/secret.key]
",
        ws = f(ctx, "ws"),
        guest = ctx.path(GUEST_TMP).display(),
        secret = f(ctx, "secret.key"),
        vault = f(ctx, "vault"),
        ovl = f(ctx, OVL),
    )
}

/// A directory in the guest's own /tmp, outside the suite's tmpfs: virtme-ng's overlayfs,
/// whose layers are on two file systems, so `stat` reports another st_dev than the kernel's.
const GUEST_TMP: &str = "files-guest-tmp";

/// The merged directory of the suite's overlayfs mount, relative to the suite's directory.
const OVL: &str = "ovl/merged";

/// An overlayfs (lower, upper and work directories on the suite's tmpfs) with a workspace,
/// a secret, and a hard link to the secret made through the merged view before the daemon
/// starts.
fn overlay_fixtures(ctx: &Ctx) -> Result<Mount> {
    harness::write(&ctx.path("files/ovl/lower/ws/lower.txt"), "lower\n")?;
    harness::write(&ctx.path("files/ovl/lower/outside.txt"), "outside\n")?;
    harness::write(&ctx.path("files/ovl/lower/secret.key"), "ovl secret\n")?;
    fs::create_dir_all(ctx.path("files/ovl/upper"))?;
    fs::create_dir_all(ctx.path("files/ovl/work"))?;
    let layer = |rel: &str| ctx.path(&format!("files/ovl/{rel}"));
    let overlay = Mount::overlay(
        &layer("lower"),
        &layer("upper"),
        &layer("work"),
        &ctx.path(&format!("files/{OVL}")),
    )?;
    harness::write(
        Path::new(&f(ctx, &format!("{OVL}/ws/upper.txt"))),
        "upper\n",
    )?;
    fs::hard_link(
        f(ctx, &format!("{OVL}/secret.key")),
        f(ctx, &format!("{OVL}/ws/key-link")),
    )
    .context("hard link on the overlay")?;
    Ok(overlay)
}
/// What must exist before the daemon starts, and the daemon; each test creates the files it
/// changes itself.
fn start(ctx: &Ctx) -> Result<Enforcing> {
    let tmpfs = Mount::tmpfs(&ctx.path("files"))?;
    for (rel, text) in [
        ("secret.key", "secret\n"),
        ("secret.key.bak", "not a secret\n"),
        ("vault/doc.txt", "vault doc\n"),
        ("vault/sub/deep.txt", "deep\n"),
        ("vault-public/doc.txt", "public doc\n"),
        ("outside/readme.txt", "readme\n"),
        ("ws/a.txt", "workspace a\n"),
        ("ws/locked/file.txt", "locked\n"),
        ("ws/locked-not/file.txt", "not locked\n"),
        ("ws/private/token.txt", "token\n"),
    ] {
        harness::write(&ctx.path(&format!("files/{rel}")), text)?;
    }
    fs::create_dir_all(f(ctx, "ws-other"))?;
    // A hard link to the exact denied secret, inside the writable workspace, made before the
    // daemon starts: the kernel must know the file, not only its name.
    fs::hard_link(f(ctx, "secret.key"), f(ctx, "ws/key-link")).context("hard link")?;
    symlink(f(ctx, "secret.key"), f(ctx, "ws/link-to-secret"))?;
    symlink(f(ctx, "ws/locked/file.txt"), f(ctx, "ws/link-to-locked"))?;
    symlink(f(ctx, "ws/locked"), f(ctx, "ws/link-to-locked-dir"))?;
    symlink(f(ctx, "outside"), f(ctx, "ws/link-to-outside"))?;
    symlink(f(ctx, "ws/a.txt"), f(ctx, "outside/link-to-ws"))?;
    let overlay = overlay_fixtures(ctx)?;
    harness::write(
        &ctx.path(&format!("{GUEST_TMP}/secret.key")),
        "guest secret\n",
    )?;
    fs::create_dir_all(ctx.path(&format!("{GUEST_TMP}/ws")))?;
    harness::write(&ctx.path("files/policies/files.yaml"), &policy(ctx))?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &ctx.path("files/policies"))?,
        // The overlay first: it is mounted on the tmpfs.
        mounts: vec![overlay, tmpfs],
    })
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn exists(path: &str) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn mode(path: &str) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// (Re)creates a file the harness owns, with mode 0644 and owner root.
fn fresh(path: &str, text: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    harness::write(Path::new(path), text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Removes whatever is at `path`, so a create test starts from nothing.
fn gone(path: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_dir(path);
}

fn labelled(ctx: &Ctx, args: &[&str]) -> String {
    ctx.attempt(Some(LABEL), args)
}

fn unlabelled(ctx: &Ctx, args: &[&str]) -> String {
    ctx.attempt(None, args)
}

/// Runs each `(probe, rel, want, what)`: `probe` as the label on the suite's path `rel`, which
/// must answer `want`; `what` names the step in a failure.
fn expect_verdicts(ctx: &Ctx, steps: &[(&str, &str, &str, &str)]) -> Outcome {
    for (probe, rel, want, what) in steps {
        expect_eq!(labelled(ctx, &[probe, &f(ctx, rel)]), *want, "{what}");
    }
    Ok(())
}

/// A labelled create of `rel` that must be denied and leave nothing behind.
fn create_is_denied(ctx: &Ctx, rel: &str) -> Outcome {
    let path = f(ctx, rel);
    expect_eq!(
        labelled(ctx, &["create", &path]),
        "EPERM",
        "create of {rel}"
    );
    expect_eq!(exists(&path), false, "a denied create made {rel}");
    Ok(())
}

/// The file tests against the shared daemon, whose reload without them is checked last.
pub fn suite() -> Suite<Enforcing> {
    Suite {
        name: "files",
        start,
        cases: vec![
            case!(labelled_open_for_write_follows_write_rules),
            case!(labelled_open_with_truncate_follows_write_rules),
            case!(labelled_create_follows_write_rules),
            case!(labelled_create_for_reading_in_read_denied_tree_is_eperm),
            case!(labelled_truncate_follows_write_rules),
            case!(labelled_unlink_follows_write_rules),
            case!(labelled_mkdir_follows_write_rules),
            case!(labelled_rmdir_follows_write_rules),
            case!(labelled_mkfifo_follows_write_rules),
            case!(labelled_rename_needs_both_paths_writable),
            case!(labelled_link_needs_the_new_name_writable),
            case!(labelled_symlink_needs_the_link_path_writable),
            case!(labelled_chmod_follows_write_rules),
            case!(labelled_chown_follows_write_rules),
            case!(labelled_write_in_deny_tree_inside_allowed_tree_is_eperm),
            case!(labelled_write_outside_every_rule_gets_default_deny),
            case!(labelled_file_rules_match_whole_path_components),
            case!(labelled_read_outside_every_rule_is_allowed),
            case!(labelled_read_of_denied_file_is_eperm),
            case!(labelled_read_in_denied_tree_is_eperm),
            case!(labelled_read_write_open_needs_read_and_write_allowed),
            case!(labelled_file_access_through_symlink_is_judged_on_target),
            case!(labelled_file_access_through_relative_path_is_judged_on_resolved_file),
            case!(labelled_file_access_through_dotdot_is_judged_on_resolved_file),
            case!(labelled_reopen_through_proc_magic_link_is_judged_on_the_file),
            case!(labelled_access_through_hard_link_made_before_start_is_eperm),
            case!(labelled_read_of_hard_link_made_while_enforcing_is_eperm),
            case!(labelled_rename_or_link_of_read_denied_file_is_eperm),
            case!(labelled_renaming_read_denied_tree_does_not_expose_it),
            case!(labelled_renaming_write_denied_tree_does_not_unlock_it),
            case!(labelled_read_after_its_directory_moved_into_a_denied_tree_is_eperm),
            case!(labelled_create_after_its_directory_moved_into_a_locked_tree_is_eperm),
            case!(unlabelled_file_actions_are_unaffected),
            case!(labelled_write_open_on_overlayfs_is_judged_on_the_visible_path),
            case!(labelled_access_through_hard_link_on_overlayfs_made_before_start_is_eperm),
            case!(file_decision_counters_count_each_decision_exactly),
            case!(labelled_denied_read_event_names_the_resolved_file, fixture),
        ],
        stop: Enforcing::stop,
        stop_test: Some("files_policies_are_withdrawn_by_a_reload"),
    }
}
