//! Enforcement outlives the daemon: what a daemon put in the kernel stays in force when it is
//! killed, stopped or replaced by another build, until an administrator runs `actgate
//! unload`; and the daemon keeps enforcing when its HTTP address is taken.
//!
//! Every test acts through agents that run before and after the daemon changes, one as root
//! and one as `nobody`, each in its own label under the same policy.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::Config;
use anyhow::{Context, Result, bail};

use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, METRICS_ADDR, NotPassed, Outcome, decisions, http_get, scrape},
    tests::{Suite, session::Session},
};

/// (user, label): every test runs one agent of each.
const AGENTS: [(&str, &str); 2] = [("root", "vmlife-root"), ("nobody", "vmlife-nobody")];
/// A label whose policy only audits.
const AUDIT: &str = "vmlife-audit";
/// Denied to both labels; nothing listens there.
const DENIED_ADDR: &str = "127.0.0.1:18201";
const PIN_ROOT: &str = "/sys/fs/bpf/actgate";
/// The daemon's runtime directory (its control socket's).
const RUNTIME: &str = "/run/actgate";

pub struct Fixture {
    /// Accepts the allowed connections.
    listener: TcpListener,
}

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("life/{rel}")).display().to_string()
}

/// World-writable files and directories, so that a denied write is the policy's doing.
fn start(ctx: &Ctx) -> Result<Fixture> {
    harness::install("/bin/true", &ctx.path("life/bin/allowed"))?;
    harness::install("/bin/true", &ctx.path("life/bin/denied"))?;
    for dir in ["life/ws", "life/out"] {
        fs::create_dir_all(ctx.path(dir))?;
        fs::set_permissions(ctx.path(dir), fs::Permissions::from_mode(0o777))?;
    }
    for file in ["life/ws/allowed.txt", "life/ws/denied.txt"] {
        harness::write(&ctx.path(file), "")?;
        fs::set_permissions(ctx.path(file), fs::Permissions::from_mode(0o666))?;
    }
    let labels: Vec<&str> = AGENTS.iter().map(|(_, l)| *l).collect();
    let policy = format!(
        "name: vmlife\nlabels: [{}]\nmode: enforce\nexec:\n  deny: [{}]\nfiles:\n  write:\n    deny: [{}]\nnetwork:\n  connect:\n    deny: [\"{DENIED_ADDR}\"]\n",
        labels.join(", "),
        p(ctx, "bin/denied"),
        p(ctx, "ws/denied.txt"),
    );
    harness::write(&ctx.path("life/policies/life.yaml"), &policy)?;
    let audit = format!(
        "name: vmlife-audit\nlabels: [{AUDIT}]\nmode: audit\nfiles:\n  write:\n    deny: [{}]\n",
        p(ctx, "ws/denied.txt"),
    );
    harness::write(&ctx.path("life/policies/audit.yaml"), &audit)?;
    Ok(Fixture {
        listener: TcpListener::bind("127.0.0.1:0").context("binding the allowed listener")?,
    })
}

fn policies(ctx: &Ctx) -> PathBuf {
    ctx.path("life/policies")
}

/// Starts a daemon from a clean kernel.
fn fresh_daemon(ctx: &Ctx, log: &str) -> Result<Daemon> {
    Daemon::launch(
        &ctx.actgate,
        &policies(ctx),
        &ctx.path("life/events.jsonl"),
        &ctx.path(&format!("life/{log}")),
        &[],
        harness::READY_WITHIN,
    )
}

/// Starts a daemon that takes over what the one before left in force.
fn next_daemon(ctx: &Ctx, log: &str, extra: &[&str]) -> Result<Daemon> {
    Daemon::adopt(
        &ctx.actgate,
        &policies(ctx),
        &ctx.path("life/events.jsonl"),
        &ctx.path(&format!("life/{log}")),
        extra,
        harness::READY_WITHIN,
    )
}

/// The shell commands of each check, and what each must meet.
fn checks(ctx: &Ctx, fx: &Fixture) -> Result<Vec<(String, &'static str)>> {
    let guest = ctx.guest.display();
    let allowed = fx.listener.local_addr()?;
    Ok(vec![
        (
            format!("{guest} try exec {}", p(ctx, "bin/denied")),
            "EPERM",
        ),
        (format!("{guest} try exec {}", p(ctx, "bin/allowed")), "OK"),
        (
            format!("{guest} try open-write {}", p(ctx, "ws/denied.txt")),
            "EPERM",
        ),
        (
            format!("{guest} try open-write {}", p(ctx, "ws/allowed.txt")),
            "OK",
        ),
        (format!("{guest} try connect-tcp {DENIED_ADDR}"), "EPERM"),
        (format!("{guest} try connect-tcp {allowed}"), "OK"),
    ])
}

/// One agent per entry of `AGENTS`, started while a daemon runs.
fn agents(ctx: &Ctx) -> Result<Vec<Session>> {
    AGENTS
        .iter()
        .map(|(user, label)| Session::start_as(ctx, label, user))
        .collect()
}

/// Every check from every agent meets what it must.
fn expect_policy(ctx: &Ctx, fx: &Fixture, shells: &mut [Session], when: &str) -> Outcome {
    let checks = checks(ctx, fx)?;
    for (shell, (user, _)) in shells.iter_mut().zip(AGENTS) {
        for (cmd, want) in &checks {
            expect_eq!(shell.run(cmd)?, want.to_string(), "{cmd} as {user} {when}");
        }
    }
    Ok(())
}

/// `actgate exec` of /bin/true in the first agent's label.
fn exec_true(ctx: &Ctx) -> Output {
    ctx.labelled(AGENTS[0].1, &["/bin/true"])
}

/// Lines of the events file that report a denied `action` of `label`.
fn denied_events(ctx: &Ctx, label: &str, action: &str) -> usize {
    let text = fs::read_to_string(ctx.path("life/events.jsonl")).unwrap_or_default();
    let want = [
        format!("\"label\":\"{label}\""),
        format!("\"action\":\"{action}\""),
        "\"verdict\":\"deny\"".to_string(),
    ];
    text.lines()
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .count()
}

fn kill_9_of_the_daemon_leaves_every_decision_in_force(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    let daemon = fresh_daemon(ctx, "kill9-a.log")?;
    let mut shells = agents(ctx)?;
    expect_policy(ctx, fx, &mut shells, "while the daemon runs")?;
    // The events it had read are lost with it; those of the phase without it must not be.
    for (_, label) in AGENTS {
        for action in ["exec", "file_write", "connect"] {
            harness::eventually("1", || Ok(denied_events(ctx, label, action).to_string()))?;
        }
    }
    daemon.crash();
    expect_policy(ctx, fx, &mut shells, "after kill -9 of the daemon")?;
    expect_eq!(
        exec_true(ctx).status.code(),
        Some(125),
        "actgate exec while no daemon runs"
    );
    let _next = next_daemon(ctx, "kill9-b.log", &[])?;
    expect_policy(ctx, fx, &mut shells, "after a new daemon took over")?;
    // One denied exec, write and connect per agent in each of the three phases: the kernel
    // counted them all, and the events of the phase without a daemon waited in the kept ring
    // buffer.
    let body = scrape()?;
    for (_, label) in AGENTS {
        for action in ["exec", "file_write", "connect"] {
            expect_eq!(
                decisions(&body, label, action, "deny"),
                3.0,
                "{action} denials of {label} over the three phases"
            );
            let events =
                harness::eventually("3", || Ok(denied_events(ctx, label, action).to_string()))?;
            expect_eq!(
                events,
                "3",
                "{action} deny events of {label} in {}",
                fs::read_to_string(ctx.path("life/events.jsonl")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// A labelled loop of denied writes, each result a line in `out/loop-USER.txt`, until
/// `out/stop` exists.
struct Loops {
    children: Vec<Child>,
    files: Vec<PathBuf>,
    stop: PathBuf,
}

impl Loops {
    fn start(ctx: &Ctx) -> Result<Loops> {
        let stop = ctx.path("life/out/stop");
        let _ = fs::remove_file(&stop);
        let mut loops = Loops {
            children: Vec::new(),
            files: Vec::new(),
            stop: stop.clone(),
        };
        for (user, label) in AGENTS {
            let file = ctx.path(&format!("life/out/loop-{user}.txt"));
            // Paced: two loops flat out would leave the restarting daemon's verifier a third of
            // the one emulated CPU: unpaced, the restart-and-upgrade test took 412 s on 6.12.
            let script = format!(
                "while [ ! -e {} ]; do {} try open-write {}; sleep 0.5; done >{}",
                stop.display(),
                ctx.guest.display(),
                p(ctx, "ws/denied.txt"),
                file.display()
            );
            let child = ctx
                .labelled_command_as(label, user)
                .args(["/bin/sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a labelled loop")?;
            loops.children.push(child);
            loops.files.push(file);
        }
        Ok(loops)
    }

    fn lines(&self) -> Vec<Vec<String>> {
        self.files
            .iter()
            .map(|f| {
                fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    /// Waits until every loop made `more` attempts beyond what it had made.
    fn advance(&self, more: usize) -> Result<()> {
        let from: Vec<usize> = self.lines().iter().map(Vec::len).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self
            .lines()
            .iter()
            .zip(&from)
            .any(|(now, was)| now.len() < was + more)
        {
            if Instant::now() > deadline {
                bail!("the labelled loops stopped making attempts");
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Stops the loops; each one's results.
    fn finish(mut self) -> Result<Vec<Vec<String>>> {
        harness::write(&self.stop, "")?;
        for child in &mut self.children {
            if harness::wait_exit(child, Duration::from_secs(60))?.is_none() {
                bail!("a labelled loop did not stop");
            }
        }
        Ok(self.lines())
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        let _ = harness::write(&self.stop, "");
        for child in &mut self.children {
            harness::kill_and_reap(child);
        }
    }
}

/// Each agent's count of denied writes, as /metrics says now.
fn write_denials() -> Result<Vec<f64>> {
    let body = scrape()?;
    Ok(AGENTS
        .iter()
        .map(|(_, label)| decisions(&body, label, "file_write", "deny"))
        .collect())
}

fn denied_attempts_stay_eperm_across_restart_and_upgrade(ctx: &Ctx, _: &mut Fixture) -> Outcome {
    let mut daemon = fresh_daemon(ctx, "loop-a.log")?;
    let loops = Loops::start(ctx)?;
    loops.advance(3)?;
    let mut seen = vec![write_denials()?];
    daemon.keep_enforcement();
    expect_eq!(daemon.stop()?.code(), Some(0), "exit of the first daemon");
    loops.advance(3)?;
    let mut restarted = next_daemon(ctx, "loop-b.log", &[])?;
    seen.push(write_denials()?);
    loops.advance(3)?;
    restarted.keep_enforcement();
    expect_eq!(
        restarted.stop()?.code(),
        Some(0),
        "exit of the second daemon"
    );
    let _upgraded = next_daemon(ctx, "loop-c.log", &["--test-as-another-build"])?;
    seen.push(write_denials()?);
    loops.advance(3)?;
    let results = loops.finish()?;
    seen.push(write_denials()?);
    for (i, (user, _)) in AGENTS.iter().enumerate() {
        let lines = &results[i];
        let other: Vec<&String> = lines.iter().filter(|l| *l != "EPERM").collect();
        expect_eq!(
            other,
            Vec::<&String>::new(),
            "attempts as {user} that weren't EPERM"
        );
        let counts: Vec<f64> = seen.iter().map(|s| s[i]).collect();
        if counts.windows(2).any(|w| w[1] < w[0]) {
            return Err(NotPassed::Fail(format!(
                "the denial counter of {user}'s label went back: {counts:?}"
            )));
        }
        expect_eq!(
            counts.last().copied(),
            Some(lines.len() as f64),
            "denials counted for {user}'s {} attempts",
            lines.len()
        );
    }
    Ok(())
}

/// `actgate unload [--force]`.
fn unload(ctx: &Ctx, force: bool) -> Result<Output> {
    let mut cmd = Command::new(&ctx.actgate);
    cmd.arg("unload").stdin(Stdio::null());
    if force {
        cmd.arg("--force");
    }
    cmd.output().context("running actgate unload")
}

fn expect_unload_refused(ctx: &Ctx, what: &str) -> Outcome {
    let out = unload(ctx, false)?;
    expect_eq!(out.status.code(), Some(1), "exit of actgate unload {what}");
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("--force") {
        return Err(NotPassed::Fail(format!(
            "actgate unload {what} doesn't say how to go on: {err}"
        )));
    }
    Ok(())
}

fn unload_refuses_while_labelled_processes_run_unless_forced(
    ctx: &Ctx,
    fx: &mut Fixture,
) -> Outcome {
    let mut daemon = fresh_daemon(ctx, "unload.log")?;
    let mut shells = agents(ctx)?;
    expect_unload_refused(ctx, "with a daemon and labelled processes")?;
    expect_policy(ctx, fx, &mut shells, "after a refused unload")?;
    expect_eq!(
        http_get("/readyz")?.0,
        200,
        "/readyz after a refused unload"
    );
    let out = unload(ctx, true)?;
    expect_eq!(out.status.code(), Some(0), "exit of actgate unload --force");
    expect_eq!(
        daemon
            .wait_exit(Duration::from_secs(30))?
            .and_then(|s| s.code()),
        Some(3),
        "the daemon's exit status after unload"
    );
    expect_eq!(
        Path::new(PIN_ROOT).exists(),
        false,
        "{PIN_ROOT} after unload"
    );
    let denied = p(ctx, "ws/denied.txt");
    for (shell, (user, _)) in shells.iter_mut().zip(AGENTS) {
        let cmd = format!("{} try open-write {denied}", ctx.guest.display());
        expect_eq!(
            shell.run(&cmd)?,
            "OK",
            "the formerly denied write as {user}"
        );
    }
    expect_eq!(
        exec_true(ctx).status.code(),
        Some(125),
        "actgate exec after unload"
    );
    Ok(())
}

fn unload_without_a_daemon_removes_the_pins(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    let daemon = fresh_daemon(ctx, "unload-alone.log")?;
    let mut shells = agents(ctx)?;
    daemon.crash();
    expect_unload_refused(ctx, "without a daemon, with labelled processes")?;
    expect_policy(
        ctx,
        fx,
        &mut shells,
        "after a refused unload without a daemon",
    )?;
    drop(shells);
    let out = unload(ctx, false)?;
    expect_eq!(
        out.status.code(),
        Some(0),
        "exit of actgate unload once no labelled process runs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_eq!(
        Path::new(PIN_ROOT).exists(),
        false,
        "{PIN_ROOT} after unload"
    );
    Ok(())
}

fn a_second_daemon_is_refused_while_one_runs(ctx: &Ctx, _: &mut Fixture) -> Outcome {
    let _daemon = fresh_daemon(ctx, "first.log")?;
    let log = ctx.path("life/second.log");
    let mut second = harness::spawn_run(&ctx.actgate, &policies(ctx), &[], &log)?;
    let status = harness::wait_exit(&mut second, Duration::from_secs(60))?;
    expect_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "exit of a second daemon"
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    if !text.contains("another actgate daemon runs") {
        return Err(NotPassed::Fail(format!("the second daemon's log: {text}")));
    }
    expect_eq!(http_get("/readyz")?.0, 200, "the first daemon's /readyz");
    Ok(())
}

fn pinned_sets() -> Result<Vec<PathBuf>> {
    let dir = Path::new(PIN_ROOT).join("sets");
    fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| Ok(e?.path()))
        .collect()
}

fn removed_link_pins_make_the_daemon_unready(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    let daemon = fresh_daemon(ctx, "tamper.log")?;
    let mut shells = agents(ctx)?;
    let sets = pinned_sets()?;
    expect_eq!(sets.len(), 1, "pinned sets");
    let link = sets[0].join("links/file_open");
    fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    let ready = harness::eventually("503", || Ok(http_get("/readyz")?.0.to_string()))?;
    expect_eq!(ready, "503", "/readyz once a link pin is gone");
    let (code, body) = http_get("/healthz")?;
    expect_eq!(code, 503, "/healthz once a link pin is gone: {body}");
    expect_eq!(
        harness::metric(&harness::scrape()?, "actgate_ready"),
        0.0,
        "actgate_ready once a link pin is gone"
    );
    if !daemon.log_text().contains("NOT READY") {
        return Err(NotPassed::Fail(
            "the daemon didn't log that it is not ready".into(),
        ));
    }
    // The daemon still holds the link: the policy is in force.
    expect_policy(ctx, fx, &mut shells, "with a link pin removed")?;
    Ok(())
}

/// The pinned `CONFIG` of `set`, read or (with `write`) replaced, through bpf(2) as an
/// unlabelled root would do it.
fn pinned_config(set: &Path, write: Option<Config>) -> Result<Config> {
    use agent_common::sys::bpf;
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let path = std::ffi::CString::new(set.join("maps/CONFIG").as_os_str().as_bytes())?;
    // SAFETY: bpf_attr is plain old data; all zeroes is its empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The BPF_OBJ_GET member of the union; the path outlives the call.
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr).context("opening the pinned CONFIG")?;
    // SAFETY: the fd the kernel just gave us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let key = 0u32;
    let mut value = write.unwrap_or_default();
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the map element members of the union; key and value outlive the call.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = std::os::fd::AsRawFd::as_raw_fd(&fd) as u32;
    elem.key = &key as *const u32 as u64;
    elem.__bindgen_anon_1.value = &mut value as *mut Config as u64;
    let cmd = match write {
        Some(_) => bpf_cmd::BPF_MAP_UPDATE_ELEM,
        None => bpf_cmd::BPF_MAP_LOOKUP_ELEM,
    };
    bpf(cmd, &mut attr).context("the CONFIG element")?;
    Ok(value)
}

fn an_overwritten_generation_makes_the_daemon_unready(ctx: &Ctx, _: &mut Fixture) -> Outcome {
    let daemon = fresh_daemon(ctx, "generation.log")?;
    let set = pinned_sets()?.pop().context("no pinned set")?;
    let config = pinned_config(&set, None)?;
    let tampered = Config {
        generation: config.generation ^ 1,
        ..config
    };
    pinned_config(&set, Some(tampered))?;
    let ready = harness::eventually("503", || Ok(http_get("/readyz")?.0.to_string()))?;
    expect_eq!(ready, "503", "/readyz with another generation in CONFIG");
    let (code, body) = http_get("/healthz")?;
    expect_eq!(code, 503, "/healthz with another generation in CONFIG");
    if !body.contains("generation") || !daemon.log_text().contains("NOT READY") {
        return Err(NotPassed::Fail(format!(
            "neither /healthz ({body}) nor the log names the problem"
        )));
    }
    pinned_config(&set, Some(config))?;
    let ready = harness::eventually("200", || Ok(http_get("/readyz")?.0.to_string()))?;
    expect_eq!(ready, "200", "/readyz once CONFIG is put back");
    Ok(())
}

/// What a labelled root may not touch, however it tries: the pins that keep the policy in
/// force, the daemon's lock, its control socket's directory and the policy directory. As
/// `nobody` the file modes refuse first, so only "not done" is asserted there.
fn actgates_pins_lock_and_policies_are_out_of_a_labels_reach(
    ctx: &Ctx,
    fx: &mut Fixture,
) -> Outcome {
    let _daemon = fresh_daemon(ctx, "reach.log")?;
    let mut shells = agents(ctx)?;
    let set = pinned_sets()?.pop().context("no pinned set")?;
    let attempts = [
        format!("rm -f {}", set.join("links/file_open").display()),
        format!("rm -rf {PIN_ROOT}"),
        format!("true <{RUNTIME}/daemon.lock"),
        format!("true >{RUNTIME}/actgate.sock.new"),
        format!("true >{}/evil.yaml", policies(ctx).display()),
        format!("{} unload --force", ctx.actgate.display()),
    ];
    for (shell, (user, _)) in shells.iter_mut().zip(AGENTS) {
        for cmd in &attempts {
            let got = shell.run(cmd)?;
            if user == "root" && cmd.contains("unload") {
                // Refused by the control socket, which doesn't serve labelled clients.
                if got == "OK" {
                    return Err(NotPassed::Fail(format!("`{cmd}` as root worked")));
                }
            } else if user == "root" {
                expect_eq!(got, "EPERM", "`{cmd}` as root");
            } else if got == "OK" {
                return Err(NotPassed::Fail(format!("`{cmd}` as {user} worked")));
            }
        }
    }
    // Audit mode observes the policy's own rules, but actgate's files stay out of reach.
    let mut auditor = Session::start_as(ctx, AUDIT, "root")?;
    let audited = format!(
        "{} try open-write {}",
        ctx.guest.display(),
        p(ctx, "ws/denied.txt")
    );
    expect_eq!(auditor.run(&audited)?, "OK", "a denied write in audit mode");
    for cmd in &attempts[..5] {
        expect_eq!(auditor.run(cmd)?, "EPERM", "`{cmd}` as root in audit mode");
    }
    expect_eq!(
        pinned_sets()?,
        vec![set.clone()],
        "the pinned sets afterwards"
    );
    expect_eq!(
        set.join("links/file_open").exists(),
        true,
        "the file_open link's pin afterwards"
    );
    expect_eq!(
        policies(ctx).join("evil.yaml").exists(),
        false,
        "a policy file planted by the agent"
    );
    expect_eq!(http_get("/readyz")?.0, 200, "/readyz afterwards");
    expect_policy(ctx, fx, &mut shells, "after the attempts")
}

fn a_taken_metrics_port_is_logged_and_enforcement_goes_on(ctx: &Ctx, fx: &mut Fixture) -> Outcome {
    harness::unload(&ctx.actgate)?;
    let squatter = TcpListener::bind(METRICS_ADDR).context("taking the metrics address")?;
    let log = ctx.path("life/port.log");
    let mut child = harness::spawn_run(&ctx.actgate, &policies(ctx), &[], &log)?;
    let guard = KillOnDrop(&mut child, &ctx.actgate);
    // Ready, as `actgate status` says: the control socket doesn't need the port.
    let deadline = Instant::now() + harness::READY_WITHIN;
    let status = loop {
        let out = Command::new(&ctx.actgate)
            .arg("status")
            .output()
            .context("actgate status")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("ready, enforcing") {
            break text;
        }
        if Instant::now() > deadline {
            return Err(NotPassed::Fail(format!(
                "the daemon never said it was ready: {text}\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )));
        }
        thread::sleep(Duration::from_millis(500));
    };
    if !status.contains(&format!("binding the metrics address {METRICS_ADDR}")) {
        return Err(NotPassed::Fail(format!(
            "status doesn't name the taken port: {status}"
        )));
    }
    let logged = fs::read_to_string(&log).unwrap_or_default();
    if !logged.contains("ERROR") || !logged.contains(METRICS_ADDR) {
        return Err(NotPassed::Fail(format!(
            "no error logged for the taken port: {logged}"
        )));
    }
    let mut shells = agents(ctx)?;
    expect_policy(ctx, fx, &mut shells, "while the metrics port is taken")?;
    drop(squatter);
    let healthz = harness::eventually("200", || {
        Ok(http_get("/healthz").map_or("down".into(), |(c, _)| c.to_string()))
    })?;
    expect_eq!(healthz, "200", "/healthz once the port is free");
    let (_, body) = http_get("/healthz")?;
    if !body.contains("could not be bound") {
        return Err(NotPassed::Fail(format!(
            "/healthz doesn't report the failure: {body}"
        )));
    }
    drop(guard);
    Ok(())
}

/// Kills a daemon started without the harness, and unloads what it left.
struct KillOnDrop<'a>(&'a mut Child, &'a Path);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        harness::kill_and_reap(self.0);
        if let Err(e) = harness::unload(self.1) {
            eprintln!("after the daemon's end: {e:#}");
        }
    }
}

pub fn suite() -> Suite<Fixture> {
    Suite::unchecked(
        "lifetime",
        start,
        vec![
            case!(kill_9_of_the_daemon_leaves_every_decision_in_force, fixture),
            case!(
                denied_attempts_stay_eperm_across_restart_and_upgrade,
                fixture
            ),
            case!(
                unload_refuses_while_labelled_processes_run_unless_forced,
                fixture
            ),
            case!(unload_without_a_daemon_removes_the_pins, fixture),
            case!(a_second_daemon_is_refused_while_one_runs, fixture),
            case!(removed_link_pins_make_the_daemon_unready, fixture),
            case!(an_overwritten_generation_makes_the_daemon_unready, fixture),
            case!(
                actgates_pins_lock_and_policies_are_out_of_a_labels_reach,
                fixture
            ),
            case!(
                a_taken_metrics_port_is_logged_and_enforcement_goes_on,
                fixture
            ),
        ],
    )
}
