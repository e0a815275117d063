//! A labelled shell that stays alive, for tests that act from an already-running labelled
//! process.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::harness::{self, Ctx};

/// A labelled `sh` that stays alive and runs commands sent to it one at a time, so a test can
/// act from an already-running labelled process and without the file opens that starting a
/// new program costs (shared libraries): shell redirections are exactly one open(2) each.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

const STATUS: &str = "@@status ";

/// The shell's loop: each line read is run, then its status is said.
fn script() -> String {
    // `eval … 2>&1` only duplicates a descriptor: no open. A failed redirection of the
    // regular builtin `true` is not fatal to the shell, unlike one of `:`.
    format!("echo ready; while read -r line; do eval \"$line\" 2>&1; echo \"{STATUS}$?\"; done")
}

impl Session {
    pub fn start(ctx: &Ctx, label: &str) -> Result<Session> {
        Session::start_as(ctx, label, "root")
    }

    /// `start` as USER.
    pub fn start_as(ctx: &Ctx, label: &str, user: &str) -> Result<Session> {
        let child = ctx
            .spawn_labelled_sh_as(label, user, &script())
            .context("starting a labelled shell")?;
        Session::serve(child)
    }

    /// An unlabelled `sh` that started the shell that runs the commands, as root: a tree
    /// for `actgate attach` to move. The session's process is the outer shell.
    pub fn start_unlabelled_tree() -> Result<Session> {
        // Not the last command of its `-c`, so that sh forks for it rather than exec it.
        Session::unlabelled("/bin/sh -c \"$0\"; exit $?")
    }

    /// A shell started outside actgate that moves itself into the cgroup at `dir` (as root),
    /// then runs the commands as `uid`: a service's or a container's process, for a policy's
    /// `cgroups:` to bind.
    pub fn start_in_cgroup(dir: &Path, uid: u32) -> Result<Session> {
        let procs = dir.join("cgroup.procs");
        Session::unlabelled(&format!(
            "echo $$ > '{}' && exec setpriv --reuid={uid} --regid={uid} --clear-groups /bin/sh -c \"$0\"",
            procs.display()
        ))
    }

    /// `sh -c OUTER SCRIPT`, unlabelled, where OUTER runs the session's script (`$0`).
    fn unlabelled(outer: &str) -> Result<Session> {
        let child = harness::spawn_piped(Command::new("/bin/sh").args(["-c", outer, &script()]))
            .context("starting an unlabelled shell")?;
        Session::serve(child)
    }

    /// The process at the top of the session's tree.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads what the shell in `child` says until it is ready.
    fn serve(mut child: Child) -> Result<Session> {
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let out = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out.send(line).is_err() {
                    break;
                }
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let s = Session {
            child,
            stdin,
            lines,
        };
        let mut seen = Vec::new();
        loop {
            match s.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l == "ready" => return Ok(s),
                Ok(l) => seen.push(l),
                Err(_) => {
                    let mut s = s;
                    bail!(
                        "the labelled shell never said ready ({}); it said: {:?}",
                        s.status(),
                        seen.join(" | ")
                    )
                }
            }
        }
    }

    /// How the shell ended, if it did (after a short wait).
    fn status(&mut self) -> String {
        for _ in 0..20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return format!("it exited: {status}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        "still running".into()
    }

    /// Runs one shell command line; `OK` when it exited 0, else the errno its message names.
    pub fn run(&mut self, command: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("session closed")?;
        writeln!(stdin, "{command}").context("writing to the labelled shell")?;
        stdin.flush()?;
        let mut said = Vec::new();
        loop {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) else {
                let status = self.status();
                bail!(
                    "no answer to `{command}` ({status}); the shell said: {:?}",
                    said.join(" | ")
                );
            };
            if let Some(status) = line.strip_prefix(STATUS) {
                return Ok(shell_verdict(status, &said.join(" | ")));
            }
            said.push(line);
        }
    }
}

/// Names the errno of a failed shell redirection from dash's message (strerror text), or
/// of a failed `vm-guest try`, which prints the name itself.
fn shell_verdict(status: &str, said: &str) -> String {
    if status == "0" {
        return "OK".into();
    }
    let named = said.len() > 1
        && said.starts_with('E')
        && said
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if named {
        return said.into();
    }
    for (text, name) in [
        ("Operation not permitted", "EPERM"),
        ("Permission denied", "EACCES"),
        ("No such file", "ENOENT"),
        ("nonexistent", "ENOENT"),
        ("File exists", "EEXIST"),
    ] {
        if said.contains(text) {
            return name.into();
        }
    }
    format!("(status {status}: {said})")
}

impl Drop for Session {
    fn drop(&mut self) {
        // EOF ends the shell's loop.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
