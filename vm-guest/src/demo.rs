//! The demo: the real daemon with the repository's policies, and a scripted "coding agent"
//! whose every decision is printed as it happens.

use std::{
    fs,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::harness::{Ctx, Daemon, http_get};

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
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
        "  {colour}{:<5}{RESET} {:<10} {:<48} {DIM}label={} policy={} pid={} comm={}{RESET}",
        s("verdict").to_uppercase(),
        s("action"),
        s("target"),
        s("label"),
        s("policy"),
        v.get("pid").and_then(|x| x.as_u64()).unwrap_or(0),
        s("comm"),
    ))
}

/// Prints events appended since `pos`, returning the new position.
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

/// One step of the scripted agent: what it says it does, then the shell command it runs.
const STEPS: &[(&str, &str)] = &[
    (
        "runs git status in its workspace",
        "cd /workspace && /usr/bin/git status --short >/dev/null 2>&1; /bin/ls /workspace >/dev/null",
    ),
    (
        "tries to open a reverse shell with nc",
        "/usr/bin/nc -h >/dev/null 2>&1 || /bin/true",
    ),
];

pub fn run(actgate: &Path, policies: &Path) -> Result<()> {
    let ctx = Ctx {
        actgate: actgate.to_path_buf(),
        guest: std::env::current_exe()?,
        dir: "/tmp/actgate-demo".into(),
    };
    fs::create_dir_all(&ctx.dir)?;
    fs::create_dir_all("/workspace").context("creating /workspace")?;
    let check = Command::new(actgate).arg("check").arg(policies).output()?;
    print!("{}", String::from_utf8_lossy(&check.stdout));
    println!("Starting actgate run --policies {} …", policies.display());
    let daemon = Daemon::start(&ctx, policies, &["--events-allow"])?;
    println!(
        "actgate is ready and enforcing. The agent starts (actgate exec --label coding-agent):\n"
    );
    let mut pos = 0;
    for (what, script) in STEPS {
        println!("agent {what}");
        let _ = ctx.labelled("coding-agent", &["/bin/sh", "-c", script]);
        thread::sleep(Duration::from_millis(300));
        pos = drain(&daemon.events, pos);
    }
    thread::sleep(Duration::from_millis(500));
    drain(&daemon.events, pos);
    println!("\nDecisions counted in the kernel (/metrics):");
    let (_, body) = http_get("/metrics")?;
    for l in body
        .lines()
        .filter(|l| l.starts_with("actgate_decisions_total{") && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }
    daemon.stop()?;
    Ok(())
}
