//! Issue 4: what the daemon reports. Decision counters that equal the actions taken, the events
//! file (every field, rotation, SIGHUP), /metrics right after start, `actgate status`, and the
//! start-up self-test that refuses to run, or runs unready, when a hook doesn't deny.
//!
//! The fixtures live on a tmpfs of their own: on overlayfs (the VM's /tmp, a container's root)
//! the kernel calls `file_open` a second time for the backing file, which
//! `write_open_on_overlayfs_is_one_decision_judged_on_its_path` covers by itself.

mod counters;
pub(super) mod events;
mod logged;
mod metrics;
mod processes;
pub mod selftest;
mod status;

use std::{ffi::CString, fs, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{Context, Result};

use self::{counters::*, logged::*, status::*};
use super::{Enforcing, Suite, mounts::Mount};
use crate::{
    case,
    harness::{self, Ctx, Daemon},
};

const LABEL: &str = "tele";
const POLICY: &str = "vmtest-telemetry";
const AUDIT_LABEL: &str = "tele-audit";
const AUDIT_POLICY: &str = "vmtest-telemetry-audit";
const FLOOD_LABEL: &str = "tele-flood";
const FLOOD_POLICY: &str = "vmtest-telemetry-flood";
const OVERLAY_LABEL: &str = "tele-ovl";
const OVERLAY_POLICY: &str = "vmtest-telemetry-overlay";
/// Policy files in the suite's directory (the self-test's own policy is not one of them).
const POLICIES: u64 = 4;
const LABELS: [&str; 4] = [LABEL, AUDIT_LABEL, FLOOD_LABEL, OVERLAY_LABEL];
/// Every connection to this address is denied (audited for AUDIT_LABEL).
const DENIED_IP: &str = "127.0.0.9";

const ACTIONS: [&str; 13] = [
    "exec",
    "file_write",
    "file_read",
    "connect",
    "bpf",
    "capability",
    "signal",
    "ptrace",
    "namespace",
    "cgroup",
    "unix_connect",
    "listen",
    "socket",
];
const VERDICTS: [&str; 3] = ["allow", "deny", "audit"];
/// The hook behind each action, as the self-test names it.
const HOOKS: [(&str, &str); 16] = [
    ("exec", "bprm_check_security"),
    ("file_write", "file_open"),
    ("file_read", "file_open"),
    ("file_write", "path_rename"),
    ("file_write", "path_unlink"),
    ("bpf", "bpf"),
    ("capability", "capable"),
    ("signal", "task_kill"),
    ("ptrace", "ptrace_access_check"),
    ("namespace", "userns_create"),
    ("cgroup", "task_alloc"),
    ("connect", "socket_connect"),
    ("unix_connect", "unix_stream_connect"),
    ("listen", "socket_listen"),
    ("socket", "socket_create"),
    ("socket", "socket_setsockopt"),
];
/// The fields of an event line, all of them.
const EVENT_FIELDS: [&str; 13] = [
    "time", "label", "policy", "action", "verdict", "reason", "target", "pid", "ppid", "uid",
    "comm", "exe", "cgroup",
];

/// A path under the suite's scratch directory.
fn t(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("tele/{rel}")).display().to_string()
}

fn rules(ctx: &Ctx) -> String {
    format!(
        "exec:
  default: allow
  deny: [{denied}]
files:
  write:
    default: allow
    deny: [{wdenied}]
  read:
    default: allow
    deny: [{rdenied}]
network:
  connect:
    default: allow
    deny: [{DENIED_IP}/32]
",
        denied = t(ctx, "bin/denied"),
        wdenied = t(ctx, "write-denied.txt"),
        rdenied = t(ctx, "read-denied.txt"),
    )
}

const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// The file system type (statfs f_type) of the file system holding `path`.
fn fs_type(path: &Path) -> Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

/// The files the tests act on and the policies, on a tmpfs of their own.
fn files(ctx: &Ctx) -> Result<Mount> {
    let tmpfs = Mount::tmpfs(&ctx.path("tele"))?;
    harness::write(&ctx.path("tele-overlay/ok.txt"), "overlay\n")?;
    harness::install("/bin/true", &ctx.path("tele/bin/allowed"))?;
    harness::install("/bin/true", &ctx.path("tele/bin/denied"))?;
    for rel in [
        "write-denied.txt",
        "write-ok.txt",
        "read-denied.txt",
        "flood.txt",
    ] {
        harness::write(&ctx.path(&format!("tele/{rel}")), "telemetry\n")?;
    }
    let link = ctx.path("tele/link-to-read-denied");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(ctx.path("tele/read-denied.txt"), &link)?;
    harness::write(
        &ctx.path("tele/policies/enforce.yaml"),
        &format!(
            "name: {POLICY}\nlabels: [{LABEL}]\nmode: enforce\n{}",
            rules(ctx)
        ),
    )?;
    harness::write(
        &ctx.path("tele/policies/audit.yaml"),
        &format!(
            "name: {AUDIT_POLICY}\nlabels: [{AUDIT_LABEL}]\nmode: audit\n{}",
            rules(ctx)
        ),
    )?;
    harness::write(
        &ctx.path("tele/policies/flood.yaml"),
        &format!(
            "name: {FLOOD_POLICY}\nlabels: [{FLOOD_LABEL}]\nmode: enforce\nfiles:\n  read:\n    \
             default: allow\n    deny: [{}]\n",
            t(ctx, "flood.txt")
        ),
    )?;
    harness::write(
        &ctx.path("tele/policies/overlay.yaml"),
        &format!(
            "name: {OVERLAY_POLICY}\nlabels: [{OVERLAY_LABEL}]\nmode: enforce\nfiles:\n  write:\n    \
             default: deny\n    allow: [{}/**]\n",
            ctx.path("tele-overlay").display()
        ),
    )?;
    Ok(tmpfs)
}

fn start(ctx: &Ctx) -> Result<Enforcing> {
    let tmpfs = files(ctx)?;
    Ok(Enforcing {
        daemon: Daemon::start(ctx, &ctx.path("tele/policies"), &[])?,
        mounts: vec![tmpfs],
    })
}

/// The telemetry tests against one daemon, whose stop is checked last; the self-test's own
/// daemons come after, in `selftest::suite`.
pub fn suite() -> Suite<Enforcing> {
    Suite {
        name: "telemetry",
        start,
        cases: vec![
            case!(metrics_after_start_show_verified_hooks_policies_build_and_processes),
            case!(status_json_and_table_match_the_running_daemon),
            case!(decision_counters_equal_the_exact_actions_taken),
            case!(write_open_on_overlayfs_is_one_decision_judged_on_its_path),
            case!(unlabelled_actions_leave_decision_counters_alone),
            case!(audit_decisions_are_allowed_counted_and_logged, fixture),
            case!(
                flood_of_denials_is_counted_exactly_and_each_event_logged_or_counted_dropped,
                fixture
            ),
            case!(events_have_every_field_exactly, fixture),
            case!(event_of_exited_process_names_its_exe_and_cgroup, fixture),
            case!(events_file_follows_rename_and_sighup, fixture),
        ],
        stop: Enforcing::stop,
        stop_test: Some("telemetry_daemon_stops_with_exit_0"),
    }
}
