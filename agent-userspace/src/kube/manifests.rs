//! The manifests under deploy/kubernetes, checked offline against the Kubernetes API's own
//! types (k8s-openapi, API 1.33): each document is read into its typed struct, written back
//! and compared with what was read, so a misspelt or misplaced key, which the typed struct
//! would drop, fails the test as surely as a wrong type. Then what the schema can't see: the
//! API server's cross-field rules that apply here, the daemon's port and paths, the
//! ConfigMap against policies/, and the ServiceMonitor (a CRD, checked by hand).

use std::{collections::BTreeMap, fs, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{Serialize, de::DeserializeOwned},
};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).expect("a manifest");
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} is not YAML: {e}"));
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

/// `doc` read as `T` and written back is `doc` itself: no key was unknown or misplaced.
fn round_trips<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", kind(doc)));
    let back = serde_json::to_value(&typed).expect("serializes");
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!(
            "{file}: {} has a key or value that {} doesn't know, at {path}",
            kind(doc),
            std::any::type_name::<T>()
        );
    }
    typed
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("(no kind)")
}

/// Where `a` and `b` first differ, as a JSON path.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(k, v)| match y.get(k) {
                Some(w) => first_difference(v, w, format!("{at}.{k}")),
                None => Some(format!("{at}.{k}")),
            })
            .or_else(|| {
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{at}.{k} (added)"))
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ => (a != b).then_some(if at.is_empty() { ".".into() } else { at }),
    }
}

#[derive(Default)]
struct Found {
    daemonset: Option<DaemonSet>,
    configmap: Option<ConfigMap>,
    service: Option<Service>,
    monitor: Option<Value>,
    kinds: Vec<String>,
}

fn check_all() -> Found {
    let mut found = Found::default();
    for (file, doc) in documents() {
        found.kinds.push(kind(&doc).to_string());
        match (doc["apiVersion"].as_str(), kind(&doc)) {
            (Some("v1"), "Namespace") => drop(round_trips::<Namespace>(&file, &doc)),
            (Some("v1"), "ServiceAccount") => drop(round_trips::<ServiceAccount>(&file, &doc)),
            (Some("rbac.authorization.k8s.io/v1"), "ClusterRole") => {
                drop(round_trips::<ClusterRole>(&file, &doc))
            }
            (Some("rbac.authorization.k8s.io/v1"), "ClusterRoleBinding") => {
                drop(round_trips::<ClusterRoleBinding>(&file, &doc))
            }
            (Some("v1"), "ConfigMap") => found.configmap = Some(round_trips(&file, &doc)),
            (Some("v1"), "Service") => found.service = Some(round_trips(&file, &doc)),
            (Some("apps/v1"), "DaemonSet") => found.daemonset = Some(round_trips(&file, &doc)),
            (Some("monitoring.coreos.com/v1"), "ServiceMonitor") => found.monitor = Some(doc),
            (version, kind) => panic!("{file}: unexpected {version:?} {kind}"),
        }
    }
    found
}

#[test]
fn every_manifest_matches_the_kubernetes_schema() {
    let found = check_all();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(found.kinds.iter().any(|k| k == kind), "no {kind} manifest");
    }
}

#[test]
fn the_round_trip_catches_a_misspelt_key() {
    let doc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "targetPort": "metrics", "protocl": "TCP"}]}
    });
    let caught = std::panic::catch_unwind(|| round_trips::<Service>("test", &doc));
    assert!(caught.is_err());
}

#[test]
fn the_daemonset_probes_the_daemons_own_endpoints_and_mounts_what_it_reads() {
    let ds = check_all().daemonset.expect("a DaemonSet");
    let pod = ds.spec.and_then(|s| s.template.spec).expect("a pod spec");
    assert_eq!(pod.host_pid, Some(true), "hostPID: see the manifest");
    let c = &pod.containers[0];
    let port = c.ports.as_ref().expect("ports")[0].container_port;
    let args = c.args.clone().unwrap_or_default();
    assert!(args.contains(&format!("--metrics-addr=0.0.0.0:{port}")));
    assert!(args.contains(&"--kubernetes".to_string()));
    let http = include_str!("../http.rs");
    for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
        let path = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
            .expect("an HTTP probe");
        assert!(
            http.contains(&format!(".route(\"{path}\"")),
            "{path} is not served"
        );
    }
    let sc = c.security_context.as_ref().expect("a security context");
    let mounts: BTreeMap<String, _> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), m))
        .collect();
    for path in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/sys/kernel/btf",
        "/sys/kernel/security",
        "/etc/actgate/policies",
    ] {
        assert!(mounts.contains_key(path), "{path} is not mounted");
    }
    // The API server refuses Bidirectional propagation outside privileged containers, and
    // allowPrivilegeEscalation: false beside CAP_SYS_ADMIN (its validation, not the schema).
    if sc.privileged != Some(true) {
        for m in mounts.values() {
            assert_ne!(m.mount_propagation.as_deref(), Some("Bidirectional"));
        }
        let adds_sys_admin = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_some_and(|a| a.iter().any(|c| c == "SYS_ADMIN"));
        assert!(!(adds_sys_admin && sc.allow_privilege_escalation == Some(false)));
    }
    let env = c.env.as_ref().expect("env");
    assert!(env.iter().any(|e| {
        e.name == "NODE_NAME"
            && e.value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .is_some_and(|f| f.field_path == "spec.nodeName")
    }));
}

#[test]
fn the_configmap_holds_the_shipped_policies_verbatim() {
    let cm = check_all().configmap.expect("a ConfigMap");
    let data = cm.data.expect("data");
    let mut shipped = BTreeMap::new();
    for e in fs::read_dir(repo().join("policies")).expect("policies/") {
        let p = e.expect("an entry").path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        shipped.insert(name, fs::read_to_string(&p).expect("a policy"));
    }
    assert_eq!(
        data, shipped,
        "deploy/kubernetes/policies.yaml differs from policies/"
    );
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    let found = check_all();
    let svc = found.service.expect("a Service");
    let m = found.monitor.expect("a ServiceMonitor");
    let allowed = |v: &Value, keys: &[&str], what: &str| {
        for k in v
            .as_object()
            .unwrap_or_else(|| panic!("{what} is a map"))
            .keys()
        {
            assert!(keys.contains(&k.as_str()), "{what} has an unknown key {k}");
        }
    };
    allowed(
        &m,
        &["apiVersion", "kind", "metadata", "spec"],
        "the ServiceMonitor",
    );
    allowed(
        &m["spec"],
        &["selector", "namespaceSelector", "endpoints", "jobLabel"],
        "its spec",
    );
    allowed(
        &m["spec"]["namespaceSelector"],
        &["matchNames", "any"],
        "namespaceSelector",
    );
    let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
    for (k, v) in m["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            svc_labels.get(k).map(String::as_str),
            v.as_str(),
            "label {k}"
        );
    }
    let ns = svc.metadata.namespace.clone().expect("a namespace");
    assert!(
        m["spec"]["namespaceSelector"]["matchNames"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n.as_str() == Some(&ns)))
    );
    let port_names: Vec<String> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    for e in m["spec"]["endpoints"].as_array().expect("endpoints") {
        allowed(
            e,
            &["port", "path", "interval", "scheme", "scrapeTimeout"],
            "an endpoint",
        );
        let port = e["port"].as_str().expect("a port name");
        assert!(
            port_names.iter().any(|p| p == port),
            "no Service port {port}"
        );
        assert_eq!(e["path"], "/metrics");
    }
}
