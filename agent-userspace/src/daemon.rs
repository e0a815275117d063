//! `actgate run`: load, enforce, report, reload, until SIGTERM/SIGINT.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use agent_common::Action;
use agent_policy::PolicySet;
use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    bpf,
    cgroup::{self, LabelRoot},
    control,
    counters::Counters,
    events, http, inodes,
    maps::RuleMaps,
    metrics::Metrics,
    selftest::{self, SelfTest},
    state::State,
    watch,
};

pub struct Options {
    pub policies: PathBuf,
    pub metrics_addr: SocketAddr,
    pub events: Option<String>,
    pub events_allow: bool,
    pub socket: PathBuf,
    pub max_path_rules: u32,
    pub max_net_rules: u32,
    pub fake_allow_all: bool,
    pub allow_unverified: bool,
}

/// Reads and validates every policy file; all problems are reported, each as
/// `file:line:column: message`.
pub fn load_policies(dir: &Path) -> Result<PolicySet> {
    agent_policy::load_path(dir).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} problem(s) in the policies at {}:\n{}",
            problems.len(),
            dir.display(),
            text.join("\n")
        )
    })
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn run(opts: Options) -> Result<()> {
    bpf::preflight()?;
    let set = load_policies(&opts.policies)?;
    let root = LabelRoot::discover()?;
    let state = Arc::new(State::new(root.clone(), kernel_release()));
    let runtime_dir = opts.socket.parent().unwrap_or(Path::new("/run/actgate"));
    let selftest = SelfTest::prepare(runtime_dir)?;

    let sizes = bpf::Sizes {
        path_rules: opts.max_path_rules,
        net_rules: opts.max_net_rules,
        inode_rules: inodes::MAX_ENTRIES,
    };
    let (mut ebpf, kernel_log) = bpf::load(&root, &sizes, opts.fake_allow_all)?;
    bpf::forward_kernel_log(kernel_log)?;
    let mut rules = RuleMaps::new(&mut ebpf, opts.events_allow)?;
    let counters = Arc::new(Counters::new(&mut ebpf)?);
    let reopen = Arc::new(AtomicBool::new(false));
    let sink = opts
        .events
        .as_deref()
        .map(|spec| events::Sink::open(spec, reopen.clone()))
        .transpose()?;
    events::spawn(&mut ebpf, state.clone(), sink)?;

    let labels = rules
        .apply(&with_selftest(set.clone(), &selftest), &root)
        .context("putting the policies into the kernel maps")?;
    state.set_policies(labels, set.policies.len());
    info!(
        policies = set.policies.len(),
        labels = set.label_count(),
        rules = set.rule_count(),
        "policies in force"
    );

    let metrics = Arc::new(Metrics::new(state.clone(), counters.clone()));
    http::serve(opts.metrics_addr, state.clone(), metrics).await?;
    control::serve(&opts.socket, state.clone(), counters)?;

    prove(&selftest, &state, opts.allow_unverified)?;

    let (tx, mut changed) = mpsc::channel(1);
    let _watch = watch::watch(&opts.policies, tx)?;
    let mut seen = watch::fingerprint(&opts.policies);
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reopen.store(true, Ordering::SeqCst);
                seen = watch::fingerprint(&opts.policies);
                reload(&opts.policies, &selftest, &mut rules, &state);
            }
            Some(()) = changed.recv() => {
                let now = watch::fingerprint(&opts.policies);
                if now != seen {
                    seen = now;
                    reload(&opts.policies, &selftest, &mut rules, &state);
                }
            }
        }
    }
    info!("shutting down; programs detach and labelled workloads are no longer governed");
    state.set_ready(false);
    let _ = std::fs::remove_file(&opts.socket);
    drop(ebpf);
    Ok(())
}

/// The user's policies plus the self-test's own.
fn with_selftest(mut set: PolicySet, selftest: &SelfTest) -> PolicySet {
    set.policies.push(selftest.policy());
    set
}

/// Runs the start-up proof; ready only when every hook denied. A failure stops the daemon
/// unless the operator accepted running unverified.
fn prove(selftest: &SelfTest, state: &State, allow_unverified: bool) -> Result<()> {
    let cgroup = state.root.label_dir(selftest::LABEL);
    let verified = selftest.run(&cgroup)?;
    *state.verified.lock().unwrap_or_else(|e| e.into_inner()) = verified.map(Some);
    let failed: Vec<Action> = Action::ALL
        .into_iter()
        .filter(|a| !verified[*a as usize])
        .collect();
    for a in Action::ALL.into_iter().filter(|a| verified[*a as usize]) {
        info!(
            action = a.as_str(),
            hook = selftest::hook_of(a),
            "enforcement verified"
        );
    }
    if failed.is_empty() {
        state.set_ready(true);
        info!("ready: every hook proved it denies");
        return Ok(());
    }
    let names: Vec<String> = failed
        .iter()
        .map(|a| format!("{} (LSM hook {})", a.as_str(), selftest::hook_of(*a)))
        .collect();
    let msg = format!(
        "the start-up self-test saw no EPERM for: {}. The program is attached but does not deny; \
         likely causes: another LSM or a BPF program overriding the verdict, a kernel whose \
         struct layout the offsets don't match, or a test switch",
        names.join(", ")
    );
    if allow_unverified {
        error!("UNVERIFIED ENFORCEMENT (running anyway because of --allow-unverified): {msg}");
        return Ok(());
    }
    bail!("{msg}; refusing to run (pass --allow-unverified to run anyway, unready)")
}

/// Validates everything first, then swaps; a bad file changes nothing.
fn reload(dir: &Path, selftest: &SelfTest, rules: &mut RuleMaps, state: &State) {
    let result = load_policies(dir).and_then(|set| {
        let labels = rules.apply(&with_selftest(set.clone(), selftest), &state.root)?;
        Ok((set, labels))
    });
    match result {
        Ok((set, labels)) => {
            let before = state.labels();
            for gone in before
                .values()
                .filter(|l| !labels.values().any(|n| n.name == l.name))
            {
                let running = cgroup::process_count(&state.root.label_dir(&gone.name));
                if running > 0 {
                    warn!(
                        label = gone.name,
                        processes = running,
                        "no policy names this label any more: its running processes are no \
                         longer governed"
                    );
                }
            }
            state.set_policies(labels, set.policies.len());
            state.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(policies = set.policies.len(), "reloaded");
        }
        Err(e) => {
            state.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!("reload failed; the previous policies stay in force: {e:#}");
        }
    }
}
