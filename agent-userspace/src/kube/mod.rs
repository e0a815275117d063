//! Kubernetes: the pods on this node that opt in with the `actgate.dev/label` annotation,
//! mapped to their cgroups under the kubelet's tree. What binds those cgroups to their
//! labels is the cgroup binding's job; this module only keeps the map current.

pub mod client;
pub mod layout;
#[cfg(test)]
mod manifests;
pub mod pods;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use self::{
    client::Pods,
    pods::{ANNOTATION, OptIn},
};

/// Pods on this node that opt in, mapped to their cgroups.
/// Each entry: (cgroup directory relative to the cgroup2 mount, e.g.
/// "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice", label name).
pub type PodBindings = BTreeMap<PathBuf, String>;

/// How often the node's pods are listed.
const EVERY: Duration = Duration::from_secs(1);

/// `actgate run`'s Kubernetes options.
#[derive(Args, Clone, Debug, Default)]
#[group(id = "kube")]
pub struct KubeOptions {
    /// Govern this node's pods that carry the annotation `actgate.dev/label: LABEL`, found
    /// through the API server (in a pod: KUBERNETES_SERVICE_HOST/_PORT and the service
    /// account's token and CA).
    #[arg(long)]
    pub kubernetes: bool,
    /// The API server's URL, instead of the in-cluster address (http:// is allowed, for
    /// tests; the service account token is only sent over https).
    #[arg(long, value_name = "URL", requires = "kubernetes")]
    pub kubernetes_api: Option<String>,
    /// The node whose pods are governed. Default: $NODE_NAME, then the host name.
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub node_name: Option<String>,
}

/// Spawns the task that keeps `PodBindings` current: it lists the node's pods from the API
/// server every second, keeps those annotated `actgate.dev/label: <label>`, maps each pod
/// UID to its cgroup under the kubelet's tree (both cgroup drivers, all QoS classes), and
/// sends the map whenever it changes. A pod whose cgroup doesn't exist yet is looked for
/// again on the next pass. Errors reaching the API server are logged and the last known map
/// is kept. The task ends when every receiver is gone. Must run inside the tokio runtime.
pub fn spawn(opts: KubeOptions, cgroup_mount: PathBuf) -> Result<watch::Receiver<PodBindings>> {
    let node = node_name(&opts)?;
    let pods = Pods::new(opts.kubernetes_api.as_deref())?;
    info!(
        api = pods.base(),
        node = %node,
        "governing this node's pods annotated {ANNOTATION}"
    );
    let (tx, rx) = watch::channel(PodBindings::new());
    tokio::spawn(async move {
        let mut poll = Poll::default();
        let mut every = interval(EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !tx.is_closed() {
            every.tick().await;
            let listed = pods.on(&node).await;
            poll.pass(listed, &node, &cgroup_mount, &tx);
        }
    });
    Ok(rx)
}

/// --node-name, else $NODE_NAME (the DaemonSet sets it from spec.nodeName), else the host name.
fn node_name(opts: &KubeOptions) -> Result<String> {
    if let Some(name) = opts.node_name.clone().filter(|n| !n.is_empty()) {
        return Ok(name);
    }
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return Ok(name);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name; give the node's name with --node-name")?;
    Ok(host.trim().to_string())
}

/// Where each opted-in pod's cgroup is, if it exists yet (`exists` says whether a path
/// relative to the cgroup v2 mount is a directory).
pub fn locate(
    opt_ins: Vec<OptIn>,
    exists: impl Fn(&Path) -> bool,
) -> Vec<(OptIn, Option<PathBuf>)> {
    opt_ins
        .into_iter()
        .map(|p| {
            let found = layout::candidates(&p.uid, p.qos)
                .into_iter()
                .find(|c| exists(c));
            (p, found)
        })
        .collect()
}

/// What the thread remembers between passes, so that each fact is logged once.
#[derive(Default)]
struct Poll {
    /// Mapped pods by UID: (cgroup, label).
    mapped: BTreeMap<String, (PathBuf, String)>,
    /// Pods already said to be refused, or to have no cgroup yet, by UID.
    refused: BTreeSet<String>,
    waiting: BTreeSet<String>,
    /// The last failure to list pods, and how many passes failed since the last success.
    failure: Option<String>,
    failures: u64,
}

impl Poll {
    /// Takes one listing of the node's pods: logs what changed and sends the new map.
    fn pass(
        &mut self,
        listed: Result<Vec<Pod>>,
        node: &str,
        mount: &Path,
        tx: &watch::Sender<PodBindings>,
    ) {
        let list = match listed {
            Ok(list) => list,
            Err(e) => {
                self.failures += 1;
                let text = format!("{e:#}");
                if self.failure.as_ref() != Some(&text) {
                    warn!(
                        "listing the pods of node {node} failed: {text}; keeping the {} pod \
                         cgroup(s) known, and trying again every second",
                        self.mapped.len()
                    );
                    self.failure = Some(text);
                }
                return;
            }
        };
        if self.failure.take().is_some() {
            info!(
                "listing the pods of node {node} works again after {} failed attempt(s)",
                self.failures
            );
            self.failures = 0;
        }
        let (opt_ins, refused) = pods::opt_ins(list, agent_policy::parse::label_problem);
        let mut seen = BTreeSet::new();
        for r in refused {
            if self.refused.insert(r.uid.clone()) {
                warn!(
                    "pod {} (uid {}) is not governed: {}; fix the annotation",
                    r.pod, r.uid, r.why
                );
            }
            seen.insert(r.uid);
        }
        let mut mapped = BTreeMap::new();
        for (p, cgroup) in locate(opt_ins, |rel| mount.join(rel).is_dir()) {
            seen.insert(p.uid.clone());
            let Some(cgroup) = cgroup else {
                if self.waiting.insert(p.uid.clone()) {
                    debug!(
                        "pod {} (uid {}) has no cgroup yet; looking again each second",
                        p.pod, p.uid
                    );
                }
                continue;
            };
            self.waiting.remove(&p.uid);
            let now = (cgroup, p.label);
            if self.mapped.get(&p.uid) != Some(&now) {
                info!(
                    "pod {} (uid {}) → cgroup {} label {}",
                    p.pod,
                    p.uid,
                    now.0.display(),
                    now.1
                );
            }
            mapped.insert(p.uid, now);
        }
        for (uid, (cgroup, label)) in &self.mapped {
            if !mapped.contains_key(uid) {
                info!(
                    "pod uid {uid} no longer maps to cgroup {} (label {label}): it is gone, \
                     lost its annotation, or its cgroup was removed",
                    cgroup.display()
                );
            }
        }
        self.refused.retain(|uid| seen.contains(uid));
        self.waiting.retain(|uid| seen.contains(uid));
        self.mapped = mapped;
        let bindings: PodBindings = self.mapped.values().cloned().collect();
        tx.send_if_modified(|old| {
            let changed = *old != bindings;
            if changed {
                *old = bindings;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{layout::Qos, *};

    #[test]
    fn a_pod_is_found_under_whichever_driver_and_class_holds_it() {
        let pod = |uid: &str, qos| OptIn {
            pod: "ns/p".into(),
            uid: uid.into(),
            qos,
            label: "l".into(),
        };
        let tree = [
            "kubepods/besteffort/pod1-1",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2_2.slice",
        ];
        let exists = |p: &Path| tree.iter().any(|t| Path::new(t) == p);
        let found = locate(
            vec![
                // qosClass says Guaranteed, but the cgroup is BestEffort's: still found.
                pod("1-1", Some(Qos::Guaranteed)),
                pod("2-2", None),
                pod("3-3", Some(Qos::Burstable)),
            ],
            exists,
        );
        assert_eq!(found[0].1, Some(PathBuf::from(tree[0])));
        assert_eq!(found[1].1, Some(PathBuf::from(tree[1])));
        assert_eq!(found[2].1, None);
    }
}
