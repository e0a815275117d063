//! `actgate run`: load, enforce, report, reload, until SIGTERM/SIGINT.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use agent_policy::PolicySet;
use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::{
    bpf, cgroup::LabelRoot, control, counters::Counters, events, http, inodes, maps::RuleMaps,
    metrics::Metrics, state::State,
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

    let sizes = bpf::Sizes {
        path_rules: opts.max_path_rules,
        net_rules: opts.max_net_rules,
        inode_rules: inodes::MAX_ENTRIES,
    };
    let mut ebpf = bpf::load(&root, &sizes, opts.fake_allow_all)?;
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
        .apply(&set, &root)
        .context("putting the policies into the kernel maps")?;
    state.set_labels(labels);
    state
        .policies_loaded
        .store(set.policies.len() as u64, Ordering::Relaxed);
    info!(
        policies = set.policies.len(),
        labels = set.label_count(),
        rules = set.rule_count(),
        "policies in force"
    );

    let metrics = Arc::new(Metrics::new(state.clone(), counters.clone()));
    http::serve(opts.metrics_addr, state.clone(), metrics).await?;
    control::serve(&opts.socket, state.clone(), counters)?;

    state.set_ready(true);
    info!(metrics = %opts.metrics_addr, socket = %opts.socket.display(), "ready: enforcing");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reopen.store(true, Ordering::SeqCst);
                reload(&opts.policies, &mut rules, &state);
            }
        }
    }
    info!("shutting down; programs detach and labelled workloads are no longer governed");
    state.set_ready(false);
    let _ = std::fs::remove_file(&opts.socket);
    drop(ebpf);
    Ok(())
}

/// Validates everything first, then swaps; a bad file changes nothing.
fn reload(dir: &Path, rules: &mut RuleMaps, state: &State) {
    let result = load_policies(dir).and_then(|set| {
        let labels = rules.apply(&set, &state.root)?;
        Ok((set, labels))
    });
    match result {
        Ok((set, labels)) => {
            state.set_labels(labels);
            state
                .policies_loaded
                .store(set.policies.len() as u64, Ordering::Relaxed);
            state.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(policies = set.policies.len(), "reloaded");
        }
        Err(e) => {
            state.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!("reload failed; the previous policies stay in force: {e:#}");
        }
    }
}
