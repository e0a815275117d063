//! Reading the events file, and checking every field of an event.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::*;
use crate::{
    expect_eq,
    harness::{NotPassed, Outcome},
};

/// Every complete line of the events file, parsed; a line that isn't a JSON object fails.
pub(in crate::tests) fn read_events(path: &Path) -> Result<Vec<Value>> {
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

pub(super) fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn n(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Waits until the events file holds at least `count` lines matching `pred`, then a moment
/// longer, and returns the matching lines (so a test can assert there are exactly `count`).
pub(super) fn wait_for_events(
    path: &Path,
    count: usize,
    pred: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
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
pub(super) fn wait_until_still(path: &Path, quiet: Duration, timeout: Duration) -> Result<u64> {
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
pub(super) fn rfc3339_secs(text: &str) -> Option<f64> {
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

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What one event line must say; the time must fall in `window` (seconds since the epoch).
pub(super) struct Expected<'a> {
    pub(super) label: &'a str,
    pub(super) policy: &'a str,
    pub(super) action: &'a str,
    pub(super) verdict: &'a str,
    /// `rule`, `default` or `orphaned`.
    pub(super) reason: &'a str,
    pub(super) target: &'a str,
    pub(super) pid: u32,
    /// The process's executable, which implies its cgroup is the label's too; None for a
    /// process that may have exec'd something else before the daemon reads the event.
    pub(super) exe: Option<&'a str>,
    pub(super) window: (f64, f64),
}

/// Checks every field of one event line, exactly.
pub(super) fn check_event(v: &Value, e: &Expected) -> Outcome {
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
    expect_eq!(s(v, "reason"), e.reason, "reason of {v}");
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
