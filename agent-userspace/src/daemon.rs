//! `actgate run`: load, enforce, report, reload, until SIGTERM/SIGINT.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use agent_common::{Hook, kernel_release};
use agent_policy::{Policy, PolicySet};
use anyhow::{Context, Result, bail};
use clap::Args;
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
    plan::{self, LabelIndexes, LabelState},
    selftest::{self, SelfTest},
    state::State,
    watch,
};

/// The options of `actgate run`.
#[derive(Args)]
pub struct Options {
    /// Directory of policy files.
    #[arg(long)]
    pub policies: PathBuf,
    /// Address for /metrics, /readyz and /healthz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Append deny and audit events as JSON lines to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub events: Option<String>,
    /// Also send allow decisions to the events file.
    #[arg(long)]
    pub events_allow: bool,
    /// The control socket that `actgate exec` and `actgate status` use.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Capacity of the path rule map (entries over all policies).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_path_rules: u32,
    /// Capacity of the network rule map (entries over all policies).
    #[arg(long, default_value_t = 1 << 18)]
    pub max_net_rules: u32,
    /// Keep running when the start-up self-test finds a hook that doesn't deny (the
    /// daemon then stays unready and says so).
    #[arg(long)]
    pub allow_unverified: bool,
    /// TEST ONLY: make every hook allow everything, so the start-up self-test must fail.
    #[arg(long = "test-fake-allow-all", hide = true)]
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

/// Everything a load or reload changes, owned by whichever thread runs it: a load stats
/// files and creates cgroups and waits for the kernel, so it runs off the async loop.
struct Loader {
    rules: RuleMaps,
    indexes: LabelIndexes,
    root: LabelRoot,
    /// The self-test's policy, loaded beside the user's.
    selftest: Policy,
}

impl Loader {
    /// The policy directory's path to the maps: compile (pure), plan (the host's facts), apply.
    fn load(&mut self, set: &PolicySet) -> Result<BTreeMap<u32, LabelState>> {
        let mut set = set.clone();
        set.policies.push(self.selftest.clone());
        let next = self.rules.next();
        let compiled = agent_policy::compile_set(&set, next.rulesets)?;
        let plan = plan::resolve(
            compiled,
            next.number,
            &mut self.indexes,
            &mut plan::System::new(&self.root),
        )?;
        self.rules.apply(plan)
    }

    /// Runs `job` with this loader on a blocking thread, and gives the loader back.
    async fn off_loop<T: Send + 'static>(
        mut self,
        job: impl FnOnce(&mut Self) -> T + Send + 'static,
    ) -> Result<(Self, T)> {
        tokio::task::spawn_blocking(move || {
            let out = job(&mut self);
            (self, out)
        })
        .await
        .context("the policy load thread panicked")
    }
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
    let rules = RuleMaps::new(&mut ebpf, opts.events_allow)?;
    let counters = Arc::new(Counters::new(&mut ebpf)?);
    let reopen = Arc::new(AtomicBool::new(false));
    let sink = opts
        .events
        .as_deref()
        .map(|spec| events::Sink::open(spec, reopen.clone()))
        .transpose()?;
    events::spawn(&mut ebpf, state.clone(), sink)?;

    let loader = Loader {
        rules,
        indexes: LabelIndexes::default(),
        root,
        selftest: selftest.policy(),
    };
    let first = set.clone();
    let (mut loader, labels) = loader.off_loop(move |l| l.load(&first)).await?;
    let labels = labels.context("putting the policies into the kernel maps")?;
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
    let watch = watch::watch(&opts.policies, tx)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                reopen.store(true, Ordering::SeqCst);
                watch.note_reload(&mut changed);
                loader = reload(loader, &opts.policies, &state).await?;
            }
            Some(()) = changed.recv() => {
                loader = reload(loader, &opts.policies, &state).await?;
            }
        }
    }
    info!("shutting down; programs detach and labelled workloads are no longer governed");
    state.set_ready(false);
    let _ = std::fs::remove_file(&opts.socket);
    drop(ebpf);
    Ok(())
}

/// Runs the start-up proof; ready only when every hook denied. A failure stops the daemon
/// unless the operator accepted running unverified.
fn prove(selftest: &SelfTest, state: &State, allow_unverified: bool) -> Result<()> {
    let cgroup = state.root.label_dir(selftest::LABEL);
    let verified = selftest.run(&cgroup)?;
    *state.verified.lock().unwrap_or_else(|e| e.into_inner()) = verified;
    let (proved, failed): (Vec<_>, Vec<_>) = Hook::ALL
        .iter()
        .zip(verified)
        .partition(|(_, v)| *v == Some(true));
    for (hook, _) in proved {
        info!(hook = hook.name, "enforcement verified");
    }
    if failed.is_empty() {
        state.set_ready(true);
        info!("ready: every hook proved it denies");
        return Ok(());
    }
    let names: Vec<String> = failed
        .iter()
        .flat_map(|(h, _)| {
            h.actions
                .iter()
                .map(|a| format!("{} (LSM hook {})", a.as_str(), h.name))
        })
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
async fn reload(loader: Loader, dir: &Path, state: &Arc<State>) -> Result<Loader> {
    let (dir, shared) = (dir.to_path_buf(), state.clone());
    let (loader, result) = loader
        .off_loop(move |l| {
            let set = load_policies(&dir)?;
            let labels = l.load(&set)?;
            warn_about_dropped_labels(&shared, &labels);
            anyhow::Ok((set, labels))
        })
        .await?;
    match result {
        Ok((set, labels)) => {
            state.set_policies(labels, set.policies.len());
            state.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(policies = set.policies.len(), "reloaded");
        }
        Err(e) => {
            state.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!("reload failed; the previous policies stay in force: {e:#}");
        }
    }
    Ok(loader)
}

/// Labels in force before a reload that `labels` no longer has, and that still run processes.
fn warn_about_dropped_labels(state: &State, labels: &BTreeMap<u32, LabelState>) {
    for gone in state
        .labels()
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
}
