//! Issue 13, route 5: exec by mapping. Mapping a file executable is an exec of it, so the
//! loader (`ld.so BINARY`), a stub ELF whose `PT_INTERP` is a denied binary, and an mmap or
//! mprotect with PROT_EXEC all meet the exec rules; a file with no path on disk (a memfd, a
//! deleted file) is the exec target `anonymous`. Every route is tried as root and as nobody,
//! under an `exec: default: deny` policy that allows the shared libraries.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{Enforcing, telemetry::events::read_events};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, decisions, scrape, verdict_line},
};

/// Exec default deny: the system's programs and libraries are allowed, `bin/denied-*` denied.
const LABEL: &str = "vmmap";
/// The same, with `anonymous` allowed.
const ANON: &str = "vmmap-anon";
const USERS: [&str; 2] = ["root", "nobody"];
/// The dynamic loader, as programs name it in PT_INTERP (a symlink into /usr/lib).
const LD_SO: &str = "/lib64/ld-linux-x86-64.so.2";
/// What the copies of echo print when they run.
const MARKER: &str = "mapped-and-ran";
const SIGSEGV: i32 = 11;

fn p(ctx: &Ctx, rel: &str) -> String {
    ctx.path(&format!("mapping/{rel}")).display().to_string()
}

/// The helper the labelled tests run: one mmap, one mprotect or one exec of a copy with no
/// path, printing the errno's name when it fails. Python, so that the programs it needs are
/// the system's own, which an exec default-deny policy must allow anyway.
const HELPER: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
PROT_READ, PROT_EXEC, MAP_PRIVATE, PAGE = 1, 4, 2, 4096

def fail(e):
    print(errno.errorcode.get(e, str(e)), flush=True)
    sys.exit(1)

def mapped(path, prot):
    fd = os.open(path, os.O_RDONLY)
    p = libc.mmap(None, PAGE, prot, MAP_PRIVATE, fd, 0)
    if p is None or p == ctypes.c_void_p(-1).value:
        fail(ctypes.get_errno())
    return p

op = sys.argv[1]
if op == "shared-anon":
    p = libc.mmap(None, PAGE, PROT_READ | 2, 1 | 0x20, -1, 0)  # RW, MAP_SHARED|MAP_ANONYMOUS
    if p is None or p == ctypes.c_void_p(-1).value:
        fail(ctypes.get_errno())
    if libc.mprotect(p, PAGE, PROT_READ | PROT_EXEC) != 0:
        fail(ctypes.get_errno())
elif op == "mmap":
    mapped(sys.argv[2], PROT_READ | PROT_EXEC)
elif op == "mprotect":
    p = mapped(sys.argv[2], PROT_READ)
    if libc.mprotect(p, PAGE, PROT_READ | PROT_EXEC) != 0:
        fail(ctypes.get_errno())
else:
    # copy SRC into KIND (`memfd`, or a path to write, reopen read-only and unlink), then
    # exec it through HOW (`fexecve`, or `proc` for /proc/self/fd/N) with ARGS.
    kind, src, how, args = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    data = open(src, "rb").read()
    if kind == "memfd":
        fd = os.memfd_create("copy", 0)
        os.write(fd, data)
    else:
        with open(kind, "wb") as f:
            f.write(data)
        os.chmod(kind, 0o755)
        fd = os.open(kind, os.O_RDONLY)
        os.unlink(kind)
    os.set_inheritable(fd, True)
    try:
        if how == "fexecve":
            os.execve(fd, ["copy"] + args, os.environ)
        else:
            os.execv(f"/proc/self/fd/{fd}", ["copy"] + args)
    except OSError as e:
        fail(e.errno)
    sys.exit(0)
print("OK")
"#;

/// `src` with its PT_INTERP pointing at `interp`: the path is appended to the file and the
/// program header moved to it, since the kernel reads the interpreter's name from wherever
/// p_offset says.
fn with_interp(src: &str, interp: &str, to: &Path) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let mut elf = fs::read(src).with_context(|| format!("reading {src}"))?;
    let end = elf.len() as u64;
    let size = interp.len() as u64 + 1;
    let ph = program_headers(&elf)?
        .into_iter()
        .find(|ph| u32_at(&elf, *ph) == PT_INTERP)
        .with_context(|| format!("{src} has no PT_INTERP"))?;
    elf[ph + 8..ph + 16].copy_from_slice(&end.to_le_bytes());
    elf[ph + 32..ph + 40].copy_from_slice(&size.to_le_bytes());
    elf[ph + 40..ph + 48].copy_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(interp.as_bytes());
    elf.push(0);
    fs::write(to, elf).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// How many executable PT_LOAD segments the ELF file at `path` has: the mappings the kernel's
/// loader makes of it, each judged as an exec.
pub(super) fn exec_segments(path: &Path) -> Result<usize> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    Ok(program_headers(&elf)?
        .into_iter()
        .filter(|ph| u32_at(&elf, *ph) == PT_LOAD && u32_at(&elf, ph + 4) & PF_X != 0)
        .count())
}

/// The exec decisions one run of the ELF program `bin` costs a label, as (judged on `bin`,
/// judged on its loader and libraries): its exec and each executable segment the kernel maps
/// of it, then each one the kernel and ld.so map of the interpreter and the libraries. Every
/// executable mapping is an exec decision.
pub(super) fn exec_decisions(bin: &Path) -> Result<(usize, usize)> {
    let own = 1 + exec_segments(bin)?;
    // Static programs make `--list` fail: they load nothing.
    let list = Command::new(LD_SO).arg("--list").arg(bin).output()?;
    let mut loaded = 0;
    if list.status.success() {
        let text = String::from_utf8_lossy(&list.stdout);
        for lib in text.split_whitespace().filter(|w| w.starts_with('/')) {
            loaded += exec_segments(Path::new(lib))?;
        }
    }
    Ok((own, loaded))
}

/// `exec_decisions`, both parts together.
pub(super) fn all_exec_decisions(bin: &Path) -> Result<usize> {
    exec_decisions(bin).map(|(own, loaded)| own + loaded)
}

/// The file offsets of the program headers of a 64-bit little-endian ELF file (the guest's
/// own programs).
fn program_headers(elf: &[u8]) -> Result<Vec<usize>> {
    let phoff = elf.get(0x20..0x28).context("too short for an ELF header")?;
    let phoff = u64::from_le_bytes(phoff.try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(elf, 0x36), u16_at(elf, 0x38));
    Ok((0..phnum).map(|i| phoff + i * phentsize).collect())
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn policy(ctx: &Ctx) -> String {
    let exec = |name: &str, anonymous: &str| {
        format!(
            "name: {name}\nlabels: [{name}]\nmode: enforce\nexec:\n  default: deny\n  \
             allow: [/usr/lib/**, /usr/bin/**, {ld}, {stubs}/**{anonymous}]\n  deny: [{echo}, {dld}]\n",
            ld = p(ctx, "bin/allowed-ld.so"),
            stubs = p(ctx, "stubs"),
            echo = p(ctx, "bin/denied-echo"),
            dld = p(ctx, "bin/denied-ld.so"),
        )
    };
    exec(LABEL, "") + "---\n" + &exec(ANON, ", anonymous")
}

/// The denied binaries, the stubs, a world-writable workspace and the helper.
fn start(ctx: &Ctx) -> Result<Enforcing> {
    let ld = fs::canonicalize(LD_SO).context("resolving the dynamic loader")?;
    let ld = ld.display().to_string();
    harness::install("/usr/bin/echo", &ctx.path("mapping/bin/denied-echo"))?;
    harness::install(&ld, &ctx.path("mapping/bin/denied-ld.so"))?;
    harness::install(&ld, &ctx.path("mapping/bin/allowed-ld.so"))?;
    fs::create_dir_all(ctx.path("mapping/stubs"))?;
    for (stub, interp) in [("denied", "denied-ld.so"), ("allowed", "allowed-ld.so")] {
        let to = ctx.path(&format!("mapping/stubs/{stub}"));
        with_interp("/usr/bin/echo", &p(ctx, &format!("bin/{interp}")), &to)?;
    }
    let ws = ctx.path("mapping/ws");
    fs::create_dir_all(&ws)?;
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o777))?;
    harness::write(&ctx.path("mapping/helper.py"), HELPER)?;
    harness::write(&ctx.path("mapping/policies/mapping.yaml"), &policy(ctx))?;
    Ok(Enforcing {
        daemon: Daemon::shared(ctx, &ctx.path("mapping/policies"))?,
        mounts: vec![],
    })
}

/// `actgate exec --user USER --label LABEL -- ARGS…`.
fn run(ctx: &Ctx, label: &str, user: &str, args: &[&str]) -> Result<Output, NotPassed> {
    ctx.labelled_command_as(label, user)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NotPassed::Fail(format!("starting actgate exec: {e}")))
}

/// `python3 helper.py ARGS…` as USER under LABEL; its verdict line.
fn helper(ctx: &Ctx, label: &str, user: &str, args: &[&str]) -> Result<String, NotPassed> {
    let script = p(ctx, "helper.py");
    let mut full = vec!["/usr/bin/python3", script.as_str()];
    full.extend_from_slice(args);
    Ok(verdict_line(&run(ctx, label, user, &full)?))
}

/// The change of `label`'s exec decisions with `verdict` while `act` ran, and the targets of
/// the exec denial events of `label` it added (waiting up to 10 s for as many as there were
/// denials); `act`'s own failure stops the test.
fn counted(
    fixture: &Enforcing,
    label: &str,
    verdict: &str,
    act: impl FnOnce() -> Outcome,
) -> Result<(f64, Vec<String>), NotPassed> {
    let denials = || -> Result<Vec<String>, NotPassed> {
        let all =
            read_events(&fixture.daemon.events).map_err(|e| NotPassed::Fail(format!("{e:#}")))?;
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
        };
        Ok(all
            .iter()
            .filter(|v| {
                (s(v, "label"), s(v, "action"), s(v, "verdict"))
                    == (label.into(), "exec".into(), "deny".into())
            })
            .map(|v| s(v, "target"))
            .collect())
    };
    let before = (scrape()?, denials()?.len());
    let denied_before = decisions(&before.0, label, "exec", "deny");
    act()?;
    let after = scrape()?;
    let got =
        decisions(&after, label, "exec", verdict) - decisions(&before.0, label, "exec", verdict);
    let denied = (decisions(&after, label, "exec", "deny") - denied_before) as usize;
    // Events arrive through the ring buffer a moment after the decision.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut added = denials()?.split_off(before.1);
    while added.len() < denied && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        added = denials()?.split_off(before.1);
    }
    Ok((got, added))
}

/// Fails unless `act` made exactly `want` exec denials under `label`, each counted and
/// reported as an event naming `target`.
fn expect_denials(
    fixture: &Enforcing,
    label: &str,
    target: &str,
    want: usize,
    act: impl FnOnce() -> Outcome,
) -> Outcome {
    let (counted, events) = counted(fixture, label, "deny", act)?;
    expect_eq!(counted, want as f64, "exec denials counted for {label}");
    expect_eq!(
        events,
        vec![target.to_string(); want],
        "targets of exec denial events"
    );
    Ok(())
}

fn ld_so_refuses_to_map_a_denied_binary(ctx: &Ctx, fixture: &mut Enforcing) -> Outcome {
    let denied = p(ctx, "bin/denied-echo");
    expect_denials(fixture, LABEL, &denied, USERS.len(), || {
        for user in USERS {
            let out = run(ctx, LABEL, user, &[LD_SO, &denied, MARKER])?;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            expect_eq!(
                out.status.code(),
                Some(127),
                "ld.so's exit as {user}: {stderr}"
            );
            expect_eq!(
                stdout.contains(MARKER),
                false,
                "the denied binary ran as {user}"
            );
            let said = stderr.contains("failed to map segment from shared object");
            expect_eq!(said, true, "ld.so's message as {user}: {stderr}");
        }
        Ok(())
    })?;
    for user in USERS {
        let out = run(ctx, LABEL, user, &[LD_SO, "/usr/bin/echo", MARKER])?;
        expect_eq!(verdict_line(&out), MARKER, "ld.so running echo as {user}");
    }
    Ok(())
}

/// The kernel maps the interpreter after the point of no return: the process is killed.
fn a_denied_pt_interp_kills_the_exec(ctx: &Ctx, fixture: &mut Enforcing) -> Outcome {
    let stub = p(ctx, "stubs/denied");
    expect_denials(
        fixture,
        LABEL,
        &p(ctx, "bin/denied-ld.so"),
        USERS.len(),
        || {
            for user in USERS {
                let out = run(ctx, LABEL, user, &[&stub, MARKER])?;
                expect_eq!(
                    out.status.signal(),
                    Some(SIGSEGV),
                    "the stub's end as {user}"
                );
                let ran = String::from_utf8_lossy(&out.stdout).contains(MARKER);
                expect_eq!(ran, false, "the stub ran as {user}");
            }
            Ok(())
        },
    )?;
    for user in USERS {
        let out = run(ctx, LABEL, user, &[&p(ctx, "stubs/allowed"), MARKER])?;
        expect_eq!(
            verdict_line(&out),
            MARKER,
            "the stub with an allowed loader as {user}"
        );
    }
    Ok(())
}

fn mmap_and_mprotect_exec_of_a_denied_file_are_eperm(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    let denied = p(ctx, "bin/denied-echo");
    for op in ["mmap", "mprotect"] {
        expect_denials(fixture, LABEL, &denied, USERS.len(), || {
            for user in USERS {
                let got = helper(ctx, LABEL, user, &[op, &denied])?;
                expect_eq!(got, "EPERM", "{op} PROT_EXEC of a denied file as {user}");
            }
            Ok(())
        })?;
        for user in USERS {
            let got = helper(ctx, LABEL, user, &[op, "/usr/bin/echo"])?;
            expect_eq!(got, "OK", "{op} PROT_EXEC of an allowed file as {user}");
        }
    }
    Ok(())
}

/// Shared anonymous memory is backed by a kernel shmem file with no link, but it is memory, not
/// a file with no path: making it executable is not an exec, like anonymous memory.
fn shared_anonymous_memory_made_executable_is_not_an_exec(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    let (judged, _) = counted(fixture, LABEL, "deny", || {
        for user in USERS {
            let got = helper(ctx, LABEL, user, &["shared-anon"])?;
            expect_eq!(
                got,
                "OK",
                "mprotect PROT_EXEC of shared anonymous memory as {user}"
            );
        }
        Ok(())
    })?;
    expect_eq!(judged, 0.0, "exec denials of shared anonymous memory");
    Ok(())
}

/// Every way of running a copy with no path: a memfd and a deleted file, through
/// execveat(AT_EMPTY_PATH) and through /proc/self/fd/N.
fn copies(ctx: &Ctx, user: &str) -> Vec<[String; 2]> {
    let deleted = p(ctx, &format!("ws/deleted-by-{user}"));
    let mut out = Vec::new();
    for kind in ["memfd".to_string(), deleted] {
        for how in ["fexecve", "proc"] {
            out.push([kind.clone(), how.to_string()]);
        }
    }
    out
}

fn a_copy_with_no_path_runs_only_where_anonymous_is_allowed(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    let tries = USERS.len() * copies(ctx, "root").len();
    expect_denials(fixture, LABEL, agent_common::ANONYMOUS, tries, || {
        for user in USERS {
            for [kind, how] in copies(ctx, user) {
                let args = ["exec-copy", &kind, "/usr/bin/echo", &how, MARKER];
                let got = helper(ctx, LABEL, user, &args)?;
                expect_eq!(got, "EPERM", "exec of a copy ({kind}, {how}) as {user}");
            }
        }
        Ok(())
    })?;
    // The exec and the loader's mapping of the copy: two decisions each.
    let (allowed, _) = counted(fixture, ANON, "allow", || {
        for user in USERS {
            for [kind, how] in copies(ctx, user) {
                let args = ["exec-copy", &kind, "/usr/bin/echo", &how, MARKER];
                let got = helper(ctx, ANON, user, &args)?;
                expect_eq!(got, MARKER, "exec of a copy ({kind}, {how}) as {user}");
            }
        }
        Ok(())
    })?;
    if allowed < 2.0 * tries as f64 {
        return Err(NotPassed::Fail(format!(
            "{allowed} exec decisions allowed for {tries} runs of anonymous copies"
        )));
    }
    Ok(())
}

/// Under exec default deny with /usr/lib/** allowed, ordinary dynamically linked programs
/// (a shell, coreutils, python3 loading C extensions) run and nothing is denied.
fn dynamically_linked_programs_run_under_exec_default_deny(
    ctx: &Ctx,
    fixture: &mut Enforcing,
) -> Outcome {
    let script = "ls / >/dev/null && python3 -c 'import ssl, ctypes, json' && echo OK";
    let (denied, _) = counted(fixture, LABEL, "deny", || {
        for user in USERS {
            let out = run(ctx, LABEL, user, &["/bin/sh", "-c", script])?;
            expect_eq!(
                verdict_line(&out),
                "OK",
                "dynamically linked programs as {user}"
            );
        }
        Ok(())
    })?;
    expect_eq!(denied, 0.0, "exec denials of ordinary programs");
    Ok(())
}

pub fn suite() -> super::Suite<Enforcing> {
    super::Suite {
        name: "mapping",
        start,
        cases: vec![
            case!(
                dynamically_linked_programs_run_under_exec_default_deny,
                fixture
            ),
            case!(ld_so_refuses_to_map_a_denied_binary, fixture),
            case!(a_denied_pt_interp_kills_the_exec, fixture),
            case!(mmap_and_mprotect_exec_of_a_denied_file_are_eperm, fixture),
            case!(
                a_copy_with_no_path_runs_only_where_anonymous_is_allowed,
                fixture
            ),
            case!(
                shared_anonymous_memory_made_executable_is_not_an_exec,
                fixture
            ),
        ],
        stop: Enforcing::stop,
        stop_test: None,
    }
}
