//! `actgate status`: what the running daemon enforces and what it has decided.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use agent_common::{Action, Hook, Verdict};
use agent_policy::Mode;
use serde::{Deserialize, Serialize};

use crate::{
    counters::Counters,
    revocation::Revoked,
    selftest::{self, Proof},
    state::State,
};

#[derive(Debug, Serialize, Deserialize)]
pub struct LabelStatus {
    pub label: String,
    /// For an orphaned label, the last policy that named it.
    pub policy: String,
    /// "enforce", "audit", or "orphaned".
    pub mode: String,
    /// No policy names the label any more while processes still run under it: the kernel
    /// denies everything they do.
    #[serde(default)]
    pub orphaned: bool,
    /// The label is revoked: the kernel denies everything its processes do.
    #[serde(default)]
    pub revoked: Option<Revoked>,
    pub cgroup: String,
    pub processes: usize,
    /// action → verdict → count.
    pub decisions: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
    pub kernel: String,
    pub policies_loaded: u64,
    pub labels: Vec<LabelStatus>,
    /// action → "verified" | "failed" | "not run": verified when every hook of it is.
    pub enforcement_verified: BTreeMap<String, String>,
    /// LSM hook → "verified" | "failed" | "not run".
    #[serde(default)]
    pub hooks_verified: BTreeMap<String, String>,
    pub events_dropped: BTreeMap<String, u64>,
    pub kernel_errors: u64,
    /// Why the kernel state isn't what the daemon put there, if it isn't.
    #[serde(default)]
    pub enforcement_problem: Option<String>,
    /// Why the HTTP address isn't served, if it isn't.
    #[serde(default)]
    pub http_problem: Option<String>,
}

pub fn collect(state: &State, counters: &Counters) -> Status {
    let verified = *state.verified.lock().unwrap_or_else(|e| e.into_inner());
    Status {
        ready: state.is_ready(),
        kernel: state.kernel.clone(),
        policies_loaded: state.policies_loaded.load(Ordering::Relaxed),
        labels: state
            .labels()
            .into_iter()
            .map(|(index, l)| {
                let dir = state.root.label_dir(&l.name);
                let d = counters.decisions(index);
                LabelStatus {
                    processes: state.processes(&l.name),
                    cgroup: dir.display().to_string(),
                    mode: if l.orphaned {
                        ORPHANED.to_string()
                    } else {
                        mode_name(l.mode).to_string()
                    },
                    orphaned: l.orphaned,
                    revoked: counters.revocations.get(index),
                    decisions: Action::ALL
                        .iter()
                        .map(|a| {
                            let per = Verdict::ALL
                                .iter()
                                .map(|v| (v.as_str().to_string(), d[*a as usize][*v as usize]))
                                .collect();
                            (a.as_str().to_string(), per)
                        })
                        .collect(),
                    label: l.name,
                    policy: l.policy,
                }
            })
            .collect(),
        enforcement_verified: Action::ALL
            .iter()
            .map(|a| {
                let v = selftest::action_verified(&verified, *a);
                (a.as_str().to_string(), proof(v).to_string())
            })
            .collect(),
        hooks_verified: Hook::ALL
            .iter()
            .zip(verified)
            .filter(|(_, v)| *v != Proof::Absent)
            .map(|(h, v)| (h.name.to_string(), hook_proof(v).to_string()))
            .collect(),
        events_dropped: Action::ALL
            .iter()
            .map(|a| (a.as_str().to_string(), counters.dropped(*a)))
            .collect(),
        kernel_errors: counters.errors(),
        enforcement_problem: state.enforcement_problem.get(),
        http_problem: state.listener_problem.get(),
    }
}

fn proof(verified: Option<bool>) -> &'static str {
    match verified {
        Some(true) => "verified",
        Some(false) => "failed",
        None => "not run",
    }
}

fn hook_proof(p: Proof) -> &'static str {
    match p {
        Proof::Denied => "verified",
        Proof::Failed => "failed",
        Proof::Pending | Proof::Absent => "not run",
    }
}

/// The readable table `actgate status` prints.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "actgate: {} · kernel {} · {} policies\n",
        if s.ready {
            "ready, enforcing"
        } else {
            "NOT READY"
        },
        s.kernel,
        s.policies_loaded
    );
    for problem in [&s.enforcement_problem, &s.http_problem]
        .into_iter()
        .flatten()
    {
        out += &format!("PROBLEM: {problem}\n");
    }
    out += "enforcement verified:";
    for (a, v) in &s.enforcement_verified {
        out += &format!(" {a}={v}");
    }
    out += "\nhooks verified:";
    for (h, v) in &s.hooks_verified {
        out += &format!(" {h}={v}");
    }
    out += "\n\n";
    out += &format!(
        "{:<20} {:<20} {:<8} {:>6}  {}\n",
        "LABEL", "POLICY", "MODE", "PROCS", "CGROUP"
    );
    for l in &s.labels {
        let mode = if l.orphaned {
            ORPHANED.to_uppercase()
        } else if l.revoked.is_some() {
            "REVOKED".into()
        } else {
            l.mode.clone()
        };
        out += &format!(
            "{:<20} {:<20} {:<8} {:>6}  {}\n",
            l.label, l.policy, mode, l.processes, l.cgroup
        );
    }
    for l in s.labels.iter().filter(|l| l.orphaned) {
        out += &format!(
            "\nORPHANED: no policy names label {:?} any more; the kernel denies everything its \
             {} process(es) do until a policy names it again or they exit\n",
            l.label, l.processes
        );
    }
    for l in &s.labels {
        if let Some(r) = &l.revoked {
            out += &format!(
                "\nREVOKED: label {:?} since {} ({}): {}; the kernel denies everything its {} \
                 process(es) do until `actgate restore {}`\n",
                l.label, r.since, r.trigger, r.reason, l.processes, l.label
            );
        }
    }
    out += &format!(
        "\n{:<20} {:<11} {:>10} {:>10} {:>10}\n",
        "LABEL", "ACTION", "ALLOW", "DENY", "AUDIT"
    );
    for l in &s.labels {
        for (a, per) in &l.decisions {
            let n = |v: &str| per.get(v).copied().unwrap_or(0);
            out += &format!(
                "{:<20} {:<11} {:>10} {:>10} {:>10}\n",
                l.label,
                a,
                n("allow"),
                n("deny"),
                n("audit")
            );
        }
    }
    let dropped: u64 = s.events_dropped.values().sum();
    out += &format!(
        "\nevents dropped: {dropped} · kernel errors: {}\n",
        s.kernel_errors
    );
    out
}

/// The `mode` of an orphaned label in status.
const ORPHANED: &str = "orphaned";

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    }
}
