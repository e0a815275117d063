//! The Debian package (`cargo xtask package`): what it installs, and its systemd unit bringing
//! a daemon to ready.
//!
//! The VM has no systemd as its init and sees the host's file system read-only, so the tests do
//! what dpkg and systemd would do, as far as the unit needs:
//! - `dpkg-deb -x` unpacks the package into a writable root in the guest's /tmp, as `dpkg
//!   --root` would. The maintainer scripts don't run: they only call systemctl, and on removal
//!   `actgate unload`.
//! - The unit's `ExecStart=` runs the way systemd runs a service: a clean environment with
//!   systemd's PATH, / as the working directory, stdin on /dev/null, stdout and stderr to a log
//!   (the journal's stand-in), and its `LogsDirectory=` and `RuntimeDirectory=` made first.
//!   Each absolute path on the command line is taken inside the root, so the unpacked binary
//!   runs with the unpacked /etc/actgate/policies and writes its events to the root's
//!   /var/log/actgate. The runtime directory is the real /run/actgate, where `actgate status`
//!   and `actgate unload` look by default.
//! - `systemctl stop` sends SIGTERM: the daemon must exit 0 and leave enforcement in force, and
//!   the package's `actgate unload` must then end it, so the tests after these start from a
//!   clean kernel.
//!
//! Without `--package` (no `cargo xtask package` before the VM tests) both tests skip.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, http_get},
    tests::{Suite, mounts::Mount},
};

/// Where the unit is installed (cargo-deb's systemd-units, as dh_installsystemd does).
const UNIT: &str = "usr/lib/systemd/system/actgate.service";
/// Where the package puts the example policies.
const POLICIES: &str = "etc/actgate/policies";
/// The PATH systemd gives system services.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The package, unpacked.
pub struct Unpacked {
    deb: PathBuf,
    root: PathBuf,
}

impl Unpacked {
    /// `rel` (a path without its leading /) as installed.
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The file names of the shipped policies.
    fn policies(&self) -> Result<Vec<String>> {
        let dir = self.path(POLICIES);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn start(ctx: &Ctx) -> Result<Option<Unpacked>> {
    let Some(deb) = &ctx.package else {
        return Ok(None);
    };
    let root = ctx.path("package/root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    Ok(Some(Unpacked {
        deb: deb.clone(),
        root,
    }))
}

fn unpacked(fx: &Option<Unpacked>) -> Result<&Unpacked, NotPassed> {
    fx.as_ref().ok_or_else(|| {
        NotPassed::Skip(
            "no package given (vm-guest --package): run `cargo xtask package` before the VM \
             tests"
                .into(),
        )
    })
}

/// Runs `cmd` to its end; its stdout, or an error with both outputs unless it exited 0.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dpkg-deb OPTION DEB WHAT`, e.g. `--field DEB Version`.
fn dpkg_deb(option: &str, deb: &Path, what: &str) -> Result<String> {
    run_ok(Command::new("dpkg-deb").arg(option).arg(deb).arg(what))
}

fn the_package_installs_binary_unit_policies_as_conffiles_man_pages_and_completions(
    _: &Ctx,
    fx: &mut Option<Unpacked>,
) -> Outcome {
    let pkg = unpacked(fx)?;
    for rel in [
        "usr/bin/actgate",
        UNIT,
        "usr/share/man/man1/actgate.1.gz",
        "usr/share/man/man1/actgate-run.1.gz",
        "usr/share/bash-completion/completions/actgate",
        "usr/share/zsh/vendor-completions/_actgate",
        "usr/share/fish/vendor_completions.d/actgate.fish",
        "usr/share/doc/actgate/README.md",
    ] {
        if !pkg.path(rel).is_file() {
            return Err(NotPassed::Fail(format!("the package has no /{rel}")));
        }
    }
    let mode = fs::metadata(pkg.path("usr/bin/actgate"))
        .context("reading /usr/bin/actgate")?
        .permissions()
        .mode();
    expect_eq!(mode & 0o777, 0o755, "the mode of /usr/bin/actgate");
    let policies = pkg.policies()?;
    if policies.is_empty() {
        return Err(NotPassed::Fail(format!(
            "the package has no /{POLICIES}/*.yaml"
        )));
    }
    let conffiles = dpkg_deb("--info", &pkg.deb, "conffiles")?;
    for name in &policies {
        let want = format!("/{POLICIES}/{name}");
        if !conffiles.lines().any(|l| l.trim() == want) {
            return Err(NotPassed::Fail(format!(
                "{want} is not a conffile; conffiles: {conffiles}"
            )));
        }
    }
    let actgate = pkg.path("usr/bin/actgate");
    run_ok(Command::new(&actgate).arg("check").arg(pkg.path(POLICIES)))?;
    // The binary is the package's version: `actgate X.Y.Z` for a package X.Y.Z-REVISION.
    let version = dpkg_deb("--field", &pkg.deb, "Version")?;
    let upstream = version.trim().split('-').next().unwrap_or_default();
    let said = run_ok(Command::new(&actgate).arg("--version"))?;
    expect_eq!(
        said.trim(),
        format!("actgate {upstream}"),
        "actgate --version of package {}",
        version.trim()
    );
    Ok(())
}

fn the_packaged_unit_brings_a_daemon_to_ready_and_stops_it_with_exit_0(
    ctx: &Ctx,
    fx: &mut Option<Unpacked>,
) -> Outcome {
    let pkg = unpacked(fx)?;
    let text = fs::read_to_string(pkg.path(UNIT)).context("reading the packaged unit")?;
    let unit = Unit::parse(&text)?;
    let argv = inside(&pkg.root, &unit.exec_start);
    let actgate = PathBuf::from(&argv[0]);
    expect_eq!(actgate, pkg.path("usr/bin/actgate"), "the unit's program");
    for dir in &unit.logs_directories {
        let dir = pkg.path(&format!("var/log/{dir}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for dir in &unit.runtime_directories {
        let dir = Path::new("/run").join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
    }
    let events = argv
        .iter()
        .position(|a| a == "--events")
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
        .context("the unit's daemon writes no --events file")?;
    // The guest's /root is the build machine's, over 9p: its toolchains (rustup, cargo: more
    // than 100,000 entries) are what the shipped research-agent policy's read deny of /root/**
    // makes every load walk for hard links (inodes.rs, up to its budget of 100,000 entries).
    // Under emulation that is about 14 ms an entry, 20 minutes before /readyz, where natively
    // it takes seconds. A host the package is installed on has a /root of its own; an empty
    // one stands in for it while the unit's daemon runs.
    let _own_root = Mount::tmpfs(Path::new("/root"))?;
    // From a clean kernel, as any suite's daemon starts.
    harness::unload(&actgate)?;
    let log = ctx.path("package/daemon.log");
    let child = Command::new(&actgate)
        .args(&argv[1..])
        .env_clear()
        .env("PATH", SYSTEMD_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).context("creating the daemon's log")?)
        .stderr(
            fs::File::options()
                .append(true)
                .open(&log)
                .context("opening the daemon's log")?,
        )
        .spawn()
        .context("starting the unit's ExecStart=")?;
    let mut daemon = Daemon::until_ready(
        child,
        &actgate,
        &pkg.path(POLICIES),
        &events,
        &log,
        harness::READY_WITHIN,
    )?;
    expect_eq!(http_get("/readyz")?.0, 200, "GET /readyz");
    let packaged = Ctx {
        actgate: actgate.clone(),
        guest: ctx.guest.clone(),
        dir: ctx.dir.clone(),
        package: None,
    };
    let status = harness::status_json(&packaged)?;
    expect_eq!(
        status.get("policies_loaded").and_then(|n| n.as_u64()),
        Some(policy_count(&actgate, &pkg.path(POLICIES))?),
        "policies loaded from the package's /{POLICIES}"
    );
    if !events.is_file() {
        return Err(NotPassed::Fail(format!(
            "the daemon made no events file at {}",
            events.display()
        )));
    }
    // SIGTERM, as `systemctl stop` sends, leaves enforcement in force; the unload ends it.
    daemon.keep_enforcement();
    let stopped = daemon.stop_cleanly();
    let unloaded = run_ok(Command::new(&actgate).arg("unload"));
    if unloaded.is_err() {
        harness::unload(&actgate)?;
    }
    stopped?;
    let unloaded = unloaded?;
    if !unloaded.starts_with("unloaded: removed") {
        return Err(NotPassed::Fail(format!(
            "after SIGTERM, `actgate unload` found nothing in force: {unloaded}"
        )));
    }
    Ok(())
}

/// How many policies `actgate check DIR` counts (a file may hold more than one).
fn policy_count(actgate: &Path, dir: &Path) -> Result<u64> {
    let said = run_ok(Command::new(actgate).arg("check").arg(dir))?;
    said.lines()
        .find_map(|l| {
            l.split_once(": ok: ")?
                .1
                .split_once(" policies")?
                .0
                .parse()
                .ok()
        })
        .with_context(|| format!("no policy count in what `actgate check` said: {said}"))
}

/// What the tests read of the unit: its `[Service]`'s `ExecStart=`, `LogsDirectory=` and
/// `RuntimeDirectory=`.
#[derive(Debug, Default, PartialEq)]
struct Unit {
    exec_start: Vec<String>,
    logs_directories: Vec<String>,
    runtime_directories: Vec<String>,
}

impl Unit {
    /// Refuses what a plain split would read differently from systemd (quotes, escapes,
    /// specifiers, variables, a prefix such as `-` or `+`), so the test can't start something
    /// other than what systemd would.
    fn parse(text: &str) -> Result<Unit> {
        let text = text.replace("\\\n", " ");
        let mut unit = Unit::default();
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=').filter(|_| in_service) else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_owned);
            match key.trim() {
                "ExecStart" => unit.exec_start = words.collect(),
                "LogsDirectory" => unit.logs_directories.extend(words),
                "RuntimeDirectory" => unit.runtime_directories.extend(words),
                _ => {}
            }
        }
        if let Some(word) = unit
            .exec_start
            .iter()
            .find(|w| w.contains(['"', '\'', '\\', '%', '$']))
        {
            bail!(
                "ExecStart= has {word:?}, which this test doesn't expand as systemd would: \
                 teach it, in vm-guest/src/tests/package.rs"
            );
        }
        match unit.exec_start.first() {
            Some(program) if program.starts_with('/') => Ok(unit),
            Some(program) => bail!(
                "ExecStart= starts with {program:?}, not an absolute path: a prefix (-, +, @, \
                 !, :) isn't emulated here"
            ),
            None => bail!("the unit has no ExecStart= in [Service]"),
        }
    }
}

/// The command line with each absolute path taken inside `root`.
fn inside(root: &Path, argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|a| match a.strip_prefix('/') {
            Some(rel) => root.join(rel).display().to_string(),
            None => a.clone(),
        })
        .collect()
}

pub fn suite() -> Suite<Option<Unpacked>> {
    Suite::unchecked(
        "package",
        start,
        vec![
            case!(
                the_package_installs_binary_unit_policies_as_conffiles_man_pages_and_completions,
                fixture
            ),
            case!(
                the_packaged_unit_brings_a_daemon_to_ready_and_stops_it_with_exit_0,
                fixture
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_runs_the_packaged_binary_on_the_packaged_policies() {
        let unit = Unit::parse(include_str!("../../../packaging/actgate.service"))
            .expect("the shipped unit parses");
        assert_eq!(unit.logs_directories, ["actgate"]);
        assert_eq!(unit.runtime_directories, ["actgate"]);
        let argv = inside(Path::new("/tmp/r"), &unit.exec_start);
        assert_eq!(
            argv[..4],
            [
                "/tmp/r/usr/bin/actgate",
                "run",
                "--policies",
                "/tmp/r/etc/actgate/policies"
            ]
        );
        assert!(argv.contains(&"/tmp/r/var/log/actgate/events.jsonl".to_owned()));
    }

    #[test]
    fn what_systemd_would_read_differently_is_refused() {
        let unit = |exec: &str| Unit::parse(&format!("[Service]\nExecStart={exec}\n"));
        assert!(unit("/usr/bin/actgate run \\\n --policies /etc/p").is_ok());
        assert!(unit("-/usr/bin/actgate run").is_err());
        assert!(unit("/usr/bin/actgate run --policies \"/etc/a b\"").is_err());
        assert!(unit("/usr/bin/actgate run --events %L/actgate").is_err());
        assert!(Unit::parse("[Unit]\nExecStart=/bin/true\n").is_err());
    }
}
