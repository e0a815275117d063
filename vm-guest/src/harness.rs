//! The test harness: the real daemon as a child process, labelled commands through
//! `actgate exec`, plain HTTP to its endpoint, and outcomes that never turn a skip into a pass.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The daemon's default HTTP address.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The verdict of an exec probe whose program ran and exited 0 without output.
pub const RAN: &str = "RAN";

/// Why a test did not pass.
#[derive(Debug)]
pub enum NotPassed {
    Fail(String),
    Skip(String),
}

impl From<anyhow::Error> for NotPassed {
    fn from(e: anyhow::Error) -> Self {
        NotPassed::Fail(format!("{e:#}"))
    }
}

pub type Outcome = Result<(), NotPassed>;

/// Fails the test unless `left == right`, naming what was compared.
#[macro_export]
macro_rules! expect_eq {
    ($left:expr, $right:expr, $($what:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::harness::NotPassed::Fail(format!(
                "{}: expected {:?}, got {:?}", format!($($what)+), r, l
            )));
        }
    }};
}

/// What every test gets: the binaries and a scratch directory in the guest's own /tmp.
pub struct Ctx {
    pub actgate: PathBuf,
    pub guest: PathBuf,
    pub dir: PathBuf,
}

impl Ctx {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `actgate exec --label LABEL -- ARGS…`.
    pub fn labelled(&self, label: &str, args: &[&str]) -> Output {
        Command::new(&self.actgate)
            .args(["exec", "--label", label, "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| failed_output(&e))
    }

    /// `vm-guest try …` as label LABEL (or unlabelled with None); returns its verdict line.
    pub fn attempt(&self, label: Option<&str>, args: &[&str]) -> String {
        let guest = self.guest.display().to_string();
        let mut full = vec![guest.as_str(), "try"];
        full.extend_from_slice(args);
        let out = match label {
            Some(l) => self.labelled(l, &full),
            None => Command::new(full[0])
                .args(&full[1..])
                .output()
                .unwrap_or_else(|e| failed_output(&e)),
        };
        verdict_line(&out)
    }

    /// `sh -c SCRIPT` as label LABEL; returns the verdict line of the probe it ran.
    pub fn labelled_sh(&self, label: &str, script: &str) -> String {
        verdict_line(&self.labelled(label, &["/bin/sh", "-c", script]))
    }
}

fn failed_output(e: &std::io::Error) -> Output {
    Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(255 << 8),
        stdout: Vec::new(),
        stderr: e.to_string().into_bytes(),
    }
}

/// What a probe run says: the last line it printed (`OK`, `EPERM`, …), `RAN` when an exec'd
/// program printed nothing and exited 0, or a description of what went wrong.
pub fn verdict_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => l.trim().to_string(),
        None if out.status.success() => RAN.to_string(),
        None => format!(
            "(no output, {}; stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// A GET over plain HTTP/1.0; returns status code and body.
pub fn http_get(path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(METRICS_ADDR)
        .with_context(|| format!("connecting to {METRICS_ADDR}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of one sample on /metrics, e.g.
/// `actgate_decisions_total{label="t",action="exec",verdict="deny"}`; 0 if absent.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The real daemon, started as a child; killed if a test forgets to stop it.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub events: PathBuf,
}

impl Daemon {
    /// Starts `actgate run` and waits until /readyz says 200.
    pub fn start(ctx: &Ctx, policies: &Path, extra: &[&str]) -> Result<Daemon> {
        let log = ctx.path("daemon.log");
        let events = ctx.path("events.jsonl");
        let _ = fs::remove_file(&events);
        let child = Command::new(&ctx.actgate)
            .arg("run")
            .arg("--policies")
            .arg(policies)
            .arg("--events")
            .arg(&events)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("starting actgate run")?;
        let mut d = Daemon { child, log, events };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = d.child.try_wait()? {
                bail!("actgate run exited early ({status}):\n{}", d.log_text());
            }
            if matches!(http_get("/readyz"), Ok((200, _))) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("actgate run never became ready:\n{}", d.log_text());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("actgate run did not exit within 60 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes `text` to `path`, creating parent directories.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Copies an executable, creating parent directories.
pub fn install(from: &str, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to).with_context(|| format!("copying {from} to {}", to.display()))?;
    Ok(())
}
