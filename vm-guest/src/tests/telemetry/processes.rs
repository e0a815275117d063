//! Labelled processes that stay alive while a test looks at them.

use std::{
    fs,
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::metrics::*;
use crate::harness::{self, Ctx};

/// A labelled `sleep`, killed when dropped.
pub(super) struct Sleeper(Child);

impl Sleeper {
    pub(super) fn start(ctx: &Ctx, label: &str) -> Result<Sleeper> {
        let child = ctx
            .labelled_command(label)
            .args(["/bin/sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a labelled sleep")?;
        Ok(Sleeper(child))
    }

    /// Waits until it is `sleep` and sleeps: it counts as a process as soon as `actgate exec`
    /// joins the label, but loading `sleep` still makes decisions after that.
    pub(super) fn wait_idle(&self, label: &str) -> Result<()> {
        let comm = format!("/proc/{}/comm", self.0.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        while fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            if Instant::now() > deadline {
                bail!("the labelled sleep never ran");
            }
            thread::sleep(Duration::from_millis(100));
        }
        let mut last = label_decisions(label)?;
        loop {
            thread::sleep(Duration::from_secs(1));
            let now = label_decisions(label)?;
            if now == last {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the decisions of {label} keep changing while only a sleep runs");
            }
            last = now;
        }
    }

    /// Kills it and reaps it.
    pub(super) fn stop(mut self) -> Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.0);
    }
}

/// `actgate exec --user root --label LABEL -- vm-guest try ARGS…`; returns the probe's pid and verdict.
pub(super) fn probe_with_pid(ctx: &Ctx, label: &str, args: &[&str]) -> Result<(u32, String)> {
    let child = ctx
        .labelled_probe(label)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a labelled probe")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    Ok((pid, harness::verdict_line(&out)))
}

/// A labelled probe whose stdout is a full pipe: it acts, then blocks printing its verdict
/// until `finish` drains the pipe, so it is still alive while the daemon handles its event.
pub(super) struct HeldProbe {
    pub(super) child: Child,
    out: fs::File,
}

impl HeldProbe {
    pub(super) fn start(ctx: &Ctx, label: &str, args: &[&str]) -> Result<HeldProbe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        // SAFETY: two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let chunk = [b'.'; 4096];
        for len in [chunk.len(), 1] {
            // SAFETY: writes from a buffer of at least `len` bytes; stops at EAGAIN (full).
            while unsafe { libc::write(write.as_raw_fd(), chunk.as_ptr().cast(), len) } > 0 {}
        }
        for fd in [&read, &write] {
            // SAFETY: clears O_NONBLOCK on a descriptor we own, so the probe's write blocks.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) };
        }
        let child = ctx
            .labelled_probe(label)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::null())
            .spawn()
            .context("starting a labelled probe")?;
        Ok(HeldProbe {
            child,
            out: fs::File::from(read),
        })
    }

    /// Lets it print and exit; returns its verdict line.
    pub(super) fn finish(mut self) -> Result<String> {
        let mut text = Vec::new();
        self.out.read_to_end(&mut text)?;
        self.child.wait()?;
        let text = String::from_utf8_lossy(&text);
        Ok(text.trim_start_matches('.').trim().to_string())
    }
}

impl Drop for HeldProbe {
    fn drop(&mut self) {
        harness::kill_and_reap(&mut self.child);
    }
}

pub(super) fn guest_exe(ctx: &Ctx) -> Result<String> {
    Ok(fs::canonicalize(&ctx.guest)?.display().to_string())
}
