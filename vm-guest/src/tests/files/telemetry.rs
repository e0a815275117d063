//! What the daemon reports of file decisions: exact counters, events, and nothing for
//! unlabelled processes.

use std::fs;

use super::{LABEL, exists, f, fresh, gone, labelled, read, unlabelled};
use crate::{
    expect_eq,
    harness::{Ctx, Outcome, eventually, expect_decision_changes, scrape},
    tests::{Enforcing, session::Session},
};

pub(super) fn unlabelled_file_actions_are_unaffected(ctx: &Ctx) -> Outcome {
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

pub(super) fn file_decision_counters_count_each_decision_exactly(ctx: &Ctx) -> Outcome {
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

pub(super) fn labelled_denied_read_event_names_the_resolved_file(
    ctx: &Ctx,
    fixture: &Enforcing,
) -> Outcome {
    // Through the symlink, so the event must name the file actually judged.
    let secret = f(ctx, "secret.key");
    expect_eq!(
        labelled(ctx, &["open-read", &f(ctx, "ws/link-to-secret")]),
        "EPERM",
        "read through the symlink to the secret"
    );
    let found = eventually("found", || {
        let text = fs::read_to_string(&fixture.daemon.events).unwrap_or_default();
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
