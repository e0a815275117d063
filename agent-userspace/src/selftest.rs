//! Proof of enforcement at start-up: before /readyz turns 200, a throw-away root process in a
//! private label tries one denied action per hook that can deny, and must meet EPERM each
//! time. A policy that loads but doesn't enforce is the failure this catches.
//!
//! Each probe can only be refused by its own hook: the files are denied to one kind of
//! action each, and the policy grants the capabilities (CAP_BPF, CAP_SYS_PTRACE) that would
//! otherwise refuse the bpf(2) and ptrace probes before their hooks run.

use std::{
    ffi::CString,
    fs,
    io::{self, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsFd, AsRawFd},
        unix::{
            ffi::OsStrExt,
            fs::{PermissionsExt, symlink},
        },
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent_common::{Action, HOOK_COUNT, Hook, capability_by_name};
use agent_policy::{Fallback, Mode, NetPattern, PathPattern, Policy, ProcessRules, Rules};
use anyhow::{Context, Result};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The self-test's label. `:` can't appear in a policy's label, so it never collides.
pub const LABEL: &str = "actgate:selftest";
const POLICY: &str = "actgate:selftest";
/// Denied for the connect and sendmsg checks (the discard port on loopback); nothing needs to
/// listen.
const CONNECT_TO: ([u8; 4], u16) = ([127, 0, 0, 1], 9);

/// Per hook of `Hook::ALL`: whether its probe met EPERM (None: not run).
pub type Verified = [Option<bool>; HOOK_COUNT];

/// The self-test's files, each denied to the one kind of action its probes try.
pub struct SelfTest {
    dir: PathBuf,
    /// Denied to exec only.
    exec_probe: PathBuf,
    /// Denied to writes and reads: opens, truncate, chmod, chown, unlink.
    file_probe: PathBuf,
    /// A directory denied to writes: rmdir.
    dir_probe: PathBuf,
    /// A name denied to writes that doesn't exist: mkdir, symlink, mknod, and the new name of
    /// a link and a rename.
    new_probe: PathBuf,
    /// An allowed file: the source of the link and the rename.
    source: PathBuf,
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
            dir_probe: dir.join("dir-probe"),
            new_probe: dir.join("new-probe"),
            source: dir.join("source"),
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
        for probe in [&t.exec_probe, &t.file_probe, &t.source] {
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
        Policy {
            name: POLICY.into(),
            labels: vec![LABEL.into()],
            mode: Mode::Enforce,
            exec: deny(&[&self.exec_probe]),
            anonymous_exec: None,
            file_write: deny(&[&self.file_probe, &self.dir_probe, &self.new_probe]),
            file_read: deny(&[&self.file_probe]),
            connect: Rules {
                deny: vec![NetPattern {
                    net: ipnet::IpNet::from(addr.ip()),
                    port: Some(addr.port()),
                }],
                ..Rules::default()
            },
            process: ProcessRules {
                // bpf(2) asks for CAP_BPF before its LSM hook on 6.1; ptrace may ask for
                // CAP_SYS_PTRACE. CAP_NET_RAW stays denied for the capable probe.
                capabilities: ["CAP_BPF", "CAP_SYS_PTRACE"]
                    .iter()
                    .filter_map(|c| capability_by_name(c))
                    .collect(),
                namespaces: Fallback::Deny,
            },
            file: self.dir.clone(),
            line: 0,
        }
    }

    /// Runs the probe in the label's cgroup; per hook, whether it met EPERM.
    pub fn run(&self, cgroup: &Path) -> Result<Verified> {
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
        let mut verified = [Some(false); HOOK_COUNT];
        for (i, hook) in Hook::ALL.iter().enumerate() {
            verified[i] = Some(
                text.lines()
                    .any(|l| l.trim() == format!("{}=EPERM", hook.name)),
            );
        }
        Ok(verified)
    }
}

/// Whether every hook of `action` proved it denies (None when one hasn't run).
pub fn action_verified(verified: &Verified, action: Action) -> Option<bool> {
    Hook::all_for(action).try_fold(true, |all, (i, _)| verified[i].map(|v| all && v))
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
    crate::cgroup::enter(cgroup)?;
    let t = SelfTest::at(dir);
    let new = &t.new_probe;
    let undo = |r: io::Result<()>| {
        if r.is_ok() {
            let _ = fs::remove_dir(new).or_else(|_| fs::remove_file(new));
        }
        r
    };
    let cgroup_dir = fs::File::open(cgroup).context("opening the label's cgroup")?;
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
    let addr = SocketAddr::from(CONNECT_TO);
    report(
        Hook::SOCKET_CONNECT,
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ()),
    )?;
    report(
        Hook::SOCKET_SENDMSG,
        UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"x", addr).map(|_| ())),
    )?;
    // A zeroed BPF_MAP_CREATE: EINVAL when allowed, so nothing is created.
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    report(
        Hook::BPF,
        agent_common::sys::bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr).map(|_| ()),
    )?;
    // SAFETY: plain socket(2); the fd is closed if one comes back.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if raw >= 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(raw) };
    }
    report(Hook::CAPABLE, check(raw.into()))?;
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
    report(
        Hook::TASK_ALLOC,
        agent_common::sys::clone_into_cgroup(cgroup_dir.as_fd()),
    )?;
    // Last: an allowed unshare would leave this process root in a namespace of its own.
    // SAFETY: unshare(2) of the calling, single-threaded process.
    report(
        Hook::USERNS_CREATE,
        check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()),
    )?;
    Ok(())
}
