//! What the daemon's tasks share: readiness, the labels in force, reload results.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use agent_common::HOOK_COUNT;

use crate::{
    cgroup::LabelRoot,
    dns::telemetry::Telemetry,
    plan::LabelState,
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
    pub fn set_policies(&self, labels: BTreeMap<u32, LabelState>, policies: usize) {
        *self.labels.write().unwrap_or_else(|e| e.into_inner()) = labels;
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
}
