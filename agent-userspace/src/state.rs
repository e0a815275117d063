//! What the daemon's tasks share: readiness, the labels in force, reload results.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use agent_common::HOOK_COUNT;

use crate::{
    cgroup::LabelRoot,
    dns::telemetry::Telemetry,
    plan::{Bound, LabelState},
    selftest::{Proof, Verified},
};

/// Something wrong that the daemon reports until it is put right.
#[derive(Debug, Default)]
pub struct Problem(Mutex<Option<String>>);

impl Problem {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, problem: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }
}

#[derive(Debug)]
pub struct State {
    pub root: LabelRoot,
    ready: AtomicBool,
    /// Label index → what it resolves to now.
    labels: RwLock<BTreeMap<u32, LabelState>>,
    /// The cgroups bound to labels now (see `binding`).
    bound: RwLock<Vec<Bound>>,
    pub policies_loaded: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Per hook of `Hook::ALL`: the start-up proof that it denies.
    pub verified: Mutex<Verified>,
    pub kernel: String,
    /// Why the kernel state is not what the daemon put there (see `health`).
    pub enforcement_problem: Problem,
    /// Why the HTTP address is not served (see `http`).
    pub listener_problem: Problem,
    /// Failed attempts to bind it.
    pub listener_failures: AtomicU64,
    /// The labels' name lookups.
    pub dns: Arc<Telemetry>,
}

impl State {
    pub fn new(root: LabelRoot, kernel: String) -> Self {
        Self {
            root,
            ready: AtomicBool::new(false),
            labels: RwLock::new(BTreeMap::new()),
            bound: RwLock::new(Vec::new()),
            policies_loaded: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            verified: Mutex::new([Proof::Pending; HOOK_COUNT]),
            kernel,
            enforcement_problem: Problem::default(),
            listener_problem: Problem::default(),
            listener_failures: AtomicU64::new(0),
            dns: Arc::default(),
        }
    }

    /// Ready: the start-up proof passed and the kernel state is still the daemon's.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.enforcement_problem.get().is_none()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Records what a successful load put in force.
    pub fn set_policies(
        &self,
        labels: BTreeMap<u32, LabelState>,
        bound: Vec<Bound>,
        policies: usize,
    ) {
        *self.labels.write().unwrap_or_else(|e| e.into_inner()) = labels;
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) = bound;
        self.policies_loaded
            .store(policies as u64, Ordering::Relaxed);
    }

    /// The users' labels in force; actgate's own (the self-test's) stay out of what status,
    /// metrics, events and `exec` see.
    pub fn labels(&self) -> BTreeMap<u32, LabelState> {
        let mut labels = self
            .labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        labels.retain(|_, l| !crate::selftest::is_internal(&l.name));
        labels
    }

    pub fn label(&self, index: u32) -> Option<LabelState> {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .filter(|l| !crate::selftest::is_internal(&l.name))
            .cloned()
    }

    /// The label named `name` and its index, if a policy in force names it (or it is
    /// orphaned).
    pub fn label_by_name(&self, name: &str) -> Option<(u32, LabelState)> {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, l)| l.name == name && !crate::selftest::is_internal(name))
            .map(|(i, l)| (*i, l.clone()))
    }

    /// Records the cgroups bound to labels since the last load.
    pub fn set_bound(&self, bound: Vec<Bound>) {
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// The cgroups bound to labels now.
    pub fn bound(&self) -> Vec<Bound> {
        self.bound.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every cgroup of the label: its own and those bound to it.
    pub fn label_dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.label_dir(name)];
        dirs.extend(
            self.bound()
                .into_iter()
                .filter(|b| b.label == name)
                .map(|b| self.root.mount.join(b.path)),
        );
        dirs
    }

    /// How many processes run under the label, in all its cgroups.
    pub fn processes(&self, name: &str) -> usize {
        self.label_dirs(name)
            .iter()
            .map(|d| crate::cgroup::process_count(d))
            .sum()
    }

    /// The label whose cgroups hold the cgroup at `path` (as /proc/PID/cgroup names it), if
    /// any.
    pub fn label_of(&self, path: &str) -> Option<String> {
        if let Some(label) = self.root.label_of(path) {
            return Some(label);
        }
        let path = Path::new(path.trim_start_matches('/'));
        self.bound()
            .into_iter()
            .find(|b| path.starts_with(&b.path))
            .map(|b| b.label)
    }

    /// The path of the cgroup with this id beneath a label's cgroup, as /proc/PID/cgroup names
    /// it.
    pub fn cgroup_path(&self, id: u64) -> Option<String> {
        self.root.cgroup_path(id).or_else(|| {
            self.bound()
                .iter()
                .find_map(|b| self.root.path_beneath(&self.root.mount.join(&b.path), id))
        })
    }
}
