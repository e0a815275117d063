//! `/metrics`: OpenMetrics text from prometheus-client. Values are read on each scrape from
//! the kernel's counters and the daemon's state, so there is no second copy to drift.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
};

use agent_common::{Action, Hook, KernelError, Trigger, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    counters::Counters,
    dns::telemetry::Outcome,
    plan::LabelState,
    selftest::{self, Proof},
    state::State,
};

/// One metric family of /metrics. The collector writes each family, its name, type and label
/// names, through one of these statics, so `FAMILIES` is the complete list that the alerting
/// rules and the dashboard under deploy/ are checked against (see `deploy`).
struct Family<const N: usize> {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: [&'static str; N],
}

impl<const N: usize> Family<N> {
    const fn counter(name: &'static str, labels: [&'static str; N], help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: MetricType::Counter,
            labels,
        }
    }

    const fn gauge(name: &'static str, labels: [&'static str; N], help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: MetricType::Gauge,
            labels,
        }
    }

    fn descriptor<'e>(
        &'static self,
        enc: &'e mut DescriptorEncoder,
    ) -> Result<MetricEncoder<'e>, std::fmt::Error> {
        enc.encode_descriptor(self.name, self.help, None, self.kind)
    }

    /// One series' label set: the family's label names with these values.
    fn set(&self, values: [String; N]) -> Labels {
        self.labels.into_iter().zip(values).collect()
    }

    #[cfg(test)]
    const fn exported(&'static self) -> Exported {
        Exported {
            name: self.name,
            kind: self.kind,
            labels: &self.labels,
        }
    }
}

static DECISIONS: Family<3> = Family::counter(
    "actgate_decisions",
    ["label", "action", "verdict"],
    "Decisions the kernel made for labelled processes, counted in the kernel",
);
static EVENTS_DROPPED: Family<1> = Family::counter(
    "actgate_events_dropped",
    ["action"],
    "Events lost because the ring buffer was full, counted in the kernel",
);
static KERNEL_ERRORS: Family<1> = Family::counter(
    "actgate_kernel_errors",
    ["reason"],
    "Hook calls the kernel could not judge (e.g. an unresolvable path), by reason; each \
     was refused, as an event with reason unjudged",
);
static POLICIES_LOADED: Family<0> =
    Family::gauge("actgate_policies_loaded", [], "Policies in force");
static POLICY_RELOADS: Family<1> = Family::counter(
    "actgate_policy_reloads",
    ["result"],
    "Policy reloads by result",
);
/// The values of `actgate_policy_reloads`' `result`.
const RELOAD_RESULTS: [&str; 2] = ["success", "failure"];
static LABELLED_PROCESSES: Family<1> = Family::gauge(
    "actgate_labelled_processes",
    ["label"],
    "Processes running under each label (its own cgroup subtree and the cgroups bound to it)",
);
static BOUND_CGROUPS: Family<1> = Family::gauge(
    "actgate_bound_cgroups",
    ["label"],
    "Cgroups that a policy's `cgroups:` patterns bind to the label now",
);
static LABEL_ORPHANED: Family<1> = Family::gauge(
    "actgate_label_orphaned",
    ["label"],
    "1 when no policy names the label any more while processes still run under it (the \
     kernel denies all they do), 0 otherwise",
);
static LABEL_REVOKED: Family<1> = Family::gauge(
    "actgate_label_revoked",
    ["label"],
    "1 while the label is revoked (the kernel denies all its processes do), 0 otherwise",
);
static REVOCATIONS: Family<2> = Family::counter(
    "actgate_revocations",
    ["label", "trigger"],
    "Revocations of the label, by what revoked it: manual (actgate revoke), budget (a \
     budget with then: revoke) or breaker (revoke_after)",
);
static BUDGET_EXCEEDED: Family<2> = Family::counter(
    "actgate_budget_exceeded",
    ["label", "action"],
    "Actions refused (or, in audit mode, reported) because the label's budget for the \
     action was used up, counted in the kernel",
);
static DNS_QUERIES: Family<2> = Family::counter(
    "actgate_dns_queries",
    ["label", "verdict"],
    "DNS queries of the label, by verdict: allowed (forwarded and answered), refused (no \
     rule allows the name, a rule denies it, or the label is revoked), audit (answered in \
     audit mode, refused in enforce mode) or failed (the upstream failed, or the query \
     could not be read or recorded)",
);
static DNS_ADDRESSES: Family<1> = Family::gauge(
    "actgate_dns_addresses",
    ["label"],
    "Addresses the label may connect to by name right now",
);
static DNS_DROPPED_ANSWERS: Family<1> = Family::counter(
    "actgate_dns_dropped_answers",
    ["label"],
    "Answer records the rebinding guard dropped: a wildcard-matched or public name that \
     pointed at a loopback, link-local, private or the host's own address",
);
static DNS_EVICTIONS: Family<1> = Family::counter(
    "actgate_dns_evictions",
    ["label"],
    "Lookups forgotten early to keep the label within its limits of names and addresses",
);
static READY: Family<0> = Family::gauge(
    "actgate_ready",
    [],
    "1 while /readyz answers 200 (the start-up self-test passed and the kernel state is \
     still what the daemon put there), 0 otherwise",
);
static ENFORCEMENT_VERIFIED: Family<1> = Family::gauge(
    "actgate_enforcement_verified",
    ["action"],
    "1 when the start-up self-test saw every hook of this action deny, 0 when it did not \
     or has not run",
);
static HOOK_VERIFIED: Family<1> = Family::gauge(
    "actgate_hook_verified",
    ["hook"],
    "1 when the start-up self-test saw this LSM hook deny, 0 when it did not or has not \
     run",
);
static BUILD_INFO: Family<2> = Family::gauge(
    "actgate_build_info",
    ["version", "kernel"],
    "Version of actgate and release of the running kernel",
);

/// A family as the checks of deploy/ see it.
#[cfg(test)]
struct Exported {
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

#[cfg(test)]
static FAMILIES: [Exported; 19] = [
    DECISIONS.exported(),
    EVENTS_DROPPED.exported(),
    KERNEL_ERRORS.exported(),
    POLICIES_LOADED.exported(),
    POLICY_RELOADS.exported(),
    LABELLED_PROCESSES.exported(),
    BOUND_CGROUPS.exported(),
    LABEL_ORPHANED.exported(),
    LABEL_REVOKED.exported(),
    REVOCATIONS.exported(),
    BUDGET_EXCEEDED.exported(),
    DNS_QUERIES.exported(),
    DNS_ADDRESSES.exported(),
    DNS_DROPPED_ANSWERS.exported(),
    DNS_EVICTIONS.exported(),
    READY.exported(),
    ENFORCEMENT_VERIFIED.exported(),
    HOOK_VERIFIED.exported(),
    BUILD_INFO.exported(),
];

#[derive(Debug)]
struct ActgateCollector {
    state: Arc<State>,
    counters: Arc<Counters>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for ActgateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = self.state.labels();

        let mut m = DECISIONS.descriptor(&mut enc)?;
        for (index, label) in &labels {
            let d = self.counters.decisions(*index);
            for a in Action::ALL {
                for v in Verdict::ALL {
                    let values = [label.name.clone(), a.as_str().into(), v.as_str().into()];
                    let set = DECISIONS.set(values);
                    ConstCounter::new(d[a as usize][v as usize]).encode(m.encode_family(&set)?)?;
                }
            }
        }

        let mut m = EVENTS_DROPPED.descriptor(&mut enc)?;
        for a in Action::ALL {
            let set = EVENTS_DROPPED.set([a.as_str().into()]);
            ConstCounter::new(self.counters.dropped(a)).encode(m.encode_family(&set)?)?;
        }

        let mut m = KERNEL_ERRORS.descriptor(&mut enc)?;
        for r in KernelError::ALL {
            let set = KERNEL_ERRORS.set([r.as_str().into()]);
            ConstCounter::new(self.counters.errors_of(*r)).encode(m.encode_family(&set)?)?;
        }

        ConstGauge::new(self.state.policies_loaded.load(Ordering::Relaxed) as i64)
            .encode(POLICIES_LOADED.descriptor(&mut enc)?)?;

        let mut m = POLICY_RELOADS.descriptor(&mut enc)?;
        for (result, n) in RELOAD_RESULTS
            .into_iter()
            .zip([&self.state.reloads_ok, &self.state.reloads_failed])
        {
            let set = POLICY_RELOADS.set([result.into()]);
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(m.encode_family(&set)?)?;
        }

        let mut m = LABELLED_PROCESSES.descriptor(&mut enc)?;
        for label in labels.values() {
            let n = self.state.processes(&label.name);
            let set = LABELLED_PROCESSES.set([label.name.clone()]);
            ConstGauge::new(n as i64).encode(m.encode_family(&set)?)?;
        }

        let bound = self.state.bound();
        let mut m = BOUND_CGROUPS.descriptor(&mut enc)?;
        for label in labels.values() {
            let n = bound
                .iter()
                .filter(|b| b.label == label.name && !b.orphaned)
                .count();
            let set = BOUND_CGROUPS.set([label.name.clone()]);
            ConstGauge::new(n as i64).encode(m.encode_family(&set)?)?;
        }

        let mut m = LABEL_ORPHANED.descriptor(&mut enc)?;
        for label in labels.values() {
            let set = LABEL_ORPHANED.set([label.name.clone()]);
            ConstGauge::new(i64::from(label.orphaned)).encode(m.encode_family(&set)?)?;
        }

        let revocations = &self.counters.revocations;
        let mut m = LABEL_REVOKED.descriptor(&mut enc)?;
        for (index, label) in &labels {
            let set = LABEL_REVOKED.set([label.name.clone()]);
            let revoked = revocations.get(*index).is_some();
            ConstGauge::new(i64::from(revoked)).encode(m.encode_family(&set)?)?;
        }

        let mut m = REVOCATIONS.descriptor(&mut enc)?;
        for (index, label) in &labels {
            for t in Trigger::ALL {
                let set = REVOCATIONS.set([label.name.clone(), t.as_str().into()]);
                ConstCounter::new(revocations.count(*index, t)).encode(m.encode_family(&set)?)?;
            }
        }

        let mut m = BUDGET_EXCEEDED.descriptor(&mut enc)?;
        for (index, label) in &labels {
            for a in Action::ALL {
                let set = BUDGET_EXCEEDED.set([label.name.clone(), a.as_str().into()]);
                let n = self.counters.budget_exceeded(*index, a);
                ConstCounter::new(n).encode(m.encode_family(&set)?)?;
            }
        }

        self.encode_dns(&labels, &mut enc)?;

        ConstGauge::new(i64::from(self.state.is_ready())).encode(READY.descriptor(&mut enc)?)?;

        let verified = *self
            .state
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut m = ENFORCEMENT_VERIFIED.descriptor(&mut enc)?;
        for a in Action::ALL {
            let set = ENFORCEMENT_VERIFIED.set([a.as_str().into()]);
            let v = i64::from(selftest::action_verified(&verified, a) == Some(true));
            ConstGauge::new(v).encode(m.encode_family(&set)?)?;
        }

        let mut m = HOOK_VERIFIED.descriptor(&mut enc)?;
        for (hook, v) in Hook::ALL.iter().zip(verified) {
            if v == Proof::Absent {
                continue;
            }
            let set = HOOK_VERIFIED.set([hook.name.into()]);
            ConstGauge::new(i64::from(v == Proof::Denied)).encode(m.encode_family(&set)?)?;
        }

        let set = BUILD_INFO.set([env!("CARGO_PKG_VERSION").into(), self.state.kernel.clone()]);
        let mut m = BUILD_INFO.descriptor(&mut enc)?;
        ConstGauge::new(1).encode(m.encode_family(&set)?)?;
        Ok(())
    }
}

impl ActgateCollector {
    /// The labels' name lookups (see `dns`), counted by the daemon's resolver.
    fn encode_dns(
        &self,
        labels: &BTreeMap<u32, LabelState>,
        enc: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = labels
            .iter()
            .map(|(index, label)| (label.name.clone(), self.state.dns.stats(*index)))
            .collect();
        let mut m = DNS_QUERIES.descriptor(enc)?;
        for (name, s) in &stats {
            for o in Outcome::ALL {
                let set = DNS_QUERIES.set([name.clone(), o.as_str().into()]);
                ConstCounter::new(s.queries[o as usize]).encode(m.encode_family(&set)?)?;
            }
        }
        let mut m = DNS_ADDRESSES.descriptor(enc)?;
        for (name, s) in &stats {
            let set = DNS_ADDRESSES.set([name.clone()]);
            ConstGauge::new(s.addresses as i64).encode(m.encode_family(&set)?)?;
        }
        let mut m = DNS_DROPPED_ANSWERS.descriptor(enc)?;
        for (name, s) in &stats {
            let set = DNS_DROPPED_ANSWERS.set([name.clone()]);
            ConstCounter::new(s.dropped).encode(m.encode_family(&set)?)?;
        }
        let mut m = DNS_EVICTIONS.descriptor(enc)?;
        for (name, s) in &stats {
            let set = DNS_EVICTIONS.set([name.clone()]);
            ConstCounter::new(s.evicted).encode(m.encode_family(&set)?)?;
        }
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(state: Arc<State>, counters: Arc<Counters>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ActgateCollector { state, counters }));
        Self { registry }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String can't fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod deploy;
