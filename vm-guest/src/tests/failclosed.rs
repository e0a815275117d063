//! Issue 13: what the kernel can't judge is refused, each operand of a rename is judged on its
//! own, both sides of an exchange are moves, and a `D/**` rule keeps `D` in place. Every case
//! runs as root and as `nobody`.
//!
//! Paths deeper than the old 40-component walk and longer than `PATH_BUF` can't be named in
//! one system call (PATH_MAX), so a small python3 helper walks to them with `O_PATH`
//! descriptors (which the LSM's file_open doesn't see) and acts relative to the last one.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result};

use super::{Enforcing, Suite, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, RAN, metric, scrape},
};

const LABEL: &str = "vmfailclosed";
const USERS: [&str; 2] = ["root", "nobody"];

/// Deeper than the 40 components the dentry walk used to follow, short enough to be judged.
const DEEP: &str = "d*60";
/// 17 components of 250 bytes: over `PATH_BUF` (4096), so never judged.
const LONG_COMPONENT_LEN: usize = 250;
const LONG_COMPONENTS: usize = 17;

/// The helper. Its arguments are an operation and paths, each either plain or
/// `BASE//COMPONENT*N//LEAF` (LEAF in N nested COMPONENT directories under BASE). It prints
/// `OK` (`RAN` for an exec), an errno name, or the file's text for `cat`.
const HELPER: &str = r#"
import ctypes, errno, os, sys

def at(spec, create=False):
    parts = spec.split('//')
    if len(parts) == 1:
        return os.open(os.path.dirname(spec), os.O_PATH | os.O_DIRECTORY), os.path.basename(spec)
    base, chain, leaf = parts
    comp, n = chain.rsplit('*', 1)
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    for _ in range(int(n)):
        if create:
            try:
                os.mkdir(comp, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
        nfd = os.open(comp, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd, leaf

def renameat2(a, b, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    (fa, la), (fb, lb) = at(a), at(b)
    if libc.renameat2(fa, la.encode(), fb, lb.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def execute(spec):
    fd, leaf = at(spec)
    exe = os.open(leaf, os.O_PATH, dir_fd=fd)
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(exe, [leaf], {})
        except OSError as e:
            os._exit(e.errno)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return 'RAN' if code == 0 else errno.errorcode.get(code, str(code))

def run(op, args):
    if op == 'make':
        os.umask(0)
        fd, leaf = at(args[0], create=True)
        mode = int(args[2], 8)
        f = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, dir_fd=fd)
        os.write(f, open(args[1], 'rb').read() if args[1].startswith('/') else args[1].encode())
        os.fchmod(f, mode)
        return 'OK'
    if op == 'cat':
        fd, leaf = at(args[0])
        return open(os.open(leaf, os.O_RDONLY, dir_fd=fd)).read().strip()
    if op == 'rename':
        renameat2(args[0], args[1], 0)
    elif op == 'exchange':
        renameat2(args[0], args[1], 2)
    elif op == 'rmdir':
        fd, leaf = at(args[0])
        os.rmdir(leaf, dir_fd=fd)
    elif op == 'mkdir':
        fd, leaf = at(args[0])
        os.mkdir(leaf, dir_fd=fd)
    elif op == 'open-write':
        fd, leaf = at(args[0])
        os.close(os.open(leaf, os.O_WRONLY, dir_fd=fd))
    elif op == 'open-read':
        fd, leaf = at(args[0])
        os.close(os.open(leaf, os.O_RDONLY, dir_fd=fd))
    elif op == 'exec':
        return execute(args[0])
    return 'OK'

try:
    print(run(sys.argv[1], sys.argv[2:]))
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"#;

fn d(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("failclosed/{rel}")).display().to_string()
}

/// `LEAF` 60 directories deep in the workspace.
fn deep(ctx: &Ctx, leaf: &str) -> String {
    format!("{}//{DEEP}//{leaf}", d(ctx, "ws/deep"))
}

/// `LEAF` at a path over 4095 bytes in the workspace.
fn long(ctx: &Ctx, leaf: &str) -> String {
    let component = "L".repeat(LONG_COMPONENT_LEN);
    format!(
        "{}//{component}*{LONG_COMPONENTS}//{leaf}",
        d(ctx, "ws/long")
    )
}

fn policy(ctx: &Ctx) -> String {
    format!(
        "name: vmtest-failclosed
labels: [{LABEL}]
mode: enforce
exec:
  default: deny
  allow: [/usr/**, /lib/**, {ws}/**]
files:
  write:
    default: deny
    allow: [{ws}/**]
    deny: [{ws}/.git/hooks/**]
  read:
    default: deny
    allow: [/usr/**, /lib/**, /etc/**, /proc/**, /sys/**, /dev/**, {dir}/**]
    deny: [{secret}]
",
        dir = ctx.path("failclosed").display(),
        ws = d(ctx, "ws"),
        secret = d(ctx, "secret.key"),
    )
}

fn has_python() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("python3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Skips a test in a guest without python3, which the helper needs.
fn need_python() -> Outcome {
    if has_python() {
        Ok(())
    } else {
        Err(NotPassed::Skip(
            "python3 is not installed in the guest".into(),
        ))
    }
}

/// The helper, unlabelled (as root), for fixtures and for looking at what a test left.
fn helper(args: &[&str]) -> String {
    let out = Command::new("python3")
        .args(["-I", "-S", "-c", HELPER])
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => harness::verdict_line(&out),
        Err(e) => format!("python3: {e}"),
    }
}

/// The helper as the label, run by `user`.
fn labelled(ctx: &Ctx, user: &str, args: &[&str]) -> String {
    let out = ctx
        .labelled_command_as(LABEL, user)
        .args(["python3", "-I", "-S", "-c", HELPER])
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => harness::verdict_line(&out),
        Err(e) => format!("actgate exec: {e}"),
    }
}

fn make(spec: &str, text: &str, mode: &str) -> Result<()> {
    let said = helper(&["make", spec, text, mode]);
    anyhow::ensure!(said == "OK", "making {spec}: {said}");
    Ok(())
}

fn world_writable_dir(path: &str) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {path}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))
        .with_context(|| format!("chmod 777 {path}"))
}

/// Every file and directory is world-writable, so what refuses is the policy, not the
/// permission bits, for `nobody` as for root.
fn start(ctx: &Ctx) -> Result<Enforcing> {
    let tmpfs = Mount::tmpfs(&ctx.path("failclosed"))?;
    for dir in [
        "",
        "ws",
        "ws/deep",
        "ws/long",
        "ws/.git",
        "ws/.git/hooks",
        "ws/mine",
    ] {
        world_writable_dir(&d(ctx, dir))?;
    }
    // Without python3 every test skips; the policies still go in force, and out again.
    for (path, text) in [
        (d(ctx, "target.txt"), "target"),
        (d(ctx, "secret.key"), "secret"),
        (d(ctx, "ws/mine/pre-commit"), "mine"),
        (deep(ctx, "payload"), "deep payload"),
        (deep(ctx, "other"), "deep other"),
        (long(ctx, "payload"), "long payload"),
    ] {
        if has_python() {
            make(&path, text, "666")?;
        }
    }
    if has_python() {
        make(&deep(ctx, "true"), "/bin/true", "755")?;
        make(&long(ctx, "true"), "/bin/true", "755")?;
    }
    harness::write(&ctx.path("failclosed-policies/p.yaml"), &policy(ctx))?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &ctx.path("failclosed-policies"))?,
        mounts: vec![tmpfs],
    })
}

/// The text of the file at `spec`, as root sees it.
fn text(spec: &str) -> String {
    helper(&["cat", spec])
}

/// `actgate_kernel_errors_total{reason}` now.
fn errors(reason: &str) -> Result<f64, NotPassed> {
    Ok(metric(
        &scrape()?,
        &format!("actgate_kernel_errors_total{{reason=\"{reason}\"}}"),
    ))
}

/// Whether the events file holds an unjudged denial of `action` on the file named `name`.
fn unjudged_event(fixture: &Enforcing, action: &str, name: &str) -> Result<String> {
    harness::eventually("found", || {
        let events = fs::read_to_string(&fixture.daemon.events).unwrap_or_default();
        let found = events.lines().any(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            s("label") == LABEL
                && s("action") == action
                && s("verdict") == "deny"
                && s("reason") == "unjudged"
                && s("target") == name
        });
        Ok(if found { "found".into() } else { events })
    })
}

fn renaming_a_deep_file_onto_a_write_denied_file_is_eperm(ctx: &Ctx) -> Outcome {
    need_python()?;
    let target = d(ctx, "target.txt");
    for user in USERS {
        expect_eq!(
            labelled(ctx, user, &["rename", &deep(ctx, "payload"), &target]),
            "EPERM",
            "rename of a file 60 directories deep onto a write-denied file, as {user}"
        );
        expect_eq!(
            text(&target),
            "target",
            "the target after the refused rename"
        );
        expect_eq!(
            text(&deep(ctx, "payload")),
            "deep payload",
            "the source after the refused rename"
        );
    }
    Ok(())
}

fn renaming_from_a_path_over_4095_bytes_is_eperm_and_unjudged(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    need_python()?;
    let target = d(ctx, "target.txt");
    for user in USERS {
        let before = errors("path_too_long")?;
        expect_eq!(
            labelled(ctx, user, &["rename", &long(ctx, "payload"), &target]),
            "EPERM",
            "rename of a file at a path over 4095 bytes onto a write-denied file, as {user}"
        );
        expect_eq!(
            errors("path_too_long")? - before,
            1.0,
            "change of actgate_kernel_errors_total{{reason=\"path_too_long\"}} ({user})"
        );
        expect_eq!(
            text(&target),
            "target",
            "the target after the refused rename"
        );
        expect_eq!(
            text(&long(ctx, "payload")),
            "long payload",
            "the source after the refused rename"
        );
    }
    expect_eq!(
        unjudged_event(fixture, "file_write", "payload")?,
        "found",
        "an event {{action: file_write, verdict: deny, reason: unjudged, target: payload}}"
    );
    Ok(())
}

fn opening_or_executing_a_path_over_4095_bytes_is_eperm_and_unjudged(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    need_python()?;
    for user in USERS {
        for (op, leaf) in [
            ("open-write", "payload"),
            ("open-read", "payload"),
            ("exec", "true"),
        ] {
            let before = errors("d_path_failed")?;
            expect_eq!(
                labelled(ctx, user, &[op, &long(ctx, leaf)]),
                "EPERM",
                "{op} of a file at a path over 4095 bytes in an allowed tree, as {user}"
            );
            expect_eq!(
                errors("d_path_failed")? - before,
                1.0,
                "change of actgate_kernel_errors_total{{reason=\"d_path_failed\"}} ({op}, {user})"
            );
        }
    }
    expect_eq!(
        text(&long(ctx, "payload")),
        "long payload",
        "the file after the refused opens"
    );
    for (action, name) in [
        ("file_write", "payload"),
        ("file_read", "payload"),
        ("exec", "true"),
    ] {
        expect_eq!(
            unjudged_event(fixture, action, name)?,
            "found",
            "an event {{action: {action}, verdict: deny, reason: unjudged, target: {name}}}"
        );
    }
    Ok(())
}

fn exchanging_a_deep_or_long_file_with_a_read_denied_secret_is_eperm(ctx: &Ctx) -> Outcome {
    need_python()?;
    let secret = d(ctx, "secret.key");
    for user in USERS {
        for (what, file, was) in [
            ("60 directories deep", deep(ctx, "payload"), "deep payload"),
            (
                "at a path over 4095 bytes",
                long(ctx, "payload"),
                "long payload",
            ),
        ] {
            expect_eq!(
                labelled(ctx, user, &["exchange", &file, &secret]),
                "EPERM",
                "RENAME_EXCHANGE of a file {what} with a read-denied secret, as {user}"
            );
            expect_eq!(
                text(&secret),
                "secret",
                "the secret after the refused exchange"
            );
            expect_eq!(text(&file), was, "the file after the refused exchange");
        }
    }
    Ok(())
}

fn a_tree_rule_keeps_its_root_from_removal_rename_and_replacement(ctx: &Ctx) -> Outcome {
    need_python()?;
    let hooks = d(ctx, "ws/.git/hooks");
    let mine = d(ctx, "ws/mine");
    let away = d(ctx, "ws/hooks-away");
    for user in USERS {
        for (args, what) in [
            (vec!["rmdir", hooks.as_str()], "rmdir of the empty root"),
            (
                vec!["rename", hooks.as_str(), away.as_str()],
                "rename of the root away",
            ),
            (
                vec!["rename", mine.as_str(), hooks.as_str()],
                "rename of a tree of the agent's own over the root",
            ),
            (
                vec!["exchange", mine.as_str(), hooks.as_str()],
                "exchange of a tree of the agent's own with the root",
            ),
        ] {
            expect_eq!(
                labelled(ctx, user, &args),
                "EPERM",
                "{what} of a write-denied .git/hooks/**, as {user}"
            );
            let inside: Vec<_> = fs::read_dir(&hooks)
                .map_err(|e| NotPassed::Fail(format!("{hooks}: {e}")))?
                .collect();
            expect_eq!(
                inside.len(),
                0,
                "entries in {hooks} after the refused {what}"
            );
            expect_eq!(
                Path::new(&format!("{mine}/pre-commit")).exists(),
                true,
                "the agent's tree in place after the refused {what}"
            );
            expect_eq!(
                Path::new(&away).exists(),
                false,
                "{away} after the refused {what}"
            );
        }
    }
    Ok(())
}

fn deep_opens_renames_and_exchanges_in_an_allowed_tree_still_work(ctx: &Ctx) -> Outcome {
    need_python()?;
    let other = d(ctx, "ws/.git/other");
    let spare = d(ctx, "ws/.git/spare");
    let mine = d(ctx, "ws/mine");
    for user in USERS {
        let before = scrape()?;
        let steps: [(Vec<String>, &str); 11] = [
            (vec!["open-write".into(), deep(ctx, "payload")], "OK"),
            (vec!["open-read".into(), deep(ctx, "payload")], "OK"),
            (vec!["exec".into(), deep(ctx, "true")], RAN),
            (
                vec!["rename".into(), deep(ctx, "payload"), deep(ctx, "moved")],
                "OK",
            ),
            (
                vec!["rename".into(), deep(ctx, "moved"), deep(ctx, "payload")],
                "OK",
            ),
            (
                vec!["exchange".into(), deep(ctx, "payload"), deep(ctx, "other")],
                "OK",
            ),
            (
                vec!["exchange".into(), deep(ctx, "payload"), deep(ctx, "other")],
                "OK",
            ),
            (vec!["rename".into(), mine.clone(), other.clone()], "OK"),
            (vec!["rename".into(), other.clone(), mine.clone()], "OK"),
            (vec!["mkdir".into(), spare.clone()], "OK"),
            (vec!["rmdir".into(), spare.clone()], "OK"),
        ];
        for (args, want) in steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            expect_eq!(
                labelled(ctx, user, &args),
                want,
                "{} in the allowed workspace, as {user}",
                args.join(" ")
            );
        }
        expect_eq!(
            text(&deep(ctx, "payload")),
            "deep payload",
            "the deep file after renaming it back"
        );
        let after = scrape()?;
        for reason in agent_common::KernelError::ALL {
            let series = format!(
                "actgate_kernel_errors_total{{reason=\"{}\"}}",
                reason.as_str()
            );
            expect_eq!(
                metric(&after, &series) - metric(&before, &series),
                0.0,
                "change of {series} ({user})"
            );
        }
    }
    Ok(())
}

/// The fail-closed tests against the shared daemon, whose reload without them is checked last.
pub fn suite() -> Suite<Enforcing> {
    Suite {
        name: "failclosed",
        start,
        cases: vec![
            case!(renaming_a_deep_file_onto_a_write_denied_file_is_eperm),
            case!(
                renaming_from_a_path_over_4095_bytes_is_eperm_and_unjudged,
                fixture
            ),
            case!(
                opening_or_executing_a_path_over_4095_bytes_is_eperm_and_unjudged,
                fixture
            ),
            case!(exchanging_a_deep_or_long_file_with_a_read_denied_secret_is_eperm),
            case!(a_tree_rule_keeps_its_root_from_removal_rename_and_replacement),
            case!(deep_opens_renames_and_exchanges_in_an_allowed_tree_still_work),
        ],
        stop: Enforcing::stop,
        stop_test: Some("failclosed_policies_are_withdrawn_by_a_reload"),
    }
}
