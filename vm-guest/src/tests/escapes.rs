//! Issue 12, point 3: root in a label is not root over actgate. Each route out from under the
//! policy is tried as root and as `nobody` and must be refused; afterwards the daemon still
//! runs and the policy still holds (a denied exec denied, an allowed one allowed).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use super::{Enforcing, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, RAN, scrape},
};

const LABEL: &str = "vmesc";
/// Granted CAP_NET_RAW, CAP_DAC_READ_SEARCH and user namespaces by its policy.
const GRANTED: &str = "vmesc-granted";
/// Granted CAP_SYS_ADMIN and CAP_SYS_CHROOT, but not namespaces: the mount hooks alone refuse.
const ADMIN: &str = "vmesc-admin";
/// Another label, whose cgroup a process of `LABEL` tries to move into.
const OTHER: &str = "vmesc-other";
/// The cgroup v2 mount in the guest.
const CGROUP2: &str = "/sys/fs/cgroup";
const USERS: [&str; 2] = ["root", "nobody"];

fn p(ctx: &Ctx, rel: &str) -> PathBuf {
    ctx.path(&format!("esc/{rel}"))
}

fn start(ctx: &Ctx) -> Result<Enforcing> {
    harness::install("/bin/true", &p(ctx, "bin/allowed"))?;
    harness::install("/bin/true", &p(ctx, "bin/denied"))?;
    let mnt = p(ctx, "mnt");
    fs::create_dir_all(&mnt)?;
    fs::set_permissions(&mnt, PermissionsExt::from_mode(0o777))?;
    // A bpffs of the test's own, outside every label, holding a pinned map and a directory.
    let bpffs = Mount::bpffs(&p(ctx, "bpffs"))?;
    pin_map(&p(ctx, "bpffs/pinned"))?;
    fs::create_dir(p(ctx, "bpffs/dir"))?;
    let policy = format!(
        // Raw sockets are allowed, so the raw-socket probe reaches the capability check.
        "name: vmtest-esc\nlabels: [{LABEL}]\nexec:\n  deny: [{}]\nnetwork:\n  raw: allow\n---\n\
         name: vmtest-esc-granted\nlabels: [{GRANTED}]\nnetwork:\n  raw: allow\nprocess:\n  capabilities: [CAP_NET_RAW, CAP_DAC_READ_SEARCH]\n  namespaces: allow\n---\n\
         name: vmtest-esc-admin\nlabels: [{ADMIN}]\nprocess:\n  capabilities: [CAP_SYS_ADMIN, CAP_SYS_CHROOT]\n---\n\
         name: vmtest-esc-other\nlabels: [{OTHER}]\n",
        p(ctx, "bin/denied").display()
    );
    harness::write(&p(ctx, "policies/esc.yaml"), &policy)?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &p(ctx, "policies"))?,
        mounts: vec![bpffs],
    })
}

/// Pins a new one-element array map at `path` (as the unlabelled test itself).
fn pin_map(path: &Path) -> Result<()> {
    use agent_common::sys;
    use aya_obj::generated::bpf_map_type;
    use std::os::fd::AsFd;
    let map =
        sys::create_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, None).context("creating a map to pin")?;
    sys::pin(map.as_fd(), path).with_context(|| format!("pinning a map at {}", path.display()))
}

/// `vm-guest try ARGS` run by `actgate exec --user USER --label LABEL`; its verdict line.
fn attempt(ctx: &Ctx, user: &str, label: &str, args: &[&str]) -> String {
    ctx.attempt_as(label, user, args)
}

/// Fails unless ARGS meet `want` for every user in `LABEL`.
fn expect_all(ctx: &Ctx, label: &str, args: &[&str], want: &str) -> Outcome {
    for user in USERS {
        expect_eq!(
            attempt(ctx, user, label, args),
            want,
            "`try {}` as {user} in {label}",
            args.join(" ")
        );
    }
    Ok(())
}

/// The daemon still runs and is ready, and the policy still holds for every user.
fn still_in_force(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    expect_eq!(
        Path::new(&format!("/proc/{}", daemon.pid())).exists(),
        true,
        "the daemon (pid {}) still runs",
        daemon.pid()
    );
    expect_eq!(
        harness::http_get("/readyz").map(|(code, _)| code).ok(),
        Some(200),
        "/readyz afterwards"
    );
    let (denied, allowed) = (p(ctx, "bin/denied"), p(ctx, "bin/allowed"));
    expect_all(
        ctx,
        LABEL,
        &["exec", &denied.display().to_string()],
        "EPERM",
    )?;
    expect_all(ctx, LABEL, &["exec", &allowed.display().to_string()], RAN)
}

/// The change of one of `LABEL`'s decision counters while `f` runs.
fn counted(action: &str, verdict: &str, f: impl FnOnce() -> Outcome) -> Result<f64, NotPassed> {
    let before = scrape()?;
    f()?;
    let after = scrape()?;
    Ok(harness::decisions(&after, LABEL, action, verdict)
        - harness::decisions(&before, LABEL, action, verdict))
}

fn signals_to_the_daemon_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let pid = f.daemon.pid().to_string();
    // As root only actgate stands in the way; nobody is refused by the kernel's own check.
    let denied = counted("signal", "deny", || {
        for signal in ["15", "9"] {
            expect_all(ctx, LABEL, &["kill", &pid, signal], "EPERM")?;
        }
        Ok(())
    })?;
    expect_eq!(
        denied,
        2.0,
        "signal denials counted for root's kill -TERM and kill -9"
    );
    still_in_force(ctx, &f.daemon)
}

fn ptrace_and_the_daemons_memory_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let pid = f.daemon.pid().to_string();
    expect_all(ctx, LABEL, &["ptrace-attach", &pid], "EPERM")?;
    // The kernel reports a refused ptrace_may_access on /proc/PID/mem as EACCES (mm_access).
    let mem = format!("/proc/{pid}/mem");
    expect_all(ctx, LABEL, &["open-rdwr", &mem], "EACCES")?;
    still_in_force(ctx, &f.daemon)
}

/// An unlabelled process of the same user (a login shell, a tmux server) would do whatever a
/// labelled one made it do through ptrace or /proc/PID/mem, unjudged: only the label's own
/// processes may be reached.
fn processes_outside_the_label_are_out_of_reach(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    use std::os::unix::process::CommandExt;
    // nobody's group is nogroup, 65534 too: ptrace_may_access wants every id to match.
    for (user, uid) in [("root", 0), ("nobody", 65534)] {
        let mut outside = Command::new("/bin/sleep")
            .arg("60")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .spawn()
            .context("starting an unlabelled sleep")?;
        let pid = outside.id().to_string();
        let environ = format!("/proc/{pid}/environ");
        let denied = counted("ptrace", "deny", || {
            // The kernel reports a refused ptrace_may_access on /proc/PID/environ as EACCES.
            expect_eq!(
                attempt(ctx, user, LABEL, &["open-read", &environ]),
                "EACCES",
                "{user} in {LABEL} reading the environment of its own user's unlabelled process"
            );
            Ok(())
        });
        let attach = attempt(ctx, user, LABEL, &["ptrace-attach", &pid]);
        let _ = outside.kill();
        let _ = outside.wait();
        expect_eq!(denied?, 1.0, "ptrace denials counted for {user}'s read");
        expect_eq!(attach, "EPERM", "{user} in {LABEL} attaching to it");
    }
    // Within the label, a process may still look at its own children.
    let script = format!(
        "/bin/sleep 30 & p=$!; {} try open-read /proc/$p/environ; kill $p",
        ctx.guest.display()
    );
    expect_eq!(
        ctx.labelled_sh(LABEL, &script),
        "OK",
        "reading a child's environment within the label"
    );
    still_in_force(ctx, &f.daemon)
}

/// kernel.core_pattern and kernel.modprobe name programs the kernel runs as root, outside
/// every label; the SysRq trigger reboots. Root in a label may write none of them, whatever
/// its policy allows.
fn kernel_settings_cannot_be_written(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let files = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sysrq-trigger",
    ];
    let before: Vec<String> = files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap_or_default())
        .collect();
    let denied = counted("file_write", "deny", || {
        for file in files {
            expect_eq!(
                attempt(ctx, "root", LABEL, &["open-write", file]),
                "EPERM",
                "root in {LABEL} opening {file} for writing"
            );
        }
        Ok(())
    })?;
    expect_eq!(denied, 3.0, "file_write denials counted");
    let after: Vec<String> = files
        .iter()
        .map(|f| fs::read_to_string(f).unwrap_or_default())
        .collect();
    expect_eq!(after, before, "the settings are unchanged");
    still_in_force(ctx, &f.daemon)
}

/// A file opened by handle has no path from the root that the kernel could give a rule
/// (open_by_handle_at): root in a label is refused the capability it needs, without a count
/// (the kernel asks for it on reads past file modes too); a policy may grant it.
fn files_opened_by_handle_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    // tmpfs gives handles; the suite's own directory may be on a file system that doesn't.
    let dir = p(ctx, "handles");
    fs::create_dir_all(&dir).context("the tmpfs's mount point")?;
    let _tmpfs = Mount::tmpfs(&dir)?;
    let file = dir.join("file");
    harness::write(&file, "by handle\n")?;
    let file = file.display().to_string();
    let args = ["open-by-handle", file.as_str()];
    expect_eq!(
        ctx.attempt(None, &args),
        "OK",
        "open_by_handle_at unlabelled"
    );
    expect_eq!(
        attempt(ctx, "root", GRANTED, &args),
        "OK",
        "root in {GRANTED}, granted CAP_DAC_READ_SEARCH"
    );
    let counted_denials = counted("capability", "deny", || {
        expect_all(ctx, LABEL, &args, "EPERM")
    })?;
    expect_eq!(counted_denials, 0.0, "capability denials counted");
    still_in_force(ctx, &f.daemon)
}

/// A block device holds every file of the file systems on it: opening it reads or writes
/// them past every path rule. Refused to root in a label, for reading and for writing.
fn block_devices_cannot_be_opened(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    // A node for loop0 (block major 7), made outside the label; opened by anyone.
    let node = p(ctx, "loop0");
    let _ = fs::remove_file(&node);
    let c = std::ffi::CString::new(node.display().to_string()).context("the node's path")?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o666, libc::makedev(7, 0)) } != 0 {
        return Err(NotPassed::Fail(format!(
            "mknod {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        )));
    }
    fs::set_permissions(&node, PermissionsExt::from_mode(0o666)).context("chmod of the node")?;
    let node = node.display().to_string();
    let unlabelled = ctx.attempt(None, &["open-read", &node]);
    if unlabelled == "EPERM" {
        return Err(NotPassed::Fail(format!(
            "an unlabelled open of {node} gives EPERM too: the test proves nothing"
        )));
    }
    let reads = counted("file_read", "deny", || {
        expect_all(ctx, LABEL, &["open-read", &node], "EPERM")
    })?;
    expect_eq!(reads, 2.0, "file_read denials counted");
    let writes = counted("file_write", "deny", || {
        expect_all(ctx, LABEL, &["open-write", &node], "EPERM")
    })?;
    expect_eq!(writes, 2.0, "file_write denials counted");
    still_in_force(ctx, &f.daemon)
}

/// TIOCSTI would type commands into the terminal of the shell that started the agent. The
/// kernel refuses it on a terminal that isn't the caller's own (and 6.12 without
/// CAP_SYS_ADMIN), but actgate's hook answers first: the counters say who refused.
fn terminal_input_injection_is_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let before = scrape()?;
    expect_all(ctx, LABEL, &["tiocsti"], "EPERM")?;
    let after = scrape()?;
    let count = |body: &str, action| harness::decisions(body, LABEL, action, "deny");
    expect_eq!(
        count(&after, "ptrace") - count(&before, "ptrace"),
        2.0,
        "ptrace denials counted for root's and nobody's TIOCSTI"
    );
    expect_eq!(
        count(&after, "capability") - count(&before, "capability"),
        0.0,
        "capability denials (the kernel's own check never ran)"
    );
    still_in_force(ctx, &f.daemon)
}

fn bpf_syscall_is_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    expect_all(ctx, LABEL, &["bpf-map-create"], "EPERM")?;
    still_in_force(ctx, &f.daemon)
}

fn denied_capabilities_are_refused_even_to_root(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let mnt = p(ctx, "mnt").display().to_string();
    let denied = counted("capability", "deny", || {
        expect_all(ctx, LABEL, &["chroot", &mnt], "EPERM")?;
        expect_all(ctx, LABEL, &["raw-socket"], "EPERM")
    })?;
    // nobody lacks the capabilities to begin with; root's two attempts each meet actgate.
    expect_eq!(
        denied,
        2.0,
        "capability denials counted for root's attempts"
    );
    still_in_force(ctx, &f.daemon)
}

/// Whether `path` is a mount point in the test's own mount namespace.
fn mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.display().to_string();
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.as_str()))
}

fn mounts_pivot_root_and_chroot_are_refused_even_with_the_capabilities(
    ctx: &Ctx,
    f: &mut Enforcing,
) -> Outcome {
    let (mnt, bin) = (p(ctx, "mnt"), p(ctx, "bin"));
    let (m, b) = (mnt.display().to_string(), bin.display().to_string());
    let tries: [&[&str]; 7] = [
        &["mount", "tmpfs", &m],
        &["mount", "cgroup2", &m],
        &["bind-mount", &b, &m],
        &["move-mount", &m, &m],
        &["pivot-root", &m, &m],
        &["chroot", &m],
        &["unshare-mount-bind", &b, &m],
    ];
    let before = scrape()?;
    for args in tries {
        expect_eq!(
            attempt(ctx, "root", ADMIN, args),
            "EPERM",
            "`try {}` as root granted CAP_SYS_ADMIN and CAP_SYS_CHROOT",
            args.join(" ")
        );
    }
    let after = scrape()?;
    let denied = |body: &str| harness::decisions(body, ADMIN, "namespace", "deny");
    expect_eq!(
        denied(&after) - denied(&before),
        7.0,
        "namespace denials counted for the seven attempts"
    );
    // Without the capabilities, and without a policy that allows namespaces, `unshare -Urm`
    // is the route; it stops at the user namespace.
    expect_all(ctx, LABEL, &["unshare-user-mount-bind", &b, &m], "EPERM")?;
    expect_eq!(mounted(&mnt), false, "{m} is still no mount point");
    still_in_force(ctx, &f.daemon)
}

fn a_capability_and_namespaces_granted_by_policy_work(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["raw-socket"]),
        "OK",
        "a raw socket as root where the policy grants CAP_NET_RAW"
    );
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["unshare-user"]),
        "OK",
        "unshare -U where the policy allows namespaces"
    );
    let (mnt, bin) = (p(ctx, "mnt"), p(ctx, "bin"));
    let (m, b) = (mnt.display().to_string(), bin.display().to_string());
    expect_all(ctx, GRANTED, &["unshare-user-mount-bind", &b, &m], "OK")?;
    let mnt = p(ctx, "mnt").display().to_string();
    expect_eq!(
        attempt(ctx, "root", GRANTED, &["mount", "tmpfs", &mnt]),
        "EPERM",
        "mount (CAP_SYS_ADMIN, not granted) as root in {GRANTED}"
    );
    still_in_force(ctx, &f.daemon)
}

fn user_namespaces_are_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let denied = counted("namespace", "deny", || {
        expect_eq!(
            attempt(ctx, "root", LABEL, &["unshare-user"]),
            "EPERM",
            "unshare -U as root"
        );
        Ok(())
    })?;
    expect_eq!(
        denied,
        1.0,
        "namespace denials counted for root's unshare -U"
    );
    expect_eq!(
        attempt(ctx, "nobody", LABEL, &["unshare-user"]),
        "EPERM",
        "unshare -U as nobody"
    );
    still_in_force(ctx, &f.daemon)
}

/// Makes cgroup.procs files writable by everyone for the test, so only actgate refuses, and
/// puts their modes back when dropped.
struct Writable(Vec<(PathBuf, u32)>);

impl Writable {
    fn new(files: &[PathBuf]) -> Result<Writable> {
        let mut modes = Writable(Vec::new());
        for f in files {
            let mode = fs::metadata(f)
                .with_context(|| format!("reading {}", f.display()))?
                .permissions()
                .mode();
            fs::set_permissions(f, PermissionsExt::from_mode(0o666))?;
            modes.0.push((f.clone(), mode));
        }
        Ok(modes)
    }
}

impl Drop for Writable {
    fn drop(&mut self) {
        for (f, mode) in &self.0 {
            let _ = fs::set_permissions(f, PermissionsExt::from_mode(*mode));
        }
    }
}

fn cgroup_procs_writes_are_refused_anywhere(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let targets = [
        PathBuf::from(CGROUP2).join("cgroup.procs"),
        PathBuf::from(CGROUP2)
            .join("actgate")
            .join(OTHER)
            .join("cgroup.procs"),
    ];
    if !targets.iter().all(|t| t.exists()) {
        return Err(NotPassed::Skip(format!(
            "skipping test – no cgroup v2 at {CGROUP2} with actgate's labels"
        )));
    }
    let _writable = Writable::new(&targets)?;
    let denied = counted("file_write", "deny", || {
        for t in &targets {
            expect_all(
                ctx,
                LABEL,
                &["open-write", &t.display().to_string()],
                "EPERM",
            )?;
        }
        Ok(())
    })?;
    expect_eq!(
        denied,
        4.0,
        "file_write denials counted for the cgroup.procs opens"
    );
    still_in_force(ctx, &f.daemon)
}

fn clone_into_another_cgroup_is_refused(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let other = PathBuf::from(CGROUP2).join("actgate").join(OTHER);
    if !other.exists() {
        return Err(NotPassed::Skip(format!(
            "skipping test – no label cgroup at {}",
            other.display()
        )));
    }
    let denied = counted("cgroup", "deny", || {
        expect_all(
            ctx,
            LABEL,
            &["clone-into-cgroup", &other.display().to_string()],
            "EPERM",
        )
    })?;
    expect_eq!(
        denied,
        2.0,
        "cgroup denials counted for clone3(CLONE_INTO_CGROUP)"
    );
    still_in_force(ctx, &f.daemon)
}

fn bpffs_entries_cannot_be_removed_or_added(ctx: &Ctx, f: &mut Enforcing) -> Outcome {
    let (pinned, dir, new) = (
        p(ctx, "bpffs/pinned"),
        p(ctx, "bpffs/dir"),
        p(ctx, "bpffs/new"),
    );
    let s = |p: &PathBuf| p.display().to_string();
    expect_all(ctx, LABEL, &["unlink", &s(&pinned)], "EPERM")?;
    expect_all(ctx, LABEL, &["rmdir", &s(&dir)], "EPERM")?;
    expect_all(ctx, LABEL, &["mkdir", &s(&new)], "EPERM")?;
    expect_all(ctx, LABEL, &["rename", &s(&pinned), &s(&new)], "EPERM")?;
    expect_eq!(
        pinned.exists() && dir.exists(),
        true,
        "the pinned map and the directory remain"
    );
    still_in_force(ctx, &f.daemon)
}

pub fn suite() -> super::Suite<Enforcing> {
    super::Suite {
        name: "escapes",
        start,
        cases: vec![
            case!(ptrace_and_the_daemons_memory_are_refused, fixture),
            case!(bpf_syscall_is_refused, fixture),
            case!(processes_outside_the_label_are_out_of_reach, fixture),
            case!(kernel_settings_cannot_be_written, fixture),
            case!(terminal_input_injection_is_refused, fixture),
            case!(files_opened_by_handle_are_refused, fixture),
            case!(block_devices_cannot_be_opened, fixture),
            case!(denied_capabilities_are_refused_even_to_root, fixture),
            case!(
                mounts_pivot_root_and_chroot_are_refused_even_with_the_capabilities,
                fixture
            ),
            case!(a_capability_and_namespaces_granted_by_policy_work, fixture),
            case!(user_namespaces_are_refused, fixture),
            case!(cgroup_procs_writes_are_refused_anywhere, fixture),
            case!(clone_into_another_cgroup_is_refused, fixture),
            case!(bpffs_entries_cannot_be_removed_or_added, fixture),
            // Last: if a signal got through, the daemon would be gone for the others.
            case!(signals_to_the_daemon_are_refused, fixture),
        ],
        stop: Enforcing::stop,
        stop_test: None,
    }
}
