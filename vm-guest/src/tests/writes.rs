//! Issue 13, "every write is a write" and "descriptors": truncation through an open file,
//! xattrs, POSIX ACLs, timestamps and access mode 3 are judged as files.write (and .read), and
//! a descriptor a labelled task receives is judged as if it had opened the file, as root and
//! as `nobody`, on a tmpfs of the suite's own and on the guest's overlayfs /tmp.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            fs::{MetadataExt, PermissionsExt},
            net::UnixStream,
            process::CommandExt,
        },
    },
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use anyhow::{Context, Result};

use super::{Enforcing, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome},
};

const LABEL: &str = "vmwrites";
const NOBODY: u32 = 65534;
const USERS: [&str; 2] = ["root", "nobody"];
/// The places the files are on: the suite's tmpfs and the guest's overlayfs /tmp.
const PLACES: [&str; 2] = ["writes", "writes-guest"];
const CONTENT: &str = "keep me\n";
/// 2001-09-09, far from any time the files get on their own.
const OLD_TIME: i64 = 1_000_000_000;

/// One operation in a labelled python3: prints `OK` (and what it read) or the errno's name.
const PY: &str = r#"
import ctypes, errno, os, socket, struct, sys
op, path = sys.argv[1], sys.argv[2]
def acl(entries):
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)
U = 0xffffffff
try:
    if op == "open-trunc":
        os.close(os.open(path, os.O_RDONLY | os.O_TRUNC))
    elif op == "ftruncate-stdout":
        os.ftruncate(1, 0)
    elif op == "open-mode3":
        os.close(os.open(path, 3))
    elif op == "setxattr":
        os.setxattr(path, "user.actgate", b"1")
    elif op == "removexattr":
        os.removexattr(path, "user.actgate")
    elif op == "set-acl":
        # rw for the owner and for root by name: an extended ACL the file system keeps,
        # whose mask sets the group bits (mode 0640).
        os.setxattr(path, "system.posix_acl_access",
                    acl([(1, 6, U), (2, 6, 0), (4, 4, U), (0x10, 4, U), (0x20, 0, U)]))
    elif op == "remove-acl":
        os.removexattr(path, "system.posix_acl_access")
    elif op == "utime":
        os.utime(path, (1000000000, 1000000000))
    elif op == "touch":
        os.utime(path)
    elif op == "recv":
        s = socket.socket(fileno=0)
        data, anc, flags, _ = s.recvmsg(1, socket.CMSG_SPACE(4))
        fds = [f for (l, t, d) in anc for f in struct.unpack("i" * (len(d) // 4), d)]
        if data == b"x" and flags & socket.MSG_CTRUNC and not fds:
            print("CTRUNC"); sys.exit(0)
        print(os.read(fds[0], 100).decode().strip()); sys.exit(0)
    elif op == "getfd":
        pid, fd = (int(x) for x in path.split(":"))
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        got = libc.syscall(438, pidfd, fd, 0)
        if got < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        print(os.read(got, 100).decode().strip()); sys.exit(0)
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn p(ctx: &Ctx, place: &str, rel: &str) -> String {
    ctx.path(&format!("{place}/{rel}")).display().to_string()
}

/// CAP_SYS_PTRACE lets root take a descriptor of a process that isn't its descendant where
/// Yama asks for it (ptrace_scope 1).
fn policy(ctx: &Ctx) -> String {
    let mut write = Vec::new();
    let mut read = Vec::new();
    for place in PLACES {
        write.push(format!("{}/**", p(ctx, place, "ws")));
        read.push(p(ctx, place, "secret.txt"));
        read.push(p(ctx, place, "ws/secret.txt"));
    }
    format!(
        "name: vmtest-writes\nlabels: [{LABEL}]\nmode: enforce\nfiles:\n  write:\n    default: deny\n    allow: [{}]\n  read:\n    default: allow\n    deny: [{}]\nprocess:\n  capabilities: [CAP_SYS_PTRACE]\n",
        write.join(", "),
        read.join(", ")
    )
}

/// Files owned by nobody and writable by all, so the permission bits and ownership allow
/// every operation to both users and only the policy refuses.
fn fixture(path: &str) -> Result<()> {
    harness::write(Path::new(path), CONTENT)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
        .with_context(|| format!("chown nobody {path}"))
}

/// Puts the suite's files back as `fixture` made them, ACLs and times included.
fn reset(path: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    fixture(path)
}

fn start(ctx: &Ctx) -> Result<Enforcing> {
    let mounts = vec![Mount::tmpfs(&ctx.path("writes"))?];
    for place in PLACES {
        for dir in ["", "ws"] {
            let d = ctx.path(&format!("{place}/{dir}"));
            fs::create_dir_all(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o777))?;
        }
    }
    harness::write(&ctx.path("writes-policies/writes.yaml"), &policy(ctx))?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &ctx.path("writes-policies"))?,
        mounts,
    })
}

/// `python3 -c PY OP ARG` as `user` in the label, with `stdin` and `stdout` as given.
fn labelled_py(ctx: &Ctx, user: &str, op: &str, arg: &str, stdin: Stdio, stdout: Stdio) -> Output {
    ctx.labelled_command_as(LABEL, user)
        .args(["/usr/bin/python3", "-c", PY, op, arg])
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(255 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
}

fn attempt(ctx: &Ctx, user: &str, op: &str, path: &str) -> String {
    harness::verdict_line(&labelled_py(
        ctx,
        user,
        op,
        path,
        Stdio::null(),
        Stdio::piped(),
    ))
}

/// What an operation may change of a file.
#[derive(Debug, PartialEq)]
struct Looks {
    content: String,
    mode: u32,
    mtime: i64,
    xattrs: Vec<String>,
}

fn looks(path: &str) -> Result<Looks> {
    let meta = fs::metadata(path).with_context(|| format!("stat {path}"))?;
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import os, sys; print(sorted(os.listxattr(sys.argv[1])))",
            path,
        ])
        .output()?;
    Ok(Looks {
        content: fs::read_to_string(path)?,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        xattrs: String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

/// Whether tmpfs keeps user.* xattrs (Linux 6.6 and later); on older kernels the file system
/// refuses them with EOPNOTSUPP (ENOTSUP to python) once actgate has let the call through.
fn tmpfs_user_xattrs() -> bool {
    let release = agent_common::kernel_release();
    let mut v = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6)
}

/// Runs `op` on a write-denied and on an allowed file in every place as every user: the
/// denied one meets EPERM and stays as it was; the allowed one gives `allowed` and then looks
/// as `changed` says.
fn denied_and_allowed(
    ctx: &Ctx,
    op: &str,
    allowed: impl Fn(&str) -> String,
    changed: impl Fn(&Looks, &Looks) -> bool,
) -> Outcome {
    for place in PLACES {
        for user in USERS {
            let locked = p(ctx, place, "locked.txt");
            let ok = p(ctx, place, "ws/ok.txt");
            reset(&locked)?;
            reset(&ok)?;
            let before = looks(&locked)?;
            expect_eq!(
                attempt(ctx, user, op, &locked),
                "EPERM",
                "{op} {locked} as {user}"
            );
            expect_eq!(
                looks(&locked)?,
                before,
                "{locked} after a refused {op} as {user}"
            );
            let before = looks(&ok)?;
            expect_eq!(
                attempt(ctx, user, op, &ok),
                allowed(place),
                "{op} {ok} as {user}"
            );
            let after = looks(&ok)?;
            if !changed(&before, &after) {
                return Err(NotPassed::Fail(format!(
                    "{ok} after {op} as {user}: {before:?} became {after:?}"
                )));
            }
        }
    }
    Ok(())
}

fn ok(_: &str) -> String {
    "OK".into()
}

fn open_rdonly_trunc_is_a_write(ctx: &Ctx) -> Outcome {
    denied_and_allowed(ctx, "open-trunc", ok, |_, a| a.content.is_empty())
}

/// ftruncate(2) through a descriptor opened for writing outside the label (here the agent's
/// stdout, which `actgate exec` hands on).
fn ftruncate_of_an_inherited_descriptor_is_a_write(ctx: &Ctx) -> Outcome {
    for place in PLACES {
        for user in USERS {
            for (rel, want, content) in [("locked.txt", "EPERM", CONTENT), ("ws/ok.txt", "OK", "")]
            {
                let path = p(ctx, place, rel);
                reset(&path)?;
                let file = fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {path}"))?;
                let out = labelled_py(
                    ctx,
                    user,
                    "ftruncate-stdout",
                    "-",
                    Stdio::null(),
                    file.into(),
                );
                let verdict =
                    fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                // The verdict line went into the file itself, after what was left of it.
                expect_eq!(
                    verdict
                        .strip_suffix(&format!("{want}\n"))
                        .map(str::to_string),
                    Some(content.to_string()),
                    "{path} after ftruncate as {user} (stderr: {})",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    Ok(())
}

fn setxattr_and_removexattr_are_writes(ctx: &Ctx) -> Outcome {
    // The guest's /tmp is an overlayfs whose upper layer is a tmpfs too.
    let kept = tmpfs_user_xattrs();
    let set = if kept { "OK" } else { "ENOTSUP" };
    denied_and_allowed(
        ctx,
        "setxattr",
        |_| set.to_string(),
        |_, a| a.xattrs.iter().any(|x| x.contains("user.actgate")) == kept,
    )?;
    let gone = if kept { "ENODATA" } else { "ENOTSUP" };
    denied_and_allowed(ctx, "removexattr", |_| gone.to_string(), |b, a| b == a)
}

fn posix_acls_are_writes(ctx: &Ctx) -> Outcome {
    denied_and_allowed(ctx, "set-acl", ok, |_, a| a.mode == 0o640)?;
    // Removal of an ACL the file has.
    for place in PLACES {
        for user in USERS {
            let locked = p(ctx, place, "locked.txt");
            let ok = p(ctx, place, "ws/ok.txt");
            reset(&locked)?;
            reset(&ok)?;
            expect_eq!(attempt(ctx, "root", "set-acl", &ok), "OK", "set-acl {ok}");
            expect_eq!(
                attempt(ctx, user, "remove-acl", &locked),
                "EPERM",
                "remove-acl {locked} as {user}"
            );
            expect_eq!(
                attempt(ctx, user, "remove-acl", &ok),
                "OK",
                "remove-acl {ok} as {user}"
            );
        }
    }
    Ok(())
}

fn timestamps_are_writes(ctx: &Ctx) -> Outcome {
    denied_and_allowed(ctx, "utime", ok, |_, a| a.mtime == OLD_TIME)?;
    // With no times given, "now": allowed to anyone who may write the file.
    for place in PLACES {
        for user in USERS {
            let locked = p(ctx, place, "locked.txt");
            let ok = p(ctx, place, "ws/ok.txt");
            reset(&locked)?;
            reset(&ok)?;
            fs::File::options()
                .write(true)
                .open(&locked)
                .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
                .with_context(|| format!("dating {locked}"))?;
            let before = looks(&locked)?;
            expect_eq!(
                attempt(ctx, user, "touch", &locked),
                "EPERM",
                "touch {locked} as {user}"
            );
            expect_eq!(
                looks(&locked)?,
                before,
                "{locked} after a refused touch as {user}"
            );
            expect_eq!(
                attempt(ctx, user, "touch", &ok),
                "OK",
                "touch {ok} as {user}"
            );
        }
    }
    Ok(())
}

fn access_mode_3_is_a_read_and_a_write(ctx: &Ctx) -> Outcome {
    let cases = [
        ("locked.txt", "EPERM"),
        ("ws/secret.txt", "EPERM"),
        ("ws/ok.txt", "OK"),
    ];
    expect_cases(ctx, &cases, "open(.., 3)", |user, path| {
        Ok(attempt(ctx, user, "open-mode3", path))
    })
}

/// Runs `op` as each user on each place's file of every `(rel, want)` case, freshly reset,
/// and expects `want`; `what` names the operation in a failure.
fn expect_cases(
    ctx: &Ctx,
    cases: &[(&str, &str)],
    what: &str,
    mut op: impl FnMut(&str, &str) -> Result<String>,
) -> Outcome {
    for place in PLACES {
        for user in USERS {
            for (rel, want) in cases {
                let path = p(ctx, place, rel);
                reset(&path)?;
                expect_eq!(op(user, &path)?, *want, "{what} {path} as {user}");
            }
        }
    }
    Ok(())
}

/// Sends a descriptor of `path` (opened outside every label) over SCM_RIGHTS to a labelled
/// python3 that receives it on its stdin; returns what it printed.
fn received_over_scm_rights(ctx: &Ctx, user: &str, path: &str) -> Result<String> {
    let (ours, theirs) = UnixStream::pair()?;
    let file = fs::File::open(path)?;
    let sent = send_fd(&ours, file.as_raw_fd());
    let out = labelled_py(
        ctx,
        user,
        "recv",
        "-",
        OwnedFd::from(theirs).into(),
        Stdio::piped(),
    );
    sent?;
    Ok(harness::verdict_line(&out))
}

/// sendmsg(2) of one byte with `fd` as SCM_RIGHTS.
fn send_fd(sock: &UnixStream, fd: i32) -> Result<()> {
    let mut byte = [b'x'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain old data; all zeroes is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header with room for one int.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
    }
    // SAFETY: msg points at live buffers.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) } != 1 {
        return Err(std::io::Error::last_os_error()).context("sendmsg with SCM_RIGHTS");
    }
    Ok(())
}

/// The kernel's answer when security_file_receive refuses (scm_detach_fds): recvmsg succeeds
/// with the data, no descriptor is installed and MSG_CTRUNC is set.
fn a_descriptor_received_over_scm_rights_is_judged(ctx: &Ctx) -> Outcome {
    let cases = [
        ("secret.txt", "CTRUNC"),
        ("ws/secret.txt", "CTRUNC"),
        ("ws/ok.txt", "keep me"),
    ];
    expect_cases(ctx, &cases, "received over SCM_RIGHTS:", |user, path| {
        received_over_scm_rights(ctx, user, path)
    })
}

/// An unlabelled process, running as `user`, that holds `path` open and waits; returns it
/// and the descriptor's number.
fn holder(user: &str, path: &str) -> Result<(Child, i32)> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-c",
        "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); print(fd, flush=True); sys.stdin.read()",
        path,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    if user == "nobody" {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().context("the holder's stdout")?).read_line(&mut line)?;
    let fd = line
        .trim()
        .parse()
        .with_context(|| format!("the holder said {line:?}"))?;
    Ok((child, fd))
}

/// pidfd_getfd needs ptrace access to the holder. From a process outside the label actgate's
/// ptrace rule refuses it; from a process the test moves into the label, the received
/// descriptor is judged like an open of its file.
fn a_descriptor_taken_with_pidfd_getfd_is_judged(ctx: &Ctx) -> Outcome {
    let scope = fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    let label_procs = format!("/sys/fs/cgroup/actgate/{LABEL}/cgroup.procs");
    for place in PLACES {
        for user in USERS {
            if user == "nobody" && scope.trim().parse::<u32>().unwrap_or(0) > 0 {
                // Yama refuses a non-descendant's pidfd_getfd to an unprivileged user anyway.
                continue;
            }
            let path = p(ctx, place, "ws/ok.txt");
            reset(&path)?;
            let (mut outside, fd) = holder(user, &path)?;
            let before = harness::scrape()?;
            let got = attempt(ctx, user, "getfd", &format!("{}:{fd}", outside.id()));
            let after = harness::scrape()?;
            drop(outside.stdin.take());
            let _ = outside.wait();
            expect_eq!(
                got,
                "EPERM",
                "pidfd_getfd of an unlabelled holder as {user}"
            );
            harness::expect_decision_changes(LABEL, &before, &after, &[("ptrace", "deny", 1)])?;

            for (rel, want) in [("ws/ok.txt", "keep me"), ("secret.txt", "EPERM")] {
                let path = p(ctx, place, rel);
                reset(&path)?;
                let (mut inside, fd) = holder(user, &path)?;
                fs::write(&label_procs, inside.id().to_string())
                    .with_context(|| format!("moving the holder into {label_procs}"))?;
                let got = attempt(ctx, user, "getfd", &format!("{}:{fd}", inside.id()));
                drop(inside.stdin.take());
                let _ = inside.wait();
                expect_eq!(
                    got,
                    want,
                    "pidfd_getfd of {path} as {user}, within the label"
                );
            }
        }
    }
    Ok(())
}

/// A pipe or a socket has no path a rule could name: passing one still works.
fn a_received_pipe_passes(ctx: &Ctx) -> Outcome {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-int array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(NotPassed::Fail(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fresh descriptors of our own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: our own descriptor and an 8-byte buffer.
    unsafe { libc::write(w.as_raw_fd(), CONTENT.as_ptr().cast(), CONTENT.len()) };
    for user in USERS {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        send_fd(&ours, r.as_raw_fd())?;
        let out = labelled_py(
            ctx,
            user,
            "recv",
            "-",
            OwnedFd::from(theirs).into(),
            Stdio::piped(),
        );
        expect_eq!(
            harness::verdict_line(&out),
            "keep me",
            "a pipe received as {user}"
        );
        // SAFETY: as above.
        unsafe { libc::write(w.as_raw_fd(), CONTENT.as_ptr().cast(), CONTENT.len()) };
    }
    Ok(())
}

pub fn suite() -> super::Suite<Enforcing> {
    super::Suite {
        name: "writes",
        start,
        cases: vec![
            case!(open_rdonly_trunc_is_a_write),
            case!(ftruncate_of_an_inherited_descriptor_is_a_write),
            case!(setxattr_and_removexattr_are_writes),
            case!(posix_acls_are_writes),
            case!(timestamps_are_writes),
            case!(access_mode_3_is_a_read_and_a_write),
            case!(a_descriptor_received_over_scm_rights_is_judged),
            case!(a_descriptor_taken_with_pidfd_getfd_is_judged),
            case!(a_received_pipe_passes),
        ],
        stop: Enforcing::stop,
        stop_test: None,
    }
}
