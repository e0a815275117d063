//! Issue 18, Kubernetes: pods that opt in with the `actgate.dev/label` annotation are mapped
//! from their UID to their cgroups, laid out in the guest's real cgroupfs exactly as the
//! kubelet lays them out under each cgroup driver. The API server is a fake on a loopback
//! port that serves a PodList for this node's field selector only.
//!
//! The daemon logs one line per mapped pod, and binds each pod's cgroup to its label:
//! `a_process_in_a_mapped_pod_cgroup_is_governed`.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::Suite;
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, verdict_line},
};

const NODE: &str = "vm-node";
const LABEL: &str = "k8s-agent";
const NAMESPACE: &str = "agents";
const CGROUP: &str = "/sys/fs/cgroup";

/// A pod the fake API server lists, and where the kubelet would have put its cgroup.
struct Pod {
    name: &'static str,
    uid: &'static str,
    qos: Option<&'static str>,
    annotation: Option<&'static str>,
    /// Relative to the cgroup v2 mount; None for a pod that is not mapped.
    cgroup: Option<&'static str>,
}

const PODS: &[Pod] = &[
    Pod {
        name: "burstable-systemd",
        uid: "0a1b2c3d-0000-4000-8000-000000000001",
        qos: Some("Burstable"),
        annotation: Some(LABEL),
        cgroup: Some(
            "kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0a1b2c3d_0000_4000_8000_000000000001.slice",
        ),
    },
    Pod {
        name: "guaranteed-systemd",
        uid: "0a1b2c3d-0000-4000-8000-000000000002",
        qos: Some("Guaranteed"),
        annotation: Some(LABEL),
        cgroup: Some("kubepods.slice/kubepods-pod0a1b2c3d_0000_4000_8000_000000000002.slice"),
    },
    Pod {
        name: "besteffort-systemd",
        uid: "0a1b2c3d-0000-4000-8000-000000000003",
        qos: Some("BestEffort"),
        annotation: Some(LABEL),
        cgroup: Some(
            "kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0a1b2c3d_0000_4000_8000_000000000003.slice",
        ),
    },
    Pod {
        name: "guaranteed-cgroupfs",
        uid: "0a1b2c3d-0000-4000-8000-000000000004",
        qos: Some("Guaranteed"),
        annotation: Some(LABEL),
        cgroup: Some("kubepods/pod0a1b2c3d-0000-4000-8000-000000000004"),
    },
    Pod {
        name: "burstable-cgroupfs",
        uid: "0a1b2c3d-0000-4000-8000-000000000005",
        qos: Some("Burstable"),
        annotation: Some(LABEL),
        cgroup: Some("kubepods/burstable/pod0a1b2c3d-0000-4000-8000-000000000005"),
    },
    // No status.qosClass: found by looking under every class.
    Pod {
        name: "besteffort-cgroupfs-no-qos",
        uid: "0a1b2c3d-0000-4000-8000-000000000006",
        qos: None,
        annotation: Some(LABEL),
        cgroup: Some("kubepods/besteffort/pod0a1b2c3d-0000-4000-8000-000000000006"),
    },
    Pod {
        name: "not-annotated",
        uid: "0a1b2c3d-0000-4000-8000-000000000007",
        qos: Some("BestEffort"),
        annotation: None,
        cgroup: None,
    },
    Pod {
        name: "bad-label",
        uid: "0a1b2c3d-0000-4000-8000-000000000008",
        qos: Some("BestEffort"),
        annotation: Some("../escape"),
        cgroup: None,
    },
];

/// The pod whose cgroup the suite makes only after the daemon started.
const LATE: Pod = Pod {
    name: "late-cgroupfs",
    uid: "0a1b2c3d-0000-4000-8000-000000000009",
    qos: Some("BestEffort"),
    annotation: Some(LABEL),
    cgroup: Some("kubepods/besteffort/pod0a1b2c3d-0000-4000-8000-000000000009"),
};

/// The cgroups of the annotated pods that exist from the start (the not-annotated pod's
/// tree too, so that it is its annotation, not its cgroup, that keeps it out).
fn trees() -> Vec<PathBuf> {
    let mut t: Vec<PathBuf> = PODS
        .iter()
        .filter_map(|p| p.cgroup)
        .map(|c| Path::new(CGROUP).join(c))
        .collect();
    t.push(Path::new(CGROUP).join("kubepods/besteffort/pod0a1b2c3d-0000-4000-8000-000000000007"));
    t
}

fn pod_json(p: &Pod) -> serde_json::Value {
    let mut meta = serde_json::json!({
        "name": p.name, "namespace": NAMESPACE, "uid": p.uid, "resourceVersion": "1",
    });
    if let Some(a) = p.annotation {
        meta["annotations"] = serde_json::json!({ "actgate.dev/label": a });
    }
    let mut status = serde_json::json!({ "phase": "Running" });
    if let Some(q) = p.qos {
        status["qosClass"] = q.into();
    }
    serde_json::json!({
        "metadata": meta,
        "spec": { "nodeName": NODE, "containers": [{ "name": "agent", "image": "agent:1" }] },
        "status": status,
    })
}

/// The fake API server: GET /api/v1/pods with this node's field selector gets the PodList,
/// anything else a 400; while `failing`, everything gets a 500.
struct FakeApi {
    port: u16,
    failing: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn start() -> Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the fake API server")?;
        let port = listener.local_addr()?.port();
        let failing = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut items: Vec<_> = PODS.iter().map(pod_json).collect();
        items.push(pod_json(&LATE));
        let list = serde_json::json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": { "resourceVersion": "1" },
            "items": items,
        })
        .to_string();
        let (f, r) = (failing.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &list, &f, &r);
            }
        });
        Ok(FakeApi {
            port,
            failing,
            requests,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One connection: requests until the client closes it (hyper keeps connections alive).
fn serve(
    mut s: TcpStream,
    list: &str,
    failing: &AtomicBool,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // GETs have no body: a request ends at its blank line.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let line = head.lines().next().unwrap_or_default().to_string();
            requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            let selector = format!("fieldSelector=spec.nodeName%3D{NODE}");
            let (status, body) = if failing.load(Ordering::SeqCst) {
                ("500 Internal Server Error", r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"fake outage","code":500}"#.to_string())
            } else if line.starts_with("GET /api/v1/pods?") && line.contains(&selector) {
                ("200 OK", list.to_string())
            } else {
                (
                    "400 Bad Request",
                    format!(
                        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"unexpected request {line}","code":400}}"#
                    ),
                )
            };
            write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
        }
    }
}

pub struct Fixture {
    daemon: Option<Daemon>,
    api: FakeApi,
}

fn policy(ctx: &Ctx) -> String {
    format!(
        "name: vmtest-kube\nlabels: [{LABEL}]\nmode: enforce\nexec:\n  default: allow\n  deny: [{}]\n",
        ctx.path("kube/bin/denied").display()
    )
}

fn start(ctx: &Ctx) -> Result<Fixture> {
    remove_trees();
    for t in trees() {
        fs::create_dir_all(&t).with_context(|| format!("making the cgroup {}", t.display()))?;
    }
    harness::install("/bin/true", &ctx.path("kube/bin/denied"))?;
    harness::write(&ctx.path("kube/policies/kube.yaml"), &policy(ctx))?;
    let api = FakeApi::start()?;
    let url = api.url();
    let daemon = Daemon::start(
        ctx,
        &ctx.path("kube/policies"),
        &[
            "--kubernetes",
            "--kubernetes-api",
            &url,
            "--node-name",
            NODE,
        ],
    )?;
    Ok(Fixture {
        daemon: Some(daemon),
        api,
    })
}

fn stop(mut f: Fixture) -> Result<()> {
    let stopped = f.daemon.take().map(Daemon::stop_cleanly).transpose();
    remove_trees();
    stopped.map(|_| ())
}

/// Removes the kubelet-style trees, deepest first (cgroupfs removes empty cgroups only).
fn remove_trees() {
    for top in ["kubepods.slice", "kubepods"] {
        let mut dirs = Vec::new();
        collect_dirs(&Path::new(CGROUP).join(top), &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

fn mapped_line(p: &Pod) -> String {
    format!(
        "pod {NAMESPACE}/{} (uid {}) → cgroup {} label {}",
        p.name,
        p.uid,
        p.cgroup.unwrap_or_default(),
        p.annotation.unwrap_or_default()
    )
}

/// Waits up to `within` until the daemon's log holds every one of `lines`; the missing ones.
fn wait_for_log(d: &Daemon, lines: &[String], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let log = d.log_text();
        let missing: Vec<String> = lines
            .iter()
            .filter(|l| !log.contains(*l))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn daemon(f: &Fixture) -> Result<&Daemon, NotPassed> {
    f.daemon
        .as_ref()
        .ok_or_else(|| NotPassed::Fail("the daemon is gone".into()))
}

fn expect_log(d: &Daemon, lines: &[String], within: Duration, what: &str) -> Outcome {
    let missing = wait_for_log(d, lines, within);
    if missing.is_empty() {
        return Ok(());
    }
    Err(NotPassed::Fail(format!(
        "{what}: the daemon's log lacks {missing:#?}; it says:\n{}",
        d.log_text()
    )))
}

fn kubelet_style_pod_cgroups_of_both_drivers_and_every_qos_class_are_mapped(
    _: &Ctx,
    f: &mut Fixture,
) -> Outcome {
    let lines: Vec<String> = PODS
        .iter()
        .filter(|p| p.cgroup.is_some())
        .map(mapped_line)
        .collect();
    expect_log(daemon(f)?, &lines, Duration::from_secs(20), "mapped pods")
}

fn the_daemon_asks_only_for_its_own_nodes_pods(_: &Ctx, f: &mut Fixture) -> Outcome {
    let requests = f
        .api
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let want = format!("fieldSelector=spec.nodeName%3D{NODE}");
    if requests.is_empty() || !requests.iter().all(|r| r.contains(&want)) {
        return Err(NotPassed::Fail(format!(
            "expected every request to carry {want}, got {requests:#?}"
        )));
    }
    Ok(())
}

fn unannotated_pods_and_invalid_labels_are_not_mapped(_: &Ctx, f: &mut Fixture) -> Outcome {
    let d = daemon(f)?;
    expect_log(
        d,
        &[
            "pod agents/bad-label (uid 0a1b2c3d-0000-4000-8000-000000000008) is not governed"
                .to_string(),
        ],
        Duration::from_secs(20),
        "the refused pod",
    )?;
    let log = d.log_text();
    for p in PODS.iter().filter(|p| p.cgroup.is_none()) {
        if log.contains(&format!("{} → cgroup", p.uid)) {
            return Err(NotPassed::Fail(format!(
                "pod {} was mapped:\n{log}",
                p.name
            )));
        }
    }
    Ok(())
}

fn a_pod_whose_cgroup_appears_later_is_mapped_on_a_later_pass(_: &Ctx, f: &mut Fixture) -> Outcome {
    let d = daemon(f)?;
    thread::sleep(Duration::from_secs(2));
    if d.log_text().contains(LATE.uid) {
        return Err(NotPassed::Fail(format!(
            "pod {} was mapped before its cgroup existed:\n{}",
            LATE.name,
            d.log_text()
        )));
    }
    let dir = Path::new(CGROUP).join(LATE.cgroup.unwrap_or_default());
    fs::create_dir_all(&dir).map_err(|e| NotPassed::Fail(format!("{}: {e}", dir.display())))?;
    // Each pass is a second apart; under emulation allow a few.
    expect_log(
        d,
        &[mapped_line(&LATE)],
        Duration::from_secs(10),
        "the late pod",
    )
}

fn an_api_server_outage_is_logged_and_the_map_kept(_: &Ctx, f: &mut Fixture) -> Outcome {
    let d = daemon(f)?;
    f.api.failing.store(true, Ordering::SeqCst);
    let failed = expect_log(
        d,
        &[format!("listing the pods of node {NODE} failed")],
        Duration::from_secs(20),
        "the outage",
    );
    f.api.failing.store(false, Ordering::SeqCst);
    failed?;
    expect_log(
        d,
        &[format!("listing the pods of node {NODE} works again")],
        Duration::from_secs(20),
        "the recovery",
    )?;
    // Nothing was unmapped by the outage.
    let log = d.log_text();
    expect_eq!(
        log.contains("no longer maps"),
        false,
        "an unmapping in:\n{log}"
    );
    Ok(())
}

/// The end result: a process moved into a mapped pod's cgroup (as the container runtime puts
/// containers there) is held to the label's policy.
fn a_process_in_a_mapped_pod_cgroup_is_governed(ctx: &Ctx, _: &mut Fixture) -> Outcome {
    for p in PODS.iter().filter(|p| p.cgroup.is_some()) {
        // A container's own cgroup beneath the pod's, as the runtime makes it.
        let container = Path::new(CGROUP)
            .join(p.cgroup.unwrap_or_default())
            .join("container-1");
        fs::create_dir_all(&container).map_err(|e| NotPassed::Fail(e.to_string()))?;
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} try exec {}",
            container.display(),
            ctx.guest.display(),
            ctx.path("kube/bin/denied").display()
        );
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| NotPassed::Fail(e.to_string()))?;
        let _ = fs::remove_dir(&container);
        expect_eq!(
            verdict_line(&out),
            "EPERM",
            "a denied exec in pod {}'s cgroup",
            p.name
        );
    }
    Ok(())
}

pub fn suite() -> Suite<Fixture> {
    Suite {
        name: "kubernetes",
        start,
        cases: vec![
            case!(
                kubelet_style_pod_cgroups_of_both_drivers_and_every_qos_class_are_mapped,
                fixture
            ),
            case!(the_daemon_asks_only_for_its_own_nodes_pods, fixture),
            case!(unannotated_pods_and_invalid_labels_are_not_mapped, fixture),
            case!(
                a_pod_whose_cgroup_appears_later_is_mapped_on_a_later_pass,
                fixture
            ),
            case!(an_api_server_outage_is_logged_and_the_map_kept, fixture),
            case!(a_process_in_a_mapped_pod_cgroup_is_governed, fixture),
        ],
        stop,
        stop_test: None,
    }
}
