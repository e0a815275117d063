//! files.write and files.read enforcement end to end: every write operation allowed and
//! denied, reads, the ways a path can dodge a rule, and exact decision counters.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink},
    process::{Child, ChildStdin},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    expect_eq,
    harness::{self, Ctx, Daemon, Outcome, Results, scrape},
};

const LABEL: &str = "vmfiles";

/// A path under the suite's scratch directory.
fn f(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("files/{rel}")).display().to_string()
}

fn policy(ctx: &Ctx) -> String {
    format!(
        "name: vmtest-files
labels: [{LABEL}]
mode: enforce
files:
  write:
    default: deny
    allow: [{ws}/**, {ovl}/ws/**]
    deny: [{ws}/locked/**, {secret}, {ovl}/secret.key]
  read:
    default: allow
    deny: [{secret}, {vault}/**, {ws}/private/**, {ovl}/secret.key, {guest}/secret.key]
",
        ws = f(ctx, "ws"),
        guest = ctx.path(GUEST_TMP).display(),
        secret = f(ctx, "secret.key"),
        vault = f(ctx, "vault"),
        ovl = f(ctx, OVL),
    )
}

/// A directory in the guest's own /tmp, outside the suite's tmpfs: virtme-ng's overlayfs,
/// whose layers are on two file systems, so `stat` reports another st_dev than the kernel's.
const GUEST_TMP: &str = "files-guest-tmp";

/// The merged directory of the suite's overlayfs mount, relative to the suite's directory.
const OVL: &str = "ovl/merged";

fn c_path(path: &std::path::Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")
}

/// mount(2), with what failed in the error.
fn mount(source: &str, target: &std::path::Path, fstype: &str, data: &str) -> Result<()> {
    fs::create_dir_all(target)?;
    let (src, dst) = (c_path(source.as_ref())?, c_path(target)?);
    let (fstype_c, data_c) = (c_path(fstype.as_ref())?, c_path(data.as_ref())?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    };
    if ret != 0 {
        bail!(
            "mount -t {fstype} -o {data} {source} {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Mounts a fresh tmpfs on `dir`. In the VMs /tmp is an overlayfs (virtme-ng's writable
/// layer over the host's /tmp); a suite that isn't about overlayfs runs on a plain file system
/// so that each of its tests is about one thing.
pub(super) fn own_tmpfs(dir: &std::path::Path) -> Result<()> {
    mount("tmpfs", dir, "tmpfs", "mode=0755,size=256m")
}

/// Detaches a mount made by `own_tmpfs` (or the overlay), once its suite is done.
pub(super) fn unmount(dir: &std::path::Path) {
    if let Ok(c) = c_path(dir) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// An overlayfs (lower, upper and work directories on the suite's tmpfs) with a workspace,
/// a secret, and a hard link to the secret made through the merged view before the daemon
/// starts.
fn overlay_fixtures(ctx: &Ctx) -> Result<()> {
    harness::write(&ctx.path("files/ovl/lower/ws/lower.txt"), "lower\n")?;
    harness::write(&ctx.path("files/ovl/lower/outside.txt"), "outside\n")?;
    harness::write(&ctx.path("files/ovl/lower/secret.key"), "ovl secret\n")?;
    fs::create_dir_all(ctx.path("files/ovl/upper"))?;
    fs::create_dir_all(ctx.path("files/ovl/work"))?;
    let layers = format!(
        "lowerdir={},upperdir={},workdir={}",
        f(ctx, "ovl/lower"),
        f(ctx, "ovl/upper"),
        f(ctx, "ovl/work")
    );
    mount(
        "overlay",
        &ctx.path(&format!("files/{OVL}")),
        "overlay",
        &layers,
    )?;
    harness::write(
        std::path::Path::new(&f(ctx, &format!("{OVL}/ws/upper.txt"))),
        "upper\n",
    )?;
    fs::hard_link(
        f(ctx, &format!("{OVL}/secret.key")),
        f(ctx, &format!("{OVL}/ws/key-link")),
    )
    .context("hard link on the overlay")?;
    Ok(())
}

/// What must exist before the daemon starts; each test creates the files it changes itself.
fn fixtures(ctx: &Ctx) -> Result<()> {
    own_tmpfs(&ctx.path("files"))?;
    for (rel, text) in [
        ("secret.key", "secret\n"),
        ("secret.key.bak", "not a secret\n"),
        ("vault/doc.txt", "vault doc\n"),
        ("vault/sub/deep.txt", "deep\n"),
        ("vault-public/doc.txt", "public doc\n"),
        ("outside/readme.txt", "readme\n"),
        ("ws/a.txt", "workspace a\n"),
        ("ws/locked/file.txt", "locked\n"),
        ("ws/locked-not/file.txt", "not locked\n"),
        ("ws/private/token.txt", "token\n"),
    ] {
        harness::write(&ctx.path(&format!("files/{rel}")), text)?;
    }
    fs::create_dir_all(f(ctx, "ws-other"))?;
    // A hard link to the exact denied secret, inside the writable workspace, made before the
    // daemon starts: the kernel must know the file, not only its name.
    fs::hard_link(f(ctx, "secret.key"), f(ctx, "ws/key-link")).context("hard link")?;
    symlink(f(ctx, "secret.key"), f(ctx, "ws/link-to-secret"))?;
    symlink(f(ctx, "ws/locked/file.txt"), f(ctx, "ws/link-to-locked"))?;
    symlink(f(ctx, "ws/locked"), f(ctx, "ws/link-to-locked-dir"))?;
    symlink(f(ctx, "outside"), f(ctx, "ws/link-to-outside"))?;
    symlink(f(ctx, "ws/a.txt"), f(ctx, "outside/link-to-ws"))?;
    overlay_fixtures(ctx)?;
    harness::write(
        &ctx.path(&format!("{GUEST_TMP}/secret.key")),
        "guest secret\n",
    )?;
    fs::create_dir_all(ctx.path(&format!("{GUEST_TMP}/ws")))?;
    harness::write(&ctx.path("files/policies/files.yaml"), &policy(ctx))
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn exists(path: &str) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn mode(path: &str) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// (Re)creates a file the harness owns, with mode 0644 and owner root.
fn fresh(path: &str, text: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    harness::write(std::path::Path::new(path), text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Removes whatever is at `path`, so a create test starts from nothing.
fn gone(path: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_dir(path);
}

fn labelled(ctx: &Ctx, args: &[&str]) -> String {
    ctx.attempt(Some(LABEL), args)
}

fn unlabelled(ctx: &Ctx, args: &[&str]) -> String {
    ctx.attempt(None, args)
}

/// Retries `probe` for up to 10 s until it returns `want`; returns what it said last.
pub(super) fn eventually(want: &str, mut probe: impl FnMut() -> Result<String>) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe()?;
        if got == want || Instant::now() > deadline {
            return Ok(got);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// The value of `actgate_decisions_total` for one label, action and verdict in a scrape.
pub(super) fn decisions(body: &str, label: &str, action: &str, verdict: &str) -> f64 {
    harness::metric(body, &harness::decision_series(label, action, verdict))
}

/// Fails unless each `(action, verdict, want)` decision counter of `label` grew by exactly
/// `want` from the scrape `before` to the scrape `after`.
pub(super) fn expect_decision_changes(
    label: &str,
    before: &str,
    after: &str,
    changes: &[(&str, &str, usize)],
) -> Outcome {
    for (action, verdict, want) in changes {
        expect_eq!(
            decisions(after, label, action, verdict) - decisions(before, label, action, verdict),
            *want as f64,
            "change of {}",
            harness::decision_series(label, action, verdict)
        );
    }
    Ok(())
}

/// A labelled `sh` that stays alive and runs commands sent to it one at a time, so a test can
/// act from an already-running labelled process and without the file opens that starting a
/// new program costs (shared libraries): shell redirections are exactly one open(2) each.
pub(super) struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

const STATUS: &str = "@@status ";

impl Session {
    pub(super) fn start(ctx: &Ctx, label: &str) -> Result<Session> {
        // `eval … 2>&1` only duplicates a descriptor: no open. A failed redirection of the
        // regular builtin `true` is not fatal to the shell, unlike one of `:`.
        let script = format!(
            "echo ready; while read -r line; do eval \"$line\" 2>&1; echo \"{STATUS}$?\"; done"
        );
        let mut child = ctx
            .spawn_labelled_sh(label, &script)
            .context("starting a labelled shell")?;
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
    pub(super) fn run(&mut self, command: &str) -> Result<String> {
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

/// Names the errno of a failed shell redirection from dash's message (strerror text).
fn shell_verdict(status: &str, said: &str) -> String {
    if status == "0" {
        return "OK".into();
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

/// One write operation, tried on the file `name` in the workspace, where the policy allows
/// it, then outside every rule and in the locked tree, where it denies it.
struct WriteOp<A, D> {
    /// The probe, and its arguments after the path.
    probe: (&'static str, &'static [&'static str]),
    /// What failure messages call it.
    what: &'static str,
    name: &'static str,
    /// Makes each path's starting state.
    prepare: fn(&str) -> Result<()>,
    /// What the allowed operation must leave at its path, and how to read it.
    allowed: (fn(&str) -> A, A),
    /// What each denied operation must leave at its path.
    denied: (fn(&str) -> D, D),
}

impl<A: PartialEq + std::fmt::Debug, D: PartialEq + std::fmt::Debug> WriteOp<A, D> {
    fn check(&self, ctx: &Ctx) -> Outcome {
        let (probe, extra) = self.probe;
        let what = self.what;
        let try_at = |path: &str| {
            let mut args = vec![probe, path];
            args.extend_from_slice(extra);
            labelled(ctx, &args)
        };
        let path = f(ctx, &format!("ws/{}", self.name));
        (self.prepare)(&path)?;
        expect_eq!(try_at(&path), "OK", "{what} in the workspace");
        let (read, want) = &self.allowed;
        expect_eq!(read(&path), *want, "what {what} left in the workspace");
        for dir in ["outside", "ws/locked"] {
            let rel = format!("{dir}/{}", self.name);
            let path = f(ctx, &rel);
            (self.prepare)(&path)?;
            expect_eq!(try_at(&path), "EPERM", "{what} of {rel}");
            let (read, want) = &self.denied;
            expect_eq!(read(&path), *want, "{rel} after a denied {what}");
        }
        Ok(())
    }
}

/// Runs each `(probe, rel, want, what)`: `probe` as the label on the suite's path `rel`, which
/// must answer `want`; `what` names the step in a failure.
fn expect_verdicts(ctx: &Ctx, steps: &[(&str, &str, &str, &str)]) -> Outcome {
    for (probe, rel, want, what) in steps {
        expect_eq!(labelled(ctx, &[probe, &f(ctx, rel)]), *want, "{what}");
    }
    Ok(())
}

/// A labelled create of `rel` that must be denied and leave nothing behind.
fn create_is_denied(ctx: &Ctx, rel: &str) -> Outcome {
    let path = f(ctx, rel);
    expect_eq!(
        labelled(ctx, &["create", &path]),
        "EPERM",
        "create of {rel}"
    );
    expect_eq!(exists(&path), false, "a denied create made {rel}");
    Ok(())
}

fn is_dir(path: &str) -> Option<bool> {
    fs::metadata(path).map(|m| m.is_dir()).ok()
}

fn is_fifo(path: &str) -> Option<bool> {
    fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .ok()
}

fn owner(path: &str) -> Option<(u32, u32)> {
    fs::metadata(path).ok().map(|m| (m.uid(), m.gid()))
}

// ---- each write operation, allowed and denied ----

fn open_for_write_follows_write_rules(ctx: &Ctx) -> Outcome {
    for probe in ["open-write", "open-append"] {
        let allowed = f(ctx, "ws/open-w.txt");
        fresh(&allowed, "kept\n")?;
        expect_eq!(
            labelled(ctx, &[probe, &allowed]),
            "OK",
            "{probe} in the workspace"
        );
        for rel in ["outside/open-w.txt", "ws/locked/open-w.txt", "secret.key"] {
            let denied = f(ctx, rel);
            let before = read(&denied);
            if before.is_none() {
                fresh(&denied, "kept\n")?;
            }
            let before = read(&denied);
            expect_eq!(
                labelled(ctx, &[probe, &denied]),
                "EPERM",
                "{probe} of {rel}"
            );
            expect_eq!(
                read(&denied),
                before,
                "content of {rel} after a denied {probe}"
            );
        }
    }
    Ok(())
}

fn open_with_truncate_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("open-trunc", &[]),
        what: "O_TRUNC open",
        name: "trunc.txt",
        prepare: |p| fresh(p, "0123456789\n"),
        allowed: (read, Some(String::new())),
        denied: (read, Some("0123456789\n".to_string())),
    }
    .check(ctx)
}

fn create_follows_write_rules(ctx: &Ctx) -> Outcome {
    for probe in ["create", "create-rdonly"] {
        let allowed = f(ctx, &format!("ws/{probe}-new.txt"));
        gone(&allowed);
        expect_eq!(
            labelled(ctx, &[probe, &allowed]),
            "OK",
            "{probe} in the workspace"
        );
        expect_eq!(
            read(&allowed),
            Some(String::new()),
            "the file {probe} made in the workspace"
        );
        for dir in ["outside", "ws/locked", "ws-other"] {
            let denied = f(ctx, &format!("{dir}/{probe}-new.txt"));
            gone(&denied);
            expect_eq!(
                labelled(ctx, &[probe, &denied]),
                "EPERM",
                "{probe} in {dir}"
            );
            expect_eq!(
                exists(&denied),
                false,
                "{probe} in {dir} made the file anyway"
            );
        }
    }
    Ok(())
}

fn create_for_reading_needs_read_too(ctx: &Ctx) -> Outcome {
    // O_CREAT|O_RDONLY in ws/private: the create is a write the workspace allows (judged by
    // path_mknod, which doesn't see the open flags), the open a read the private tree denies.
    // The call fails with EPERM; the empty file it created is one a write there may create.
    let path = f(ctx, "ws/private/created-ro.txt");
    gone(&path);
    expect_eq!(
        labelled(ctx, &["create-rdonly", &path]),
        "EPERM",
        "O_CREAT|O_RDONLY in a read-denied tree"
    );
    gone(&path);
    // Created for writing only, the same name is fine: no read is involved.
    expect_eq!(
        labelled(ctx, &["create", &path]),
        "OK",
        "O_CREAT|O_WRONLY in a read-denied but writable tree"
    );
    Ok(())
}

fn truncate_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("truncate", &["4"]),
        what: "truncate(2)",
        name: "truncate.txt",
        prepare: |p| fresh(p, "0123456789"),
        allowed: (read, Some("0123".to_string())),
        denied: (read, Some("0123456789".to_string())),
    }
    .check(ctx)
}

fn unlink_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("unlink", &[]),
        what: "unlink",
        name: "unlink-me.txt",
        prepare: |p| fresh(p, "x"),
        allowed: (exists, false),
        denied: (read, Some("x".to_string())),
    }
    .check(ctx)
}

fn mkdir_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("mkdir", &[]),
        what: "mkdir",
        name: "new-dir",
        prepare: |p| {
            gone(p);
            Ok(())
        },
        allowed: (is_dir, Some(true)),
        denied: (exists, false),
    }
    .check(ctx)
}

fn rmdir_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("rmdir", &[]),
        what: "rmdir",
        name: "rmdir-me",
        prepare: |p| Ok(fs::create_dir_all(p)?),
        allowed: (exists, false),
        denied: (exists, true),
    }
    .check(ctx)
}

fn mkfifo_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("mkfifo", &[]),
        what: "mkfifo",
        name: "fifo",
        prepare: |p| {
            gone(p);
            Ok(())
        },
        allowed: (is_fifo, Some(true)),
        denied: (exists, false),
    }
    .check(ctx)
}

fn rename_needs_both_paths_writable(ctx: &Ctx) -> Outcome {
    let (from, to) = (f(ctx, "ws/ren-from.txt"), f(ctx, "ws/ren-to.txt"));
    fresh(&from, "moved\n")?;
    gone(&to);
    expect_eq!(
        labelled(ctx, &["rename", &from, &to]),
        "OK",
        "rename within the workspace"
    );
    expect_eq!(
        exists(&from),
        false,
        "the renamed file is still at its old name"
    );
    expect_eq!(read(&to), Some("moved\n".to_string()), "the renamed file");
    for (from_rel, to_rel) in [
        ("outside/ren-in.txt", "ws/ren-in.txt"),
        ("ws/ren-out.txt", "outside/ren-out.txt"),
        ("ws/ren-lock.txt", "ws/locked/ren-lock.txt"),
        ("ws/locked/ren-unlock.txt", "ws/ren-unlock.txt"),
    ] {
        let (from, to) = (f(ctx, from_rel), f(ctx, to_rel));
        fresh(&from, "stays\n")?;
        gone(&to);
        expect_eq!(
            labelled(ctx, &["rename", &from, &to]),
            "EPERM",
            "rename {from_rel} -> {to_rel}"
        );
        expect_eq!(
            read(&from),
            Some("stays\n".to_string()),
            "{from_rel} after a denied rename"
        );
        expect_eq!(exists(&to), false, "a denied rename made {to_rel}");
    }
    // Replacing an existing file is a write to the target too.
    let (from, to) = (f(ctx, "ws/ren-over.txt"), f(ctx, "outside/ren-over.txt"));
    fresh(&from, "new\n")?;
    fresh(&to, "old\n")?;
    expect_eq!(
        labelled(ctx, &["rename", &from, &to]),
        "EPERM",
        "rename over a file outside the workspace"
    );
    expect_eq!(
        read(&to),
        Some("old\n".to_string()),
        "the file a denied rename would replace"
    );
    Ok(())
}

fn link_needs_the_new_name_writable(ctx: &Ctx) -> Outcome {
    let from = f(ctx, "ws/link-src.txt");
    fresh(&from, "linked\n")?;
    let to = f(ctx, "ws/link-new.txt");
    gone(&to);
    expect_eq!(
        labelled(ctx, &["link", &from, &to]),
        "OK",
        "link within the workspace"
    );
    expect_eq!(read(&to), Some("linked\n".to_string()), "the new hard link");
    for rel in ["outside/link-new.txt", "ws/locked/link-new.txt"] {
        let to = f(ctx, rel);
        gone(&to);
        expect_eq!(
            labelled(ctx, &["link", &from, &to]),
            "EPERM",
            "link to the new name {rel}"
        );
        expect_eq!(exists(&to), false, "a denied link made {rel}");
    }
    expect_eq!(
        fs::metadata(&from).map(|m| m.nlink()).ok(),
        Some(2),
        "links to the source after one allowed and two denied links"
    );
    Ok(())
}

fn symlink_needs_the_link_path_writable(ctx: &Ctx) -> Outcome {
    // A symlink only names its target, so one to the secret may be made in the workspace;
    // reading through it is judged on the secret.
    let allowed = f(ctx, "ws/sym-new");
    gone(&allowed);
    let secret = f(ctx, "secret.key");
    expect_eq!(
        labelled(ctx, &["symlink", &secret, &allowed]),
        "OK",
        "symlink in the workspace"
    );
    expect_eq!(
        fs::read_link(&allowed)
            .ok()
            .map(|p| p.display().to_string()),
        Some(secret.clone()),
        "the symlink made"
    );
    expect_eq!(
        labelled(ctx, &["open-read", &allowed]),
        "EPERM",
        "read through the new symlink to the secret"
    );
    for rel in ["outside/sym-new", "ws/locked/sym-new"] {
        let denied = f(ctx, rel);
        gone(&denied);
        expect_eq!(
            labelled(ctx, &["symlink", &f(ctx, "ws/a.txt"), &denied]),
            "EPERM",
            "symlink at {rel}"
        );
        expect_eq!(exists(&denied), false, "a denied symlink made {rel}");
    }
    Ok(())
}

fn chmod_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("chmod", &["600"]),
        what: "chmod",
        name: "mode.txt",
        prepare: |p| fresh(p, "m"),
        allowed: (mode, Some(0o600)),
        denied: (mode, Some(0o644)),
    }
    .check(ctx)
}

fn chown_follows_write_rules(ctx: &Ctx) -> Outcome {
    WriteOp {
        probe: ("chown", &["1000", "1000"]),
        what: "chown",
        name: "owner.txt",
        prepare: |p| fresh(p, "o"),
        allowed: (owner, Some((1000, 1000))),
        denied: (owner, Some((0, 0))),
    }
    .check(ctx)
}

fn deny_tree_inside_allowed_tree_wins(ctx: &Ctx) -> Outcome {
    let file = f(ctx, "ws/locked/file.txt");
    for args in [
        vec!["open-write", file.as_str()],
        vec!["open-append", file.as_str()],
        vec!["truncate", file.as_str(), "0"],
        vec!["unlink", file.as_str()],
        vec!["chmod", file.as_str(), "600"],
    ] {
        expect_eq!(
            labelled(ctx, &args),
            "EPERM",
            "{} in the denied subtree",
            args[0]
        );
    }
    expect_eq!(
        read(&file),
        Some("locked\n".to_string()),
        "the locked file after denied writes"
    );
    expect_eq!(mode(&file), Some(0o644), "mode of the locked file");
    // Reading it is still fine: only writes are denied there.
    expect_eq!(
        labelled(ctx, &["open-read", &file]),
        "OK",
        "read in the denied subtree"
    );
    Ok(())
}

fn write_default_applies_outside_every_rule(ctx: &Ctx) -> Outcome {
    for rel in [
        "default-new.txt",
        "outside/default-new.txt",
        "vault/default-new.txt",
    ] {
        gone(&f(ctx, rel));
        create_is_denied(ctx, rel)?;
    }
    expect_eq!(
        labelled(ctx, &["open-write", &f(ctx, "outside/readme.txt")]),
        "EPERM",
        "write to an existing file outside every rule"
    );
    Ok(())
}

fn rules_match_whole_path_components(ctx: &Ctx) -> Outcome {
    // `ws/**` doesn't cover `ws-other/`, `ws/locked/**` doesn't cover `ws/locked-not/`.
    gone(&f(ctx, "ws-other/new.txt"));
    expect_verdicts(
        ctx,
        &[
            ("create", "ws-other/new.txt", "EPERM", "create in ws-other"),
            (
                "open-write",
                "ws/locked-not/file.txt",
                "OK",
                "write in ws/locked-not",
            ),
            // An exact rule is the path itself: `secret.key.bak` and the tree's sibling are
            // readable.
            (
                "open-read",
                "secret.key.bak",
                "OK",
                "read of secret.key.bak",
            ),
            (
                "open-read",
                "vault-public/doc.txt",
                "OK",
                "read of vault-public/doc.txt",
            ),
        ],
    )
}

// ---- reads ----

fn read_default_allows(ctx: &Ctx) -> Outcome {
    for rel in ["outside/readme.txt", "ws/a.txt", "ws/locked/file.txt"] {
        expect_eq!(
            labelled(ctx, &["open-read", &f(ctx, rel)]),
            "OK",
            "read of {rel}"
        );
    }
    Ok(())
}

fn read_of_denied_file_is_eperm(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[(
            "open-read",
            "secret.key",
            "EPERM",
            "read of the exact denied file",
        )],
    )
}

fn read_in_denied_tree_is_eperm(ctx: &Ctx) -> Outcome {
    for rel in [
        "vault/doc.txt",
        "vault/sub/deep.txt",
        "ws/private/token.txt",
    ] {
        expect_eq!(
            labelled(ctx, &["open-read", &f(ctx, rel)]),
            "EPERM",
            "read of {rel}"
        );
    }
    Ok(())
}

fn read_write_open_needs_both(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[
            ("open-rdwr", "ws/a.txt", "OK", "O_RDWR in the workspace"),
            (
                "open-rdwr",
                "outside/readme.txt",
                "EPERM",
                "O_RDWR of a readable file that may not be written",
            ),
            (
                "open-rdwr",
                "ws/private/token.txt",
                "EPERM",
                "O_RDWR of a writable file that may not be read",
            ),
        ],
    )?;
    expect_eq!(
        read(&f(ctx, "ws/private/token.txt")),
        Some("token\n".to_string()),
        "the private token"
    );
    Ok(())
}

// ---- ways around a rule ----

fn symlink_is_judged_on_its_target(ctx: &Ctx) -> Outcome {
    expect_verdicts(
        ctx,
        &[
            (
                "open-read",
                "ws/link-to-secret",
                "EPERM",
                "read through a symlink to the secret",
            ),
            (
                "open-write",
                "ws/link-to-locked",
                "EPERM",
                "write through a symlink into the locked tree",
            ),
        ],
    )?;
    expect_eq!(
        labelled(ctx, &["chmod", &f(ctx, "ws/link-to-locked"), "600"]),
        "EPERM",
        "chmod through a symlink into the locked tree"
    );
    expect_eq!(
        mode(&f(ctx, "ws/locked/file.txt")),
        Some(0o644),
        "mode of the locked file"
    );
    for rel in [
        "ws/link-to-locked-dir/via.txt",
        "ws/link-to-outside/via.txt",
    ] {
        create_is_denied(ctx, rel)?;
    }
    // The other way round: a symlink outside the workspace to a workspace file is writable.
    expect_eq!(
        labelled(ctx, &["open-write", &f(ctx, "outside/link-to-ws")]),
        "OK",
        "write through a symlink from outside into the workspace"
    );
    Ok(())
}

fn relative_path_is_judged_on_the_resolved_file(ctx: &Ctx) -> Outcome {
    let g = ctx.guest.display().to_string();
    let cases = [
        ("vault", "open-read doc.txt", "EPERM"),
        ("vault/sub", "open-read ../doc.txt", "EPERM"),
        ("ws", "open-read ../secret.key", "EPERM"),
        ("ws", "open-read private/token.txt", "EPERM"),
        ("ws/locked", "open-write ./file.txt", "EPERM"),
        ("ws/locked", "create rel-new.txt", "EPERM"),
        ("ws", "create ../outside/rel-new.txt", "EPERM"),
        ("ws/locked", "open-write ../a.txt", "OK"),
    ];
    for (dir, action, want) in cases {
        let script = format!("cd {} && {g} try {action}", f(ctx, dir));
        expect_eq!(ctx.labelled_sh(LABEL, &script), want, "`{action}` in {dir}");
    }
    expect_eq!(
        exists(&f(ctx, "ws/locked/rel-new.txt")),
        false,
        "ws/locked/rel-new.txt"
    );
    expect_eq!(
        exists(&f(ctx, "outside/rel-new.txt")),
        false,
        "outside/rel-new.txt"
    );
    Ok(())
}

fn dotdot_is_judged_on_the_resolved_file(ctx: &Ctx) -> Outcome {
    let cases = [
        ("open-read", "ws/../secret.key", "EPERM"),
        ("open-read", "outside/../vault/doc.txt", "EPERM"),
        ("open-read", "ws/locked/../private/token.txt", "EPERM"),
        ("open-write", "ws/../outside/readme.txt", "EPERM"),
        ("open-write", "ws/private/../locked/file.txt", "EPERM"),
        ("create", "ws/../outside/dotdot-new.txt", "EPERM"),
        ("open-write", "ws/locked/../a.txt", "OK"),
        ("open-read", "vault/../outside/readme.txt", "OK"),
    ];
    for (action, rel, want) in cases {
        expect_eq!(
            labelled(ctx, &[action, &f(ctx, rel)]),
            want,
            "{action} of {rel}"
        );
    }
    expect_eq!(
        exists(&f(ctx, "outside/dotdot-new.txt")),
        false,
        "outside/dotdot-new.txt"
    );
    Ok(())
}

fn reopen_through_proc_is_judged_on_the_file(ctx: &Ctx) -> Outcome {
    // The shell opens fd 3 as the policy allows; the probe then reopens /proc/self/fd/3 (a
    // magic link to the file) with the access the policy denies.
    let g = ctx.guest.display().to_string();
    let cases = [
        (
            "exec 3>>",
            "ws/private/token.txt",
            "open-read /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "ws/locked/file.txt",
            "open-write /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "outside/readme.txt",
            "open-append /proc/self/fd/3",
            "EPERM",
        ),
        (
            "exec 3<",
            "vault",
            "open-read /proc/self/fd/3/doc.txt",
            "EPERM",
        ),
        (
            "cd ",
            "vault",
            "open-read /proc/self/cwd/sub/deep.txt",
            "EPERM",
        ),
        ("exec 3>>", "ws/a.txt", "open-read /proc/self/fd/3", "OK"),
        ("exec 3<", "ws/a.txt", "open-write /proc/self/fd/3", "OK"),
    ];
    for (how, rel, action, want) in cases {
        let setup = format!("{how}{}", f(ctx, rel));
        let script = format!("{setup} && {g} try {action}");
        expect_eq!(
            ctx.labelled_sh(LABEL, &script),
            want,
            "`{action}` after `{setup}`"
        );
    }
    expect_eq!(
        read(&f(ctx, "ws/locked/file.txt")),
        Some("locked\n".to_string()),
        "the locked file"
    );
    Ok(())
}

fn hard_link_made_before_start_is_judged_as_the_file(ctx: &Ctx) -> Outcome {
    let link = f(ctx, "ws/key-link");
    let (a, b) = (fs::metadata(&link), fs::metadata(f(ctx, "secret.key")));
    expect_eq!(
        a.ok().map(|m| m.ino()),
        b.ok().map(|m| m.ino()),
        "inode of the hard link fixture and the secret"
    );
    expect_eq!(
        labelled(ctx, &["open-read", &link]),
        "EPERM",
        "read through a hard link to the secret"
    );
    for args in [
        vec!["open-write", link.as_str()],
        vec!["open-append", link.as_str()],
        vec!["open-trunc", link.as_str()],
        vec!["truncate", link.as_str(), "0"],
    ] {
        expect_eq!(
            labelled(ctx, &args),
            "EPERM",
            "{} through the hard link",
            args[0]
        );
    }
    expect_eq!(
        read(&f(ctx, "secret.key")),
        Some("secret\n".to_string()),
        "the secret after denied writes through its hard link"
    );
    Ok(())
}

fn rename_or_link_of_read_denied_file_is_eperm(ctx: &Ctx) -> Outcome {
    let cases = [
        ("rename", "ws/private/token.txt", "ws/token-moved.txt"),
        ("link", "ws/private/token.txt", "ws/token-linked.txt"),
        ("rename", "secret.key", "ws/secret-moved.key"),
        ("link", "secret.key", "ws/secret-linked.key"),
        ("rename", "vault/doc.txt", "ws/doc-moved.txt"),
        ("link", "vault/doc.txt", "ws/doc-linked.txt"),
    ];
    for (action, from, to) in cases {
        gone(&f(ctx, to));
        expect_eq!(
            labelled(ctx, &[action, &f(ctx, from), &f(ctx, to)]),
            "EPERM",
            "{action} {from} -> {to}"
        );
        expect_eq!(exists(&f(ctx, to)), false, "a denied {action} made {to}");
        expect_eq!(
            exists(&f(ctx, from)),
            true,
            "a denied {action} removed {from}"
        );
    }
    expect_eq!(
        fs::metadata(f(ctx, "ws/private/token.txt"))
            .map(|m| m.nlink())
            .ok(),
        Some(1),
        "links to the private token"
    );
    Ok(())
}

/// Renames the directory of a denied tree (`dir` is not itself under its own `dir/**` rule, and
/// the workspace lets it be written), then asks whether the file inside is still protected.
fn renamed_tree_stays_protected(ctx: &Ctx, dir: &str, file: &str, probe: &str) -> Outcome {
    let (from, to) = (f(ctx, dir), f(ctx, &format!("{dir}-moved")));
    let verdict = labelled(ctx, &["rename", &from, &to]);
    if verdict == "OK" {
        let inside = format!("{to}/{file}");
        let after = labelled(ctx, &[probe, &inside]);
        fs::rename(&to, &from).context("moving the tree back")?;
        expect_eq!(
            after,
            "EPERM",
            "{probe} of {file} after the labelled process renamed {dir} to {dir}-moved (the rename was allowed)"
        );
    } else {
        expect_eq!(verdict, "EPERM", "rename of the directory {dir}");
        expect_eq!(exists(&from), true, "{dir} after a denied rename");
    }
    Ok(())
}

fn renaming_read_denied_tree_does_not_expose_it(ctx: &Ctx) -> Outcome {
    renamed_tree_stays_protected(ctx, "ws/private", "token.txt", "open-read")
}

fn renaming_write_denied_tree_does_not_unlock_it(ctx: &Ctx) -> Outcome {
    renamed_tree_stays_protected(ctx, "ws/locked", "file.txt", "open-write")
}

fn unlabelled_file_actions_are_unaffected(ctx: &Ctx) -> Outcome {
    for rel in [
        "secret.key",
        "vault/doc.txt",
        "ws/private/token.txt",
        "ws/key-link",
        "ws/link-to-secret",
    ] {
        expect_eq!(
            unlabelled(ctx, &["open-read", &f(ctx, rel)]),
            "OK",
            "unlabelled read of {rel}"
        );
    }
    let new = f(ctx, "outside/unlabelled.txt");
    gone(&new);
    let dir = f(ctx, "ws/locked/unlabelled-dir");
    gone(&dir);
    let moved = f(ctx, "outside/unlabelled-moved.txt");
    gone(&moved);
    let steps: Vec<Vec<&str>> = vec![
        vec!["open-write", "outside/readme.txt"],
        vec!["open-rdwr", "ws/private/token.txt"],
        vec!["open-write", "ws/locked/file.txt"],
        vec!["create", "outside/unlabelled.txt"],
        vec!["chmod", "outside/unlabelled.txt", "600"],
        vec![
            "rename",
            "outside/unlabelled.txt",
            "outside/unlabelled-moved.txt",
        ],
        vec!["unlink", "outside/unlabelled-moved.txt"],
        vec!["mkdir", "ws/locked/unlabelled-dir"],
        vec!["rmdir", "ws/locked/unlabelled-dir"],
    ];
    for step in steps {
        let mut args = vec![step[0].to_string()];
        for (i, a) in step[1..].iter().enumerate() {
            // Paths are relative to the suite's directory; chmod's mode is not a path.
            args.push(if step[0] == "chmod" && i == 1 {
                a.to_string()
            } else {
                f(ctx, a)
            });
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_eq!(
            unlabelled(ctx, &args),
            "OK",
            "unlabelled {}",
            step.join(" ")
        );
    }
    expect_eq!(
        exists(&new) || exists(&moved) || exists(&dir),
        false,
        "leftovers"
    );
    Ok(())
}

fn overlay_write_open_is_judged_on_the_visible_path(ctx: &Ctx) -> Outcome {
    // Writing a file that is only in the lower layer copies it up first: the kernel's own
    // opens of the layers' files must not be judged as if the process had named them.
    let o = |rel: &str| f(ctx, &format!("{OVL}/{rel}"));
    let new = o("ws/new.txt");
    gone(&new);
    for (probe, path, want) in [
        ("open-write", o("ws/lower.txt"), "OK"),
        ("open-append", o("ws/upper.txt"), "OK"),
        ("open-rdwr", o("ws/lower.txt"), "OK"),
        ("create", new.clone(), "OK"),
        ("open-write", o("outside.txt"), "EPERM"),
        ("open-read", o("secret.key"), "EPERM"),
        ("open-read", o("ws/lower.txt"), "OK"),
    ] {
        expect_eq!(
            labelled(ctx, &[probe, &path]),
            want,
            "{probe} of {path} on overlayfs"
        );
    }
    expect_eq!(
        read(&o("ws/lower.txt")),
        Some("lower\n".to_string()),
        "ws/lower.txt"
    );
    expect_eq!(
        read(&new),
        Some(String::new()),
        "the file created on overlayfs"
    );
    expect_eq!(
        read(&o("outside.txt")),
        Some("outside\n".to_string()),
        "outside.txt"
    );
    Ok(())
}

/// A hard link to a read-denied secret made by an unlabelled process while the daemon enforces,
/// on the suite's tmpfs and in the guest's /tmp: the label can't read it under the new name.
fn hard_link_made_while_enforcing_is_judged_as_the_file(ctx: &Ctx) -> Outcome {
    let guest = |rel: &str| {
        ctx.path(&format!("{GUEST_TMP}/{rel}"))
            .display()
            .to_string()
    };
    for (secret, link) in [
        (f(ctx, "secret.key"), f(ctx, "ws/key-link-late")),
        (guest("secret.key"), guest("ws/key-link-late")),
    ] {
        let _ = fs::remove_file(&link);
        fs::hard_link(&secret, &link).with_context(|| format!("ln {secret} {link}"))?;
        expect_eq!(
            labelled(ctx, &["open-read", &link]),
            "EPERM",
            "labelled read of {link}, a hard link to {secret}"
        );
        expect_eq!(
            unlabelled(ctx, &["open-read", &link]),
            "OK",
            "unlabelled read of {link}"
        );
    }
    Ok(())
}

fn overlay_hard_link_made_before_start_is_judged_as_the_file(ctx: &Ctx) -> Outcome {
    let link = f(ctx, &format!("{OVL}/ws/key-link"));
    for probe in ["open-read", "open-write"] {
        expect_eq!(
            labelled(ctx, &[probe, &link]),
            "EPERM",
            "{probe} through a hard link to the secret on overlayfs"
        );
    }
    expect_eq!(
        read(&f(ctx, &format!("{OVL}/secret.key"))),
        Some("ovl secret\n".to_string()),
        "the overlay secret"
    );
    Ok(())
}

fn decision_counters_are_exact(ctx: &Ctx) -> Outcome {
    const DENIED_WRITES: usize = 3;
    const ALLOWED_READS: usize = 5;
    let target = f(ctx, "outside/counted.txt");
    fresh(&target, "counted\n")?;
    let readme = f(ctx, "outside/readme.txt");
    // Started before the first scrape: its own start-up opens (shared libraries) are not
    // part of the deltas; each redirection below is exactly one open(2).
    let mut shell = Session::start(ctx, LABEL)?;
    let before = scrape()?;
    for i in 0..DENIED_WRITES {
        expect_eq!(
            shell.run(&format!("true >{target}"))?,
            "EPERM",
            "denied write {i}"
        );
    }
    for i in 0..ALLOWED_READS {
        expect_eq!(
            shell.run(&format!("true <{readme}"))?,
            "OK",
            "allowed read {i}"
        );
    }
    let after = scrape()?;
    drop(shell);
    expect_decision_changes(
        LABEL,
        &before,
        &after,
        &[
            ("file_write", "deny", DENIED_WRITES),
            ("file_read", "allow", ALLOWED_READS),
            ("file_write", "allow", 0),
            ("file_read", "deny", 0),
            ("exec", "allow", 0),
            ("connect", "allow", 0),
        ],
    )?;
    expect_eq!(
        read(&target),
        Some("counted\n".to_string()),
        "the file of the denied writes"
    );
    Ok(())
}

fn denied_read_event_names_the_resolved_file(ctx: &Ctx, daemon: &Daemon) -> Outcome {
    // Through the symlink, so the event must name the file actually judged.
    let secret = f(ctx, "secret.key");
    expect_eq!(
        labelled(ctx, &["open-read", &f(ctx, "ws/link-to-secret")]),
        "EPERM",
        "read through the symlink to the secret"
    );
    let found = eventually("found", || {
        let text = fs::read_to_string(&daemon.events).unwrap_or_default();
        let hit = text.lines().any(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            s("label") == LABEL
                && s("action") == "file_read"
                && s("verdict") == "deny"
                && s("target") == secret
        });
        Ok(if hit { "found".into() } else { text })
    })?;
    expect_eq!(
        found,
        "found",
        "an event {{label: {LABEL}, action: file_read, verdict: deny, target: {secret}}} in the events file"
    );
    Ok(())
}

/// Runs the file tests against one daemon, then stops it.
pub fn suite(ctx: &Ctx, selected: &dyn Fn(&str) -> bool) -> Results {
    let tests: [crate::tests::Test; 34] = [
        (
            "labelled_open_for_write_follows_write_rules",
            open_for_write_follows_write_rules,
        ),
        (
            "labelled_open_with_truncate_follows_write_rules",
            open_with_truncate_follows_write_rules,
        ),
        (
            "labelled_create_follows_write_rules",
            create_follows_write_rules,
        ),
        (
            "labelled_create_for_reading_in_read_denied_tree_is_eperm",
            create_for_reading_needs_read_too,
        ),
        (
            "labelled_truncate_follows_write_rules",
            truncate_follows_write_rules,
        ),
        (
            "labelled_unlink_follows_write_rules",
            unlink_follows_write_rules,
        ),
        (
            "labelled_mkdir_follows_write_rules",
            mkdir_follows_write_rules,
        ),
        (
            "labelled_rmdir_follows_write_rules",
            rmdir_follows_write_rules,
        ),
        (
            "labelled_mkfifo_follows_write_rules",
            mkfifo_follows_write_rules,
        ),
        (
            "labelled_rename_needs_both_paths_writable",
            rename_needs_both_paths_writable,
        ),
        (
            "labelled_link_needs_the_new_name_writable",
            link_needs_the_new_name_writable,
        ),
        (
            "labelled_symlink_needs_the_link_path_writable",
            symlink_needs_the_link_path_writable,
        ),
        (
            "labelled_chmod_follows_write_rules",
            chmod_follows_write_rules,
        ),
        (
            "labelled_chown_follows_write_rules",
            chown_follows_write_rules,
        ),
        (
            "labelled_write_in_deny_tree_inside_allowed_tree_is_eperm",
            deny_tree_inside_allowed_tree_wins,
        ),
        (
            "labelled_write_outside_every_rule_gets_default_deny",
            write_default_applies_outside_every_rule,
        ),
        (
            "labelled_file_rules_match_whole_path_components",
            rules_match_whole_path_components,
        ),
        (
            "labelled_read_outside_every_rule_is_allowed",
            read_default_allows,
        ),
        (
            "labelled_read_of_denied_file_is_eperm",
            read_of_denied_file_is_eperm,
        ),
        (
            "labelled_read_in_denied_tree_is_eperm",
            read_in_denied_tree_is_eperm,
        ),
        (
            "labelled_read_write_open_needs_read_and_write_allowed",
            read_write_open_needs_both,
        ),
        (
            "labelled_file_access_through_symlink_is_judged_on_target",
            symlink_is_judged_on_its_target,
        ),
        (
            "labelled_file_access_through_relative_path_is_judged_on_resolved_file",
            relative_path_is_judged_on_the_resolved_file,
        ),
        (
            "labelled_file_access_through_dotdot_is_judged_on_resolved_file",
            dotdot_is_judged_on_the_resolved_file,
        ),
        (
            "labelled_reopen_through_proc_magic_link_is_judged_on_the_file",
            reopen_through_proc_is_judged_on_the_file,
        ),
        (
            "labelled_access_through_hard_link_made_before_start_is_eperm",
            hard_link_made_before_start_is_judged_as_the_file,
        ),
        (
            "labelled_read_of_hard_link_made_while_enforcing_is_eperm",
            hard_link_made_while_enforcing_is_judged_as_the_file,
        ),
        (
            "labelled_rename_or_link_of_read_denied_file_is_eperm",
            rename_or_link_of_read_denied_file_is_eperm,
        ),
        (
            "labelled_renaming_read_denied_tree_does_not_expose_it",
            renaming_read_denied_tree_does_not_expose_it,
        ),
        (
            "labelled_renaming_write_denied_tree_does_not_unlock_it",
            renaming_write_denied_tree_does_not_unlock_it,
        ),
        (
            "unlabelled_file_actions_are_unaffected",
            unlabelled_file_actions_are_unaffected,
        ),
        (
            "labelled_write_open_on_overlayfs_is_judged_on_the_visible_path",
            overlay_write_open_is_judged_on_the_visible_path,
        ),
        (
            "labelled_access_through_hard_link_on_overlayfs_made_before_start_is_eperm",
            overlay_hard_link_made_before_start_is_judged_as_the_file,
        ),
        (
            "file_decision_counters_count_each_decision_exactly",
            decision_counters_are_exact,
        ),
    ];
    const EVENT_TEST: &str = "labelled_denied_read_event_names_the_resolved_file";
    let mut results: Results = Vec::new();
    let chosen: Vec<_> = tests.iter().filter(|(n, _)| selected(n)).collect();
    if chosen.is_empty() && !selected(EVENT_TEST) {
        return results;
    }
    with_daemon(ctx, &chosen, selected(EVENT_TEST), &mut results);
    unmount(&ctx.path(&format!("files/{OVL}")));
    unmount(&ctx.path("files"));
    results
}

/// Fixtures, one daemon, the chosen tests, and the daemon's stop.
fn with_daemon(ctx: &Ctx, chosen: &[&crate::tests::Test], event_test: bool, results: &mut Results) {
    const EVENT_TEST: &str = "labelled_denied_read_event_names_the_resolved_file";
    if let Err(e) = fixtures(ctx) {
        results.push(("files_fixtures", Err(e.into())));
        return;
    }
    let names = chosen.iter().map(|(n, _)| *n);
    let Some(daemon) = harness::start_for(ctx, &ctx.path("files/policies"), names, results) else {
        return;
    };
    for (name, test) in chosen {
        results.push((name, test(ctx)));
    }
    if event_test {
        results.push((
            EVENT_TEST,
            denied_read_event_names_the_resolved_file(ctx, &daemon),
        ));
    }
    if let Err(e) = daemon.stop_cleanly() {
        results.push(("files_daemon_stops", Err(e.into())));
    }
}
