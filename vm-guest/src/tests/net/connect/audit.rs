//! Audit mode: what enforce mode would deny is allowed, counted and logged as audit.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use super::{ANY_1, Network, PORT_OTHER, V6_OTHER, events, field, missing_events, needs_ipv6};
use crate::{
    expect_eq,
    harness::{self, Ctx, Outcome, decisions, expect_decision_changes, scrape},
    tests::{mapping::exec_decisions, net::listeners::attempt, session::Session},
};

const AUDIT: &str = "vmaudit";

pub(super) fn policy() -> String {
    format!(
        "name: vmtest-audit
labels: [{AUDIT}]
mode: audit
exec:
  default: deny
  allow: [/usr/lib/**]
files:
  write:
    default: deny
  read:
    default: deny
network:
  connect:
    default: deny
"
    )
}

pub(super) fn audit_mode_allows_and_counts_would_be_denials_exactly(
    ctx: &Ctx,
    net: &Network,
) -> Outcome {
    needs_ipv6()?;
    let (l, daemon) = (&net.listeners, &net.enforcing.daemon);
    let dir = |rel: &str| ctx.path(&format!("net/audit/{rel}")).display().to_string();
    let (written, made, removed, chmodded) = (
        dir("written.txt"),
        dir("made-dir"),
        dir("removed.txt"),
        dir("mode.txt"),
    );
    harness::write(std::path::Path::new(&written), "audit\n")?;
    harness::write(std::path::Path::new(&removed), "audit\n")?;
    harness::write(std::path::Path::new(&chmodded), "audit\n")?;
    fs::set_permissions(&chmodded, fs::Permissions::from_mode(0o644))
        .map_err(anyhow::Error::from)?;
    let _ = fs::remove_dir(&made);

    let before = scrape()?;
    // Every one of these would be denied in enforce mode: the policy's defaults are all deny.
    let connects = [
        ("connect-tcp", ANY_1),
        ("connect-udp", PORT_OTHER),
        ("sendto-udp", V6_OTHER),
    ];
    for (probe, addr) in connects {
        attempt(ctx, l, Some(AUDIT), probe, addr, "OK")?;
    }
    let writes = [
        vec!["open-write", written.as_str()],
        vec!["mkdir", made.as_str()],
        vec!["unlink", removed.as_str()],
        vec!["chmod", chmodded.as_str(), "600"],
    ];
    for args in &writes {
        expect_eq!(
            ctx.attempt(Some(AUDIT), args),
            "OK",
            "{} in audit mode",
            args[0]
        );
    }
    expect_eq!(
        fs::metadata(&made).map(|m| m.is_dir()).ok(),
        Some(true),
        "the directory made in audit mode"
    );
    expect_eq!(
        fs::metadata(&removed).is_ok(),
        false,
        "the file unlinked in audit mode"
    );
    expect_eq!(
        fs::metadata(&chmodded)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok(),
        Some(0o600),
        "mode after chmod in audit mode"
    );
    // Reads through shell redirections, counted apart: starting any program reads its
    // shared libraries, which the policy audits too.
    const READS: usize = 4;
    let mut shell = Session::start(ctx, AUDIT)?;
    let reads_before = scrape()?;
    for i in 0..READS {
        expect_eq!(
            shell.run(&format!("true <{written}"))?,
            "OK",
            "audited read {i}"
        );
    }
    let reads_after = scrape()?;
    drop(shell);
    let after = scrape()?;

    // Each exec is audited once, and once more per executable segment the kernel maps of the
    // binary (an exec by mapping); the mappings of ld.so and the libraries are allowed.
    let (guest, sh) = (
        exec_decisions(&ctx.guest)?,
        exec_decisions(Path::new("/bin/sh"))?,
    );
    let probes = connects.len() + writes.len();
    let execs = probes * guest.0 + sh.0;
    let loaded = probes * guest.1 + sh.1;
    expect_decision_changes(
        AUDIT,
        &before,
        &after,
        &[
            ("connect", "audit", connects.len()),
            ("file_write", "audit", writes.len()),
            ("exec", "audit", execs),
            ("exec", "allow", loaded),
            ("connect", "allow", 0),
            ("connect", "deny", 0),
            ("file_write", "allow", 0),
            ("file_write", "deny", 0),
            ("file_read", "allow", 0),
            ("file_read", "deny", 0),
            ("exec", "deny", 0),
        ],
    )?;
    expect_eq!(
        decisions(&reads_after, AUDIT, "file_read", "audit")
            - decisions(&reads_before, AUDIT, "file_read", "audit"),
        READS as f64,
        "change of actgate_decisions_total{{label=\"{AUDIT}\",action=\"file_read\",verdict=\"audit\"}} over {READS} redirections"
    );

    let guest = ctx.guest.display().to_string();
    let mut want: Vec<(String, String)> = connects
        .iter()
        .map(|(_, a)| ("connect".to_string(), a.to_string()))
        .collect();
    for p in [&written, &made, &removed, &chmodded] {
        want.push(("file_write".into(), p.clone()));
    }
    want.push(("file_read".into(), written.clone()));
    want.push(("exec".into(), guest));
    expect_eq!(
        missing_events(daemon, AUDIT, "audit", &want)?,
        Vec::<(String, String)>::new(),
        "audit events (action, target) of label {AUDIT} missing from the events file"
    );
    let other: Vec<String> = events(daemon)
        .iter()
        .filter(|v| field(v, "label") == AUDIT && field(v, "verdict") != "audit")
        .map(|v| v.to_string())
        .collect();
    expect_eq!(
        other,
        Vec::<String>::new(),
        "events of {AUDIT} whose verdict is not audit"
    );
    Ok(())
}
