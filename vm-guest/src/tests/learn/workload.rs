//! The learn suite's workload: a shell script that builds a program and runs it, writes its
//! results, reads its configuration and talks to a loopback server; the servers it talks to;
//! and a bounded run of a command, since `actgate learn` is new and a hang must not eat the
//! VM's whole time budget.

use std::{
    fmt,
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::harness::{self, Ctx, Reaped};

/// The script's file name in each workspace.
pub const SCRIPT: &str = "workload.sh";

/// The C program the script builds. It includes no header, so a compiler without the libc
/// headers can build it too; linking still needs the C runtime.
pub const HELLO_C: &str =
    "int puts(const char *s);\nint main(void) { return puts(\"hello from build\") < 0; }\n";

/// What the script's configuration file says.
pub const CONFIG: &str = "name = \"tool\"\n";

/// The script, with `@CONFIG@` and `@PORT@` to fill in. Every command it runs in its extra
/// step (`cat`, a redirection of the shell's own, `bash`) is one the usual steps run too, so
/// that under the learnt policy the extra step meets the rule of its file or address, not
/// an exec rule.
const TEMPLATE: &str = r#"# The learn suite's workload, run from its workspace. Each step says `ok: ...`; the first
# that fails says `FAILED: ...` on stderr and ends the run with status 1.
# $1 $2: one more step after the usual ones: `read FILE`, `write FILE` or `connect PORT`.
fail() { echo "FAILED: $*" >&2; exit 1; }
read_file() { content=$(cat "$1") || fail "read $1"; }
write_file() { echo "$2" >"$1" || fail "write $1"; }
talk() {
    reply=$(bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && echo ping >&3 && read -r -t 10 line <&3 && echo \"\$line\"") \
        || fail "connect 127.0.0.1:$1"
    [ "$reply" = "pong ping" ] || fail "connect 127.0.0.1:$1: the server answered '$reply'"
}

mkdir -p build out || fail "mkdir build out"
cc -o build/hello hello.c || fail "build build/hello"
echo "ok: built build/hello"
[ "$(./build/hello)" = "hello from build" ] || fail "run build/hello"
echo "ok: ran build/hello"
for i in 1 2 3 4 5; do write_file "out/result-$i.txt" "result $i"; done
echo "ok: wrote out/result-1.txt to out/result-5.txt"
read_file "@CONFIG@"
[ "$content" = 'name = "tool"' ] || fail "read @CONFIG@: it says '$content'"
echo "ok: read @CONFIG@"
talk @PORT@
echo "ok: talked to 127.0.0.1:@PORT@"
case "${1-}" in
    "") ;;
    read) read_file "$2" ;;
    write) write_file "$2" note ;;
    connect) talk "$2" ;;
    *) fail "no step $1" ;;
esac
echo done
"#;

/// The script that reads `config` and talks to the server on `port`.
pub fn script(config: &Path, port: u16) -> String {
    TEMPLATE
        .replace("@CONFIG@", &config.display().to_string())
        .replace("@PORT@", &port.to_string())
}

/// What the script prints on stdout when its usual steps all work, before `done`.
pub fn said(config: &Path, port: u16) -> String {
    format!(
        "ok: built build/hello\nok: ran build/hello\n\
         ok: wrote out/result-1.txt to out/result-5.txt\nok: read {}\n\
         ok: talked to 127.0.0.1:{port}\n",
        config.display()
    )
}

/// The step a variant adds after the usual ones.
pub enum Extra {
    Read(PathBuf),
    Write(PathBuf),
    Connect(u16),
}

impl Extra {
    /// The script's arguments.
    pub fn args(&self) -> [String; 2] {
        match self {
            Extra::Read(p) => ["read".into(), p.display().to_string()],
            Extra::Write(p) => ["write".into(), p.display().to_string()],
            Extra::Connect(port) => ["connect".into(), port.to_string()],
        }
    }

    /// The action of the decision counter a denial of the step counts under.
    pub fn action(&self) -> &'static str {
        match self {
            Extra::Read(_) => "file_read",
            Extra::Write(_) => "file_write",
            Extra::Connect(_) => "connect",
        }
    }

    /// The script's last line on stderr when the step fails.
    pub fn failed(&self) -> String {
        match self {
            Extra::Read(p) => format!("FAILED: read {}", p.display()),
            Extra::Write(p) => format!("FAILED: write {}", p.display()),
            Extra::Connect(port) => format!("FAILED: connect 127.0.0.1:{port}"),
        }
    }

    /// What the failing tool's error names: `cat: PATH: …`, the shell's `… PATH: …`, bash's
    /// `… /dev/tcp/127.0.0.1/PORT: …`.
    pub fn named(&self) -> String {
        match self {
            Extra::Read(p) | Extra::Write(p) => p.display().to_string(),
            Extra::Connect(port) => format!("/dev/tcp/127.0.0.1/{port}"),
        }
    }
}

impl fmt::Display for Extra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.args().join(" "))
    }
}

/// A TCP server on a loopback port of its own that answers each connection's first line `L`
/// with `pong L`, and counts the connections it accepted.
pub struct LineServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LineServer {
    pub fn start() -> Result<LineServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback server")?;
        // Non-blocking, so that the thread sees `stop` and the port is freed with the suite.
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = answer(stream);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(LineServer {
            port,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    writeln!(&stream, "pong {}", line.trim_end())
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long one command of the suite may run: a learning run builds a program under
/// emulation with every action recorded.
const RUN_WITHIN: Duration = Duration::from_secs(300);

/// Runs `cmd` with its output in files named after `tag` (a pipe would stay open as long as
/// any process the command left behind), and fails if it runs longer than `RUN_WITHIN`.
pub fn run(ctx: &Ctx, tag: &str, cmd: &mut Command) -> Result<Output> {
    let dir = ctx.path("learn/runs");
    fs::create_dir_all(&dir)?;
    let (out, err) = (
        dir.join(format!("{tag}.stdout")),
        dir.join(format!("{tag}.stderr")),
    );
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()
        .with_context(|| format!("starting {tag}: {cmd:?}"))?;
    let mut child = Reaped(child);
    let status = harness::wait_exit(&mut child.0, RUN_WITHIN)?;
    drop(child);
    let read = |p: &Path| fs::read(p).unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "{cmd:?} was still running after {} s and was killed; stdout:\n{}\nstderr:\n{}",
            RUN_WITHIN.as_secs(),
            String::from_utf8_lossy(&read(&out)),
            String::from_utf8_lossy(&read(&err))
        );
    };
    Ok(Output {
        status,
        stdout: read(&out),
        stderr: read(&err),
    })
}

/// A command's exit status and output, for a failure message.
pub fn shown(out: &Output) -> String {
    format!(
        "{}\n--- its stdout ---\n{}--- its stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The expected output names the same file and port as the script.
    #[test]
    fn script_prints_what_said_expects() {
        let config = Path::new("/x/config.toml");
        let text = script(config, 4242);
        for line in said(config, 4242).lines() {
            assert!(text.contains(&format!("echo \"{line}\"")), "{line}");
        }
        assert!(!text.contains('@'));
    }
}
