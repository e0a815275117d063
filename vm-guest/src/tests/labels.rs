//! Many labels at once: 256 policies, each with its own label and rule, load under one daemon,
//! and each label is held to its own rule only.

use std::path::Path;

use super::{Suite, mounts::Mount};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, decisions, scrape},
};

const LABELS: usize = 256;

fn label(i: usize) -> String {
    format!("many-{i:03}")
}

fn secret(ctx: &Ctx, i: usize) -> String {
    ctx.path(&format!("labels/secret-{i:03}"))
        .display()
        .to_string()
}

fn policy(ctx: &Ctx, i: usize) -> String {
    format!(
        "name: vmtest-many-{i:03}\nlabels: [{}]\nmode: enforce\nfiles:\n  read:\n    default: allow\n    deny:\n      - {}\n",
        label(i),
        secret(ctx, i)
    )
}

fn policies_for_256_labels_load_and_each_label_gets_its_own_rules(ctx: &Ctx) -> Outcome {
    let dir = ctx.path("labels/policies");
    for i in 0..LABELS {
        harness::write(&dir.join(format!("many-{i:03}.yaml")), &policy(ctx, i))?;
        harness::write(Path::new(&secret(ctx, i)), "x")?;
    }
    let daemon = Daemon::shared(ctx, &dir)?;
    let outcome = (|| -> Outcome {
        for i in [0, LABELS / 2, LABELS - 1] {
            let other = (i + 1) % LABELS;
            expect_eq!(
                ctx.attempt(Some(&label(i)), &["open-read", &secret(ctx, i)]),
                "EPERM",
                "label {} reads its own denied file",
                label(i)
            );
            expect_eq!(
                ctx.attempt(Some(&label(i)), &["open-read", &secret(ctx, other)]),
                "OK",
                "label {} reads the file denied to {}",
                label(i),
                label(other)
            );
        }
        let body = scrape()?;
        expect_eq!(
            harness::metric(&body, "actgate_policies_loaded"),
            (LABELS + harness::MARKER_POLICIES) as f64,
            "actgate_policies_loaded"
        );
        expect_eq!(
            decisions(&body, &label(LABELS - 1), "file_read", "deny"),
            1.0,
            "file_read denials of label {}",
            label(LABELS - 1)
        );
        Ok(())
    })();
    outcome.and(daemon.stop_cleanly().map_err(NotPassed::from))
}

/// The many-labels test, on a tmpfs of its own, its policies put in force on the shared daemon.
pub fn suite() -> Suite<Mount> {
    Suite::unchecked(
        "labels",
        |ctx| Mount::tmpfs(&ctx.path("labels")),
        vec![case!(
            policies_for_256_labels_load_and_each_label_gets_its_own_rules
        )],
    )
}
