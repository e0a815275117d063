//! Policy reload on SIGHUP under a labelled process that keeps running across reloads.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::listeners::Listeners;
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, eventually},
    tests::{Suite, mounts::Mount, session::Session},
};

const RELOAD: &str = "vmreload";

const RELOAD_PORT: &str = "127.0.0.2:18101";

fn reload_policy(ctx: &Ctx, wide: bool) -> String {
    let r = |rel: &str| ctx.path(&format!("reload/{rel}")).display().to_string();
    let (write_extra, connect_extra) = if wide {
        (format!(", {}/**", r("target")), ", 127.0.0.2/32")
    } else {
        (String::new(), "")
    };
    format!(
        "name: vmtest-reload
labels: [{RELOAD}]
mode: enforce
files:
  write:
    default: deny
    allow: [{ws}/**{write_extra}]
network:
  connect:
    default: deny
    allow: [127.0.0.1/32{connect_extra}]
",
        ws = r("ws"),
    )
}

/// The wide policy, cut short inside its last flow list: a YAML syntax error. Returns the
/// text and the `line:column` of the unclosed `[`.
fn broken_policy(ctx: &Ctx) -> (String, String) {
    let wide = reload_policy(ctx, true);
    let text = wide.trim_end().trim_end_matches(']').to_string() + "\n";
    let (index, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("allow: ["))
        .last()
        .expect("the policy has an allow list");
    let column = line.find('[').expect("a bracket") + 1;
    (text, format!("{}:{column}", index + 1))
}

/// The reload scenario's shared state: one daemon, one labelled shell that keeps running
/// across reloads, and a listener for the connect probe.
pub struct Reload {
    daemon: Daemon,
    shell: Session,
    _listener: Listeners,
    policies: PathBuf,
    target: String,
    ws: String,
    /// Whether the wide policy is in force.
    wide: bool,
    _tmpfs: Mount,
}

impl Reload {
    fn write_from_shell(&mut self, path: &str) -> Result<String> {
        self.shell.run(&format!("true >>{path}"))
    }

    fn connect(ctx: &Ctx) -> String {
        ctx.attempt(Some(RELOAD), &["connect-tcp", RELOAD_PORT])
    }

    /// Waits until the reload counters have not moved for 2 s, since a daemon that also
    /// watches its directory reloads by itself after a change; fails if they keep moving.
    fn settled(&self) -> Result<(f64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = harness::reloads()?;
        let mut still_since = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(250));
            let now = harness::reloads()?;
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= Duration::from_secs(2) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!(
                    "the reload counters kept changing for 20 s with no SIGHUP sent (now \
                     success={}, failure={}): the daemon reloads by itself, over and over",
                    last.0,
                    last.1
                );
            }
        }
    }

    /// Puts the wide or narrow policy in force, unless it already is.
    fn make_wide(&mut self, ctx: &Ctx, wide: bool) -> Outcome {
        if self.wide != wide {
            self.hup("reload.yaml", &reload_policy(ctx, wide), true)?;
            self.wide = wide;
        }
        Ok(())
    }

    /// Makes `file` (with `text`) the only policy file, lets any reload of the daemon's own
    /// settle, then sends SIGHUP: exactly one more reload must be counted, as `ok` says.
    fn hup(&self, file: &str, text: &str, ok: bool) -> Outcome {
        let dir = &self.policies;
        for entry in fs::read_dir(dir).map_err(anyhow::Error::from)?.flatten() {
            if entry.file_name().to_str() != Some(file) {
                fs::remove_file(entry.path()).map_err(anyhow::Error::from)?;
            }
        }
        harness::write(&dir.join(file), text)?;
        let (s, f) = self.settled()?;
        self.daemon.signal(libc::SIGHUP);
        let want = if ok { (s + 1.0, f) } else { (s, f + 1.0) };
        let show = |(s, f): (f64, f64)| format!("success={s} failure={f}");
        let got = eventually(&show(want), || Ok(show(harness::reloads()?)))?;
        expect_eq!(
            got,
            show(want),
            "actgate_policy_reloads_total after one SIGHUP"
        );
        Ok(())
    }

    /// After a reload: the running shell and a new probe both meet `want`, and the
    /// workspace stays writable.
    fn expect_policy(&mut self, ctx: &Ctx, want: &str) -> Outcome {
        let target = self.target.clone();
        let got = eventually(want, || self.write_from_shell(&target))?;
        expect_eq!(
            got,
            want,
            "write to {target} from the already-running labelled shell"
        );
        let got = eventually(want, || Ok(Reload::connect(ctx)))?;
        expect_eq!(
            got,
            want,
            "connect-tcp {RELOAD_PORT} from a new labelled process"
        );
        let ws = self.ws.clone();
        expect_eq!(
            self.write_from_shell(&ws)?,
            "OK",
            "write to {ws} from the labelled shell"
        );
        Ok(())
    }
}

fn sighup_reload_widens_policy_of_running_labelled_process(ctx: &Ctx, r: &mut Reload) -> Outcome {
    r.make_wide(ctx, false)?;
    let target = r.target.clone();
    expect_eq!(
        r.write_from_shell(&target)?,
        "EPERM",
        "write to {target} before the reload"
    );
    expect_eq!(Reload::connect(ctx), "EPERM", "connect before the reload");
    r.make_wide(ctx, true)?;
    r.expect_policy(ctx, "OK")
}

fn sighup_reload_narrows_policy_of_running_labelled_process(ctx: &Ctx, r: &mut Reload) -> Outcome {
    r.make_wide(ctx, true)?;
    r.make_wide(ctx, false)?;
    r.expect_policy(ctx, "EPERM")
}

fn sighup_reload_of_broken_file_keeps_policy_and_reports_position(
    ctx: &Ctx,
    r: &mut Reload,
) -> Outcome {
    // The only policy file now: the wide policy, cut short by a syntax error. If any of it
    // were applied, the narrow policy in force would widen.
    r.make_wide(ctx, false)?;
    let (text, position) = broken_policy(ctx);
    let (successes, _) = harness::reloads()?;
    r.hup("broken.yaml", &text, false)?;
    expect_eq!(
        harness::reloads()?.0,
        successes,
        "successful reloads since the broken file was written"
    );
    r.expect_policy(ctx, "EPERM")?;
    let broken = r.policies.join("broken.yaml");
    let want = format!("{}:{position}:", broken.display());
    let log = r.daemon.log_text();
    if !log.contains(&want) {
        return Err(NotPassed::Fail(format!(
            "the daemon log doesn't report `{want}`:\n{log}"
        )));
    }
    Ok(())
}

fn start(ctx: &Ctx) -> Result<Reload> {
    let tmpfs = Mount::tmpfs(&ctx.path("reload"))?;
    let target = ctx.path("reload/target/file.txt");
    let ws = ctx.path("reload/ws/file.txt");
    harness::write(&target, "")?;
    harness::write(&ws, "")?;
    let policies = ctx.path("reload/policies");
    harness::write(&policies.join("reload.yaml"), &reload_policy(ctx, false))?;
    let listener = Listeners::start(&[RELOAD_PORT])?;
    let daemon = Daemon::shared(ctx, &policies)?;
    let shell = Session::start(ctx, RELOAD)?;
    Ok(Reload {
        shell,
        _listener: listener,
        policies: daemon.policies.clone(),
        daemon,
        target: target.display().to_string(),
        ws: ws.display().to_string(),
        wide: false,
        _tmpfs: tmpfs,
    })
}

/// The reload steps, in an order where each starts from where the last left the policy (each
/// also puts in force the policy it starts from, when run alone).
pub fn suite() -> Suite<Reload> {
    Suite {
        name: "net",
        start,
        cases: vec![
            case!(
                sighup_reload_widens_policy_of_running_labelled_process,
                fixture
            ),
            case!(
                sighup_reload_narrows_policy_of_running_labelled_process,
                fixture
            ),
            case!(
                sighup_reload_of_broken_file_keeps_policy_and_reports_position,
                fixture
            ),
        ],
        stop: |r| {
            let Reload { daemon, shell, .. } = r;
            drop(shell);
            daemon.stop_cleanly()
        },
        stop_test: Some("reload_daemon_stops_with_exit_0"),
    }
}
