//! `/metrics`: OpenMetrics text from prometheus-client. Values are read on each scrape from
//! the kernel's counters and the daemon's state, so there is no second copy to drift.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
};

use agent_common::{Action, Hook, KernelError, Trigger, Verdict};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    cgroup,
    counters::Counters,
    dns::telemetry::Outcome,
    plan::LabelState,
    selftest::{self, Proof},
    state::State,
};

#[derive(Debug)]
struct ActgateCollector {
    state: Arc<State>,
    counters: Arc<Counters>,
}

type Labels = Vec<(&'static str, String)>;

impl Collector for ActgateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = self.state.labels();

        let mut m = enc.encode_descriptor(
            "actgate_decisions",
            "Decisions the kernel made for labelled processes, counted in the kernel",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (index, label) in &labels {
            let d = self.counters.decisions(*index);
            for a in Action::ALL {
                for v in Verdict::ALL {
                    let set: Labels = vec![
                        ("label", label.name.clone()),
                        ("action", a.as_str().into()),
                        ("verdict", v.as_str().into()),
                    ];
                    ConstCounter::new(d[a as usize][v as usize]).encode(m.encode_family(&set)?)?;
                }
            }
        }

        let mut m = enc.encode_descriptor(
            "actgate_events_dropped",
            "Events lost because the ring buffer was full, counted in the kernel",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for a in Action::ALL {
            let set: Labels = vec![("action", a.as_str().into())];
            ConstCounter::new(self.counters.dropped(a)).encode(m.encode_family(&set)?)?;
        }

        let mut m = enc.encode_descriptor(
            "actgate_kernel_errors",
            "Hook calls the kernel could not judge (e.g. an unresolvable path), by reason; each \
             was refused, as an event with reason unjudged",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for r in KernelError::ALL {
            let set: Labels = vec![("reason", r.as_str().into())];
            ConstCounter::new(self.counters.errors_of(*r)).encode(m.encode_family(&set)?)?;
        }

        ConstGauge::new(self.state.policies_loaded.load(Ordering::Relaxed) as i64).encode(
            enc.encode_descriptor(
                "actgate_policies_loaded",
                "Policies in force",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?,
        )?;

        let mut m = enc.encode_descriptor(
            "actgate_policy_reloads",
            "Policy reloads by result",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (result, n) in [
            ("success", &self.state.reloads_ok),
            ("failure", &self.state.reloads_failed),
        ] {
            let set: Labels = vec![("result", result.into())];
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(m.encode_family(&set)?)?;
        }

        let mut m = enc.encode_descriptor(
            "actgate_labelled_processes",
            "Processes running under each label (its cgroup subtree)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for label in labels.values() {
            let n = cgroup::process_count(&self.state.root.label_dir(&label.name));
            let set: Labels = vec![("label", label.name.clone())];
            ConstGauge::new(n as i64).encode(m.encode_family(&set)?)?;
        }

        let mut m = enc.encode_descriptor(
            "actgate_label_orphaned",
            "1 when no policy names the label any more while processes still run under it (the \
             kernel denies all they do), 0 otherwise",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for label in labels.values() {
            let set: Labels = vec![("label", label.name.clone())];
            ConstGauge::new(i64::from(label.orphaned)).encode(m.encode_family(&set)?)?;
        }

        let revocations = &self.counters.revocations;
        let mut m = enc.encode_descriptor(
            "actgate_label_revoked",
            "1 while the label is revoked (the kernel denies all its processes do), 0 otherwise",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (index, label) in &labels {
            let set: Labels = vec![("label", label.name.clone())];
            let revoked = revocations.get(*index).is_some();
            ConstGauge::new(i64::from(revoked)).encode(m.encode_family(&set)?)?;
        }

        let mut m = enc.encode_descriptor(
            "actgate_revocations",
            "Revocations of the label, by what revoked it: manual (actgate revoke), budget (a \
             budget with then: revoke) or breaker (revoke_after)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (index, label) in &labels {
            for t in Trigger::ALL {
                let set: Labels = vec![
                    ("label", label.name.clone()),
                    ("trigger", t.as_str().into()),
                ];
                ConstCounter::new(revocations.count(*index, t)).encode(m.encode_family(&set)?)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "actgate_budget_exceeded",
            "Actions refused (or, in audit mode, reported) because the label's budget for the \
             action was used up, counted in the kernel",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (index, label) in &labels {
            for a in Action::ALL {
                let set: Labels =
                    vec![("label", label.name.clone()), ("action", a.as_str().into())];
                let n = self.counters.budget_exceeded(*index, a);
                ConstCounter::new(n).encode(m.encode_family(&set)?)?;
            }
        }

        self.encode_dns(&labels, &mut enc)?;

        let verified = *self
            .state
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut m = enc.encode_descriptor(
            "actgate_enforcement_verified",
            "1 when the start-up self-test saw every hook of this action deny, 0 when it did not \
             or has not run",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for a in Action::ALL {
            let set: Labels = vec![("action", a.as_str().into())];
            let v = i64::from(selftest::action_verified(&verified, a) == Some(true));
            ConstGauge::new(v).encode(m.encode_family(&set)?)?;
        }

        let mut m = enc.encode_descriptor(
            "actgate_hook_verified",
            "1 when the start-up self-test saw this LSM hook deny, 0 when it did not or has not \
             run",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (hook, v) in Hook::ALL.iter().zip(verified) {
            if v == Proof::Absent {
                continue;
            }
            let set: Labels = vec![("hook", hook.name.into())];
            ConstGauge::new(i64::from(v == Proof::Denied)).encode(m.encode_family(&set)?)?;
        }

        let set: Labels = vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("kernel", self.state.kernel.clone()),
        ];
        let mut m = enc.encode_descriptor(
            "actgate_build_info",
            "Version of actgate and release of the running kernel",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
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
        let mut m = enc.encode_descriptor(
            "actgate_dns_queries",
            "DNS queries of the label, by verdict: allowed (forwarded and answered), refused (no \
             rule allows the name, a rule denies it, or the label is revoked), audit (answered in \
             audit mode, refused in enforce mode) or failed (the upstream failed, or the query \
             could not be read or recorded)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (name, s) in &stats {
            for o in Outcome::ALL {
                let set: Labels = vec![("label", name.clone()), ("verdict", o.as_str().into())];
                ConstCounter::new(s.queries[o as usize]).encode(m.encode_family(&set)?)?;
            }
        }
        let families = [
            (
                "actgate_dns_addresses",
                "Addresses the label may connect to by name right now",
                prometheus_client::metrics::MetricType::Gauge,
            ),
            (
                "actgate_dns_dropped_answers",
                "Answer records the rebinding guard dropped: a wildcard-matched or public name \
                 that pointed at a loopback, link-local, private or the host's own address",
                prometheus_client::metrics::MetricType::Counter,
            ),
            (
                "actgate_dns_evictions",
                "Lookups forgotten early to keep the label within its limits of names and \
                 addresses",
                prometheus_client::metrics::MetricType::Counter,
            ),
        ];
        for (i, (metric, help, kind)) in families.into_iter().enumerate() {
            let mut m = enc.encode_descriptor(metric, help, None, kind)?;
            for (name, s) in &stats {
                let set: Labels = vec![("label", name.clone())];
                match i {
                    0 => ConstGauge::new(s.addresses as i64).encode(m.encode_family(&set)?)?,
                    1 => ConstCounter::new(s.dropped).encode(m.encode_family(&set)?)?,
                    _ => ConstCounter::new(s.evicted).encode(m.encode_family(&set)?)?,
                }
            }
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
