//! A labelled agent for the tests: a process that stays alive under a label and takes one
//! action at a time when told, so a test can act before and after a change (a reload, a
//! revocation) from the same process.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    expect_eq,
    harness::{self, Ctx, Outcome},
};

/// A labelled agent that stays alive and acts when told: one system call per action (a fork
/// and an execve for `exec`), answering `OK` or the errno's name. Python, so that a connect
/// needs no new program: once the label is orphaned, starting one is denied too.
const AGENT: &str = r#"
import errno, os, socket, sys
def act(op, arg):
    if op == "read":
        os.close(os.open(arg, os.O_RDONLY))
    elif op == "write":
        os.close(os.open(arg, os.O_WRONLY | os.O_APPEND))
    elif op == "unlink":
        os.unlink(arg)
    elif op == "connect":
        host, port = arg.rsplit(":", 1)
        with socket.socket() as s:
            s.connect((host, int(port)))
    elif op == "exec":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.execv(arg, [arg])
            except OSError as e:
                os.write(w, str(e.errno).encode())
            os._exit(127)
        os.close(w)
        failed = os.read(r, 16)
        os.close(r)
        os.waitpid(pid, 0)
        if failed:
            raise OSError(int(failed), "exec")
print("ready", flush=True)
for line in iter(sys.stdin.readline, ""):
    op, arg = line.split()
    try:
        act(op, arg)
        print("OK", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"#;

pub struct Agent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    user: &'static str,
}

impl Agent {
    pub fn start(ctx: &Ctx, label: &str, user: &'static str) -> Result<Agent> {
        let mut child = ctx
            .labelled_command_as(label, user)
            .args(["/usr/bin/python3", "-u", "-B", "-c", AGENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the labelled agent")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            stdin: child.stdin.take(),
            child,
            lines,
            user,
        };
        let said = agent.answer()?;
        if said != "ready" {
            bail!("the agent running as {user} said {said:?} instead of ready");
        }
        Ok(agent)
    }

    fn answer(&mut self) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("the agent running as {} stopped answering", self.user))
    }

    /// One action: `OK` or the errno's name.
    pub fn act(&mut self, op: &str, arg: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("the agent's stdin is closed")?;
        writeln!(stdin, "{op} {arg}")?;
        stdin.flush()?;
        self.answer()
    }

    /// Each `(op, arg)` of `actions` meets `want`.
    pub fn expect_all(&mut self, actions: &[(&str, String)], want: &str, when: &str) -> Outcome {
        for (op, arg) in actions {
            expect_eq!(
                self.act(op, arg)?,
                want,
                "{op} {arg} by the agent running as {} {when}",
                self.user
            );
        }
        Ok(())
    }

    /// Ends the agent (EOF on its stdin) and waits until it is gone.
    pub fn stop(mut self) -> Result<()> {
        self.stdin = None;
        if harness::wait_exit(&mut self.child, Duration::from_secs(30))?.is_none() {
            bail!("the agent running as {} did not exit on EOF", self.user);
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stdin = None;
        harness::kill_and_reap(&mut self.child);
    }
}
