//! Proof of enforcement at start-up: before /readyz turns 200, a throw-away process in a
//! private label tries one denied action per hook family and must meet EPERM each time. A
//! policy that loads but doesn't enforce is the failure this catches.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent_common::{Action, Hook};
use agent_policy::{Fallback, Mode, NetPattern, PathPattern, Policy, Rules};
use anyhow::{Context, Result};

/// The self-test's label. `:` can't appear in a policy's label, so it never collides.
pub const LABEL: &str = "actgate:selftest";
const POLICY: &str = "actgate:selftest";
/// Denied for the connect check (the discard port on loopback); nothing needs to listen.
const CONNECT_TO: ([u8; 4], u16) = ([127, 0, 0, 1], 9);

/// The self-test's files: one only exec rules deny, one only file rules deny, so each check
/// can only be passed by its own hook.
pub struct SelfTest {
    dir: PathBuf,
    exec_probe: PathBuf,
    file_probe: PathBuf,
}

/// Whether a label is one of actgate's own (never runnable through `actgate exec`).
pub fn is_internal(label: &str) -> bool {
    label == LABEL
}

impl SelfTest {
    /// Creates the probe file in the daemon's runtime directory.
    pub fn prepare(runtime_dir: &Path) -> Result<Self> {
        let dir = runtime_dir.join("selftest");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let exec_probe = dir.join("exec-probe");
        let file_probe = dir.join("file-probe");
        for probe in [&exec_probe, &file_probe] {
            fs::write(probe, "#!/bin/sh\nexit 0\n")
                .with_context(|| format!("writing {}", probe.display()))?;
            fs::set_permissions(probe, fs::Permissions::from_mode(0o755))?;
        }
        Ok(Self {
            dir,
            exec_probe,
            file_probe,
        })
    }

    /// The built-in policy: every action on the probe file, and the connect target, denied.
    pub fn policy(&self) -> Policy {
        let deny = |p: &Path| Rules {
            default: Fallback::Allow,
            allow: Vec::new(),
            deny: vec![PathPattern::Exact(p.display().to_string())],
        };
        let addr = SocketAddr::from(CONNECT_TO);
        Policy {
            name: POLICY.into(),
            labels: vec![LABEL.into()],
            mode: Mode::Enforce,
            exec: deny(&self.exec_probe),
            file_write: deny(&self.file_probe),
            file_read: deny(&self.file_probe),
            connect: Rules {
                default: Fallback::Allow,
                allow: Vec::new(),
                deny: vec![NetPattern {
                    net: ipnet::IpNet::from(addr.ip()),
                    port: Some(addr.port()),
                }],
            },
            file: self.dir.clone(),
            line: 0,
        }
    }

    /// Runs the probe in the label's cgroup; per action, whether it met EPERM.
    pub fn run(&self, cgroup: &Path) -> Result<[bool; Action::COUNT]> {
        let exe = std::env::current_exe().context("finding actgate's own binary")?;
        let out = Command::new(exe)
            .arg("selftest-probe")
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--exec-file")
            .arg(&self.exec_probe)
            .arg("--file")
            .arg(&self.file_probe)
            .output()
            .context("running the self-test probe")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut verified = [false; Action::COUNT];
        for a in Action::ALL {
            verified[a as usize] = text
                .lines()
                .any(|l| l.trim() == format!("{}=EPERM", a.as_str()));
        }
        Ok(verified)
    }
}

/// The hook each probe action passes through, for messages.
pub fn hook_of(action: Action) -> &'static str {
    Hook::first_for(action).map_or("none", |h| h.name)
}

fn outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ALLOWED".into(),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
        Err(e) => format!("{e}"),
    }
}

/// The probe itself (`actgate selftest-probe`): joins the cgroup and tries each action.
pub fn probe(cgroup: &Path, exec_file: &Path, file: &Path) -> Result<()> {
    crate::cgroup::enter(cgroup)?;
    let exec = Command::new(exec_file).status().map(|_| ());
    let write = fs::OpenOptions::new().write(true).open(file).map(|_| ());
    let read = fs::File::open(file).and_then(|mut f| f.read(&mut [0; 1]).map(|_| ()));
    let addr = SocketAddr::from(CONNECT_TO);
    let connect = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .and_then(|mut s| s.write_all(b"").map(|_| ()));
    let mut out = std::io::stdout().lock();
    for (a, r) in [
        (Action::Exec, exec),
        (Action::FileWrite, write),
        (Action::FileRead, read),
        (Action::Connect, connect),
    ] {
        writeln!(out, "{}={}", a.as_str(), outcome(r))?;
    }
    Ok(())
}
