//! The timed operations. `vm-guest bench-worker` runs them in a loop, one command per stdin
//! line and one answer per line; [`Worker`] is the orchestrator's end of that pipe.

use std::{
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Write},
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

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
pub fn pin(cpu: Option<usize>) {
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
pub fn worker_cpu() -> Option<usize> {
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

/// mmap(PROT_READ|PROT_EXEC) of the first page of the open file `fd`, then munmap.
fn map_exec(fd: &fs::File) -> io::Result<()> {
    const LEN: usize = 4096;
    // SAFETY: a new private mapping of our own descriptor, unmapped at once; nothing reads it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(last_err());
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, LEN) };
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

/// socket(AF_INET, SOCK_STREAM) then close: `socket_create` sees it, and judges only raw,
/// packet and SCTP sockets.
fn socket_close() -> io::Result<()> {
    // SAFETY: a new socket, closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err());
        }
        libc::close(fd);
    }
    Ok(())
}

/// utimensat(PATH, NULL), as `touch` does: both times set to now (`inode_setattr`).
fn touch(path: &CString) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; NULL times mean now.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) };
    if r != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// The extended attribute the `setxattr` operation sets.
pub const XATTR: &std::ffi::CStr = c"user.actgate-bench";

/// setxattr(PATH, XATTR, "1"), creating or replacing it (`inode_setxattr`).
pub fn set_xattr(path: &CString) -> io::Result<()> {
    // SAFETY: NUL-terminated path and name, a one-byte value.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            XATTR.as_ptr(),
            b"1".as_ptr() as *const libc::c_void,
            1,
            0,
        )
    };
    if r != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// ftruncate of the open file `f` to `len`, its own size (`file_truncate`, 6.2 and later).
fn truncate(f: &fs::File, len: libc::off_t) -> io::Result<()> {
    // SAFETY: our own descriptor.
    if unsafe { libc::ftruncate(f.as_raw_fd(), len) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// The address of the AF_UNIX socket bound to PATH, and its length.
fn unix_addr(path: &str) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        bail!("socket path {path} is too long");
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// socket(AF_UNIX, SOCK_STREAM), connect to a path-named listener, close
/// (`unix_stream_connect`).
fn unix_connect_close(addr: &(libc::sockaddr_un, libc::socklen_t)) -> io::Result<()> {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last_err());
        }
        let r = libc::connect(fd, &addr.0 as *const _ as *const libc::sockaddr, addr.1);
        let err = (r == -1).then(last_err);
        libc::close(fd);
        err.map_or(Ok(()), Err)
    }
}

/// The supplementary groups of this process.
fn own_groups() -> Result<Vec<libc::gid_t>> {
    // SAFETY: a count query writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut groups = vec![0; n.max(0) as usize];
    // SAFETY: `groups` holds `n` entries.
    if unsafe { libc::getgroups(n, groups.as_mut_ptr()) } != n {
        bail!("getgroups: {}", last_err());
    }
    Ok(groups)
}

/// setgroups(2) as the system call itself: glibc's wrapper would also signal every thread.
fn set_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: `groups` is a valid array of its length.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r != 0 {
        return Err(last_err());
    }
    Ok(())
}

fn set_hostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is valid for its length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(last_err());
    }
    Ok(())
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

/// A program to run to its end: the `run` command's argument, as one line of JSON.
#[derive(Serialize, Deserialize, Debug)]
pub struct Job {
    pub dir: PathBuf,
    pub argv: Vec<String>,
    /// The whole environment: nothing is inherited.
    pub env: Vec<(String, String)>,
}

impl Job {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The worker's command line that runs this job.
    pub fn line(&self) -> Result<String> {
        Ok(format!("run {}", serde_json::to_string(self)?))
    }
}

/// Runs `job` with its output to /dev/null; returns its wall-clock ms, spawn to exit. A job
/// that doesn't exit 0 is an error that carries its stderr.
fn run_job(job: &Job) -> Result<f64> {
    if job.argv.is_empty() {
        bail!("a job without a program");
    }
    let t = Instant::now();
    let out = job
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting {} in {}", job.argv[0], job.dir.display()))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        // The end of stderr says what failed; a denial can make a tool print one line per file.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let tail = &stderr[stderr.floor_char_boundary(stderr.len().saturating_sub(4000))..];
        bail!(
            "`{}` in {} ended with {}; stderr: {tail}",
            job.argv.join(" "),
            job.dir.display(),
            out.status,
        );
    }
    Ok(ms)
}

fn serve(line: &str) -> Result<String> {
    if let Some(json) = line.strip_prefix("run ") {
        let job: Job = serde_json::from_str(json).context("a job")?;
        return Ok(format!("{:.1}", run_job(&job)?));
    }
    let parts: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| -> Result<u64> { s.parse().with_context(|| format!("bad number {s:?}")) };
    let samples = match parts.as_slice() {
        ["exec", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || spawn_wait(&c))?
        }
        ["mmap_exec", path, batch, ms] => {
            let f = fs::File::open(path).with_context(|| format!("opening {path}"))?;
            sampled(num(batch)? as u32, num(ms)?, || map_exec(&f))?
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
        ["socket", _, batch, ms] => sampled(num(batch)? as u32, num(ms)?, socket_close)?,
        ["utime", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || touch(&c))?
        }
        ["setxattr", path, batch, ms] => {
            let c = cstr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || set_xattr(&c))?
        }
        ["ftruncate", path, batch, ms] => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("opening {path} for writing"))?;
            let len = f.metadata()?.len() as libc::off_t;
            sampled(num(batch)? as u32, num(ms)?, || truncate(&f, len))?
        }
        ["unix_connect", path, batch, ms] => {
            let addr = unix_addr(path)?;
            sampled(num(batch)? as u32, num(ms)?, || unix_connect_close(&addr))?
        }
        ["setgroups", _, batch, ms] => {
            let groups = own_groups()?;
            sampled(num(batch)? as u32, num(ms)?, || set_groups(&groups))?
        }
        ["sethostname", _, batch, ms] => {
            let name = fs::read("/proc/sys/kernel/hostname").context("reading the host name")?;
            let name = name.trim_ascii_end().to_vec();
            sampled(num(batch)? as u32, num(ms)?, || set_hostname(&name))?
        }
        ["sendto", _, batch, ms] => {
            // A receiver that never reads: once its buffer is full the kernel drops what
            // arrives, silently, and every send still succeeds.
            let receiver = UdpSocket::bind("127.0.0.1:0").context("binding a UDP receiver")?;
            let to = receiver.local_addr()?;
            let sender = UdpSocket::bind("127.0.0.1:0").context("binding a UDP sender")?;
            sampled(num(batch)? as u32, num(ms)?, || {
                sender.send_to(&[0], to).map(|_| ())
            })?
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

/// `vm-guest bench-worker`: moves itself into the cgroup at `cgroup` if given, prints
/// `ready <cgroup>`, then answers each command line with `ok <numbers>` or `err <why>`.
pub fn worker(cgroup: Option<&Path>) -> ExitCode {
    // One CPU for the worker and everything it starts: a spawn, its child and the wait then
    // depend on one emulated CPU, not on when the host runs the other.
    if let Some(cpu) = worker_cpu() {
        pin(Some(cpu));
    }
    let mut out = io::stdout();
    if let Some(dir) = cgroup
        && let Err(e) = fs::write(dir.join("cgroup.procs"), "0")
    {
        // Not a `ready` line: the orchestrator reports it.
        let _ = writeln!(out, "could not move into {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
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
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub cgroup: String,
}

impl Worker {
    pub fn spawn(mut cmd: Command) -> Result<Worker> {
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

    pub fn call(&mut self, cmd: &str) -> Result<Vec<f64>> {
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
