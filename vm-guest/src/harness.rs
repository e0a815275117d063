//! The test harness: the real daemon as a child process, labelled commands through
//! `actgate exec`, plain HTTP to its endpoint, and outcomes that never turn a skip into a pass.

use std::{
    ffi::OsStr,
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The daemon's default HTTP address.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// The verdict of an exec probe whose program ran and exited 0 without output.
pub const RAN: &str = "RAN";

/// How long a daemon may take to turn ready. Under emulation (no machine here runs BPF LSM
/// natively) the verifier takes most of it, about 20 s per hook that walks a path (path_rename,
/// which judges four names, over a minute when the host is busy), more while labelled
/// processes keep the one CPU busy.
pub const READY_WITHIN: Duration = Duration::from_secs(600);

/// How long putting a suite's policies in force on the shared daemon may take: the scale
/// tests put 20000 rules or 256 labels in force with one reload.
pub const RELOADED_WITHIN: Duration = Duration::from_secs(300);

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
    /// The Debian package under test, when one was given (`cargo xtask package` makes it).
    pub package: Option<PathBuf>,
}

impl Ctx {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `actgate exec --user root --label LABEL --`, for the caller to add the command and its
    /// stdio. The tests run as root on purpose: most of them check what the policy denies root.
    pub fn labelled_command(&self, label: &str) -> Command {
        self.labelled_command_as(label, "root")
    }

    /// `actgate exec --user USER --label LABEL --`.
    pub fn labelled_command_as(&self, label: &str, user: &str) -> Command {
        let mut cmd = Command::new(&self.actgate);
        cmd.args(["exec", "--user", user, "--label", label, "--"]);
        cmd
    }

    /// `actgate exec --user root --label LABEL -- vm-guest try`, for the caller to add the probe.
    pub fn labelled_probe(&self, label: &str) -> Command {
        let mut cmd = self.labelled_command(label);
        cmd.arg(&self.guest).arg("try");
        cmd
    }

    /// `actgate exec --user root --label LABEL -- ARGS…`.
    pub fn labelled(&self, label: &str, args: &[&str]) -> Output {
        self.labelled_command(label)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| failed_output(&e))
    }

    /// `sh -c SCRIPT` as label LABEL, running on, with pipes to all of its stdio.
    pub fn spawn_labelled_sh(&self, label: &str, script: &str) -> std::io::Result<Child> {
        self.spawn_labelled_sh_as(label, "root", script)
    }

    /// `spawn_labelled_sh` as USER.
    pub fn spawn_labelled_sh_as(
        &self,
        label: &str,
        user: &str,
        script: &str,
    ) -> std::io::Result<Child> {
        spawn_piped(
            self.labelled_command_as(label, user)
                .args(["/bin/sh", "-c", script]),
        )
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

    /// `vm-guest try ARGS…` as USER in LABEL; returns its verdict line.
    pub fn attempt_as(&self, label: &str, user: &str, args: &[&str]) -> String {
        let out = self
            .labelled_command_as(label, user)
            .arg(&self.guest)
            .arg("try")
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) => verdict_line(&out),
            Err(e) => format!("(actgate exec did not start: {e})"),
        }
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

/// An `actgate exec` that refused: exit 125, its command (which would have created `marker`)
/// never ran, and stderr says why by naming `mention`.
pub fn expect_refused(out: &Output, marker: &Path, mention: &str, what: &str) -> Outcome {
    expect_eq!(out.status.code(), Some(125), "exit code of {what}");
    expect_eq!(marker.exists(), false, "the command ran: {what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.contains(mention) {
        return Err(NotPassed::Fail(format!(
            "the refusal ({what}) doesn't mention {mention:?}: {stderr}"
        )));
    }
    Ok(())
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

/// `actgate status --json`, parsed.
pub fn status_json(ctx: &Ctx) -> Result<serde_json::Value> {
    status_of(&ctx.actgate)
}

/// The labels `actgate status` lists.
fn labels_in_force(actgate: &Path) -> Result<Vec<String>> {
    use serde_json::Value;
    Ok(status_of(actgate)?
        .get("labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| Some(l.get("label")?.as_str()?.to_string()))
        .collect())
}

fn status_of(actgate: &Path) -> Result<serde_json::Value> {
    let out = Command::new(actgate)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .output()
        .context("running actgate status --json")?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).with_context(|| {
        format!(
            "actgate status --json said: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The status entry of `label`, if the status lists it.
pub fn label_status(ctx: &Ctx, label: &str) -> Result<Option<serde_json::Value>> {
    use serde_json::Value;
    Ok(status_json(ctx)?
        .get("labels")
        .and_then(Value::as_array)
        .and_then(|ls| {
            ls.iter()
                .find(|l| l.get("label").and_then(Value::as_str) == Some(label))
        })
        .cloned())
}

/// The table `actgate status` prints.
pub fn status_table(ctx: &Ctx) -> Result<String> {
    let out = Command::new(&ctx.actgate)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .context("running actgate status")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails unless `actgate status` shows `label` with `mode` (ORPHANED, REVOKED) in its table.
pub fn expect_status_mode(ctx: &Ctx, label: &str, mode: &str) -> Outcome {
    let table = status_table(ctx)?;
    if !table
        .lines()
        .any(|l| l.starts_with(label) && l.contains(mode))
    {
        return Err(NotPassed::Fail(format!(
            "actgate status doesn't show {label} as {mode}:\n{table}"
        )));
    }
    Ok(())
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

/// A /metrics scrape that must answer 200.
pub fn scrape() -> Result<String> {
    let (code, body) = http_get("/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}: {body}");
    }
    Ok(body)
}

/// (successes, failures) of policy reloads so far, as /metrics says.
pub fn reloads() -> Result<(f64, f64)> {
    let body = scrape()?;
    let n = |result: &str| {
        metric(
            &body,
            &format!("actgate_policy_reloads_total{{result=\"{result}\"}}"),
        )
    };
    Ok((n("success"), n("failure")))
}

/// The decision counter of one label, action and verdict, named as /metrics writes it.
pub fn decision_series(label: &str, action: &str, verdict: &str) -> String {
    format!(
        "actgate_decisions_total{{label=\"{label}\",action=\"{action}\",verdict=\"{verdict}\"}}"
    )
}

/// The value of one sample on /metrics, e.g.
/// `actgate_decisions_total{label="t",action="exec",verdict="deny"}`; 0 if absent.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The value of `actgate_decisions_total` for one label, action and verdict in a scrape.
pub fn decisions(body: &str, label: &str, action: &str, verdict: &str) -> f64 {
    metric(body, &decision_series(label, action, verdict))
}

/// Fails unless each `(action, verdict, want)` decision counter of `label` grew by exactly
/// `want` from the scrape `before` to the scrape `after`.
pub fn expect_decision_changes(
    label: &str,
    before: &str,
    after: &str,
    changes: &[(&str, &str, usize)],
) -> Outcome {
    for (action, verdict, want) in changes {
        expect_eq!(
            decisions(after, label, action, verdict) - decisions(before, label, action, verdict),
            *want as f64,
            "change of {}",
            decision_series(label, action, verdict)
        );
    }
    Ok(())
}

/// Retries `probe` for up to 10 s until it returns `want`; returns what it said last.
pub fn eventually(want: &str, probe: impl FnMut() -> Result<String>) -> Result<String> {
    eventually_within(Duration::from_secs(10), want, probe)
}

/// `eventually` for up to `within`: what waits on a reload, which under emulation can take
/// longer than 10 s.
pub fn eventually_within(
    within: Duration,
    want: &str,
    mut probe: impl FnMut() -> Result<String>,
) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let got = probe()?;
        if got == want || Instant::now() > deadline {
            return Ok(got);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// `actgate run --policies POLICIES ARGS…` with its stdout and stderr in LOG; not waited for.
pub fn spawn_run(actgate: &Path, policies: &Path, args: &[&OsStr], log: &Path) -> Result<Child> {
    retire_shared()?;
    Command::new(actgate)
        .arg("run")
        .arg("--policies")
        .arg(policies)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(fs::File::options().append(true).open(log)?)
        .spawn()
        .context("starting actgate run")
}

/// The exit status of `child`, once it exits within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Kills `child` unless it has exited, and reaps it: what a drop does with a process a test
/// left running.
pub fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `actgate unload --force`: no program of an earlier daemon judges any more. The daemon
/// pins its programs, so they outlive it; every test starts and ends without them.
pub fn unload(actgate: &Path) -> Result<Output> {
    retire_shared()?;
    let out = Command::new(actgate)
        .args(["unload", "--force"])
        .stdin(Stdio::null())
        .output()
        .context("running actgate unload")?;
    if !out.status.success() {
        bail!(
            "actgate unload --force failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The real daemon, started as a child; killed if a test forgets to stop it, and its
/// programs unloaded unless the test keeps them (`keep_enforcement`).
pub struct Daemon {
    process: Process,
    actgate: PathBuf,
    /// The directory it reads its policies from: for the shared daemon, not the suite's own.
    pub policies: PathBuf,
    pub log: PathBuf,
    pub events: PathBuf,
    keep: bool,
}

enum Process {
    /// Started for one suite or test, which stops it.
    Own(Child),
    /// The shared daemon (see `SHARED`), lent to one suite at a time.
    Shared(u32),
}

/// Suites whose policies stay as they start take turns on one daemon: each puts its policy
/// files in force with a reload, as an operator would, instead of starting a daemon of its
/// own. Under emulation a start costs a minute of verifier time (6.1, busy host) and the
/// `unload` after it 10 s more, so this is most of what keeps `cargo xtask test` in CI's time.
static SHARED: Mutex<Option<Daemon>> = Mutex::new(None);

/// Where the shared daemon reads its policies: the files of the suite it is lent to.
const SHARED_POLICIES: &str = "shared-policies";

/// Policies the shared daemon enforces beside a suite's own: the marker of `put_in_force`.
pub const MARKER_POLICIES: usize = 1;

/// What the shared daemon enforces between suites: a label no test uses (a daemon refuses a
/// directory without a policy).
const IDLE_POLICY: &str = "name: vmtest-idle\nlabels: [vmtest-idle]\n";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops the shared daemon, if one runs (then true), which must exit 0: every other start
/// (and `unload`) needs the kernel to itself.
pub fn retire_shared() -> Result<bool> {
    let shared = lock(&SHARED).take();
    let Some(daemon) = shared else {
        return Ok(false);
    };
    daemon
        .stop_cleanly()
        .context("stopping the daemon the suites before shared")?;
    Ok(true)
}

impl Daemon {
    /// Starts `actgate run` with the suite's events file and log, and waits until /readyz
    /// says 200.
    pub fn start(ctx: &Ctx, policies: &Path, extra: &[&str]) -> Result<Daemon> {
        let (events, log) = (ctx.path("events.jsonl"), ctx.path("daemon.log"));
        Daemon::launch(&ctx.actgate, policies, &events, &log, extra, READY_WITHIN)
    }

    /// The shared daemon (see `SHARED`) enforcing the policy files of `policies` and nothing
    /// else, with a fresh events file: started if none runs, else given the files and a
    /// SIGHUP. The suite's policies must not change after this; `stop_cleanly` hands it back.
    pub fn shared(ctx: &Ctx, policies: &Path) -> Result<Daemon> {
        let dir = ctx.path(SHARED_POLICIES);
        let mut slot = lock(&SHARED);
        let Some(daemon) = slot.as_mut() else {
            drop(slot);
            put_files(policies, &dir)?;
            let daemon = Daemon::start(ctx, &dir, &[])?;
            let lent = daemon.lent();
            *lock(&SHARED) = Some(daemon);
            return Ok(lent);
        };
        if let Some(status) = daemon.try_exit()? {
            bail!(
                "the shared daemon exited ({status}) since the suite before:\n{}",
                daemon.log_text()
            );
        }
        let _ = fs::remove_file(&daemon.events);
        daemon.put_in_force(policies)?;
        Ok(daemon.lent())
    }

    /// A handle on this daemon for a suite that borrows it.
    fn lent(&self) -> Daemon {
        Daemon {
            process: Process::Shared(self.pid()),
            actgate: self.actgate.clone(),
            policies: self.policies.clone(),
            log: self.log.clone(),
            events: self.events.clone(),
            keep: true,
        }
    }

    /// Starts `actgate run` from a clean kernel (`unload`) writing a fresh EVENTS file and its
    /// output to LOG, and waits up to `ready_within` until /readyz says 200.
    pub fn launch(
        actgate: &Path,
        policies: &Path,
        events: &Path,
        log: &Path,
        extra: &[&str],
        ready_within: Duration,
    ) -> Result<Daemon> {
        unload(actgate)?;
        let _ = fs::remove_file(events);
        Daemon::adopt(actgate, policies, events, log, extra, ready_within)
    }

    /// Starts `actgate run`, which takes over whatever an earlier daemon left in force,
    /// appending to EVENTS, and waits up to `ready_within` until /readyz says 200.
    pub fn adopt(
        actgate: &Path,
        policies: &Path,
        events: &Path,
        log: &Path,
        extra: &[&str],
        ready_within: Duration,
    ) -> Result<Daemon> {
        let mut args = vec![OsStr::new("--events"), events.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let child = spawn_run(actgate, policies, &args, log)?;
        Daemon::until_ready(child, actgate, policies, events, log, ready_within)
    }

    /// Takes `child`, an `actgate run` the caller started with its output in LOG and its
    /// events in EVENTS, and waits up to `ready_within` until /readyz says 200. From then on
    /// it is a daemon like the others: killed, and `actgate unload` run, when dropped.
    pub fn until_ready(
        child: Child,
        actgate: &Path,
        policies: &Path,
        events: &Path,
        log: &Path,
        ready_within: Duration,
    ) -> Result<Daemon> {
        let mut d = Daemon {
            process: Process::Own(child),
            actgate: actgate.to_path_buf(),
            policies: policies.to_path_buf(),
            log: log.to_path_buf(),
            events: events.to_path_buf(),
            keep: false,
        };
        let deadline = Instant::now() + ready_within;
        loop {
            if let Some(status) = d.try_exit()? {
                bail!("actgate run exited early ({status}):\n{}", d.log_text());
            }
            if matches!(http_get("/readyz"), Ok((200, _))) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "actgate run was not ready within {} s:\n{}",
                    ready_within.as_secs(),
                    d.log_text()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Own(child) => child.id(),
            Process::Shared(pid) => *pid,
        }
    }

    /// The daemon's own child process: a shared daemon is only lent, never stopped by a suite.
    fn child(&mut self) -> Result<&mut Child> {
        match &mut self.process {
            Process::Own(child) => Ok(child),
            Process::Shared(_) => bail!("the shared daemon is only stopped after its last suite"),
        }
    }

    /// The exit status if the daemon has exited; for a lent one, an error if it has.
    fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.process {
            Process::Own(child) => Ok(child.try_wait()?),
            Process::Shared(pid) => {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    bail!("the shared daemon (pid {pid}) has exited");
                }
                Ok(None)
            }
        }
    }

    /// Makes the shared daemon's directory hold copies of the files of `from` and nothing
    /// else, and waits until a reload put them in force. The reload count can't tell: the
    /// daemon also reloads by itself while the files come and go, and a long reload (256
    /// labels) counts nothing for seconds. So a marker policy with a label of its own goes in
    /// last: the reload that shows its label in `actgate status` listed the directory after
    /// every other file was in place. The marker's file is new each time too: a reload that
    /// listed the directory before could otherwise read the new marker under the old name.
    /// The SIGHUP also makes the daemon reopen its events file.
    fn put_in_force(&self, from: &Path) -> Result<()> {
        static MARKS: AtomicU32 = AtomicU32::new(0);
        let label = format!("vmtest-mark-{}", MARKS.fetch_add(1, Ordering::Relaxed));
        put_files(from, &self.policies)?;
        let new = self.policies.join(".new");
        write(&new, &format!("name: vmtest-mark\nlabels: [{label}]\n"))?;
        fs::rename(&new, self.policies.join(format!("zz-{label}.yaml")))?;
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + RELOADED_WITHIN;
        while !labels_in_force(&self.actgate)?.contains(&label) {
            if Instant::now() > deadline {
                bail!(
                    "the policies of {} were not in force within {} s:\n{}",
                    from.display(),
                    RELOADED_WITHIN.as_secs(),
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Leaves the daemon's programs in force when it ends, for the next daemon to adopt.
    pub fn keep_enforcement(&mut self) {
        self.keep = true;
    }

    /// SIGKILL, keeping what it put in the kernel.
    pub fn crash(mut self) {
        self.keep_enforcement();
        self.signal(libc::SIGKILL);
        if let Process::Own(child) = &mut self.process {
            kill_and_reap(child);
        }
    }

    /// The exit status, once the daemon exits on its own within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        wait_exit(self.child()?, timeout)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> Result<ExitStatus> {
        // A lent daemon isn't the suite's to stop.
        self.child()?;
        self.signal(libc::SIGTERM);
        match wait_exit(self.child()?, Duration::from_secs(60))? {
            Some(status) => Ok(status),
            None => bail!("actgate run did not exit within 60 s of SIGTERM"),
        }
    }

    /// SIGTERM, and an error unless it exited 0 (with its log, which says why). A lent
    /// daemon is handed back instead, enforcing no policy, once a reload says it still works.
    pub fn stop_cleanly(self) -> Result<()> {
        if let Process::Shared(_) = self.process {
            let idle = self.policies.with_file_name("shared-idle");
            write(&idle.join("idle.yaml"), IDLE_POLICY)?;
            return self.put_in_force(&idle);
        }
        let log = self.log.clone();
        let status = self.stop()?;
        if !status.success() {
            bail!(
                "actgate run exited with {status} after SIGTERM:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Process::Own(child) = &mut self.process else {
            return;
        };
        kill_and_reap(child);
        if !self.keep
            && let Err(e) = unload(&self.actgate)
        {
            eprintln!("after the daemon's end: {e:#}");
        }
    }
}

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running for the next one.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// Writes "x\n" to each path with its mode, so a denial in a test is the policy's, never the
/// mode bits'.
pub fn files_with_modes(files: &[(String, u32)]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in files {
        write(Path::new(path), "x\n")?;
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("chmod {mode:o} {path}"))?;
    }
    Ok(())
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

/// Spawns `command` with its standard streams piped to the caller.
pub fn spawn_piped(command: &mut Command) -> std::io::Result<Child> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Puts `text` in force as the only policy file of `dir`: the file is replaced in one rename,
/// then SIGHUP; done once a reload succeeded and none followed for 2 s (the daemon also
/// reloads by itself when the directory changes).
pub fn replace_policies(daemon: &Daemon, dir: &Path, text: &str) -> Result<()> {
    let (ok, failed) = reloads()?;
    let new = dir.join("policies.yaml.new");
    write(&new, text)?;
    fs::rename(&new, dir.join("policies.yaml"))?;
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = reloads()?;
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(250));
        let now = reloads()?;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if now.0 > ok && since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no settled reload within 60 s (reloads now {now:?}, before {ok})");
        }
    }
    if last.1 != failed {
        bail!("a reload failed:\n{}", daemon.log_text());
    }
    Ok(())
}

/// Makes `to` hold copies of the files of `from` and nothing else. Each file is renamed into
/// place before the old ones go, so a reload in between (the daemon follows its directory)
/// sees the old files and the new ones together, never an empty directory, which it refuses.
fn put_files(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let name = entry?.file_name();
        let new = to.join(".new");
        fs::copy(from.join(&name), &new)
            .with_context(|| format!("copying {}", from.join(&name).display()))?;
        fs::rename(&new, to.join(&name))?;
        names.push(name);
    }
    for entry in fs::read_dir(to)? {
        let entry = entry?;
        if !names.contains(&entry.file_name()) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
