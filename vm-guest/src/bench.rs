//! `vm-guest bench`: what enforcement costs, measured on the VM's real kernel (issue 5).
//!
//! The orchestrator (this process, unlabelled) drives two long-lived workers over pipes: one
//! started with `actgate exec --label bench`, so it and everything it forks stay in the
//! label's cgroup across daemon restarts, and one unlabelled. Each worker times one kind of
//! operation in a tight loop and answers with per-iteration means of small batches.
//!
//! The runs alternate: A with the daemon stopped, F (the floor, `floor.rs`) with a no-op BPF
//! LSM program on each of actgate's hooks, B with the daemon running and enforcing a policy of
//! 1,000 rules per action that never matches the benchmarked targets, so B measures the allow
//! path. Only ratios within one boot mean anything: the VM runs under software emulation.
//! Nothing here asserts a timing.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Write},
    net::TcpListener,
    os::unix::{fs::PermissionsExt, io::AsRawFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::HOOKS;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    floor::Floor,
    harness::{self, Daemon, metric},
};

const LABEL: &str = "bench";
const DIR: &str = "/tmp/actgate-bench";
/// Rules per action of the main runs.
const RULES: usize = 1000;
/// Rule counts of the scaling runs (1,000 comes from the main runs).
const SCALES: [usize; 3] = [10, 1000, 10000];
const FLOOD_PROCS: u32 = 4;
const FLOOD_MS: u64 = 3000;
/// Loading and proving the programs takes ~30–60 s under emulation.
const READY_SECS: u64 = 180;
/// Slices each run's time is cut into, operations taking turns.
const PASSES: u64 = 8;
/// Slices of each operation in the per-program statistics.
const STATS_SLICES: u64 = 5;

/// Options of `vm-guest bench`.
pub struct Options {
    pub actgate: PathBuf,
    pub out: PathBuf,
    /// Pairs of A and B runs at 1,000 rules.
    pub rounds: u32,
    /// Seconds each operation is timed per run.
    pub secs: f64,
}

// ---------------------------------------------------------------------------------------------
// What is measured
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Op {
    Exec,
    OpenRead,
    OpenWrite,
    Connect,
    /// getppid(2): a system call no hook sees, timed beside the others to show how steady
    /// the emulated machine ran.
    Control,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Exec,
        Op::OpenRead,
        Op::OpenWrite,
        Op::Connect,
        Op::Control,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::OpenRead => "file_open_read",
            Op::OpenWrite => "file_open_write",
            Op::Connect => "connect",
            Op::Control => "control_getppid",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Op::Exec => "exec (spawn+wait)",
            Op::OpenRead => "file_open read",
            Op::OpenWrite => "file_open write",
            Op::Connect => "connect 127.0.0.1",
            Op::Control => "control: getppid (no hook)",
        }
    }

    /// Iterations per timed sample: an exec takes milliseconds under emulation, an open
    /// microseconds.
    fn batch(self) -> u32 {
        match self {
            Op::Exec | Op::Connect => 1,
            Op::OpenRead | Op::OpenWrite => 5,
            Op::Control => 50,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Daemon stopped.
    A,
    /// Daemon stopped, a no-op program on each of its hooks: what attaching costs by itself.
    Floor,
    /// Daemon enforcing RULES rules per action.
    B,
    /// Daemon enforcing this many rules per action (scaling runs).
    Scale(usize),
}

/// One timed run of one operation by one worker.
struct Run {
    labelled: bool,
    op: Op,
    phase: Phase,
    round: u32,
    /// Mean ns per iteration of each batch.
    samples: Vec<f64>,
}

// ---------------------------------------------------------------------------------------------
// Fixtures: files, the tiny static program, policies
// ---------------------------------------------------------------------------------------------

struct Paths {
    root: PathBuf,
}

impl Paths {
    fn exe(&self) -> PathBuf {
        self.root.join("bin/true-static")
    }
    fn read_target(&self) -> PathBuf {
        self.root.join("files/read-target")
    }
    fn write_target(&self) -> PathBuf {
        self.root.join("files/write-target")
    }
    fn flood_target(&self) -> PathBuf {
        self.root.join("flood/secret")
    }
    fn policies(&self, rules: usize) -> PathBuf {
        self.root.join(format!("policies-{rules}"))
    }
}

/// A complete x86-64 ELF executable of 132 bytes: `exit(0)`, nothing else. No loader, no libc,
/// so an exec measures the kernel's work and the hooks', not a dynamic linker's.
fn true_static() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: [u8; 12] = [
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x31, 0xff, // xor edi, edi
        0x0f, 0x05, // syscall
        0x0f, 0x0b, 0x90, // ud2; nop (never reached)
    ];
    let size = (64 + 56 + CODE.len()) as u64;
    let mut b = Vec::with_capacity(size as usize);
    // ELF header.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    b.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // One PT_LOAD program header mapping the whole file read+execute.
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    b.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    b.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    b.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    b.extend_from_slice(&size.to_le_bytes()); // p_filesz
    b.extend_from_slice(&size.to_le_bytes()); // p_memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    b.extend_from_slice(&CODE);
    b
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The benchmark's policy with `n` deny rules per action, defaults allow. Each list holds a
/// near miss of its target (sharing the longest prefix), then exact paths and trees beside it;
/// none matches a benchmarked target. files.read also denies the flood's target.
fn policy(p: &Paths, n: usize) -> String {
    let root = p.root.display();
    let paths = |action: &str, near_miss: &Path, extra: Option<&Path>| -> Vec<String> {
        let mut v = vec![format!("{}.deny", near_miss.display())];
        if let Some(e) = extra {
            v.push(e.display().to_string());
        }
        let mut i = v.len();
        while v.len() < n {
            v.push(if i % 2 == 0 {
                format!("{root}/rules/{action}/d{i}/**")
            } else {
                format!("{root}/rules/{action}/f{i}")
            });
            i += 1;
        }
        v.truncate(n);
        v
    };
    let nets: Vec<String> = (0..n)
        .map(|i| match i {
            // Same address, another port; then a neighbouring address.
            0 => "127.0.0.1:1".to_string(),
            1 => "127.0.0.2".to_string(),
            _ => {
                let (a, b) = ((i >> 8) & 0xff, i & 0xff);
                if i % 3 == 0 {
                    format!("10.{a}.{b}.0/24:443")
                } else {
                    format!("10.{a}.{b}.0/24")
                }
            }
        })
        .collect();
    let list = |items: &[String], indent: &str| -> String {
        items
            .iter()
            .map(|s| format!("{indent}- \"{s}\"\n"))
            .collect()
    };
    format!(
        "# Generated by `vm-guest bench`: {n} deny rules per action, none matching a \
         benchmarked target.\nname: bench\nlabels: [{LABEL}]\nmode: enforce\n\n\
         exec:\n  default: allow\n  deny:\n{}\n\
         files:\n  write:\n    default: allow\n    deny:\n{}  read:\n    default: allow\n    deny:\n{}\n\
         network:\n  connect:\n    default: allow\n    deny:\n{}",
        list(&paths("exec", &p.exe(), None), "    "),
        list(&paths("write", &p.write_target(), None), "      "),
        list(
            &paths("read", &p.read_target(), Some(&p.flood_target())),
            "      "
        ),
        list(&nets, "      "),
    )
}

fn fixtures(p: &Paths, actgate: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(&p.root);
    write_file(&p.exe(), &true_static())?;
    fs::set_permissions(p.exe(), fs::Permissions::from_mode(0o755))?;
    write_file(&p.read_target(), b"benchmark\n")?;
    write_file(&p.write_target(), b"benchmark\n")?;
    write_file(&p.flood_target(), b"denied\n")?;
    for n in SCALES {
        let dir = p.policies(n);
        write_file(&dir.join("bench.yaml"), policy(p, n).as_bytes())?;
        let check = Command::new(actgate).arg("check").arg(&dir).output()?;
        if !check.status.success() {
            bail!(
                "the generated {n}-rule policy is invalid:\n{}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
        print!("  {}", String::from_utf8_lossy(&check.stdout));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The worker: `vm-guest bench-worker`, one command per stdin line, one answer per line
// ---------------------------------------------------------------------------------------------

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).context("NUL in a path")
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// posix_spawn(PATH), then wait; the child must exit 0. glibc spawns with
/// clone(CLONE_VM | CLONE_VFORK) and execve, so the run is a fork and an exec without the
/// copy of the parent's page tables that a plain fork adds to every iteration.
fn spawn_wait(path: &CString) -> io::Result<()> {
    let argv = [path.as_ptr() as *mut libc::c_char, std::ptr::null_mut()];
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: NUL-terminated argument and environment arrays that outlive the call.
    let err = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r == -1 {
            return Err(last_err());
        }
        break;
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the exec'd child ended with status {status:#x}"
        )))
    }
}

/// Restricts this process (and what it starts later) to one CPU, or to all of them.
fn pin(cpu: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        for c in 0..n {
            if cpu.is_none_or(|want| want == c) {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPU the workers run on: the last one, leaving CPU 0 to the orchestrator, the
/// listener and the daemon. None on a single-CPU machine.
fn worker_cpu() -> Option<usize> {
    // SAFETY: a plain query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n > 1).then(|| n as usize - 1)
}

/// open(PATH, FLAGS) then close.
fn open_close(path: &CString, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

/// socket, SO_LINGER 0 (close sends RST, so no TIME_WAIT exhausts the ports), connect, close.
fn connect_close(addr: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err());
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        );
        let r = libc::connect(
            fd,
            addr as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = (r == -1).then(last_err);
        libc::close(fd);
        err.map_or(Ok(()), Err)
    }
}

/// Runs `op` for a warm-up, then in batches of `batch` until `ms` have passed (at least 5
/// batches); returns each batch's mean ns per iteration.
fn sampled(batch: u32, ms: u64, mut op: impl FnMut() -> io::Result<()>) -> io::Result<Vec<f64>> {
    let warm = Instant::now() + Duration::from_millis((ms / 20).max(10));
    while Instant::now() < warm {
        op()?;
    }
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut samples = Vec::new();
    while Instant::now() < deadline || samples.len() < 5 {
        let t = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    Ok(samples)
}

/// `procs` children open PATH for reading as fast as they can for `ms`; returns attempts,
/// EPERM results, and other results, summed.
fn flood(path: &CString, procs: u32, ms: u64) -> Result<[u64; 3]> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(last_err().into());
    }
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut pids = Vec::new();
    for _ in 0..procs {
        // SAFETY: single-threaded; the child uses no allocation, only system calls.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(last_err().into());
        }
        if pid == 0 {
            // The flood may use every CPU.
            pin(None);
            let mut n = [0u64; 3];
            'outer: loop {
                for _ in 0..16 {
                    // SAFETY: a NUL-terminated path; closing what was opened.
                    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                    n[0] += 1;
                    if fd >= 0 {
                        unsafe { libc::close(fd) };
                        n[2] += 1;
                    } else if unsafe { *libc::__errno_location() } == libc::EPERM {
                        n[1] += 1;
                    } else {
                        n[2] += 1;
                    }
                }
                if Instant::now() >= deadline {
                    break 'outer;
                }
            }
            let mut buf = [0u8; 24];
            for (i, v) in n.iter().enumerate() {
                buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
            }
            // SAFETY: writing our buffer to the pipe (atomic below PIPE_BUF), then leaving
            // without running the parent's destructors or flushing its buffers.
            unsafe {
                libc::write(fds[1], buf.as_ptr() as *const libc::c_void, buf.len());
                libc::_exit(0);
            }
        }
        pids.push(pid);
    }
    // SAFETY: the parent keeps only the read end.
    unsafe { libc::close(fds[1]) };
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: reading into our buffer.
        let r = unsafe { libc::read(fds[0], buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if r > 0 {
            bytes.extend_from_slice(&buf[..r as usize]);
        } else if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: closing our descriptor; reaping our children.
    unsafe { libc::close(fds[0]) };
    for pid in pids {
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    let mut total = [0u64; 3];
    for rec in bytes.chunks_exact(24) {
        for (i, t) in total.iter_mut().enumerate() {
            let mut v = [0u8; 8];
            v.copy_from_slice(&rec[i * 8..i * 8 + 8]);
            *t += u64::from_ne_bytes(v);
        }
    }
    if bytes.len() != 24 * procs as usize {
        bail!(
            "only {} of {procs} flood processes reported",
            bytes.len() / 24
        );
    }
    Ok(total)
}

fn serve(line: &str) -> Result<String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| -> Result<u64> { s.parse().with_context(|| format!("bad number {s:?}")) };
    let samples = match parts.as_slice() {
        ["exec", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || spawn_wait(&c))?
        }
        ["open_read", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || {
                open_close(&c, libc::O_RDONLY)
            })?
        }
        ["open_write", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || {
                open_close(&c, libc::O_WRONLY)
            })?
        }
        ["connect", port, batch, ms] => {
            let addr = loopback(num(port)? as u16);
            sampled(num(batch)? as u32, num(ms)?, || connect_close(&addr))?
        }
        ["getppid", _, batch, ms] => sampled(num(batch)? as u32, num(ms)?, || {
            // SAFETY: no arguments, no memory.
            unsafe { libc::getppid() };
            Ok(())
        })?,
        ["flood", path, procs, ms] => {
            let [a, e, o] = flood(&cstr(path)?, num(procs)? as u32, num(ms)?)?;
            return Ok(format!("{a} {e} {o}"));
        }
        _ => bail!("unknown command {line:?}"),
    };
    Ok(samples
        .iter()
        .map(|s| format!("{s:.1}"))
        .collect::<Vec<_>>()
        .join(" "))
}

fn own_cgroup() -> String {
    fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// `vm-guest bench-worker`: prints `ready <cgroup>`, then answers each command line with
/// `ok <numbers>` or `err <why>`.
pub fn worker() -> ExitCode {
    // One CPU for the worker and everything it starts: a spawn, its child and the wait then
    // depend on one emulated CPU, not on when the host runs the other.
    if let Some(cpu) = worker_cpu() {
        pin(Some(cpu));
    }
    let mut out = io::stdout();
    if writeln!(out, "ready {}", own_cgroup())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "quit" {
            break;
        }
        let reply = match serve(&line) {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e:#}").replace('\n', " "),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The orchestrator's end of a worker.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    cgroup: String,
}

impl Worker {
    fn spawn(mut cmd: Command) -> Result<Worker> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a benchmark worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(cgroup) = line.trim().strip_prefix("ready ") else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("the worker did not start ({status}): {line:?}");
        };
        let cgroup = cgroup.to_string();
        Ok(Worker {
            child,
            stdin,
            stdout,
            cgroup,
        })
    }

    fn call(&mut self, cmd: &str) -> Result<Vec<f64>> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the worker exited during {cmd:?}");
        }
        match line.trim().split_once(' ').unwrap_or((line.trim(), "")) {
            ("ok", rest) => rest
                .split_whitespace()
                .map(|v| v.parse::<f64>().context("a worker number"))
                .collect(),
            (_, why) => bail!("worker failed {cmd:?}: {why}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        thread::sleep(Duration::from_millis(100));
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median, p25 and p75.
fn summary(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    (quantile(&s, 0.5), quantile(&s, 0.25), quantile(&s, 0.75))
}

fn pct(base: f64, with: f64) -> f64 {
    (with - base) / base * 100.0
}

fn r1(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

fn r2(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 100.0).round() / 100.0)
    } else {
        Value::Null
    }
}

struct Results {
    runs: Vec<Run>,
}

impl Results {
    fn pooled(&self, labelled: bool, op: Op, phase: Phase) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.labelled == labelled && r.op == op && r.phase == phase)
            .flat_map(|r| r.samples.iter().copied())
            .collect()
    }

    fn run_median(&self, labelled: bool, op: Op, phase: Phase, round: u32) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.labelled == labelled && r.op == op && r.phase == phase && r.round == round)
            .map(|r| summary(&r.samples).0)
    }

    fn rounds(&self) -> u32 {
        self.runs
            .iter()
            .filter(|r| r.phase == Phase::B)
            .map(|r| r.round + 1)
            .max()
            .unwrap_or(0)
    }

    /// A against B at RULES rules: pooled medians, quartiles, and each round's own ratio; and
    /// the floor F against both.
    fn compare(&self, labelled: bool, op: Op) -> Value {
        let a = self.pooled(labelled, op, Phase::A);
        let b = self.pooled(labelled, op, Phase::B);
        let fl = self.pooled(labelled, op, Phase::Floor);
        let (am, a25, a75) = summary(&a);
        let (bm, b25, b75) = summary(&b);
        let (fm, f25, f75) = summary(&fl);
        // Each round's own B/A ratio, and the labelled worker against the unlabelled one in
        // the same interleaved slices (immune to the host's load changing between runs).
        let ratios = |num: (bool, Phase), den: (bool, Phase)| -> Vec<f64> {
            (0..self.rounds())
                .filter_map(|r| {
                    let d = self.run_median(den.0, op, den.1, r)?;
                    let n = self.run_median(num.0, op, num.1, r)?;
                    Some(pct(d, n))
                })
                .collect()
        };
        let per_round = ratios((labelled, Phase::B), (labelled, Phase::A));
        let above_floor = ratios((labelled, Phase::B), (labelled, Phase::Floor));
        let mut v = json!({
            "baseline_ns": r1(am),
            "enforced_ns": r1(bm),
            "overhead_pct": r2(pct(am, bm)),
            "baseline_p25_ns": r1(a25),
            "baseline_p75_ns": r1(a75),
            "enforced_p25_ns": r1(b25),
            "enforced_p75_ns": r1(b75),
            "round_overhead_pct": per_round.iter().map(|x| r2(*x)).collect::<Vec<_>>(),
            "round_overhead_median_pct": r2(summary(&per_round).0),
            "floor_ns": r1(fm),
            "floor_p25_ns": r1(f25),
            "floor_p75_ns": r1(f75),
            "floor_pct": r2(pct(am, fm)),
            "above_floor_pct": r2(pct(fm, bm)),
            "round_above_floor_median_pct": r2(summary(&above_floor).0),
            "samples": {"baseline": a.len(), "floor": fl.len(), "enforced": b.len()},
            "iterations_per_sample": op.batch(),
        });
        if labelled {
            let b = ratios((true, Phase::B), (false, Phase::B));
            let a = ratios((true, Phase::A), (false, Phase::A));
            v["vs_unlabelled_enforced_pct"] = r2(summary(&b).0);
            v["vs_unlabelled_stopped_pct"] = r2(summary(&a).0);
        }
        v
    }

    fn scaling(&self, op: Op) -> Value {
        let (base, _, _) = summary(&self.pooled(true, op, Phase::A));
        let mut out = serde_json::Map::new();
        for n in SCALES {
            let phase = if n == RULES {
                Phase::B
            } else {
                Phase::Scale(n)
            };
            let s = self.pooled(true, op, phase);
            let (m, p25, p75) = summary(&s);
            out.insert(
                n.to_string(),
                json!({
                    "enforced_ns": r1(m),
                    "p25_ns": r1(p25),
                    "p75_ns": r1(p75),
                    "overhead_pct": r2(pct(base, m)),
                    "samples": s.len(),
                }),
            );
        }
        Value::Object(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-program run time (kernel.bpf_stats_enabled)
// ---------------------------------------------------------------------------------------------

/// Program tag → name, from the JIT's symbols (`bpf_prog_<tag>_<name>`).
fn prog_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    for line in text.lines() {
        let Some(sym) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some(rest) = sym.strip_prefix("bpf_prog_") else {
            continue;
        };
        let Some((tag, name)) = rest.split_once('_') else {
            continue;
        };
        let full = HOOKS
            .iter()
            .find(|h| !name.is_empty() && h.starts_with(name))
            .map_or(name, |h| *h);
        names
            .entry(tag.to_string())
            .and_modify(|n: &mut String| {
                if !n.split('/').any(|x| x == full) {
                    n.push('/');
                    n.push_str(full);
                }
            })
            .or_insert_with(|| full.to_string());
    }
    names
}

/// Program id → (tag, run_time_ns, run_cnt) of every BPF program the daemon holds.
fn prog_stats(pid: u32) -> BTreeMap<u64, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let is_prog = fs::read_link(e.path())
            .map(|t| t.to_string_lossy().contains("bpf-prog"))
            .unwrap_or(false);
        if !is_prog {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(':')
                    .map(|v| v.trim().to_string())
            })
        };
        let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(id), Some(tag)) = (num("prog_id"), field("prog_tag")) {
            out.insert(
                id,
                (
                    tag,
                    num("run_time_ns").unwrap_or(0),
                    num("run_cnt").unwrap_or(0),
                ),
            );
        }
    }
    out
}

/// (program name, calls, ns) of each program that ran between two snapshots.
fn stats_delta(
    before: &BTreeMap<u64, (String, u64, u64)>,
    after: &BTreeMap<u64, (String, u64, u64)>,
    names: &BTreeMap<String, String>,
) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for (id, (tag, time, cnt)) in after {
        let (t0, c0) = before.get(id).map_or((0, 0), |b| (b.1, b.2));
        let calls = cnt.saturating_sub(c0);
        if calls == 0 {
            continue;
        }
        let name = names
            .get(tag)
            .cloned()
            .unwrap_or_else(|| format!("prog{id}"));
        out.push((name, calls, time.saturating_sub(t0)));
    }
    out
}

fn set_bpf_stats(on: bool) -> Result<()> {
    fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .context("writing kernel.bpf_stats_enabled")
}

// ---------------------------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------------------------

fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    println!("[bench {:>3}:{:02}] {msg}", t / 60, t % 60);
    let _ = io::stdout().flush();
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

struct Bench {
    paths: Paths,
    actgate: PathBuf,
    labelled: Option<Worker>,
    unlabelled: Worker,
    port: u16,
    ms: u64,
    starts: u32,
    results: Results,
}

impl Bench {
    fn command(&self, op: Op, ms: u64) -> String {
        let target = match op {
            Op::Exec => self.paths.exe().display().to_string(),
            Op::OpenRead => self.paths.read_target().display().to_string(),
            Op::OpenWrite => self.paths.write_target().display().to_string(),
            Op::Connect => self.port.to_string(),
            Op::Control => "-".into(),
        };
        let verb = match op {
            Op::Exec => "exec",
            Op::OpenRead => "open_read",
            Op::OpenWrite => "open_write",
            Op::Connect => "connect",
            Op::Control => "getppid",
        };
        format!("{verb} {target} {} {ms}", op.batch())
    }

    fn worker(&mut self, labelled: bool) -> &mut Worker {
        if labelled {
            self.labelled.as_mut().expect("the labelled worker runs")
        } else {
            &mut self.unlabelled
        }
    }

    /// Times `ops` in each worker of `who` for `ms` each, in PASSES interleaved slices so
    /// that a change in the emulator's speed touches every operation alike.
    fn measure(
        &mut self,
        phase: Phase,
        round: u32,
        ops: &[Op],
        who: &[bool],
        ms: u64,
    ) -> Result<()> {
        let (waited, busy) = quiesce();
        progress(&format!(
            "  machine settled after {waited:.0} s ({:.0}% busy over the last second)",
            busy * 100.0
        ));
        let first = self.results.runs.len();
        for &op in ops {
            for &labelled in who {
                self.results.runs.push(Run {
                    labelled,
                    op,
                    phase,
                    round,
                    samples: Vec::new(),
                });
            }
        }
        let slice = (ms / PASSES).max(50);
        for pass in 0..PASSES {
            for &op in ops {
                // Alternate which worker goes first.
                let order: Vec<bool> = if pass % 2 == 0 {
                    who.to_vec()
                } else {
                    who.iter().rev().copied().collect()
                };
                for labelled in order {
                    let cmd = self.command(op, slice);
                    let samples = self.worker(labelled).call(&cmd)?;
                    let run = self.results.runs[first..]
                        .iter_mut()
                        .find(|r| r.op == op && r.labelled == labelled)
                        .expect("a run per operation and worker");
                    run.samples.extend(samples);
                }
            }
        }
        for r in &self.results.runs[first..] {
            progress(&format!(
                "  {:?} round {} {:<10} {:<16} median {} ({} samples)",
                phase,
                round + 1,
                if r.labelled { "labelled" } else { "unlabelled" },
                r.op.name(),
                human(summary(&r.samples).0),
                r.samples.len()
            ));
        }
        Ok(())
    }

    fn start(&mut self, rules: usize) -> Result<Daemon> {
        self.starts += 1;
        let root = &self.paths.root;
        let policies = self.paths.policies(rules);
        let t = Instant::now();
        let daemon = Daemon::launch(
            &self.actgate,
            &policies,
            &root.join(format!("events-{}.jsonl", self.starts)),
            &root.join(format!("daemon-{}.log", self.starts)),
            &[],
            Duration::from_secs(READY_SECS),
        )?;
        progress(&format!(
            "daemon ready with {} in {:.0} s",
            policies.display(),
            t.elapsed().as_secs_f64()
        ));
        Ok(daemon)
    }

    fn flood(&mut self, daemon: &Daemon) -> Result<Value> {
        let series_deny = harness::decision_series(LABEL, "file_read", "deny");
        let series_drop = "actgate_events_dropped_total{action=\"file_read\"}";
        let scrape = || -> Result<(f64, f64)> {
            let body = harness::scrape()?;
            Ok((metric(&body, &series_deny), metric(&body, series_drop)))
        };
        let count = || count_events(&daemon.events);
        let (deny0, drop0) = scrape()?;
        let ev0 = count();
        let t0 = Instant::now();
        let cmd = format!(
            "flood {} {FLOOD_PROCS} {FLOOD_MS}",
            self.paths.flood_target().display()
        );
        let v = self.worker(true).call(&cmd)?;
        let flood_secs = t0.elapsed().as_secs_f64();
        let [attempts, eperm, other] = [v[0] as u64, v[1] as u64, v[2] as u64];
        // Wait for the daemon to write what it received: until the count stops growing.
        let mut last = count();
        let mut last_growth = Instant::now();
        let give_up = Instant::now() + Duration::from_secs(60);
        while last_growth.elapsed() < Duration::from_millis(2000) && Instant::now() < give_up {
            thread::sleep(Duration::from_millis(250));
            let n = count();
            if n != last {
                last = n;
                last_growth = Instant::now();
            }
        }
        let written_secs = (last_growth - t0).as_secs_f64().max(flood_secs);
        let (deny1, drop1) = scrape()?;
        let received = last - ev0;
        let denies = (deny1 - deny0) as u64;
        let dropped = (drop1 - drop0) as u64;
        Ok(json!({
            "processes": FLOOD_PROCS,
            "seconds": r2(flood_secs),
            "attempts": attempts,
            "eperm": eperm,
            "other_results": other,
            "attempts_per_sec": r1(attempts as f64 / flood_secs),
            "kernel_denies": denies,
            "kernel_denies_equal_attempts": denies == attempts,
            "events_received": received,
            "events_dropped": dropped,
            "events_received_plus_dropped": received + dropped,
            "events_per_sec": r1(received as f64 / written_secs),
            "seconds_until_last_event": r2(written_secs),
        }))
    }

    /// Per-program run time while each worker repeats each operation, with the kernel's
    /// statistics on only for this (they add two clock reads per program run). Every
    /// operation runs in STATS_SLICES slices; a program's ns per call is the median over the
    /// slices, so one slice the host stalled doesn't decide it. Each operation also gets the
    /// run time of all programs per operation, and its share of the operation's A median:
    /// the work actgate's own code does, which emulation inflates about as much as the
    /// kernel's (both are translated x86 code).
    fn bpf_stats(&mut self, daemon: &Daemon) -> Result<Value> {
        set_bpf_stats(true)?;
        let names = prog_names();
        let ms = (self.ms / STATS_SLICES).max(200);
        let mut out = serde_json::Map::new();
        for labelled in [true, false] {
            let mut per_op = serde_json::Map::new();
            for op in [Op::Exec, Op::OpenRead, Op::OpenWrite, Op::Connect] {
                // Program name → per-slice (calls, ns).
                let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
                let mut iterations = 0;
                for _ in 0..STATS_SLICES {
                    let before = prog_stats(daemon.pid());
                    let cmd = self.command(op, ms);
                    iterations +=
                        self.worker(labelled).call(&cmd)?.len() as u64 * op.batch() as u64;
                    let after = prog_stats(daemon.pid());
                    for (name, calls, ns) in stats_delta(&before, &after, &names) {
                        seen.entry(name).or_default().push((calls, ns));
                    }
                }
                let mut progs = serde_json::Map::new();
                let mut total_ns = 0;
                for (name, slices) in seen {
                    let per_call: Vec<f64> = slices
                        .iter()
                        .map(|(c, ns)| *ns as f64 / *c as f64)
                        .collect();
                    let calls: u64 = slices.iter().map(|s| s.0).sum();
                    let ns: u64 = slices.iter().map(|s| s.1).sum();
                    total_ns += ns;
                    progs.insert(
                        name,
                        json!({
                            "calls": calls,
                            "ns_per_call": r1(summary(&per_call).0),
                            "ns_per_call_mean": r1(ns as f64 / calls as f64),
                        }),
                    );
                }
                let per_op_ns = total_ns as f64 / iterations.max(1) as f64;
                let (baseline, _, _) = summary(&self.results.pooled(labelled, op, Phase::A));
                per_op.insert(
                    op.name().into(),
                    json!({
                        "programs": progs,
                        "iterations": iterations,
                        "program_ns_per_operation": r1(per_op_ns),
                        "share_of_baseline_pct": r2(100.0 * per_op_ns / baseline),
                    }),
                );
            }
            out.insert(
                (if labelled { "labelled" } else { "unlabelled" }).into(),
                Value::Object(per_op),
            );
        }
        set_bpf_stats(false)?;
        Ok(Value::Object(out))
    }
}

/// The order of results.json's top-level keys: issue 5's shape first.
const KEY_ORDER: &[&str] = &[
    "kernel",
    "rules_per_label",
    "exec",
    "file_open",
    "connect",
    "unlabelled",
    "scaling",
    "flood",
    "control_getppid",
    "bpf_stats",
    "machine",
    "method",
];

/// Pretty JSON with the top-level keys in KEY_ORDER (serde_json sorts an object's keys).
fn ordered_json(v: &Value) -> Result<String> {
    let obj = v.as_object().context("results are an object")?;
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort_by_key(|k| KEY_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX));
    let mut out = String::from("{\n");
    for (i, k) in keys.iter().enumerate() {
        let body = serde_json::to_string_pretty(&obj[k.as_str()])?.replace('\n', "\n  ");
        let comma = if i + 1 < keys.len() { "," } else { "" };
        out.push_str(&format!("  {}: {body}{comma}\n", Value::from(k.as_str())));
    }
    out.push_str("}\n");
    Ok(out)
}

/// Busy and total jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4)?;
    let total: u64 = v.iter().sum();
    Some((total - idle, total))
}

/// Waits until the machine is idle (under 5% busy over one second), at most 60 s: the kernel
/// finishes tearing down a stopped daemon's programs and maps in the background, and that
/// work would otherwise land in the next run. Returns the seconds waited and the last busy
/// fraction.
fn quiesce() -> (f64, f64) {
    let t = Instant::now();
    let mut prev = cpu_jiffies();
    let mut busy = f64::NAN;
    while t.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_secs(1));
        let now = cpu_jiffies();
        if let (Some(a), Some(b)) = (prev, now)
            && b.1 > a.1
        {
            busy = (b.0 - a.0) as f64 / (b.1 - a.1) as f64;
            if busy < 0.05 {
                break;
            }
        }
        prev = now;
    }
    (t.elapsed().as_secs_f64(), busy)
}

/// The file system type of the mount holding `path`.
fn fs_type(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            let inside = p == at || at == "/" || p.starts_with(&format!("{at}/"));
            inside.then(|| (at.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

/// Deny events for the bench label's file reads in an events file.
fn count_events(path: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.ends_with('}'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["label"] == LABEL && v["action"] == "file_read" && v["verdict"] == "deny")
        .count() as u64
}

fn human(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn signed(v: f64) -> String {
    if v.is_finite() {
        format!("{v:+.2}%")
    } else {
        "-".into()
    }
}

fn table(r: &Value) -> String {
    let mut t = String::new();
    let mut line = |s: String| {
        t.push_str(&s);
        t.push('\n');
    };
    line(format!(
        "actgate benchmark: Linux {}, {} rules per action, {} rounds of A (daemon stopped) / F (floor: no-op programs) / B (enforcing)",
        r["kernel"].as_str().unwrap_or("?"),
        r["rules_per_label"],
        r["method"]["rounds"]
    ));
    line(
        "Medians of per-iteration means [p25 .. p75], pooled over rounds. overhead = B/A - 1 of \
         those; rounds = median of each round's own B/A - 1; floor = F/A - 1, a no-op BPF LSM \
         program on each hook; B/F = B/F - 1, what actgate adds above that floor; vs unl. = \
         labelled against unlabelled in the same interleaved slices of the B runs (median over \
         rounds)."
            .into(),
    );
    line(String::new());
    line(format!(
        "{:<37} {:>34} {:>34} {:>9} {:>9} {:>9} {:>9} {:>9}  per round",
        "operation",
        "A: daemon stopped",
        "B: enforcing",
        "overhead",
        "rounds",
        "floor",
        "B/F",
        "vs unl."
    ));
    let row = |name: &str, v: &Value| -> String {
        let span = |m: &str, lo: &str, hi: &str| {
            format!(
                "{} [{} .. {}]",
                human(f(v, m)),
                human(f(v, lo)),
                human(f(v, hi))
            )
        };
        let rounds: Vec<String> = v["round_overhead_pct"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| signed(x.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "{:<37} {:>34} {:>34} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            name,
            span("baseline_ns", "baseline_p25_ns", "baseline_p75_ns"),
            span("enforced_ns", "enforced_p25_ns", "enforced_p75_ns"),
            signed(f(v, "overhead_pct")),
            signed(f(v, "round_overhead_median_pct")),
            signed(f(v, "floor_pct")),
            signed(f(v, "above_floor_pct")),
            signed(f(v, "vs_unlabelled_enforced_pct")),
            rounds.join(" ")
        )
    };
    line(row("labelled   exec (spawn+wait)", &r["exec"]));
    line(row("labelled   file_open read", &r["file_open"]["read"]));
    line(row("labelled   file_open write", &r["file_open"]["write"]));
    line(row("labelled   connect 127.0.0.1", &r["connect"]));
    line(row(
        "labelled   control: getppid (no hook)",
        &r["control_getppid"],
    ));
    for op in Op::ALL {
        line(row(
            &format!("unlabelled {}", op.what()),
            &r["unlabelled"][op.name()],
        ));
    }
    line(String::new());
    line("Scaling (labelled, enforcing; overhead against the A median):".into());
    line(format!(
        "{:<37} {:>22} {:>22} {:>22}",
        "operation", "10 rules", "1,000 rules", "10,000 rules"
    ));
    for op in [Op::OpenRead, Op::OpenWrite, Op::Connect, Op::Control] {
        let s = &r["scaling"][op.name()];
        let cell = |n: &str| {
            format!(
                "{} ({})",
                human(f(&s[n], "enforced_ns")),
                signed(f(&s[n], "overhead_pct"))
            )
        };
        line(format!(
            "{:<37} {:>22} {:>22} {:>22}",
            op.what(),
            cell("10"),
            cell("1000"),
            cell("10000")
        ));
    }
    line(String::new());
    let fl = &r["flood"];
    if fl.is_object() {
        line(format!(
            "Flood: {} processes x {} s of denied opens: {} attempts ({} EPERM, {}/s); kernel denies {} (equal: {}); \
             events received {}, dropped {}; {} events/s written",
            fl["processes"],
            fl["seconds"],
            fl["attempts"],
            fl["eperm"],
            fl["attempts_per_sec"],
            fl["kernel_denies"],
            fl["kernel_denies_equal_attempts"],
            fl["events_received"],
            fl["events_dropped"],
            fl["events_per_sec"]
        ));
    } else {
        line(format!("Flood: {fl}"));
    }
    if let Some(stats) = r["bpf_stats"].as_object() {
        line(String::new());
        line(
            "Program run time with kernel.bpf_stats_enabled=1, by operation: all programs' ns per \
             operation and its share of the A median; per program, median ns per call over slices \
             and calls:"
                .into(),
        );
        for (who, ops) in stats {
            for (op, v) in ops.as_object().into_iter().flatten() {
                let cells: Vec<String> = v["programs"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, v)| format!("{name} {} ns x{}", v["ns_per_call"], v["calls"]))
                    .collect();
                line(format!(
                    "  {who:<10} {op:<16} {} ns per operation = {} of A; {}",
                    v["program_ns_per_operation"],
                    signed(f(v, "share_of_baseline_pct")),
                    cells.join(", ")
                ));
            }
        }
    }
    t
}

/// `vm-guest bench`.
pub fn run(opts: &Options) -> Result<()> {
    progress(&format!("kernel {}", kernel()));
    // The orchestrator, the listener and the daemon (started from here) keep off the
    // workers' CPU.
    if worker_cpu().is_some() {
        pin(Some(0));
    }
    let paths = Paths {
        root: PathBuf::from(DIR),
    };
    fixtures(&paths, &opts.actgate)?;
    let ms = (opts.secs * 1000.0) as u64;

    // The connect target: an unlabelled listener that accepts and closes, with a deep
    // backlog so no SYN is ever dropped (a dropped SYN costs a 1 s retransmit).
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: raising the backlog of our own listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });

    let guest = std::env::current_exe()?;
    let mut unlabelled_cmd = Command::new(&guest);
    unlabelled_cmd.arg("bench-worker");
    let mut bench = Bench {
        paths,
        actgate: opts.actgate.clone(),
        labelled: None,
        unlabelled: Worker::spawn(unlabelled_cmd)?,
        port,
        ms,
        starts: 0,
        results: Results { runs: Vec::new() },
    };
    if bench.unlabelled.cgroup.contains("/actgate/") {
        bail!("the unlabelled worker is in {}", bench.unlabelled.cgroup);
    }

    // The first daemon enforces the 10-rule policy: its run is the first scaling run, and it
    // lets `actgate exec` put the labelled worker in the label's cgroup, where it stays.
    let scale_ops = [Op::OpenRead, Op::OpenWrite, Op::Connect, Op::Control];
    let daemon = bench.start(10)?;
    let mut cmd = Command::new(&opts.actgate);
    cmd.args(["exec", "--label", LABEL, "--"])
        .arg(&guest)
        .arg("bench-worker");
    let w = Worker::spawn(cmd)?;
    if !w.cgroup.ends_with(&format!("/actgate/{LABEL}")) {
        bail!("the labelled worker is in cgroup {}", w.cgroup);
    }
    progress(&format!("labelled worker in cgroup {}", w.cgroup));
    bench.labelled = Some(w);
    bench.measure(Phase::Scale(10), 0, &scale_ops, &[true], ms * 2)?;
    daemon.stop_cleanly()?;

    let mut flood = Value::Null;
    let mut stats = Value::Null;
    for round in 0..opts.rounds {
        progress(&format!(
            "round {} of {}: A (daemon stopped)",
            round + 1,
            opts.rounds
        ));
        bench.measure(Phase::A, round, &Op::ALL, &[true, false], ms)?;
        progress(&format!(
            "round {} of {}: F (floor: a no-op program on each hook)",
            round + 1,
            opts.rounds
        ));
        let floor = Floor::attach()?;
        bench.measure(Phase::Floor, round, &Op::ALL, &[true, false], ms)?;
        drop(floor);
        let daemon = bench.start(RULES)?;
        progress(&format!(
            "round {} of {}: B (enforcing)",
            round + 1,
            opts.rounds
        ));
        bench.measure(Phase::B, round, &Op::ALL, &[true, false], ms)?;
        if round + 1 == opts.rounds {
            progress("flood of denied opens");
            flood = bench
                .flood(&daemon)
                .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
            progress(&format!("flood: {flood}"));
            progress("per-program run time (kernel.bpf_stats_enabled)");
            stats = bench
                .bpf_stats(&daemon)
                .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        }
        daemon.stop_cleanly()?;
    }
    let daemon = bench.start(10000)?;
    bench.measure(Phase::Scale(10000), 0, &scale_ops, &[true], ms * 2)?;
    daemon.stop_cleanly()?;

    let res = &bench.results;
    let read = res.compare(true, Op::OpenRead);
    let write = res.compare(true, Op::OpenWrite);
    let (base, enf) = (
        (f(&read, "baseline_ns") + f(&write, "baseline_ns")) / 2.0,
        (f(&read, "enforced_ns") + f(&write, "enforced_ns")) / 2.0,
    );
    let mut unlabelled = serde_json::Map::new();
    for op in Op::ALL {
        unlabelled.insert(op.name().into(), res.compare(false, op));
    }
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_default();
    let cpus = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let result = json!({
        "kernel": kernel(),
        "rules_per_label": RULES,
        "exec": res.compare(true, Op::Exec),
        "file_open": {
            "baseline_ns": r1(base),
            "enforced_ns": r1(enf),
            "overhead_pct": r2(pct(base, enf)),
            "note": "top-level figures are the mean of the read and write medians",
            "read": read,
            "write": write,
        },
        "connect": res.compare(true, Op::Connect),
        "control_getppid": res.compare(true, Op::Control),
        "unlabelled": unlabelled,
        "scaling": {
            "note": "labelled, daemon enforcing N deny rules per action; overhead against the pooled A median; 1000 is the main B runs",
            "file_open_read": res.scaling(Op::OpenRead),
            "file_open_write": res.scaling(Op::OpenWrite),
            "connect": res.scaling(Op::Connect),
            "control_getppid": res.scaling(Op::Control),
        },
        "flood": flood,
        "bpf_stats": stats,
        "machine": {"cpus": cpus, "cpu": model, "emulation": "QEMU TCG (no KVM)"},
        "method": {
            "rounds": opts.rounds,
            "order": "S10, then A F B per round, then S10000 (A: daemon stopped, F: daemon stopped and a no-op BPF LSM program on each of its hooks, B: enforcing 1000 rules per action, S: enforcing N rules)",
            "floor": "floor_pct = F/A - 1, the cost of attaching any BPF LSM program; above_floor_pct = B/F - 1, what actgate's own programs add to that",
            "seconds_per_run": opts.secs,
            "slices_per_run": PASSES,
            "statistic": "median (p25, p75) of per-iteration means of small batches, pooled over rounds; overhead_pct = enforced/baseline - 1",
            "exec_program": "a 132-byte static x86-64 ELF that calls exit(0); posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK) + execve) + waitpid",
            "cpus": "workers and their children pinned to the last CPU; orchestrator, listener and daemon to CPU 0; flood processes unpinned",
            "file_open": format!("open(O_RDONLY or O_WRONLY) + close of an allowed file on {}", fs_type(&bench.paths.root)),
            "connect": "socket + SO_LINGER 0 + connect to a 127.0.0.1 listener + close",
            "control": "getppid(2), which no hook sees: a steadiness check of the emulated machine",
            "caveat": "the VM runs under QEMU software emulation (TCG): absolute times are far slower than native; only ratios measured within one boot mean anything",
            "rules": "deny rules per action (exec, files.write, files.read, network.connect), defaults allow, none matching a benchmarked target",
        },
    });
    let text = table(&result);
    println!("\n{text}");
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&opts.out, ordered_json(&result)?)
        .with_context(|| format!("writing {}", opts.out.display()))?;
    let _ = fs::write(opts.out.with_extension("txt"), &text);
    progress(&format!("wrote {}", opts.out.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        let (m, p25, p75) = summary(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!((m, p25, p75), (3.0, 2.0, 4.0));
        let (m, _, _) = summary(&[1.0, 2.0]);
        assert_eq!(m, 1.5);
    }

    #[test]
    fn results_start_with_the_issues_keys() {
        let v = json!({"exec": {"b": 1, "a": 2}, "rules_per_label": 1000, "kernel": "6.12"});
        let text = ordered_json(&v).unwrap();
        let kernel = text.find("\"kernel\"").unwrap();
        let rules = text.find("\"rules_per_label\"").unwrap();
        let exec = text.find("\"exec\"").unwrap();
        assert!(kernel < rules && rules < exec, "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn the_static_program_is_a_complete_elf() {
        let elf = true_static();
        assert_eq!(elf.len(), 132);
        assert_eq!(&elf[..4], b"\x7fELF");
        let filesz = u64::from_le_bytes(elf[96..104].try_into().unwrap());
        assert_eq!(filesz, elf.len() as u64);
    }

    #[test]
    fn policies_hold_n_rules_per_action_and_miss_the_targets() {
        let p = Paths {
            root: PathBuf::from(DIR),
        };
        for n in SCALES {
            let text = policy(&p, n);
            assert_eq!(text.matches("\n    - ").count(), n, "exec rules");
            assert_eq!(text.matches("\n      - ").count(), 3 * n, "other rules");
            for target in [p.exe(), p.read_target(), p.write_target()] {
                assert!(!text.contains(&format!("\"{}\"", target.display())));
            }
            assert!(text.contains(&format!("\"{}\"", p.flood_target().display())));
        }
    }
}
