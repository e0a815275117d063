//! A policy of 10,000 path rules and 10,000 network rules loads and enforces.

use std::time::Instant;

use super::listeners::{Listeners, attempt};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome},
    tests::{Suite, mounts::Mount},
};

const SCALE: &str = "vmscale";

const SCALE_RULES: usize = 10_000;
const SCALE_PORT: u16 = 18201;

fn scale_path(ctx: &Ctx, i: usize) -> String {
    ctx.path(&format!("scale/deny/f{i:05}"))
        .display()
        .to_string()
}

fn scale_addr(i: usize) -> String {
    format!("127.1.{}.{}", i / 256, i % 256)
}

fn scale_policy(ctx: &Ctx) -> String {
    let mut text = format!(
        "name: vmtest-scale\nlabels: [{SCALE}]\nmode: enforce\nfiles:\n  read:\n    default: allow\n    deny:\n"
    );
    for i in 0..SCALE_RULES {
        text.push_str(&format!("      - {}\n", scale_path(ctx, i)));
    }
    text.push_str("network:\n  connect:\n    default: allow\n    deny:\n");
    for i in 0..SCALE_RULES {
        text.push_str(&format!("      - {}/32\n", scale_addr(i)));
    }
    text
}

fn policy_with_10000_path_and_10000_network_rules_loads_and_enforces(ctx: &Ctx) -> Outcome {
    let dir = ctx.path("scale/policies");
    harness::write(&dir.join("scale.yaml"), &scale_policy(ctx))?;
    let check = std::process::Command::new(&ctx.actgate)
        .arg("check")
        .arg(&dir)
        .output()
        .map_err(anyhow::Error::from)?;
    let said = String::from_utf8_lossy(&check.stdout);
    expect_eq!(
        said.contains(&format!("{} rules", 2 * SCALE_RULES)),
        true,
        "`actgate check` counts {} rules: {said}",
        2 * SCALE_RULES
    );
    let middle = SCALE_RULES / 2;
    let (first, last) = (0, SCALE_RULES - 1);
    for i in [first, middle, last, SCALE_RULES] {
        harness::write(std::path::Path::new(&scale_path(ctx, i)), "x")?;
    }
    let addr = |i: usize| format!("{}:{SCALE_PORT}", scale_addr(i));
    let listeners = Listeners::start(&[&addr(middle), &addr(SCALE_RULES)])?;
    let started = Instant::now();
    let daemon = Daemon::shared(ctx, &dir)?;
    let in_force_after = started.elapsed();
    let outcome = (|| -> Outcome {
        for i in [middle, first, last] {
            expect_eq!(
                ctx.attempt(Some(SCALE), &["open-read", &scale_path(ctx, i)]),
                "EPERM",
                "read of the path of rule {i} of {SCALE_RULES} (in force after {in_force_after:?})"
            );
        }
        expect_eq!(
            ctx.attempt(Some(SCALE), &["open-read", &scale_path(ctx, SCALE_RULES)]),
            "OK",
            "read of a path next to the rules"
        );
        attempt(
            ctx,
            &listeners,
            Some(SCALE),
            "connect-tcp",
            &addr(middle),
            "EPERM",
        )?;
        for i in [first, last] {
            expect_eq!(
                ctx.attempt(Some(SCALE), &["connect-tcp", &addr(i)]),
                "EPERM",
                "connect to the address of rule {i} of {SCALE_RULES}"
            );
        }
        attempt(
            ctx,
            &listeners,
            Some(SCALE),
            "connect-tcp",
            &addr(SCALE_RULES),
            "OK",
        )
    })();
    outcome.and(daemon.stop_cleanly().map_err(NotPassed::from))
}

/// The scale test, on a tmpfs of its own, its policy put in force on the shared daemon.
pub fn suite() -> Suite<Mount> {
    Suite::unchecked(
        "net",
        |ctx| Mount::tmpfs(&ctx.path("scale")),
        vec![case!(
            policy_with_10000_path_and_10000_network_rules_loads_and_enforces
        )],
    )
}
