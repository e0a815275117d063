//! `actgate run`: load, enforce, report, reload, until SIGTERM/SIGINT.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
};

use agent_common::{Hook, LabelInfo, LabelKey, MODE_ORPHANED, kernel_release};
use agent_policy::{CgroupPattern, Mode, PathPattern, Policy, PolicySet};
use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    binding, bpf,
    cgroup::LabelRoot,
    control,
    counters::Counters,
    dns::{self, Dns},
    events, health, http, inodes,
    kube::{self, PodBindings},
    learning::{self, Change, ChangeRequest, Hub},
    maps::RuleMaps,
    metrics::Metrics,
    pin::{self, Pins},
    plan::{self, Bound, Host, LabelEntry, LabelIndexes, LabelState},
    revocation::Revocations,
    selftest::{self, Proof, SelfTest},
    state::State,
    takeover::{Lock, Takeover},
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
    /// Where the programs, links and maps are pinned in bpffs (mounted if needed).
    #[arg(long, default_value = pin::DEFAULT_ROOT)]
    pub pin_dir: PathBuf,
    /// Turn the kernel's directory cache off: every judged open and executable mapping
    /// resolves its path (what `cargo xtask bench` compares the cache against).
    #[arg(long)]
    pub no_dir_cache: bool,
    #[command(flatten)]
    pub dns: dns::Options,
    #[command(flatten)]
    pub kube: kube::KubeOptions,
    /// TEST ONLY: make every hook allow everything, so the start-up self-test must fail.
    #[arg(long = "test-fake-allow-all", hide = true)]
    pub fake_allow_all: bool,
    /// TEST ONLY: take over as a new build would (a ring buffer of its own).
    #[arg(long = "test-as-another-build", hide = true)]
    pub another_build: bool,
}

/// Reads and validates every policy file; all problems are reported, each as
/// `file:line:column: message`. A rule that names a symlink is logged and also applied to the
/// symlink's target, the path the kernel will see.
pub fn load_policies(dir: &Path) -> Result<PolicySet> {
    use agent_policy::symlinks;
    let mut set = agent_policy::load_path(dir).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} problem(s) in the policies at {}:\n{}",
            problems.len(),
            dir.display(),
            text.join("\n")
        )
    })?;
    for warning in symlinks::warnings(&set, symlinks::on_host) {
        tracing::warn!("{warning}");
    }
    symlinks::follow(&mut set, symlinks::on_host);
    Ok(set)
}

/// Everything a load or reload changes, owned by whichever thread runs it: a load stats
/// files and creates cgroups and waits for the kernel, so it runs off the async loop.
struct Loader {
    rules: RuleMaps,
    indexes: LabelIndexes,
    /// What the generation in force resolved to, orphans included.
    in_force: BTreeMap<u32, LabelState>,
    /// The cgroups bound to labels in the generation in force, orphans included.
    bound: Vec<Bound>,
    /// Where `bound` is kept for the next daemon.
    runtime_dir: PathBuf,
    /// Each label's entry in the generation in force, for the cgroups bound to it since.
    infos: BTreeMap<String, LabelInfo>,
    /// The pods that opt in, mapped to their cgroups (`--kubernetes`).
    pods: PodBindings,
    root: LabelRoot,
    /// The self-test's policy, loaded beside the user's.
    selftest: Policy,
    /// What no label may write, whatever its policy says (see `Protected`).
    protected: Protected,
    /// The user's policies in force (as read, before `learning` changed them).
    user_set: PolicySet,
    /// The labels `actgate learn` sessions are learning.
    learning: BTreeSet<String>,
}

/// actgate's own files, and the kernel's. A labelled root that could write actgate's files
/// would steer the daemon: new policies in the policy directory, another binary on the next
/// restart, or a control socket of its own in the runtime directory, through which `actgate
/// exec` would start the next agent unconfined. Reading the runtime directory is denied too,
/// so that no label can hold the daemon's lock file and keep a restarted daemon from starting.
/// The kernel's settings (`KERNEL_SETTINGS`) would run a program of the label's choosing as
/// root outside every label.
struct Protected {
    write: Vec<PathPattern>,
    read: Vec<PathPattern>,
}

/// Where writing is reconfiguring the kernel: sysctls (kernel.core_pattern and
/// kernel.modprobe name programs the kernel runs as root; binfmt_misc registers interpreters),
/// sysfs (uevent_helper, module parameters, securityfs, tracefs) and the SysRq trigger.
pub(crate) const KERNEL_SETTINGS: &[&str] = &["/proc/sys/**", "/proc/sysrq-trigger", "/sys/**"];

impl Protected {
    fn new(policies: &Path, runtime_dir: &Path) -> Result<Self> {
        let real = |p: &Path| {
            fs::canonicalize(p)
                .with_context(|| format!("resolving {}", p.display()))
                .map(|p| p.display().to_string())
        };
        let runtime = PathPattern::Tree(real(runtime_dir)?);
        let exe = std::env::current_exe().context("finding actgate's own binary")?;
        let mut write = vec![
            PathPattern::Tree(real(policies)?),
            PathPattern::Exact(real(&exe)?),
            runtime.clone(),
        ];
        for pattern in KERNEL_SETTINGS {
            write.push(agent_policy::parse_path(pattern)?);
        }
        Ok(Self {
            write,
            read: vec![runtime],
        })
    }

    /// Adds the denials to one of the user's policies; they hold in audit mode too.
    fn apply(&self, policy: &mut Policy) {
        policy.file_write.protect.extend(self.write.iter().cloned());
        policy.file_read.protect.extend(self.read.iter().cloned());
    }
}

impl Loader {
    /// The policy directory's path to the maps: compile (pure), plan (the host's facts), apply.
    /// Returns the user's policies as put in force (the labels being learnt under the
    /// learning policy) and what the labels resolved to.
    fn load(&mut self, user_set: &PolicySet) -> Result<Loaded> {
        let in_force = learning::with_learning(user_set, &self.learning)?;
        let mut set = in_force.clone();
        for policy in &mut set.policies {
            self.protected.apply(policy);
        }
        set.policies.push(self.selftest.clone());
        let next = self.rules.next();
        let mut compiled = agent_policy::compile_set(&set, next.rulesets)?;
        for (label, pattern) in self.pod_patterns() {
            match compiled.labels.iter_mut().find(|l| l.name == label) {
                Some(l) => l.cgroups.push(pattern),
                None => warn!(
                    "a pod opts into label {label:?}, which no policy names: its cgroup {pattern} \
                     stays unlabelled"
                ),
            }
        }
        let mut plan = plan::resolve(
            compiled,
            next.number,
            &mut self.indexes,
            &self.in_force,
            &self.bound,
            &mut plan::System::new(&self.root),
        )?;
        learning::flag(&mut plan, &self.learning);
        let infos = plan
            .labels
            .iter()
            .filter(|l| l.info.mode != MODE_ORPHANED)
            .map(|l| (l.name.clone(), l.info))
            .collect();
        let orphans = plan.orphans.clone();
        let bound = plan.bound.clone();
        let states = self.rules.apply(plan)?;
        report_orphans(&orphans);
        binding::report(&self.bound, &bound);
        if let Err(e) = binding::keep(&self.runtime_dir, &bound) {
            warn!("a restarted daemon won't know the cgroups bound now: {e:#}");
        }
        self.in_force = states.clone();
        self.bound = bound.clone();
        self.infos = infos;
        self.user_set = user_set.clone();
        Ok(Loaded {
            set: in_force,
            labels: states,
            bound,
        })
    }

    /// The `cgroups:` patterns in force, and the cgroups of the pods that opt in into a label
    /// in force, with the label each binds to.
    fn patterns(&self) -> Vec<(String, CgroupPattern)> {
        let policies = self
            .user_set
            .policies
            .iter()
            .filter_map(|p| Some((p.labels.first()?, &p.cgroups)))
            .flat_map(|(label, cgroups)| cgroups.iter().map(|c| (label.clone(), c.clone())));
        let pods = self
            .pod_patterns()
            .into_iter()
            .filter(|(label, _)| self.infos.contains_key(label));
        policies.chain(pods).collect()
    }

    /// The pods' cgroups as exact patterns. One that is no valid pattern can't be bound, and
    /// its pod runs unlabelled: said in the log.
    fn pod_patterns(&self) -> Vec<(String, CgroupPattern)> {
        self.pods
            .iter()
            .filter_map(|(path, label)| {
                let text = path.display().to_string();
                match CgroupPattern::exact(&text) {
                    Ok(pattern) => Some((label.clone(), pattern)),
                    Err(e) => {
                        warn!("pod cgroup {text} can't be bound to label {label:?}: {e}");
                        None
                    }
                }
            })
            .collect()
    }

    /// Follows the cgroups the patterns in force match. Cgroups that appeared are bound in
    /// the generation in force, at once (`RuleMaps::add_labels`); cgroups that went are
    /// forgotten. Anything else (a bound cgroup that no longer matches but is still there, a
    /// new one matched by two labels, a level too many) takes a new plan: `NeedsPlan`.
    fn follow_cgroups(&mut self) -> Followed {
        let mut host = plan::System::new(&self.root);
        let mut now: Vec<Bound> = Vec::new();
        for (label, pattern) in self.patterns() {
            for (path, cgroup) in host.bound_cgroups(&pattern) {
                match now.iter().find(|b| b.cgroup.id == cgroup.id) {
                    Some(b) if b.label != label => return Followed::NeedsPlan,
                    Some(_) => {}
                    None => now.push(Bound {
                        label: label.clone(),
                        path,
                        cgroup,
                        orphaned: false,
                    }),
                }
            }
        }
        let known = |b: &Bound| self.bound.iter().any(|o| o.cgroup.id == b.cgroup.id);
        let added: Vec<Bound> = now.iter().filter(|b| !known(b)).cloned().collect();
        let matched = |b: &Bound| now.iter().any(|n| n.cgroup.id == b.cgroup.id);
        let unmatched: Vec<&Bound> = self
            .bound
            .iter()
            .filter(|b| !b.orphaned && !matched(b))
            .collect();
        // One still there takes a plan: orphaned if it runs processes, let go if not.
        if unmatched
            .iter()
            .any(|b| self.root.mount.join(&b.path).exists())
        {
            return Followed::NeedsPlan;
        }
        if added.is_empty() && unmatched.is_empty() {
            return Followed::Same;
        }
        let generation = self.rules.generation();
        let entries: Option<Vec<LabelEntry>> = added
            .iter()
            .map(|b| {
                Some(LabelEntry {
                    name: b.label.clone(),
                    key: LabelKey {
                        cgroup_id: b.cgroup.id,
                        generation,
                        _pad: 0,
                    },
                    info: *self.infos.get(&b.label)?,
                    level: b.cgroup.level,
                })
            })
            .collect();
        let Some(entries) = entries else {
            return Followed::NeedsPlan;
        };
        if let Err(e) = self.rules.add_labels(&entries) {
            warn!("binding the new cgroups in place failed, planning again: {e:#}");
            return Followed::NeedsPlan;
        }
        let before = std::mem::take(&mut self.bound);
        self.bound = before
            .iter()
            .filter(|b| b.orphaned || matched(b))
            .cloned()
            .chain(added)
            .collect();
        binding::report(&before, &self.bound);
        if let Err(e) = binding::keep(&self.runtime_dir, &self.bound) {
            warn!("a restarted daemon won't know the cgroups bound now: {e:#}");
        }
        Followed::Changed
    }

    /// Watches where the patterns in force may match new cgroups.
    fn rewatch(&self, watch: &mut binding::Watch) {
        let parents = self
            .patterns()
            .iter()
            .flat_map(|(_, p)| binding::walk(&self.root.mount, p).parents)
            .collect();
        watch.set(&parents);
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

/// What following the cgroups did.
enum Followed {
    Same,
    /// New cgroups bound, gone ones forgotten.
    Changed,
    NeedsPlan,
}

/// What a load put in force.
struct Loaded {
    /// The user's policies, the labels being learnt under the learning policy.
    set: PolicySet,
    labels: BTreeMap<u32, LabelState>,
    bound: Vec<Bound>,
}

/// The daemon's exit status after `actgate unload`: the systemd unit doesn't restart it.
pub const EXIT_UNLOADED: u8 = 3;

/// Why the daemon stopped.
pub enum Stopped {
    /// SIGTERM or SIGINT: the policy stays in force.
    Signal,
    /// `actgate unload`: everything actgate loaded is gone.
    Unloaded,
}

pub async fn run(opts: Options) -> Result<Stopped> {
    // First of all: a SIGTERM during start-up then waits until the take-over is complete,
    // instead of killing the daemon half-way (with the default action, exit by signal).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    bpf::preflight()?;
    let set = load_policies(&opts.policies)?;
    let root = LabelRoot::discover()?;
    let state = Arc::new(State::new(root.clone(), kernel_release()));
    let runtime_dir = opts.socket.parent().unwrap_or(Path::new("/run/actgate"));
    let Some(_lock) = Lock::take(runtime_dir)? else {
        bail!(
            "another actgate daemon runs (it holds {}/daemon.lock); stop it first",
            runtime_dir.display()
        );
    };
    let selftest = SelfTest::prepare(runtime_dir)?;
    let pins = Pins::open(&opts.pin_dir)?;
    let names = pins.label_names()?;
    let known = names.read()?;

    let sizes = bpf::Sizes {
        path_rules: opts.max_path_rules,
        net_rules: opts.max_net_rules,
        inode_rules: inodes::MAX_ENTRIES,
    };
    let instance = pins.new_set()?;
    // Until committed, a failure hands judging back to the set before and removes this one.
    let mut takeover = Takeover::begin(pins.clone(), instance)?;
    let bpf::Set {
        mut ebpf,
        log,
        events_pin,
        links,
        present,
    } = bpf::load(
        &root,
        &sizes,
        &pins,
        instance,
        !opts.no_dir_cache,
        bpf::TestSwitches {
            fake_allow_all: opts.fake_allow_all,
            another_build: opts.another_build,
        },
    )?;
    bpf::forward_kernel_log(log)?;
    *state.verified.lock().unwrap_or_else(|e| e.into_inner()) = selftest::pending(&present);
    let in_force = Arc::new(AtomicU32::new(0));
    let rules = RuleMaps::new(
        &mut ebpf,
        opts.events_allow,
        names,
        in_force.clone(),
        Revocations::open(&pins)?,
    )?;
    let counters = Arc::new(Counters::new(&mut ebpf, &pins)?);
    let mut dns = Dns::new(&opts.dns, &mut ebpf, state.dns.clone(), counters.clone())?;
    let (
        hub,
        learning::Receivers {
            mut changes,
            flushes,
        },
    ) = Hub::new();
    let reopen = Arc::new(AtomicBool::new(false));
    let sink = opts
        .events
        .as_deref()
        .map(|spec| events::Sink::open(spec, reopen.clone()))
        .transpose()?;

    let loader = Loader {
        rules,
        in_force: earlier_labels(&known, &root),
        bound: binding::kept(runtime_dir, &root.mount),
        runtime_dir: runtime_dir.to_path_buf(),
        infos: BTreeMap::new(),
        pods: PodBindings::new(),
        indexes: LabelIndexes::known(known),
        root,
        selftest: selftest.policy(),
        protected: Protected::new(&opts.policies, runtime_dir)?,
        user_set: PolicySet::default(),
        learning: BTreeSet::new(),
    };
    let first = set.clone();
    let (mut loader, loaded) = loader.off_loop(move |l| l.load(&first)).await?;
    let loaded = loaded.context("putting the policies into the kernel maps")?;
    // Before the switch: the new set's programs refuse the lookups of a label it has no
    // resolver for.
    dns.configure(&loaded.labels, &loaded.set).await?;
    state.set_policies(loaded.labels, loaded.bound, set.policies.len());
    // Only now: events that waited in a kept ring buffer name labels the state knows.
    events::spawn(&mut ebpf, state.clone(), sink, hub.clone(), flushes)?;
    takeover.switch()?;
    info!(
        policies = set.policies.len(),
        labels = set.label_count(),
        rules = set.rule_count(),
        "policies in force"
    );

    let metrics = Arc::new(Metrics::new(state.clone(), counters.clone()));
    http::serve(opts.metrics_addr, state.clone(), metrics);
    let (unload_tx, mut unload) = mpsc::channel(1);
    control::serve(&opts.socket, state.clone(), counters, unload_tx, hub)?;

    prove(&selftest, &state, &present, opts.allow_unverified)?;
    takeover.commit(&events_pin)?;
    health::watch(pins.clone(), instance, in_force, state.clone(), present);
    // The pods that opt in, mapped to their cgroups, bound as a policy's `cgroups:` are.
    let mut pods = opts
        .kube
        .kubernetes
        .then(|| kube::spawn(opts.kube.clone(), state.root.mount.clone()))
        .transpose()?;

    let (tx, mut changed) = mpsc::channel(1);
    let watch = watch::watch(&opts.policies, tx)?;
    let (tx, mut cgroups) = mpsc::channel(1);
    let mut cgroup_watch = binding::Watch::new(&state.root.mount, tx)?;
    loader.rewatch(&mut cgroup_watch);
    let stopped = loop {
        tokio::select! {
            _ = term.recv() => break Stopped::Signal,
            _ = int.recv() => break Stopped::Signal,
            Some(()) = unload.recv() => break Stopped::Unloaded,
            _ = hup.recv() => {
                reopen.store(true, Ordering::SeqCst);
                watch.note_reload(&mut changed);
                loader = reload(loader, &opts.policies, &state, &mut dns).await?;
            }
            Some(()) = changed.recv() => {
                loader = reload(loader, &opts.policies, &state, &mut dns).await?;
            }
            Some(request) = changes.recv() => {
                loader = learn(loader, request, &state, &mut dns).await?;
            }
            Some(()) = cgroups.recv() => {
                loader = rebind(loader, &state, &mut dns).await?;
            }
            Some(mapped) = next_pods(&mut pods) => {
                loader.pods = mapped;
                loader = rebind(loader, &state, &mut dns).await?;
            }
        }
        loader.rewatch(&mut cgroup_watch);
    };
    state.set_ready(false);
    let _ = std::fs::remove_file(&opts.socket);
    match stopped {
        Stopped::Signal => info!(
            "shutting down; the programs stay attached and the policies in force (pinned in {}); \
             `actgate unload` removes them",
            pins.root().display()
        ),
        Stopped::Unloaded => {
            pins.remove_all()?;
            warn!(
                "unloaded on request: the programs detach as this daemon exits, and labelled \
                 workloads are no longer governed"
            );
        }
    }
    // Last, so that the programs detach at once after an unload.
    drop((ebpf, links));
    Ok(stopped)
}

/// The labels an earlier daemon governed whose cgroups are still there. A policy set that
/// doesn't name one of them orphans it if it runs processes (see `plan`): a restart must
/// not release what a reload wouldn't. Which policy named them, this daemon can't know.
fn earlier_labels(known: &[(String, u32)], root: &LabelRoot) -> BTreeMap<u32, LabelState> {
    known
        .iter()
        .filter(|(name, _)| root.label_dir(name).is_dir())
        .map(|(name, index)| {
            let state = LabelState {
                name: name.clone(),
                policy: "(an earlier daemon's)".into(),
                mode: Mode::Enforce,
                orphaned: false,
            };
            (*index, state)
        })
        .collect()
}

/// The cgroup v2 mount, the directory the label root sits in.
/// The next map of the pods that opt in, when `--kubernetes` is on; never otherwise.
async fn next_pods(
    pods: &mut Option<tokio::sync::watch::Receiver<PodBindings>>,
) -> Option<PodBindings> {
    let rx = pods.as_mut()?;
    rx.changed().await.ok()?;
    Some(rx.borrow_and_update().clone())
}

/// Runs the start-up proof; ready only when every hook denied. A failure stops the daemon
/// unless the operator accepted running unverified.
fn prove(
    selftest: &SelfTest,
    state: &State,
    present: &bpf::Present,
    allow_unverified: bool,
) -> Result<()> {
    let cgroup = state.root.label_dir(selftest::LABEL);
    let verified = selftest.run(&cgroup, present)?;
    *state.verified.lock().unwrap_or_else(|e| e.into_inner()) = verified;
    let (proved, failed): (Vec<_>, Vec<_>) = Hook::ALL
        .iter()
        .zip(verified)
        .filter(|(_, v)| *v != Proof::Absent)
        .partition(|(_, v)| *v == Proof::Denied);
    for (hook, _) in proved {
        info!(hook = hook.name, "enforcement verified");
    }
    if failed.is_empty() {
        state.set_ready(true);
        info!("ready: every hook this kernel has proved it denies");
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

/// Loads the user's policies that `read` gives, and tells the DNS resolvers and the state.
/// The error is the load's: what was in force stays so.
async fn put_in_force(
    loader: Loader,
    read: impl FnOnce(&Loader) -> Result<PolicySet> + Send + 'static,
    state: &Arc<State>,
    dns: &mut Dns,
) -> Result<(Loader, Result<usize>)> {
    let (loader, result) = loader
        .off_loop(move |l| {
            let set = read(l)?;
            l.load(&set)
        })
        .await?;
    let policies = match result {
        Ok(loaded) => {
            if let Err(e) = dns.configure(&loaded.labels, &loaded.set).await {
                error!("the labels' DNS resolvers: {e:#}");
            }
            let policies = loaded.set.policies.len();
            state.set_policies(loaded.labels, loaded.bound, policies);
            Ok(policies)
        }
        Err(e) => Err(e),
    };
    Ok((loader, policies))
}

/// Validates everything first, then swaps; a bad file changes nothing.
async fn reload(loader: Loader, dir: &Path, state: &Arc<State>, dns: &mut Dns) -> Result<Loader> {
    let dir = dir.to_path_buf();
    let (loader, result) = put_in_force(loader, move |_| load_policies(&dir), state, dns).await?;
    match result {
        Ok(policies) => {
            state.reloads_ok.fetch_add(1, Ordering::Relaxed);
            info!(policies, "reloaded");
        }
        Err(e) => {
            state.reloads_failed.fetch_add(1, Ordering::Relaxed);
            error!("reload failed; the previous policies stay in force: {e:#}");
        }
    }
    Ok(loader)
}

/// Binds the cgroups that appeared and lets go of those that went since the plan in force (see
/// `Loader::follow_cgroups`); when that takes a new plan, the user's policies in force are
/// loaded again. Not a reload: the policy directory isn't read, and the reload counters don't
/// count it. When it fails (a new cgroup matched by two labels' patterns), the cgroups bound
/// stay so and the new one is unbound.
async fn rebind(loader: Loader, state: &Arc<State>, dns: &mut Dns) -> Result<Loader> {
    let (loader, followed) = loader.off_loop(|l| l.follow_cgroups()).await?;
    match followed {
        Followed::Same => Ok(loader),
        Followed::Changed => {
            state.set_bound(loader.bound.clone());
            Ok(loader)
        }
        Followed::NeedsPlan => {
            let (loader, result) =
                put_in_force(loader, |l| Ok(l.user_set.clone()), state, dns).await?;
            if let Err(e) = result {
                error!("binding the cgroups that changed failed; the cgroups bound stay so: {e:#}");
            }
            Ok(loader)
        }
    }
}

/// Starts or ends learning a label (see `learning`): the user's policies in force are loaded
/// again, with or without the label under the learning policy. Not a reload: the policy
/// directory isn't read, and the reload counters don't count it.
async fn learn(
    mut loader: Loader,
    (change, done): ChangeRequest,
    state: &Arc<State>,
    dns: &mut Dns,
) -> Result<Loader> {
    let before = loader.learning.clone();
    match &change {
        Change::Start(label) => loader.learning.insert(label.clone()),
        Change::Stop(label) => loader.learning.remove(label),
    };
    let (mut loader, result) = put_in_force(loader, |l| Ok(l.user_set.clone()), state, dns).await?;
    if result.is_err() {
        loader.learning = before;
    }
    let _ = done.send(result.map(drop));
    Ok(loader)
}

/// Labels a reload dropped while processes still run under them: the kernel now denies
/// everything those processes do, which their owner will notice.
fn report_orphans(orphans: &[(String, usize)]) {
    for (label, running) in orphans {
        error!(
            label,
            processes = running,
            "no policy names label {label:?} any more, but {running} process(es) still run under \
             it: every action of theirs is denied (reason \"orphaned\") until a policy names the \
             label again or they exit"
        );
    }
}
