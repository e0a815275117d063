//! Proof of enforcement at start-up: before /readyz turns 200, a throw-away root process in a
//! private label tries one denied action per hook that can deny, and must meet EPERM each
//! time. A policy that loads but doesn't enforce is the failure this catches.
//!
//! Each probe can only be refused by its own hook: the files are denied to one kind of
//! action each, and the policy grants the capabilities (CAP_BPF, CAP_SYS_PTRACE,
//! CAP_SYS_ADMIN, CAP_SYS_CHROOT) that would otherwise refuse the bpf(2), ptrace, mount and
//! chroot probes before their hooks run.

use std::{
    ffi::CString,
    fs,
    io::{self, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsFd, AsRawFd},
        unix::{
            ffi::OsStrExt,
            fs::{PermissionsExt, symlink},
            net::{UnixDatagram, UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent_common::{Action, HOOK_COUNT, Hook, SocketKind, capability_by_name};
use agent_policy::{
    Fallback, Mode, NetPattern, PathPattern, Policy, ProcessRules, Rules, UnixPattern,
};
use anyhow::{Context, Result};
use aya_obj::generated::{bpf_attr, bpf_cmd};

use crate::bpf::Present;

/// The self-test's label. `:` can't appear in a policy's label, so it never collides.
pub const LABEL: &str = "actgate:selftest";
const POLICY: &str = "actgate:selftest";
/// Denied for the connect and sendmsg checks (the discard port on loopback); nothing needs to
/// listen.
const CONNECT_TO: ([u8; 4], u16) = ([127, 0, 0, 1], 9);

/// What the start-up self-test showed of one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The self-test hasn't run yet.
    Pending,
    /// Its probe met EPERM.
    Denied,
    /// Its probe did not.
    Failed,
    /// This kernel doesn't have the hook (`Hook::optional`): nothing is attached there, and
    /// nothing is claimed for it.
    Absent,
}

/// Per hook of `Hook::ALL`, what the self-test showed.
pub type Verified = [Proof; HOOK_COUNT];

/// The self-test's files, each denied to the one kind of action its probes try.
pub struct SelfTest {
    dir: PathBuf,
    /// Denied to exec only.
    exec_probe: PathBuf,
    /// Denied to writes and reads: opens, truncate, chmod, chown, unlink, and a descriptor
    /// received.
    file_probe: PathBuf,
    /// Denied to writes only, so that an open to read passes: open(O_TRUNC), xattrs, ACLs
    /// and times.
    write_probe: PathBuf,
    /// A directory denied to writes: rmdir.
    dir_probe: PathBuf,
    /// A name denied to writes that doesn't exist: mkdir, symlink, mknod, and the new name of
    /// a link and a rename.
    new_probe: PathBuf,
    /// An allowed file: the source of the link and the rename.
    source: PathBuf,
    /// AF_UNIX sockets the probe binds, denied to `network.unix`.
    stream_probe: PathBuf,
    dgram_probe: PathBuf,
}

/// Whether a label is one of actgate's own (never runnable through `actgate exec`).
pub fn is_internal(label: &str) -> bool {
    label == LABEL
}

impl SelfTest {
    /// The probe files in `dir`.
    fn at(dir: &Path) -> Self {
        Self {
            exec_probe: dir.join("exec-probe"),
            file_probe: dir.join("file-probe"),
            write_probe: dir.join("write-probe"),
            dir_probe: dir.join("dir-probe"),
            new_probe: dir.join("new-probe"),
            source: dir.join("source"),
            stream_probe: dir.join("stream-probe"),
            dgram_probe: dir.join("dgram-probe"),
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the probe files in the daemon's runtime directory.
    pub fn prepare(runtime_dir: &Path) -> Result<Self> {
        let t = Self::at(&runtime_dir.join("selftest"));
        fs::create_dir_all(&t.dir_probe)
            .with_context(|| format!("creating {}", t.dir_probe.display()))?;
        // Left over from a self-test whose probe was allowed.
        let _ = fs::remove_dir(&t.new_probe).or_else(|_| fs::remove_file(&t.new_probe));
        // The probe binds its sockets afresh. Removing them is the daemon's job: a deny rule
        // guards their names, so the labelled probe may not.
        for socket in [&t.stream_probe, &t.dgram_probe] {
            let _ = fs::remove_file(socket);
        }
        for probe in [&t.exec_probe, &t.file_probe, &t.write_probe, &t.source] {
            fs::write(probe, "#!/bin/sh\nexit 0\n")
                .with_context(|| format!("writing {}", probe.display()))?;
            fs::set_permissions(probe, fs::Permissions::from_mode(0o755))?;
        }
        Ok(t)
    }

    /// The built-in policy: each probe's target denied to its action, and the capabilities
    /// granted that would refuse a probe before its own hook.
    pub fn policy(&self) -> Policy {
        let deny = |paths: &[&PathBuf]| Rules {
            deny: paths
                .iter()
                .map(|p| PathPattern::Exact(p.display().to_string()))
                .collect(),
            ..Rules::default()
        };
        let addr = SocketAddr::from(CONNECT_TO);
        let unix = [&self.stream_probe, &self.dgram_probe];
        Policy {
            name: POLICY.into(),
            labels: vec![LABEL.into()],
            cgroups: Vec::new(),
            mode: Mode::Enforce,
            exec: deny(&[&self.exec_probe]),
            anonymous_exec: None,
            file_write: deny(&[
                &self.file_probe,
                &self.write_probe,
                &self.dir_probe,
                &self.new_probe,
            ]),
            file_read: deny(&[&self.file_probe]),
            // Removing the probes is refused as a write already.
            file_delete: Rules::default(),
            budgets: Vec::new(),
            breaker: None,
            connect: Rules {
                deny: vec![NetPattern {
                    net: ipnet::IpNet::from(addr.ip()),
                    port: Some(addr.port()),
                }],
                ..Rules::default()
            },
            hosts: Default::default(),
            unix: Rules {
                deny: unix
                    .iter()
                    .map(|p| UnixPattern::Path(PathPattern::Exact(p.display().to_string())))
                    .collect(),
                ..Rules::default()
            },
            listen: Rules {
                deny: vec![NetPattern {
                    net: ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
                    port: None,
                }],
                ..Rules::default()
            },
            // The capable probe's raw socket must reach the capability check.
            sockets: vec![SocketKind::Raw],
            process: ProcessRules {
                // bpf(2) asks for CAP_BPF before its LSM hook on 6.1; ptrace may ask for
                // CAP_SYS_PTRACE; move_mount and pivot_root for CAP_SYS_ADMIN, chroot for
                // CAP_SYS_CHROOT. CAP_NET_ADMIN stays denied for the capable probe.
                capabilities: [
                    "CAP_BPF",
                    "CAP_SYS_PTRACE",
                    "CAP_SYS_ADMIN",
                    "CAP_SYS_CHROOT",
                ]
                .iter()
                .filter_map(|c| capability_by_name(c))
                .collect(),
                namespaces: Fallback::Deny,
            },
            file: self.dir.clone(),
            line: 0,
        }
    }

    /// Runs the probe in the label's cgroup; per hook this kernel has (`present`), whether it
    /// met EPERM.
    pub fn run(&self, cgroup: &Path, present: &Present) -> Result<Verified> {
        let exe = std::env::current_exe().context("finding actgate's own binary")?;
        let out = Command::new(exe)
            .arg("selftest-probe")
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--daemon-pid")
            .arg(std::process::id().to_string())
            .output()
            .context("running the self-test probe")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut verified = [Proof::Absent; HOOK_COUNT];
        for (i, hook) in Hook::ALL.iter().enumerate() {
            let denied = text
                .lines()
                .any(|l| l.trim() == format!("{}=EPERM", hook.name));
            verified[i] = match (present[i], denied) {
                (false, _) => Proof::Absent,
                (true, true) => Proof::Denied,
                (true, false) => Proof::Failed,
            };
        }
        Ok(verified)
    }
}

/// The self-test's state before it runs: every hook pending, but those the kernel lacks.
pub fn pending(present: &Present) -> Verified {
    present.map(|p| if p { Proof::Pending } else { Proof::Absent })
}

/// Whether every hook of `action` this kernel has proved it denies (None when one hasn't
/// run).
pub fn action_verified(verified: &Verified, action: Action) -> Option<bool> {
    Hook::all_for(action).try_fold(true, |all, (i, _)| match verified[i] {
        Proof::Pending => None,
        Proof::Absent => Some(all),
        p => Some(all && p == Proof::Denied),
    })
}

fn outcome(r: io::Result<()>) -> String {
    match r {
        Ok(()) => "ALLOWED".into(),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
        Err(e) => format!("{e}"),
    }
}

/// A libc call's result as io::Result.
fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Maps the first page of `file` with `prot`, then mprotects it to `then`, and unmaps it.
fn map(file: &fs::File, prot: libc::c_int, then: Option<libc::c_int>) -> io::Result<()> {
    const LEN: usize = 4096;
    // SAFETY: a new private mapping of our own descriptor, unmapped below; nothing reads it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            prot,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping made above.
    let r = then.map_or(Ok(()), |prot| {
        check(unsafe { libc::mprotect(p, LEN, prot) }.into())
    });
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(p, LEN) };
    r
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// The probe itself (`actgate selftest-probe`): joins the cgroup and tries each hook's denied
/// action, printing `HOOK=EPERM` for each one refused. Creating probes undo what an allowed
/// attempt made, so the next probe meets the same files.
pub fn probe(cgroup: &Path, dir: &Path, daemon: u32) -> Result<()> {
    let t = SelfTest::at(dir);
    let new = &t.new_probe;
    let undo = |r: io::Result<()>| {
        if r.is_ok() {
            let _ = fs::remove_dir(new).or_else(|_| fs::remove_file(new));
        }
        r
    };
    let cgroup_dir = fs::File::open(cgroup).context("opening the label's cgroup")?;
    // Opened before joining the label, to be received inside it.
    let given = fs::File::open(&t.file_probe).context("opening the self-test's file probe")?;
    crate::cgroup::enter(cgroup)?;
    let daemon_pid = daemon as libc::pid_t;
    let mut out = io::stdout().lock();
    let mut report = |hook: Hook, r: io::Result<()>| writeln!(out, "{}={}", hook.name, outcome(r));
    report(
        Hook::BPRM_CHECK_SECURITY,
        Command::new(&t.exec_probe).status().map(|_| ()),
    )?;
    let exe = fs::File::open(&t.exec_probe).context("opening the exec probe")?;
    report(
        Hook::MMAP_FILE,
        map(&exe, libc::PROT_READ | libc::PROT_EXEC, None),
    )?;
    report(
        Hook::FILE_MPROTECT,
        map(
            &exe,
            libc::PROT_READ,
            Some(libc::PROT_READ | libc::PROT_EXEC),
        ),
    )?;
    report(
        Hook::FILE_OPEN,
        fs::OpenOptions::new()
            .write(true)
            .open(&t.file_probe)
            .map(|_| ()),
    )?;
    let file = c_path(&t.file_probe)?;
    // SAFETY: a NUL-terminated path.
    report(
        Hook::PATH_TRUNCATE,
        check(unsafe { libc::truncate(file.as_ptr(), 0) } as _),
    )?;
    report(
        Hook::PATH_CHMOD,
        fs::set_permissions(&t.file_probe, fs::Permissions::from_mode(0o755)),
    )?;
    report(
        Hook::PATH_CHOWN,
        std::os::unix::fs::chown(&t.file_probe, None, None),
    )?;
    report(Hook::PATH_MKDIR, undo(fs::create_dir(new)))?;
    report(Hook::PATH_SYMLINK, undo(symlink("source", new)))?;
    let fifo = c_path(new)?;
    // SAFETY: a NUL-terminated path.
    report(
        Hook::PATH_MKNOD,
        undo(check(
            unsafe { libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o600, 0) } as _,
        )),
    )?;
    report(Hook::PATH_LINK, undo(fs::hard_link(&t.source, new)))?;
    let renamed = fs::rename(&t.source, new);
    if renamed.is_ok() {
        let _ = fs::rename(new, &t.source);
    }
    report(Hook::PATH_RENAME, renamed)?;
    report(Hook::PATH_UNLINK, fs::remove_file(&t.file_probe))?;
    report(Hook::PATH_RMDIR, fs::remove_dir(&t.dir_probe))?;
    attribute_probes(&mut report, &t.write_probe)?;
    report(Hook::FILE_RECEIVE, take_own_fd(given.as_raw_fd()))?;
    let addr = SocketAddr::from(CONNECT_TO);
    report(
        Hook::SOCKET_CONNECT,
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ()),
    )?;
    report(
        Hook::SOCKET_SENDMSG,
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"x", addr).map(|_| ())),
    )?;
    report(
        Hook::SOCKET_LISTEN,
        TcpListener::bind("0.0.0.0:0").map(|_| ()),
    )?;
    // SCTP's type with protocol 0: when allowed, the kernel finds no such protocol unless
    // SCTP is loaded already, so nothing is loaded or created.
    // SAFETY: plain socket(2); the fd is closed if one comes back.
    let sctp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_SEQPACKET, 0) };
    if sctp >= 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(sctp) };
    }
    report(Hook::SOCKET_CREATE, check(sctp.into()))?;
    report(
        Hook::SOCKET_SETSOCKOPT,
        UdpSocket::bind("127.0.0.1:0").and_then(|s| {
            // No options: clears them when allowed.
            // SAFETY: a zero-length option from a valid pointer.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_OPTIONS,
                    [0u8; 4].as_ptr().cast(),
                    0,
                )
            };
            check(r.into())
        }),
    )?;
    let listener = UnixListener::bind(&t.stream_probe);
    report(
        Hook::UNIX_STREAM_CONNECT,
        listener.and_then(|_held| UnixStream::connect(&t.stream_probe).map(|_| ())),
    )?;
    let receiver = UnixDatagram::bind(&t.dgram_probe);
    report(
        Hook::UNIX_MAY_SEND,
        receiver.and_then(|_held| {
            UnixDatagram::unbound().and_then(|s| s.send_to(b"x", &t.dgram_probe).map(|_| ()))
        }),
    )?;
    // A zeroed BPF_MAP_CREATE: EINVAL when allowed, so nothing is created.
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    report(
        Hook::BPF,
        agent_common::sys::bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(|_| ()),
    )?;
    // A priority above 6 needs CAP_NET_ADMIN (6.12 asks for CAP_NET_RAW first); nothing
    // else judges a SOL_SOCKET option.
    report(Hook::CAPABLE, set_high_priority())?;
    // SAFETY: signal 0 only asks whether the process exists.
    report(
        Hook::TASK_KILL,
        check(unsafe { libc::kill(daemon_pid, 0) }.into()),
    )?;
    // kcmp(2) reports ptrace_may_access's refusal as EPERM (/proc/PID/mem and environ turn
    // it into EACCES) and, when allowed, only compares: KCMP_VM = 1.
    // SAFETY: kcmp takes no pointers.
    let kcmp = unsafe { libc::syscall(libc::SYS_kcmp, libc::getpid(), daemon_pid, 1, 0, 0) };
    report(Hook::PTRACE_ACCESS_CHECK, check(kcmp))?;
    // TIOCSTI on /dev/null: ENOTTY when allowed.
    let null = fs::File::open("/dev/null").context("opening /dev/null")?;
    let byte = 0u8;
    // SAFETY: a valid fd; TIOCSTI reads one byte from the pointer.
    let injected = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&null),
            libc::TIOCSTI,
            &raw const byte,
        )
    };
    report(Hook::FILE_IOCTL, check(injected.into()))?;
    report(
        Hook::TASK_ALLOC,
        agent_common::sys::clone_into_cgroup(cgroup_dir.as_fd()),
    )?;
    // mount(2) asks sb_mount before CAP_SYS_ADMIN; an allowed mount is undone at once.
    let dir = c_path(&t.dir_probe)?;
    // SAFETY: NUL-terminated strings that outlive the calls; no mount data.
    let mounted = check(
        unsafe {
            libc::mount(
                c"none".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into(),
    );
    if mounted.is_ok() {
        // SAFETY: as above.
        unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    }
    report(Hook::SB_MOUNT, mounted)?;
    // The directory is no mount root: allowed, both calls would fail with EINVAL.
    report(
        Hook::MOVE_MOUNT,
        agent_common::sys::move_mount(&t.dir_probe, &t.dir_probe),
    )?;
    report(
        Hook::SB_PIVOTROOT,
        agent_common::sys::pivot_root(&t.dir_probe, &t.dir_probe),
    )?;
    // chroot("/") changes nothing even when allowed.
    // SAFETY: a NUL-terminated path.
    report(
        Hook::PATH_CHROOT,
        check(unsafe { libc::chroot(c"/".as_ptr()) }.into()),
    )?;
    // Last: an allowed unshare would leave this process root in a namespace of its own.
    // SAFETY: unshare(2) of the calling, single-threaded process.
    report(
        Hook::USERNS_CREATE,
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()),
    )?;
    Ok(())
}

/// SO_PRIORITY 7 on a new UDP socket.
fn set_high_priority() -> io::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let priority: libc::c_int = 7;
    // SAFETY: a valid fd and an int option of the right size.
    check(
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_PRIORITY,
                (&raw const priority).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
        .into(),
    )
}

/// The write-only probes of `file` (denied to writes, not to reads): a truncating open,
/// xattrs, a POSIX ACL and times.
fn attribute_probes(
    report: &mut impl FnMut(Hook, io::Result<()>) -> io::Result<()>,
    file: &Path,
) -> Result<()> {
    let name = c_path(file)?;
    let xattr = c"user.actgate";
    let acl = c"system.posix_acl_access";
    // SAFETY: a NUL-terminated path; the descriptor is closed if one comes back.
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_RDONLY | libc::O_TRUNC) };
    if fd >= 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
    }
    report(Hook::FILE_TRUNCATE, check(fd.into()))?;
    // SAFETY: NUL-terminated names and a 1-byte value.
    report(
        Hook::INODE_SETXATTR,
        check(
            unsafe { libc::setxattr(name.as_ptr(), xattr.as_ptr(), c"x".as_ptr().cast(), 1, 0) }
                .into(),
        ),
    )?;
    // SAFETY: NUL-terminated names.
    report(
        Hook::INODE_REMOVEXATTR,
        check(unsafe { libc::removexattr(name.as_ptr(), xattr.as_ptr()) }.into()),
    )?;
    let value = posix_acl(0o644);
    // SAFETY: NUL-terminated names and a value of the given length.
    report(
        Hook::INODE_SET_ACL,
        check(
            unsafe {
                libc::setxattr(
                    name.as_ptr(),
                    acl.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
            .into(),
        ),
    )?;
    // SAFETY: NUL-terminated names.
    report(
        Hook::INODE_REMOVE_ACL,
        check(unsafe { libc::removexattr(name.as_ptr(), acl.as_ptr()) }.into()),
    )?;
    // SAFETY: a NUL-terminated path; no times means "now".
    report(
        Hook::INODE_SETATTR,
        check(
            unsafe { libc::utimensat(libc::AT_FDCWD, name.as_ptr(), std::ptr::null(), 0) }.into(),
        ),
    )?;
    Ok(())
}

/// The minimal access ACL of `mode` as the system.posix_acl_access value (linux/posix_acl_xattr.h):
/// version 2, then the owner, group and other entries.
fn posix_acl(mode: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, mode >> 6), (0x04, mode >> 3), (0x20, mode)] {
        v.extend(tag.to_le_bytes());
        v.extend(((perm & 7) as u16).to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
    }
    v
}

/// Takes a copy of the process's own descriptor `fd` with pidfd_getfd, which the kernel hands
/// over as a received descriptor (receive_fd). The copy is closed at once.
fn take_own_fd(fd: i32) -> io::Result<()> {
    // SAFETY: pidfd_open of this very process, no pointers.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    check(pidfd)?;
    // SAFETY: pidfd_getfd takes no pointers.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    // SAFETY: our own descriptors.
    unsafe {
        if copy >= 0 {
            libc::close(copy as i32);
        }
        libc::close(pidfd as i32);
    }
    check(copy)
}
