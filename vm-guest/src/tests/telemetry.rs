//! Issue 4: what the daemon reports. Decision counters that equal the actions taken, the events
//! file (every field, rotation, SIGHUP), /metrics right after start, `actgate status`, and the
//! start-up self-test that refuses to run, or runs unready, when a hook doesn't deny.
//!
//! The fixtures live on a tmpfs of their own: on overlayfs (the VM's /tmp, a container's root)
//! the kernel calls `file_open` a second time for the backing file, which
//! `write_open_on_overlayfs_is_one_decision_judged_on_its_path` covers by itself.
//!
//! The filter selects a test by its name or by `telemetry::<name>`, so `--filter telemetry`
//! runs them all.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{CString, OsStr},
    fs,
    io::{Read, Write},
    net::TcpListener,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    expect_eq,
    harness::{
        self, Ctx, Daemon, NotPassed, Outcome, RAN, Results, decision_series, http_get, scrape,
    },
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

const ACTIONS: [&str; 4] = ["exec", "file_write", "file_read", "connect"];
const VERDICTS: [&str; 3] = ["allow", "deny", "audit"];
/// The hook behind each action, as the self-test names it.
const HOOKS: [(&str, &str); 4] = [
    ("exec", "bprm_check_security"),
    ("file_write", "file_open"),
    ("file_read", "file_open"),
    ("connect", "socket_connect"),
];
/// The fields of an event line, all of them.
const EVENT_FIELDS: [&str; 12] = [
    "time", "label", "policy", "action", "verdict", "target", "pid", "ppid", "uid", "comm", "exe",
    "cgroup",
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

const TMPFS_MAGIC: i64 = 0x0102_1994;
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

/// Mounts a tmpfs on the suite's directory unless it already is one.
fn own_tmpfs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    if fs_type(dir)? == TMPFS_MAGIC {
        return Ok(());
    }
    let target = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let ret = unsafe {
        libc::mount(
            c"actgate-telemetry".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a tmpfs on {}", dir.display()));
    }
    Ok(())
}

fn fixtures(ctx: &Ctx) -> Result<()> {
    own_tmpfs(&ctx.path("tele"))?;
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
    )
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// The value of exactly this series (name and labels as the scrape writes them); an error if
/// it is missing or appears twice.
fn sample(body: &str, series: &str) -> Result<u64> {
    let mut found = body.lines().filter_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then_some(v)
    });
    let Some(v) = found.next() else {
        bail!("{series} is missing from /metrics:\n{body}");
    };
    if found.next().is_some() {
        bail!("{series} appears more than once on /metrics");
    }
    v.parse()
        .with_context(|| format!("{series} has the value {v:?}, not a whole number"))
}

/// Every reason of `actgate_kernel_errors_total`, as the README lists them.
const KERNEL_ERROR_REASONS: [&str; 4] = [
    "d_path_failed",
    "path_too_deep",
    "path_too_long",
    "scratch_unavailable",
];

/// The sum of `actgate_kernel_errors_total` over its reasons, each of which must be there,
/// and no other.
fn kernel_errors(body: &str) -> Result<u64> {
    let series = body
        .lines()
        .filter(|l| l.starts_with("actgate_kernel_errors_total"))
        .count();
    if series != KERNEL_ERROR_REASONS.len() {
        bail!(
            "actgate_kernel_errors_total has {series} series, not one per reason \
             {KERNEL_ERROR_REASONS:?}:\n{body}"
        );
    }
    KERNEL_ERROR_REASONS
        .iter()
        .map(|r| {
            sample(
                body,
                &format!("actgate_kernel_errors_total{{reason=\"{r}\"}}"),
            )
        })
        .sum()
}

type Decisions = BTreeMap<(&'static str, &'static str), u64>;

/// Every decision counter of one label in a scrape.
fn decisions(body: &str, label: &str) -> Result<Decisions> {
    let mut out = Decisions::new();
    for a in ACTIONS {
        for v in VERDICTS {
            out.insert((a, v), sample(body, &decision_series(label, a, v))?);
        }
    }
    Ok(out)
}

fn label_decisions(label: &str) -> Result<Decisions> {
    decisions(&scrape()?, label)
}

/// Fails unless every counter moved by exactly what `want` says (0 when not named), except
/// those in `unchecked`.
fn expect_deltas(
    what: &str,
    before: &Decisions,
    after: &Decisions,
    want: &[(&str, &str, u64)],
    unchecked: &[(&str, &str)],
) -> Outcome {
    let mut wrong = Vec::new();
    for (&(a, v), &n) in after {
        if unchecked.contains(&(a, v)) {
            continue;
        }
        let got = n.wrapping_sub(before[&(a, v)]);
        let expected = want
            .iter()
            .find(|(wa, wv, _)| *wa == a && *wv == v)
            .map_or(0, |w| w.2);
        if got != expected {
            wrong.push(format!("{a}/{v}: expected +{expected}, got +{got}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(NotPassed::Fail(format!("{what}: {}", wrong.join("; "))))
    }
}

/// Fails unless `actgate_enforcement_verified` is `want` for every action; `when` ends the
/// failure's description.
fn expect_verified(body: &str, want: u64, when: &str) -> Outcome {
    for a in ACTIONS {
        let series = format!("actgate_enforcement_verified{{action=\"{a}\"}}");
        expect_eq!(
            sample(body, &series)?,
            want,
            "actgate_enforcement_verified for {a}{when}"
        );
    }
    Ok(())
}

fn processes_series(label: &str) -> String {
    format!("actgate_labelled_processes{{label=\"{label}\"}}")
}

/// Polls /metrics until `series` has the value `want` (or `timeout` passes); returns the
/// last value seen.
fn wait_for_sample(series: &str, want: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = sample(&scrape()?, series)?;
        if got == want || Instant::now() > deadline {
            return Ok(got);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Labelled processes

/// A labelled `sleep`, killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start(ctx: &Ctx, label: &str) -> Result<Sleeper> {
        let child = ctx
            .labelled_command(label)
            .args(["/bin/sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a labelled sleep")?;
        Ok(Sleeper(child))
    }

    /// Waits until it is `sleep` and sleeps: it counts as a process as soon as `actgate exec`
    /// joins the label, but loading `sleep` still makes decisions after that.
    fn wait_idle(&self, label: &str) -> Result<()> {
        let comm = format!("/proc/{}/comm", self.0.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            if Instant::now() > deadline {
                bail!("the labelled sleep never ran");
            }
            thread::sleep(Duration::from_millis(100));
        }
        let mut last = label_decisions(label)?;
        loop {
            thread::sleep(Duration::from_secs(1));
            let now = label_decisions(label)?;
            if now == last {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the decisions of {label} keep changing while only a sleep runs");
            }
            last = now;
        }
    }

    /// Kills it and reaps it.
    fn stop(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.0);
    }
}

/// `actgate exec --label LABEL -- vm-guest try ARGS…`; returns the probe's pid and verdict.
fn probe_with_pid(ctx: &Ctx, label: &str, args: &[&str]) -> Result<(u32, String)> {
    let child = ctx
        .labelled_probe(label)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a labelled probe")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    Ok((pid, harness::verdict_line(&out)))
}

// ---------------------------------------------------------------------------------------------
// Events

/// Every complete line of the events file, parsed; a line that isn't a JSON object fails.
fn read_events(path: &Path) -> Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A line still being written has no newline yet.
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("an events line is not JSON: {l}"))?;
            if !v.is_object() {
                bail!("an events line is not a JSON object: {l}");
            }
            Ok(v)
        })
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Waits until the events file holds at least `count` lines matching `pred`, then a moment
/// longer, and returns the matching lines (so a test can assert there are exactly `count`).
fn wait_for_events(path: &Path, count: usize, pred: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hits = read_events(path)?.into_iter().filter(&pred).count();
        if hits >= count || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(1));
    Ok(read_events(path)?.into_iter().filter(pred).collect())
}

/// Waits until the file has not grown for `quiet`, at most `timeout`; returns its size.
fn wait_until_still(path: &Path, quiet: Duration, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let size = || fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(250));
        let now = size();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "{} still grows after {} s",
                path.display(),
                timeout.as_secs()
            );
        }
    }
}

/// Seconds since the epoch of an RFC 3339 date-time (`2025-01-31T12:00:00.5Z`, `…+01:00`).
fn rfc3339_secs(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (h, mi, se) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if len == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..len]).parse().ok()?;
        rest = &r[len..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (oh, om): (i64, i64) = (rest[1..3].parse().ok()?, rest[4..6].parse().ok()?);
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from 1970-01-01 to the civil date (H. Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + se - offset) as f64 + frac)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What one event line must say; the time must fall in `window` (seconds since the epoch).
struct Expected<'a> {
    label: &'a str,
    policy: &'a str,
    action: &'a str,
    verdict: &'a str,
    target: &'a str,
    pid: u32,
    /// The process's executable, which implies its cgroup is the label's too; None for a
    /// process that may have exec'd something else before the daemon reads the event.
    exe: Option<&'a str>,
    window: (f64, f64),
}

/// Checks every field of one event line, exactly.
fn check_event(v: &Value, e: &Expected) -> Outcome {
    let keys: BTreeSet<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    expect_eq!(
        keys,
        EVENT_FIELDS.into_iter().collect::<BTreeSet<_>>(),
        "the fields of the event {v}"
    );
    let time = s(v, "time");
    let Some(secs) = rfc3339_secs(time) else {
        return Err(NotPassed::Fail(format!(
            "time {time:?} is not an RFC 3339 date-time ({v})"
        )));
    };
    // Two seconds of slack for the clock arithmetic (boot time + monotonic time).
    if secs < e.window.0 - 2.0 || secs > e.window.1 + 2.0 {
        return Err(NotPassed::Fail(format!(
            "time {time} is outside the action's window {:.3}..{:.3} ({v})",
            e.window.0, e.window.1
        )));
    }
    expect_eq!(s(v, "label"), e.label, "label of {v}");
    expect_eq!(s(v, "policy"), e.policy, "policy of {v}");
    expect_eq!(s(v, "action"), e.action, "action of {v}");
    expect_eq!(s(v, "verdict"), e.verdict, "verdict of {v}");
    expect_eq!(s(v, "target"), e.target, "target of {v}");
    expect_eq!(n(v, "pid"), Some(u64::from(e.pid)), "pid of {v}");
    expect_eq!(
        n(v, "ppid"),
        Some(u64::from(std::process::id())),
        "ppid (the test runner) of {v}"
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    expect_eq!(n(v, "uid"), Some(u64::from(uid)), "uid of {v}");
    expect_eq!(s(v, "comm"), "vm-guest", "comm of {v}");
    if let Some(exe) = e.exe {
        let cgroup = format!("/actgate/{}", e.label);
        if (s(v, "exe"), s(v, "cgroup")) != (exe, cgroup.as_str()) {
            return Err(NotPassed::Fail(format!(
                "exe and cgroup of {v}: expected {exe:?} and {cgroup:?}, got {:?} and {:?}",
                s(v, "exe"),
                s(v, "cgroup")
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `actgate status`

fn status(ctx: &Ctx, json: bool) -> Result<String> {
    let mut cmd = Command::new(&ctx.actgate);
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running actgate status")?;
    if !out.status.success() {
        bail!(
            "actgate status{} exited with {}: {}",
            if json { " --json" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_json(ctx: &Ctx) -> Result<Value> {
    let text = status(ctx, true)?;
    serde_json::from_str(&text).with_context(|| format!("actgate status --json said: {text}"))
}

fn status_label<'a>(st: &'a Value, label: &str) -> Result<&'a Value> {
    st.get("labels")
        .and_then(Value::as_array)
        .and_then(|ls| ls.iter().find(|l| s(l, "label") == label))
        .with_context(|| format!("label {label} is missing from the status: {st}"))
}

// ---------------------------------------------------------------------------------------------
// The tests with the suite's daemon running

fn metrics_after_start(ctx: &Ctx, _: &Daemon) -> Outcome {
    let body = scrape()?;
    expect_eq!(
        body.lines().last(),
        Some("# EOF"),
        "the last line of the OpenMetrics scrape"
    );
    expect_verified(&body, 1, "")?;
    for a in ACTIONS {
        sample(
            &body,
            &format!("actgate_events_dropped_total{{action=\"{a}\"}}"),
        )?;
    }
    expect_eq!(
        sample(&body, "actgate_policies_loaded")?,
        POLICIES,
        "actgate_policies_loaded"
    );
    let build = format!(
        "actgate_build_info{{version=\"{}\",kernel=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        kernel_release()
    );
    expect_eq!(sample(&body, &build)?, 1, "{build}");
    expect_eq!(kernel_errors(&body)?, 0, "actgate_kernel_errors_total");
    for result in ["success", "failure"] {
        expect_eq!(
            sample(
                &body,
                &format!("actgate_policy_reloads_total{{result=\"{result}\"}}")
            )?,
            0,
            "reloads ({result}) right after start"
        );
    }
    // The self-test's own label is actgate's business, not a workload's.
    if let Some(line) = body.lines().find(|l| l.contains("actgate:selftest")) {
        return Err(NotPassed::Fail(format!(
            "/metrics shows the self-test's label: {line}"
        )));
    }
    for label in LABELS {
        decisions(&body, label)?;
        expect_eq!(
            sample(&body, &processes_series(label))?,
            0,
            "labelled processes of {label} before any runs"
        );
    }

    let sleeper = Sleeper::start(ctx, LABEL)?;
    let series = processes_series(LABEL);
    expect_eq!(
        wait_for_sample(&series, 1, Duration::from_secs(30))?,
        1,
        "{series} with one labelled sleep running"
    );
    let body = scrape()?;
    for other in LABELS.into_iter().filter(|l| *l != LABEL) {
        expect_eq!(
            sample(&body, &processes_series(other))?,
            0,
            "labelled processes of {other} while only {LABEL} runs one"
        );
    }
    sleeper.stop()?;
    expect_eq!(
        wait_for_sample(&series, 0, Duration::from_secs(30))?,
        0,
        "{series} once the sleep was killed"
    );
    Ok(())
}

fn status_shows_the_running_daemon(ctx: &Ctx, _: &Daemon) -> Outcome {
    let sleeper = Sleeper::start(ctx, LABEL)?;
    sleeper.wait_idle(LABEL)?;
    expect_eq!(
        wait_for_sample(&processes_series(LABEL), 1, Duration::from_secs(30))?,
        1,
        "labelled processes of {LABEL} with one sleep running"
    );
    // Nothing labelled acts meanwhile (the sleep sleeps), so the three readings agree.
    let before = scrape()?;
    let st = status_json(ctx)?;
    let after = scrape()?;
    let table = status(ctx, false)?;
    sleeper.stop()?;

    expect_eq!(st["ready"], Value::Bool(true), "ready in {st}");
    expect_eq!(s(&st, "kernel"), kernel_release(), "kernel in the status");
    expect_eq!(
        n(&st, "policies_loaded"),
        Some(POLICIES),
        "policies_loaded in the status"
    );
    for a in ACTIONS {
        expect_eq!(
            st["enforcement_verified"][a].as_str(),
            Some("verified"),
            "enforcement_verified.{a} in the status"
        );
        expect_eq!(
            n(&st["events_dropped"], a),
            Some(sample(
                &before,
                &format!("actgate_events_dropped_total{{action=\"{a}\"}}")
            )?),
            "events_dropped.{a}: status against /metrics"
        );
    }
    expect_eq!(
        n(&st, "kernel_errors"),
        Some(kernel_errors(&before)?),
        "kernel_errors: status against /metrics"
    );
    let mut names: Vec<&str> = st["labels"]
        .as_array()
        .map(|ls| ls.iter().map(|l| s(l, "label")).collect())
        .unwrap_or_default();
    names.sort_unstable();
    let mut want = LABELS.to_vec();
    want.sort_unstable();
    expect_eq!(names, want, "the labels in the status");
    for (label, policy, mode, procs) in [
        (LABEL, POLICY, "enforce", 1),
        (AUDIT_LABEL, AUDIT_POLICY, "audit", 0),
        (FLOOD_LABEL, FLOOD_POLICY, "enforce", 0),
        (OVERLAY_LABEL, OVERLAY_POLICY, "enforce", 0),
    ] {
        let l = status_label(&st, label)?;
        expect_eq!(s(l, "policy"), policy, "policy of {label} in the status");
        expect_eq!(s(l, "mode"), mode, "mode of {label} in the status");
        let cgroup = s(l, "cgroup");
        if !cgroup.ends_with(&format!("/actgate/{label}")) || !Path::new(cgroup).is_dir() {
            return Err(NotPassed::Fail(format!(
                "cgroup of {label} in the status is {cgroup:?}, not an existing …/actgate/{label}"
            )));
        }
        expect_eq!(
            n(l, "processes"),
            Some(procs),
            "processes of {label} in the status"
        );
        let m1 = decisions(&before, label)?;
        let m2 = decisions(&after, label)?;
        expect_eq!(m1, m2, "/metrics of {label} before and after the status");
        for ((a, v), count) in &m1 {
            expect_eq!(
                n(&l["decisions"][a], v),
                Some(*count),
                "decisions.{a}.{v} of {label}: status against /metrics"
            );
        }
        // The table: the label's row and its counters, as the JSON gives them (compared
        // word by word, so column widths are free).
        let mut rows = vec![vec![
            label.to_string(),
            policy.to_string(),
            mode.to_string(),
            procs.to_string(),
            cgroup.to_string(),
        ]];
        for a in ACTIONS {
            let mut row = vec![label.to_string(), a.to_string()];
            row.extend(VERDICTS.iter().map(|v| m1[&(a, *v)].to_string()));
            rows.push(row);
        }
        for row in rows {
            if !table
                .lines()
                .any(|line| line.split_whitespace().eq(row.iter().map(String::as_str)))
            {
                return Err(NotPassed::Fail(format!(
                    "the status table has no row {:?}:\n{table}",
                    row.join(" ")
                )));
            }
        }
    }
    if !table.starts_with("actgate: ready, enforcing") {
        return Err(NotPassed::Fail(format!(
            "the status table doesn't open with \"actgate: ready, enforcing\":\n{table}"
        )));
    }
    Ok(())
}

fn counters_equal_exact_actions(ctx: &Ctx, _: &Daemon) -> Outcome {
    // An allowed connection that completes: the kernel finishes the handshake from the backlog.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(anyhow::Error::from)?;
    let open_port = listener
        .local_addr()
        .map_err(anyhow::Error::from)?
        .to_string();
    let denied_addr = format!("{DENIED_IP}:9");
    let (denied, allowed) = (t(ctx, "bin/denied"), t(ctx, "bin/allowed"));
    let (wdenied, wok) = (t(ctx, "write-denied.txt"), t(ctx, "write-ok.txt"));
    let rdenied = t(ctx, "read-denied.txt");
    let runs: [(&[&str], &str, u64); 7] = [
        (&["exec", &denied], "EPERM", 7),
        (&["exec", &allowed], RAN, 3),
        (&["open-write", &wdenied], "EPERM", 5),
        (&["open-write", &wok], "OK", 2),
        (&["open-read", &rdenied], "EPERM", 4),
        (&["connect-tcp", &denied_addr], "EPERM", 3),
        (&["connect-tcp", &open_port], "OK", 2),
    ];
    let before = label_decisions(LABEL)?;
    for (args, want, times) in &runs {
        for i in 0..*times {
            expect_eq!(
                ctx.attempt(Some(LABEL), args),
                *want,
                "labelled try {} (run {})",
                args.join(" "),
                i + 1
            );
        }
    }
    let after = label_decisions(LABEL)?;
    drop(listener);
    // Each run is one exec of vm-guest (actgate exec's execve) plus its action; the allowed
    // exec runs /bin/true as well. Loading a program opens its shared libraries, so
    // file_read/allow is not a number this test controls.
    let probes: u64 = runs.iter().map(|r| r.2).sum();
    expect_deltas(
        "decisions of the labelled runs",
        &before,
        &after,
        &[
            ("exec", "allow", probes + 3),
            ("exec", "deny", 7),
            ("file_write", "allow", 2),
            ("file_write", "deny", 5),
            ("file_read", "deny", 4),
            ("connect", "allow", 2),
            ("connect", "deny", 3),
        ],
        &[("file_read", "allow")],
    )
}

/// On overlayfs the kernel opens the backing ("real") file inside the user's open and calls
/// `file_open` again for it, from the same task (on 6.12 with a path relative to a private
/// layer mount, e.g. `/actgate-vmtest/…` for `/tmp/actgate-vmtest/…`). One open(2) must still
/// be one decision, judged on the path the process opened.
fn write_open_on_overlayfs_is_one_decision(ctx: &Ctx, _: &Daemon) -> Outcome {
    let dir = ctx.path("tele-overlay");
    if fs_type(&dir)? != OVERLAYFS_MAGIC {
        return Err(NotPassed::Skip(format!(
            "{} is not on overlayfs here",
            dir.display()
        )));
    }
    let file = dir.join("ok.txt").display().to_string();
    let before = label_decisions(OVERLAY_LABEL)?;
    let got = ctx.attempt(Some(OVERLAY_LABEL), &["open-write", &file]);
    let after = label_decisions(OVERLAY_LABEL)?;
    expect_eq!(
        got,
        "OK",
        "labelled write-open of {file}, which the policy allows"
    );
    expect_deltas(
        "decisions of one allowed write-open on overlayfs",
        &before,
        &after,
        &[("exec", "allow", 1), ("file_write", "allow", 1)],
        &[("file_read", "allow")],
    )
}

fn unlabelled_actions_leave_counters_alone(ctx: &Ctx, _: &Daemon) -> Outcome {
    let denied_addr = format!("{DENIED_IP}:9");
    let before = scrape()?;
    expect_eq!(
        ctx.attempt(None, &["exec", &t(ctx, "bin/denied")]),
        RAN,
        "unlabelled exec of the denied binary"
    );
    expect_eq!(
        ctx.attempt(None, &["open-write", &t(ctx, "write-denied.txt")]),
        "OK",
        "unlabelled write-open of the denied file"
    );
    expect_eq!(
        ctx.attempt(None, &["open-read", &t(ctx, "read-denied.txt")]),
        "OK",
        "unlabelled read-open of the denied file"
    );
    expect_eq!(
        ctx.attempt(None, &["connect-tcp", &denied_addr]),
        "ECONNREFUSED",
        "unlabelled connect to the denied address"
    );
    let after = scrape()?;
    for label in LABELS {
        expect_deltas(
            &format!("decisions of {label} after unlabelled actions"),
            &decisions(&before, label)?,
            &decisions(&after, label)?,
            &[],
            &[],
        )?;
    }
    Ok(())
}

fn audit_decisions_are_counted_and_logged(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    // Something to connect to on the audited address, so the connection really succeeds.
    let listener = TcpListener::bind(format!("{DENIED_IP}:0")).map_err(anyhow::Error::from)?;
    let addr = listener
        .local_addr()
        .map_err(anyhow::Error::from)?
        .to_string();
    let (denied, wdenied, rdenied) = (
        t(ctx, "bin/denied"),
        t(ctx, "write-denied.txt"),
        t(ctx, "read-denied.txt"),
    );
    let before = label_decisions(AUDIT_LABEL)?;
    let mut pids = Vec::new();
    for (args, want, action, target) in [
        (["exec", denied.as_str()], RAN, "exec", &denied),
        (["open-write", &wdenied], "OK", "file_write", &wdenied),
        (["open-read", &rdenied], "OK", "file_read", &rdenied),
        (["connect-tcp", &addr], "OK", "connect", &addr),
    ] {
        let start = unix_now();
        let (pid, got) = probe_with_pid(ctx, AUDIT_LABEL, &args)?;
        expect_eq!(got, want, "audited try {}", args.join(" "));
        pids.push((pid, action, target.clone(), (start, unix_now())));
    }
    let after = label_decisions(AUDIT_LABEL)?;
    drop(listener);
    // Four runs of vm-guest; the audited exec is the fifth program but counts as audit.
    expect_deltas(
        "decisions of the audited runs",
        &before,
        &after,
        &[
            ("exec", "allow", 4),
            ("exec", "audit", 1),
            ("file_write", "audit", 1),
            ("file_read", "audit", 1),
            ("connect", "audit", 1),
        ],
        &[("file_read", "allow")],
    )?;
    let lines = wait_for_events(&daemon.events, 4, |v| s(v, "label") == AUDIT_LABEL)?;
    expect_eq!(
        lines.len(),
        4,
        "events of {AUDIT_LABEL} (one per audited action): {lines:?}"
    );
    for (pid, action, target, window) in &pids {
        let Some(line) = lines.iter().find(|v| n(v, "pid") == Some(u64::from(*pid))) else {
            return Err(NotPassed::Fail(format!(
                "no event for the audited {action} of pid {pid}: {lines:?}"
            )));
        };
        check_event(
            line,
            &Expected {
                label: AUDIT_LABEL,
                policy: AUDIT_POLICY,
                action,
                verdict: "audit",
                target,
                pid: *pid,
                exe: None,
                window: *window,
            },
        )?;
    }
    Ok(())
}

/// Labelled processes opening a read-denied file as fast as they can, all at once.
const FLOODERS: usize = 4;
const FLOOD_SECONDS: &str = "3";

fn flood_counts_every_denial(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    let flood = t(ctx, "flood.txt");
    let dropped_series = "actgate_events_dropped_total{action=\"file_read\"}";
    let is_flood_event = |v: &Value| s(v, "label") == FLOOD_LABEL;
    let body = scrape()?;
    let before = decisions(&body, FLOOD_LABEL)?;
    let dropped_before = sample(&body, dropped_series)?;
    let lines_before = read_events(&daemon.events)?
        .iter()
        .filter(|v| is_flood_event(v))
        .count();
    let children = (0..FLOODERS)
        .map(|_| {
            Command::new(&ctx.actgate)
                .args(["exec", "--label", FLOOD_LABEL, "--"])
                .arg(&ctx.guest)
                .args(["try", "flood-open", &flood, FLOOD_SECONDS])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting a labelled flood")
        })
        .collect::<Result<Vec<Child>>>()?;
    let mut attempts = Vec::new();
    for child in children {
        let out = child.wait_with_output().map_err(anyhow::Error::from)?;
        let said = harness::verdict_line(&out);
        match said.parse::<u64>() {
            Ok(count) if out.status.success() => attempts.push(count),
            _ => {
                return Err(NotPassed::Fail(format!(
                    "a flood didn't report a count of EPERMs: {said}"
                )));
            }
        }
    }
    let total: u64 = attempts.iter().sum();
    // The daemon drains the ring buffer behind the floods: wait for the file to settle.
    wait_until_still(
        &daemon.events,
        Duration::from_secs(5),
        Duration::from_secs(300),
    )?;
    let body = scrape()?;
    let after = decisions(&body, FLOOD_LABEL)?;
    let dropped = sample(&body, dropped_series)? - dropped_before;
    let logged: Vec<Value> = read_events(&daemon.events)?
        .into_iter()
        .filter(is_flood_event)
        .skip(lines_before)
        .collect();
    let lines = logged.len();
    let unnamed = logged
        .iter()
        .filter(|v| s(v, "exe").is_empty() || s(v, "cgroup").is_empty())
        .count();
    println!(
        "# flood on {}: attempts {attempts:?} = {total}; file_read/deny +{}; events logged \
         {lines} ({unnamed} without exe or cgroup); events dropped +{dropped}",
        kernel_release(),
        after[&("file_read", "deny")] - before[&("file_read", "deny")]
    );
    if let Some(odd) = logged.iter().find(|v| {
        (s(v, "action"), s(v, "verdict"), s(v, "target")) != ("file_read", "deny", flood.as_str())
    }) {
        return Err(NotPassed::Fail(format!(
            "a flood event is not the denied read of {flood}: {odd}"
        )));
    }
    expect_deltas(
        "decisions of the floods",
        &before,
        &after,
        &[
            ("exec", "allow", FLOODERS as u64),
            ("file_read", "deny", total),
        ],
        &[("file_read", "allow")],
    )?;
    expect_eq!(
        lines as u64 + dropped,
        total,
        "events logged ({lines}) + events dropped ({dropped}) against the denials"
    );
    if lines == 0 {
        return Err(NotPassed::Fail(format!(
            "not one of {total} flood events reached the events file"
        )));
    }
    Ok(())
}

/// A labelled probe whose stdout is a full pipe: it acts, then blocks printing its verdict
/// until `finish` drains the pipe, so it is still alive while the daemon handles its event.
struct HeldProbe {
    child: Child,
    out: fs::File,
}

impl HeldProbe {
    fn start(ctx: &Ctx, label: &str, args: &[&str]) -> Result<HeldProbe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        // SAFETY: two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let chunk = [b'.'; 4096];
        for len in [chunk.len(), 1] {
            // SAFETY: writes from a buffer of at least `len` bytes; stops at EAGAIN (full).
            while unsafe { libc::write(write.as_raw_fd(), chunk.as_ptr().cast(), len) } > 0 {}
        }
        for fd in [&read, &write] {
            // SAFETY: clears O_NONBLOCK on a descriptor we own, so the probe's write blocks.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) };
        }
        let child = ctx
            .labelled_probe(label)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::null())
            .spawn()
            .context("starting a labelled probe")?;
        Ok(HeldProbe {
            child,
            out: fs::File::from(read),
        })
    }

    /// Lets it print and exit; returns its verdict line.
    fn finish(mut self) -> Result<String> {
        let mut text = Vec::new();
        self.out.read_to_end(&mut text)?;
        self.child.wait()?;
        let text = String::from_utf8_lossy(&text);
        Ok(text.trim_start_matches('.').trim().to_string())
    }
}

impl Drop for HeldProbe {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.child);
    }
}

fn guest_exe(ctx: &Ctx) -> Result<String> {
    Ok(fs::canonicalize(&ctx.guest)?.display().to_string())
}

fn events_have_every_field_exactly(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    let exe = guest_exe(ctx)?;
    let rdenied = t(ctx, "read-denied.txt");
    let denied_addr = format!("{DENIED_IP}:9");
    // Through `..` and through a symlink, so the target must be the resolved path.
    let via_dotdot = t(ctx, "bin/../bin/denied");
    let via_link = t(ctx, "link-to-read-denied");
    let (denied, wdenied) = (t(ctx, "bin/denied"), t(ctx, "write-denied.txt"));
    for (args, action, target) in [
        (["exec", via_dotdot.as_str()], "exec", &denied),
        (["open-write", &wdenied], "file_write", &wdenied),
        (["open-read", &via_link], "file_read", &rdenied),
        (["connect-tcp", &denied_addr], "connect", &denied_addr),
    ] {
        let start = unix_now();
        let probe = HeldProbe::start(ctx, LABEL, &args)?;
        let pid = probe.child.id();
        let lines = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
        let window = (start, unix_now());
        expect_eq!(probe.finish()?, "EPERM", "labelled try {}", args.join(" "));
        expect_eq!(lines.len(), 1, "events of pid {pid} ({action}): {lines:?}");
        check_event(
            &lines[0],
            &Expected {
                label: LABEL,
                policy: POLICY,
                action,
                verdict: "deny",
                target,
                pid,
                exe: Some(&exe),
                window,
            },
        )?;
    }
    Ok(())
}

/// The usual case: a tool is denied and exits at once, before the daemon reads the event.
/// Stopping the daemon makes that order certain.
fn event_of_exited_process_names_its_exe_and_cgroup(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    let rdenied = t(ctx, "read-denied.txt");
    let script = format!(
        "read go; exec {} try open-read {rdenied}",
        ctx.guest.display()
    );
    let mut child = ctx
        .spawn_labelled_sh(LABEL, &script)
        .map_err(anyhow::Error::from)?;
    let pid = child.id();
    // `actgate exec` needs the daemon; once it runs sh, the label is joined.
    let comm = format!("/proc/{pid}/comm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(&comm).unwrap_or_default().trim() != "sh" {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotPassed::Fail("the labelled sh never ran".into()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let start = unix_now();
    daemon.signal(libc::SIGSTOP);
    let ran = (|| -> Result<String> {
        let mut stdin = child.stdin.take().context("no stdin")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        let out = child.wait_with_output()?;
        Ok(harness::verdict_line(&out))
    })();
    daemon.signal(libc::SIGCONT);
    expect_eq!(
        ran?,
        "EPERM",
        "the labelled read while the daemon was stopped"
    );
    let lines = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(lines.len(), 1, "events of pid {pid}: {lines:?}");
    expect_eq!(
        s(&lines[0], "cgroup").to_string(),
        format!("/actgate/{LABEL}"),
        "cgroup of an exited process's event"
    );
    check_event(
        &lines[0],
        &Expected {
            label: LABEL,
            policy: POLICY,
            action: "file_read",
            verdict: "deny",
            target: &rdenied,
            pid,
            // Both come from the kernel, so they outlive the process.
            exe: Some(&guest_exe(ctx)?),
            window: (start, unix_now()),
        },
    )
}

fn events_file_follows_rename_and_sighup(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    let rdenied = t(ctx, "read-denied.txt");
    // Rotation by renaming: the next event starts a new file.
    let rotated = daemon.events.with_extension("jsonl.1");
    fs::rename(&daemon.events, &rotated).map_err(anyhow::Error::from)?;
    let kept = read_events(&rotated)?.len();
    let (pid, got) = probe_with_pid(ctx, LABEL, &["open-read", &rdenied])?;
    expect_eq!(got, "EPERM", "labelled read after the rename");
    let fresh = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(fresh.len(), 1, "events of pid {pid} in the new events file");
    expect_eq!(
        read_events(&daemon.events)?.len(),
        1,
        "lines in the new events file"
    );
    expect_eq!(
        read_events(&rotated)?.len(),
        kept,
        "lines in the renamed file after the rename"
    );

    // SIGHUP (logrotate's postrotate): reloads the policies and reopens the file.
    let reloads = "actgate_policy_reloads_total{result=\"success\"}";
    let reloaded_before = sample(&scrape()?, reloads)?;
    let second = daemon.events.with_extension("jsonl.2");
    fs::rename(&daemon.events, &second).map_err(anyhow::Error::from)?;
    daemon.signal(libc::SIGHUP);
    expect_eq!(
        wait_for_sample(reloads, reloaded_before + 1, Duration::from_secs(30))?,
        reloaded_before + 1,
        "{reloads} after SIGHUP"
    );
    expect_eq!(http_get("/readyz")?.0, 200, "/readyz after SIGHUP");
    let (pid, got) = probe_with_pid(ctx, LABEL, &["open-read", &rdenied])?;
    expect_eq!(got, "EPERM", "labelled read after SIGHUP");
    let fresh = wait_for_events(&daemon.events, 1, |v| n(v, "pid") == Some(u64::from(pid)))?;
    expect_eq!(
        fresh.len(),
        1,
        "events of pid {pid} in the file reopened on SIGHUP"
    );
    expect_eq!(
        read_events(&daemon.events)?.len(),
        1,
        "lines in the file reopened on SIGHUP"
    );
    expect_eq!(
        read_events(&second)?.len(),
        1,
        "lines in the file renamed before SIGHUP"
    );
    expect_eq!(
        read_events(&rotated)?.len(),
        kept,
        "lines in the first renamed file"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The self-test, with daemons of its own

/// `actgate run` with the fake switch; not waited for, killed when dropped.
struct Unverified {
    child: Child,
    log: PathBuf,
}

impl Unverified {
    fn spawn(ctx: &Ctx, extra: &[&str]) -> Result<Unverified> {
        let log = ctx.path("tele/unverified.log");
        let mut args = vec![OsStr::new("--test-fake-allow-all")];
        args.extend(extra.iter().map(OsStr::new));
        let child = harness::spawn_run(&ctx.actgate, &ctx.path("tele/policies"), &args, &log)?;
        Ok(Unverified { child, log })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it exits within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        harness::wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Unverified {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.child);
    }
}

/// Fails unless the log names every action with the hook that let it through.
fn expect_hooks_named(log: &str) -> Outcome {
    for (action, hook) in HOOKS {
        let phrase = format!("{action} (LSM hook {hook})");
        if !log.contains(&phrase) {
            return Err(NotPassed::Fail(format!(
                "the log doesn't name {phrase:?}:\n{log}"
            )));
        }
    }
    Ok(())
}

fn selftest_refuses_to_start_when_hooks_allow_everything(ctx: &Ctx) -> Outcome {
    let mut d = Unverified::spawn(ctx, &[])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = d.wait(Duration::ZERO)? {
            break status;
        }
        if matches!(http_get("/readyz"), Ok((200, _))) {
            return Err(NotPassed::Fail(
                "/readyz answered 200 although every hook allows everything".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "the daemon still runs 120 s after start although its self-test must fail:\n{}",
                d.log_text()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    };
    let log = d.log_text();
    expect_eq!(
        status.code(),
        Some(1),
        "exit code when the self-test fails ({log})"
    );
    expect_hooks_named(&log)?;
    if !log.contains("refusing to run") {
        return Err(NotPassed::Fail(format!(
            "the log doesn't say it refuses to run:\n{log}"
        )));
    }
    Ok(())
}

fn selftest_with_allow_unverified_runs_unready(ctx: &Ctx) -> Outcome {
    let mut d = Unverified::spawn(ctx, &["--allow-unverified"])?;
    // /healthz answers before the self-test runs; the log says when it is over.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = d.wait(Duration::ZERO)? {
            return Err(NotPassed::Fail(format!(
                "the daemon exited ({status}) despite --allow-unverified:\n{}",
                d.log_text()
            )));
        }
        let healthy = matches!(http_get("/healthz"), Ok((200, _)));
        if healthy && d.log_text().contains("UNVERIFIED ENFORCEMENT") {
            break;
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "no healthy daemon reporting its failed self-test within 120 s:\n{}",
                d.log_text()
            )));
        }
        thread::sleep(Duration::from_millis(200));
    }
    expect_hooks_named(&d.log_text())?;
    expect_eq!(http_get("/healthz")?.0, 200, "/healthz when unverified");
    expect_eq!(http_get("/readyz")?.0, 503, "/readyz when unverified");
    let body = scrape()?;
    expect_verified(&body, 0, " when unverified")?;
    let st = status_json(ctx)?;
    expect_eq!(st["ready"], Value::Bool(false), "ready in {st}");
    for a in ACTIONS {
        expect_eq!(
            st["enforcement_verified"][a].as_str(),
            Some("failed"),
            "enforcement_verified.{a} in the status when unverified"
        );
    }
    // An unready daemon must not take on workloads.
    let marker = ctx.path("tele/unverified-ran");
    let out = ctx.labelled(LABEL, &["/usr/bin/touch", &marker.display().to_string()]);
    expect_eq!(
        out.status.code(),
        Some(125),
        "exit code of a labelled run on an unverified daemon"
    );
    expect_eq!(
        marker.exists(),
        false,
        "a labelled command ran on an unverified daemon"
    );
    // SIGTERM still ends it cleanly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let status = d.wait(Duration::from_secs(60))?;
    expect_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit of the unverified daemon after SIGTERM"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

type DaemonTest = (&'static str, fn(&Ctx, &Daemon) -> Outcome);

/// Runs the telemetry tests against one daemon, stops it, then runs the self-test's own
/// daemons one after the other.
pub fn suite(ctx: &Ctx, selected: &dyn Fn(&str) -> bool) -> Results {
    let picked = |name: &str| selected(name) || selected(&format!("telemetry::{name}"));
    let with_daemon: [DaemonTest; 10] = [
        (
            "metrics_after_start_show_verified_hooks_policies_build_and_processes",
            metrics_after_start,
        ),
        (
            "status_json_and_table_match_the_running_daemon",
            status_shows_the_running_daemon,
        ),
        (
            "decision_counters_equal_the_exact_actions_taken",
            counters_equal_exact_actions,
        ),
        (
            "write_open_on_overlayfs_is_one_decision_judged_on_its_path",
            write_open_on_overlayfs_is_one_decision,
        ),
        (
            "unlabelled_actions_leave_decision_counters_alone",
            unlabelled_actions_leave_counters_alone,
        ),
        (
            "audit_decisions_are_allowed_counted_and_logged",
            audit_decisions_are_counted_and_logged,
        ),
        (
            "flood_of_denials_is_counted_exactly_and_each_event_logged_or_counted_dropped",
            flood_counts_every_denial,
        ),
        (
            "events_have_every_field_exactly",
            events_have_every_field_exactly,
        ),
        (
            "event_of_exited_process_names_its_exe_and_cgroup",
            event_of_exited_process_names_its_exe_and_cgroup,
        ),
        (
            "events_file_follows_rename_and_sighup",
            events_file_follows_rename_and_sighup,
        ),
    ];
    let own_daemons: [crate::tests::Test; 2] = [
        (
            "selftest_refuses_to_start_when_hooks_allow_everything",
            selftest_refuses_to_start_when_hooks_allow_everything,
        ),
        (
            "selftest_with_allow_unverified_runs_unready_and_says_so",
            selftest_with_allow_unverified_runs_unready,
        ),
    ];
    const STOP: &str = "telemetry_daemon_stops_with_exit_0";
    let chosen: Vec<_> = with_daemon.iter().filter(|(n, _)| picked(n)).collect();
    let chosen_own: Vec<_> = own_daemons.iter().filter(|(n, _)| picked(n)).collect();
    let mut results: Results = Vec::new();
    if chosen.is_empty() && chosen_own.is_empty() {
        return results;
    }
    if let Err(e) = fixtures(ctx) {
        results.push(("telemetry_fixtures", Err(e.into())));
        return results;
    }
    if !chosen.is_empty() {
        let names = chosen.iter().map(|(n, _)| *n);
        if let Some(daemon) =
            harness::start_for(ctx, &ctx.path("tele/policies"), names, &mut results)
        {
            for (name, test) in chosen {
                results.push((name, test(ctx, &daemon)));
            }
            results.push((STOP, daemon.stop_cleanly().map_err(NotPassed::from)));
        }
    }
    for (name, test) in chosen_own {
        results.push((name, test(ctx)));
    }
    results
}
