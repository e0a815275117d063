//! network.connect enforcement end to end against local listeners (loopback addresses only),
//! audit mode, policy reload on SIGHUP, and a policy of 20,000 rules.

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::{fs::PermissionsExt, net::UnixListener},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use super::files::{Session, decisions, eventually, expect_decision_changes, own_tmpfs, unmount};
use crate::{
    expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, Results, fail_all, scrape},
};

const LABEL: &str = "vmnet";
const AUDIT: &str = "vmaudit";
const RELOAD: &str = "vmreload";
const SCALE: &str = "vmscale";

/// Any port of 127.0.0.1 is allowed; 18001 and 18003 are two of them.
const ANY_1: &str = "127.0.0.1:18001";
const ANY_2: &str = "127.0.0.1:18003";
/// `127.0.0.2/32:18002`: this port only.
const PORT_OK: &str = "127.0.0.2:18002";
const PORT_OTHER: &str = "127.0.0.2:18003";
/// `127.0.0.0/24:18004` allows it, `127.0.0.3/32` denies it: deny wins.
const DENIED: &str = "127.0.0.3:18004";
const WIDE_OK: &str = "127.0.0.4:18004";
/// No rule at all: the default.
const NO_RULE: &str = "127.0.0.5:18003";
/// `[::1/128]:18005`.
const V6_OK: &str = "[::1]:18005";
const V6_OTHER: &str = "[::1]:18003";

const LISTEN: [&str; 9] = [
    ANY_1, ANY_2, PORT_OK, PORT_OTHER, DENIED, WIDE_OK, NO_RULE, V6_OK, V6_OTHER,
];

fn net_policy() -> String {
    format!(
        "name: vmtest-net
labels: [{LABEL}]
mode: enforce
network:
  connect:
    default: deny
    allow:
      - 127.0.0.1/32
      - 127.0.0.2/32:18002
      - \"[::1/128]:18005\"
      - 127.0.0.0/24:18004
    deny:
      - 127.0.0.3/32
"
    )
}

fn audit_policy() -> String {
    format!(
        "name: vmtest-audit
labels: [{AUDIT}]
mode: audit
exec:
  default: deny
files:
  write:
    default: deny
  read:
    default: deny
network:
  connect:
    default: deny
"
    )
}

/// A TCP listener and a UDP socket bound to one loopback address and port.
struct Endpoint {
    addr: SocketAddr,
    tcp: TcpListener,
    udp: UdpSocket,
}

/// The local servers the probes connect to, so an allowed connect really connects and a
/// denied one is seen not to.
struct Listeners(Vec<Endpoint>);

/// An IPv4-mapped IPv6 address reaches the IPv4 listener.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl Listeners {
    fn start(addrs: &[&str]) -> Result<Listeners> {
        let mut eps = Vec::new();
        for a in addrs {
            let addr: SocketAddr = a.parse().with_context(|| format!("address {a}"))?;
            let tcp = TcpListener::bind(addr).with_context(|| format!("TCP listener on {a}"))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(addr).with_context(|| format!("UDP socket on {a}"))?;
            eps.push(Endpoint { addr, tcp, udp });
        }
        Ok(Listeners(eps))
    }

    fn endpoint(&self, addr: &str) -> Result<&Endpoint> {
        let want = unmapped(addr.parse().with_context(|| format!("address {addr}"))?);
        self.0
            .iter()
            .find(|e| e.addr == want)
            .ok_or_else(|| anyhow!("no listener on {want}"))
    }

    /// Connections accepted on `addr`'s listener; waits up to 2 s for the first when `expect`.
    fn accepted(&self, addr: &str, expect: bool) -> Result<usize> {
        let e = self.endpoint(addr)?;
        let deadline = Instant::now() + Duration::from_secs(if expect { 2 } else { 0 });
        let mut n = 0;
        loop {
            match e.tcp.accept() {
                Ok(_) => n += 1,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if n > 0 || Instant::now() >= deadline {
                        return Ok(n);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Datagrams received on `addr`: waits up to 2 s for one when `expect`, 300 ms otherwise.
    fn received(&self, addr: &str, expect: bool) -> Result<usize> {
        let e = self.endpoint(addr)?;
        let mut wait = Duration::from_millis(if expect { 2000 } else { 300 });
        let mut n = 0;
        let mut buf = [0u8; 256];
        loop {
            e.udp.set_read_timeout(Some(wait))?;
            match e.udp.recv(&mut buf) {
                Ok(_) => {
                    n += 1;
                    wait = Duration::from_millis(50);
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(n);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Forgets whatever earlier tests left queued.
    fn drain(&self) -> Result<()> {
        for e in &self.0 {
            let a = e.addr.to_string();
            self.accepted(&a, false)?;
            e.udp.set_nonblocking(true)?;
            let mut buf = [0u8; 256];
            while e.udp.recv(&mut buf).is_ok() {}
            e.udp.set_nonblocking(false)?;
        }
        Ok(())
    }
}

/// One connect probe as `label` (None: unlabelled): asserts its verdict, and that the
/// listener saw exactly one connection or datagram when allowed and none when denied.
fn attempt(
    ctx: &Ctx,
    l: &Listeners,
    label: Option<&str>,
    probe: &str,
    addr: &str,
    want: &str,
) -> Outcome {
    l.drain()?;
    let who = label.unwrap_or("unlabelled");
    expect_eq!(
        ctx.attempt(label, &[probe, addr]),
        want,
        "{probe} {addr} as {who}"
    );
    let arrived = if probe == "connect-tcp" {
        l.accepted(addr, want == "OK")?
    } else {
        l.received(addr, want == "OK")?
    };
    let what = if probe == "connect-tcp" {
        "connections accepted"
    } else {
        "datagrams received"
    };
    expect_eq!(
        arrived,
        usize::from(want == "OK"),
        "{what} by the listener on {addr} after {probe} as {who}"
    );
    Ok(())
}

fn run_cases(
    ctx: &Ctx,
    l: &Listeners,
    label: Option<&str>,
    cases: &[(&str, &str, &str)],
) -> Outcome {
    for (probe, addr, want) in cases {
        attempt(ctx, l, label, probe, addr, want)?;
    }
    Ok(())
}

fn tcp_connect_to_allowed_address_any_port_succeeds(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[("connect-tcp", ANY_1, "OK"), ("connect-tcp", ANY_2, "OK")],
    )
}

fn tcp_connect_to_allowed_address_and_port_succeeds(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", PORT_OK, "OK")])
}

fn tcp_connect_to_other_port_is_eperm(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", PORT_OTHER, "EPERM")])
}

fn tcp_connect_to_denied_address_is_eperm(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[
            ("connect-tcp", DENIED, "EPERM"),
            ("connect-tcp", WIDE_OK, "OK"),
        ],
    )
}

fn tcp_connect_outside_every_rule_is_eperm(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", NO_RULE, "EPERM")])
}

fn tcp6_connect_follows_port_rule(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[
            ("connect-tcp", V6_OK, "OK"),
            ("connect-tcp", V6_OTHER, "EPERM"),
        ],
    )
}

fn udp_cases(probe: &'static str) -> [(&'static str, &'static str, &'static str); 7] {
    [
        (probe, ANY_2, "OK"),
        (probe, PORT_OK, "OK"),
        (probe, PORT_OTHER, "EPERM"),
        (probe, DENIED, "EPERM"),
        (probe, NO_RULE, "EPERM"),
        (probe, V6_OK, "OK"),
        (probe, V6_OTHER, "EPERM"),
    ]
}

fn udp_connect_follows_rules(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(ctx, l, Some(LABEL), &udp_cases("connect-udp"))
}

fn udp_sendto_follows_rules(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(ctx, l, Some(LABEL), &udp_cases("sendto-udp"))
}

fn ipv4_mapped_ipv6_is_judged_as_ipv4(ctx: &Ctx, l: &Listeners) -> Outcome {
    // No IPv6 rule allows these: only the IPv4 rules can.
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[
            ("connect-tcp", "[::ffff:127.0.0.1]:18003", "OK"),
            ("connect-tcp", "[::ffff:127.0.0.2]:18002", "OK"),
            ("connect-tcp", "[::ffff:127.0.0.2]:18003", "EPERM"),
            ("connect-tcp", "[::ffff:127.0.0.3]:18004", "EPERM"),
            ("connect-tcp", "[::ffff:127.0.0.4]:18004", "OK"),
            ("connect-udp", "[::ffff:127.0.0.1]:18001", "OK"),
            ("connect-udp", "[::ffff:127.0.0.5]:18003", "EPERM"),
            ("sendto-udp", "[::ffff:127.0.0.2]:18002", "OK"),
            ("sendto-udp", "[::ffff:127.0.0.3]:18004", "EPERM"),
        ],
    )
}

fn unix_socket_connect_is_not_governed(ctx: &Ctx, _: &Listeners) -> Outcome {
    let path = ctx.path("net/unix.sock");
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(anyhow::Error::from)?;
    listener
        .set_nonblocking(true)
        .map_err(anyhow::Error::from)?;
    expect_eq!(
        ctx.attempt(Some(LABEL), &["connect-unix", &path.display().to_string()]),
        "OK",
        "AF_UNIX connect under a policy whose connect default is deny"
    );
    expect_eq!(
        listener.accept().is_ok(),
        true,
        "the AF_UNIX listener accepted the connection"
    );
    Ok(())
}

fn unlabelled_connects_are_not_governed(ctx: &Ctx, l: &Listeners) -> Outcome {
    run_cases(
        ctx,
        l,
        None,
        &[
            ("connect-tcp", DENIED, "OK"),
            ("connect-tcp", PORT_OTHER, "OK"),
            ("connect-tcp", NO_RULE, "OK"),
            ("connect-tcp", V6_OTHER, "OK"),
            ("connect-tcp", "[::ffff:127.0.0.3]:18004", "OK"),
            ("connect-udp", DENIED, "OK"),
            ("sendto-udp", NO_RULE, "OK"),
            ("sendto-udp", V6_OTHER, "OK"),
        ],
    )
}

/// The events file's lines as JSON objects.
fn events(daemon: &Daemon) -> Vec<serde_json::Value> {
    fs::read_to_string(&daemon.events)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn field(v: &serde_json::Value, k: &str) -> String {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
}

/// Waits up to 10 s until the events of `label` with `verdict` include every (action, target)
/// of `want`; returns those missing.
fn missing_events(
    daemon: &Daemon,
    label: &str,
    verdict: &str,
    want: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: BTreeSet<(String, String)> = events(daemon)
            .iter()
            .filter(|v| field(v, "label") == label && field(v, "verdict") == verdict)
            .map(|v| (field(v, "action"), field(v, "target")))
            .collect();
        let missing: Vec<_> = want.iter().filter(|w| !seen.contains(w)).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            return Ok(missing);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn denied_connect_is_reported_with_destination(
    ctx: &Ctx,
    l: &Listeners,
    daemon: &Daemon,
) -> Outcome {
    attempt(ctx, l, Some(LABEL), "connect-tcp", DENIED, "EPERM")?;
    attempt(ctx, l, Some(LABEL), "sendto-udp", V6_OTHER, "EPERM")?;
    let want = [
        ("connect".to_string(), DENIED.to_string()),
        ("connect".to_string(), V6_OTHER.to_string()),
    ];
    expect_eq!(
        missing_events(daemon, LABEL, "deny", &want)?,
        Vec::<(String, String)>::new(),
        "deny events (action, target) of label {LABEL} missing from the events file"
    );
    Ok(())
}

fn audit_mode_allows_and_counts_exactly(ctx: &Ctx, l: &Listeners, daemon: &Daemon) -> Outcome {
    let dir = |rel: &str| ctx.path(&format!("net/audit/{rel}")).display().to_string();
    let (written, made, removed, chmodded) = (
        dir("written.txt"),
        dir("made-dir"),
        dir("removed.txt"),
        dir("mode.txt"),
    );
    harness::write(std::path::Path::new(&written), "audit\n")?;
    harness::write(std::path::Path::new(&removed), "audit\n")?;
    harness::write(std::path::Path::new(&chmodded), "audit\n")?;
    fs::set_permissions(&chmodded, fs::Permissions::from_mode(0o644))
        .map_err(anyhow::Error::from)?;
    let _ = fs::remove_dir(&made);

    let before = scrape()?;
    // Every one of these would be denied in enforce mode: the policy's defaults are all deny.
    let connects = [
        ("connect-tcp", ANY_1),
        ("connect-udp", PORT_OTHER),
        ("sendto-udp", V6_OTHER),
    ];
    for (probe, addr) in connects {
        attempt(ctx, l, Some(AUDIT), probe, addr, "OK")?;
    }
    let writes = [
        vec!["open-write", written.as_str()],
        vec!["mkdir", made.as_str()],
        vec!["unlink", removed.as_str()],
        vec!["chmod", chmodded.as_str(), "600"],
    ];
    for args in &writes {
        expect_eq!(
            ctx.attempt(Some(AUDIT), args),
            "OK",
            "{} in audit mode",
            args[0]
        );
    }
    expect_eq!(
        fs::metadata(&made).map(|m| m.is_dir()).ok(),
        Some(true),
        "the directory made in audit mode"
    );
    expect_eq!(
        fs::metadata(&removed).is_ok(),
        false,
        "the file unlinked in audit mode"
    );
    expect_eq!(
        fs::metadata(&chmodded)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok(),
        Some(0o600),
        "mode after chmod in audit mode"
    );
    // Reads through shell redirections, counted apart: starting any program reads its
    // shared libraries, which the policy audits too.
    const READS: usize = 4;
    let mut shell = Session::start(ctx, AUDIT)?;
    let reads_before = scrape()?;
    for i in 0..READS {
        expect_eq!(
            shell.run(&format!("true <{written}"))?,
            "OK",
            "audited read {i}"
        );
    }
    let reads_after = scrape()?;
    drop(shell);
    let after = scrape()?;

    let execs = connects.len() + writes.len() + 1;
    expect_decision_changes(
        AUDIT,
        &before,
        &after,
        &[
            ("connect", "audit", connects.len()),
            ("file_write", "audit", writes.len()),
            ("exec", "audit", execs),
            ("connect", "allow", 0),
            ("connect", "deny", 0),
            ("file_write", "allow", 0),
            ("file_write", "deny", 0),
            ("file_read", "allow", 0),
            ("file_read", "deny", 0),
            ("exec", "allow", 0),
            ("exec", "deny", 0),
        ],
    )?;
    expect_eq!(
        decisions(&reads_after, AUDIT, "file_read", "audit")
            - decisions(&reads_before, AUDIT, "file_read", "audit"),
        READS as f64,
        "change of actgate_decisions_total{{label=\"{AUDIT}\",action=\"file_read\",verdict=\"audit\"}} over {READS} redirections"
    );

    let guest = ctx.guest.display().to_string();
    let mut want: Vec<(String, String)> = connects
        .iter()
        .map(|(_, a)| ("connect".to_string(), a.to_string()))
        .collect();
    for p in [&written, &made, &removed, &chmodded] {
        want.push(("file_write".into(), p.clone()));
    }
    want.push(("file_read".into(), written.clone()));
    want.push(("exec".into(), guest));
    expect_eq!(
        missing_events(daemon, AUDIT, "audit", &want)?,
        Vec::<(String, String)>::new(),
        "audit events (action, target) of label {AUDIT} missing from the events file"
    );
    let other: Vec<String> = events(daemon)
        .iter()
        .filter(|v| field(v, "label") == AUDIT && field(v, "verdict") != "audit")
        .map(|v| v.to_string())
        .collect();
    expect_eq!(
        other,
        Vec::<String>::new(),
        "events of {AUDIT} whose verdict is not audit"
    );
    Ok(())
}

/// A test and whether it needs IPv6 loopback (`::1`).
type NetTest = (&'static str, bool, fn(&Ctx, &Listeners) -> Outcome);
type DaemonTest = (&'static str, bool, fn(&Ctx, &Listeners, &Daemon) -> Outcome);

/// Whether the VM has IPv6 loopback at all; without it the IPv6 tests are skipped, never
/// passed.
fn ipv6_loopback() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

const NO_IPV6: &str = "the VM has no IPv6 loopback address (::1)";

/// Stops a phase's daemon; only a failure to stop cleanly is a result of its own.
fn stop(results: &mut Results, name: &'static str, daemon: Daemon) {
    if let Err(e) = daemon.stop_cleanly() {
        results.push((name, Err(e.into())));
    }
}

fn connect_phase(ctx: &Ctx, selected: &dyn Fn(&str) -> bool, results: &mut Results) {
    let tests: [NetTest; 11] = [
        (
            "labelled_tcp_connect_to_allowed_address_any_port_succeeds",
            false,
            tcp_connect_to_allowed_address_any_port_succeeds,
        ),
        (
            "labelled_tcp_connect_to_allowed_address_and_port_succeeds",
            false,
            tcp_connect_to_allowed_address_and_port_succeeds,
        ),
        (
            "labelled_tcp_connect_to_other_port_of_port_rule_is_eperm",
            false,
            tcp_connect_to_other_port_is_eperm,
        ),
        (
            "labelled_tcp_connect_to_denied_address_inside_allowed_range_is_eperm",
            false,
            tcp_connect_to_denied_address_is_eperm,
        ),
        (
            "labelled_tcp_connect_outside_every_rule_gets_default_deny",
            false,
            tcp_connect_outside_every_rule_is_eperm,
        ),
        (
            "labelled_tcp6_connect_follows_port_rule",
            true,
            tcp6_connect_follows_port_rule,
        ),
        (
            "labelled_udp_connect_follows_rules",
            true,
            udp_connect_follows_rules,
        ),
        (
            "labelled_udp_sendto_follows_rules",
            true,
            udp_sendto_follows_rules,
        ),
        (
            "labelled_ipv4_mapped_ipv6_destination_is_judged_as_ipv4",
            false,
            ipv4_mapped_ipv6_is_judged_as_ipv4,
        ),
        (
            "labelled_unix_socket_connect_is_not_governed",
            false,
            unix_socket_connect_is_not_governed,
        ),
        (
            "unlabelled_connects_are_not_governed",
            true,
            unlabelled_connects_are_not_governed,
        ),
    ];
    let with_events: [DaemonTest; 2] = [
        (
            "labelled_denied_connect_is_reported_with_its_destination",
            true,
            denied_connect_is_reported_with_destination,
        ),
        (
            "audit_mode_allows_and_counts_would_be_denials_exactly",
            true,
            audit_mode_allows_and_counts_exactly,
        ),
    ];
    let chosen: Vec<_> = tests.iter().filter(|(n, _, _)| selected(n)).collect();
    let chosen_ev: Vec<_> = with_events.iter().filter(|(n, _, _)| selected(n)).collect();
    if chosen.is_empty() && chosen_ev.is_empty() {
        return;
    }
    let names: Vec<&'static str> = chosen
        .iter()
        .map(|(n, _, _)| *n)
        .chain(chosen_ev.iter().map(|(n, _, _)| *n))
        .collect();
    let v6 = ipv6_loopback();
    let setup = || -> Result<Listeners> {
        own_tmpfs(&ctx.path("net"))?;
        harness::write(&ctx.path("net/policies/net.yaml"), &net_policy())?;
        harness::write(&ctx.path("net/policies/audit.yaml"), &audit_policy())?;
        let addrs: Vec<&str> = LISTEN
            .iter()
            .copied()
            .filter(|a| v6 || !a.starts_with('['))
            .collect();
        Listeners::start(&addrs)
    };
    let listeners = match setup() {
        Ok(l) => l,
        Err(e) => {
            unmount(&ctx.path("net"));
            return fail_all(results, names, &format!("setup failed: {e:#}"));
        }
    };
    let Some(daemon) = harness::start_for(ctx, &ctx.path("net/policies"), names, results) else {
        return unmount(&ctx.path("net"));
    };
    let skip = || Err(NotPassed::Skip(NO_IPV6.into()));
    for (name, needs_v6, test) in chosen {
        let outcome = if *needs_v6 && !v6 {
            skip()
        } else {
            test(ctx, &listeners)
        };
        results.push((name, outcome));
    }
    for (name, needs_v6, test) in chosen_ev {
        let outcome = if *needs_v6 && !v6 {
            skip()
        } else {
            test(ctx, &listeners, &daemon)
        };
        results.push((name, outcome));
    }
    stop(results, "net_daemon_stops", daemon);
    unmount(&ctx.path("net"));
}

// ---- reload ----

const RELOAD_PORT: &str = "127.0.0.2:18101";

fn reload_policy(ctx: &Ctx, wide: bool) -> String {
    let r = |rel: &str| ctx.path(&format!("reload/{rel}")).display().to_string();
    let (write_extra, connect_extra) = if wide {
        (format!(", {}/**", r("target")), ", 127.0.0.2/32")
    } else {
        (String::new(), "")
    };
    format!(
        "name: vmtest-reload
labels: [{RELOAD}]
mode: enforce
files:
  write:
    default: deny
    allow: [{ws}/**{write_extra}]
network:
  connect:
    default: deny
    allow: [127.0.0.1/32{connect_extra}]
",
        ws = r("ws"),
    )
}

/// The wide policy, cut short inside its last flow list: a YAML syntax error. Returns the
/// text and the `line:column` of the unclosed `[`.
fn broken_policy(ctx: &Ctx) -> (String, String) {
    let wide = reload_policy(ctx, true);
    let text = wide.trim_end().trim_end_matches(']').to_string() + "\n";
    let (index, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("allow: ["))
        .last()
        .expect("the policy has an allow list");
    let column = line.find('[').expect("a bracket") + 1;
    (text, format!("{}:{column}", index + 1))
}

/// The reload scenario's shared state: one daemon, one labelled shell that keeps running
/// across reloads, and a listener for the connect probe.
struct Reload<'a> {
    ctx: &'a Ctx,
    daemon: Daemon,
    shell: Session,
    _listener: Listeners,
    target: String,
    ws: String,
}

impl Reload<'_> {
    fn write_from_shell(&mut self, path: &str) -> Result<String> {
        self.shell.run(&format!("true >>{path}"))
    }

    fn connect(&self) -> String {
        self.ctx
            .attempt(Some(RELOAD), &["connect-tcp", RELOAD_PORT])
    }

    /// (successes, failures) of policy reloads so far.
    fn counts(&self) -> Result<(f64, f64)> {
        let body = scrape()?;
        let n = |result: &str| {
            harness::metric(
                &body,
                &format!("actgate_policy_reloads_total{{result=\"{result}\"}}"),
            )
        };
        Ok((n("success"), n("failure")))
    }

    /// Waits until the reload counters have not moved for 2 s, since a daemon that also
    /// watches its directory reloads by itself after a change; fails if they keep moving.
    fn settled(&self) -> Result<(f64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.counts()?;
        let mut still_since = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(250));
            let now = self.counts()?;
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= Duration::from_secs(2) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!(
                    "the reload counters kept changing for 20 s with no SIGHUP sent (now \
                     success={}, failure={}): the daemon reloads by itself, over and over",
                    last.0,
                    last.1
                );
            }
        }
    }

    /// Makes `file` (with `text`) the only policy file, lets any reload of the daemon's own
    /// settle, then sends SIGHUP: exactly one more reload must be counted, as `ok` says.
    fn hup(&self, file: &str, text: &str, ok: bool) -> Outcome {
        let dir = self.ctx.path("reload/policies");
        for entry in fs::read_dir(&dir).map_err(anyhow::Error::from)?.flatten() {
            if entry.file_name().to_str() != Some(file) {
                fs::remove_file(entry.path()).map_err(anyhow::Error::from)?;
            }
        }
        harness::write(&dir.join(file), text)?;
        let (s, f) = self.settled()?;
        self.daemon.signal(libc::SIGHUP);
        let want = if ok { (s + 1.0, f) } else { (s, f + 1.0) };
        let show = |(s, f): (f64, f64)| format!("success={s} failure={f}");
        let got = eventually(&show(want), || Ok(show(self.counts()?)))?;
        expect_eq!(
            got,
            show(want),
            "actgate_policy_reloads_total after one SIGHUP"
        );
        Ok(())
    }

    /// After a reload: the running shell and a new probe both meet `want`, and the
    /// workspace stays writable.
    fn expect_policy(&mut self, want: &str) -> Outcome {
        let target = self.target.clone();
        let got = eventually(want, || self.write_from_shell(&target))?;
        expect_eq!(
            got,
            want,
            "write to {target} from the already-running labelled shell"
        );
        let got = eventually(want, || Ok(self.connect()))?;
        expect_eq!(
            got,
            want,
            "connect-tcp {RELOAD_PORT} from a new labelled process"
        );
        let ws = self.ws.clone();
        expect_eq!(
            self.write_from_shell(&ws)?,
            "OK",
            "write to {ws} from the labelled shell"
        );
        Ok(())
    }
}

fn reload_widens(r: &mut Reload) -> Outcome {
    let target = r.target.clone();
    expect_eq!(
        r.write_from_shell(&target)?,
        "EPERM",
        "write to {target} before the reload"
    );
    expect_eq!(r.connect(), "EPERM", "connect before the reload");
    r.hup("reload.yaml", &reload_policy(r.ctx, true), true)?;
    r.expect_policy("OK")
}

fn reload_narrows(r: &mut Reload) -> Outcome {
    r.hup("reload.yaml", &reload_policy(r.ctx, false), true)?;
    r.expect_policy("EPERM")
}

fn reload_of_broken_file_changes_nothing(r: &mut Reload) -> Outcome {
    // The only policy file now: the wide policy, cut short by a syntax error. If any of it
    // were applied, the policy would widen.
    let (text, position) = broken_policy(r.ctx);
    let (successes, _) = r.counts()?;
    r.hup("broken.yaml", &text, false)?;
    expect_eq!(
        r.counts()?.0,
        successes,
        "successful reloads since the broken file was written"
    );
    r.expect_policy("EPERM")?;
    let broken = r.ctx.path("reload/policies/broken.yaml");
    let want = format!("{}:{position}:", broken.display());
    let log = r.daemon.log_text();
    if !log.contains(&want) {
        return Err(NotPassed::Fail(format!(
            "the daemon log doesn't report `{want}`:\n{log}"
        )));
    }
    Ok(())
}

fn reload_phase(ctx: &Ctx, selected: &dyn Fn(&str) -> bool, results: &mut Results) {
    type Step = (&'static str, fn(&mut Reload) -> Outcome);
    let steps: [Step; 3] = [
        (
            "sighup_reload_widens_policy_of_running_labelled_process",
            reload_widens,
        ),
        (
            "sighup_reload_narrows_policy_of_running_labelled_process",
            reload_narrows,
        ),
        (
            "sighup_reload_of_broken_file_keeps_policy_and_reports_position",
            reload_of_broken_file_changes_nothing,
        ),
    ];
    // The steps build on each other: run all of them when any is selected.
    if !steps.iter().any(|(n, _)| selected(n)) {
        return;
    }
    let names: Vec<&'static str> = steps.iter().map(|(n, _)| *n).collect();
    let start = || -> Result<Reload> {
        own_tmpfs(&ctx.path("reload"))?;
        let target = ctx.path("reload/target/file.txt");
        let ws = ctx.path("reload/ws/file.txt");
        harness::write(&target, "")?;
        harness::write(&ws, "")?;
        harness::write(
            &ctx.path("reload/policies/reload.yaml"),
            &reload_policy(ctx, false),
        )?;
        let _ = fs::remove_file(ctx.path("reload/policies/broken.yaml"));
        let listener = Listeners::start(&[RELOAD_PORT])?;
        let daemon = Daemon::start(ctx, &ctx.path("reload/policies"), &[])?;
        let shell = Session::start(ctx, RELOAD)?;
        Ok(Reload {
            ctx,
            daemon,
            shell,
            _listener: listener,
            target: target.display().to_string(),
            ws: ws.display().to_string(),
        })
    };
    let mut r = match start() {
        Ok(r) => r,
        Err(e) => {
            unmount(&ctx.path("reload"));
            return fail_all(results, names, &format!("setup failed: {e:#}"));
        }
    };
    for (name, step) in steps {
        results.push((name, step(&mut r)));
    }
    let Reload { daemon, shell, .. } = r;
    drop(shell);
    stop(results, "reload_daemon_stops", daemon);
    unmount(&ctx.path("reload"));
}

// ---- scale ----

const SCALE_RULES: usize = 10_000;
const SCALE_PORT: u16 = 18201;

fn scale_path(ctx: &Ctx, i: usize) -> String {
    ctx.path(&format!("scale/deny/f{i:05}"))
        .display()
        .to_string()
}

fn scale_addr(i: usize) -> String {
    format!("127.1.{}.{}", i / 256, i % 256)
}

fn scale_policy(ctx: &Ctx) -> String {
    let mut text = format!(
        "name: vmtest-scale\nlabels: [{SCALE}]\nmode: enforce\nfiles:\n  read:\n    default: allow\n    deny:\n"
    );
    for i in 0..SCALE_RULES {
        text.push_str(&format!("      - {}\n", scale_path(ctx, i)));
    }
    text.push_str("network:\n  connect:\n    default: allow\n    deny:\n");
    for i in 0..SCALE_RULES {
        text.push_str(&format!("      - {}/32\n", scale_addr(i)));
    }
    text
}

fn scale_policy_loads_and_enforces(ctx: &Ctx) -> Outcome {
    let dir = ctx.path("scale/policies");
    harness::write(&dir.join("scale.yaml"), &scale_policy(ctx))?;
    let check = std::process::Command::new(&ctx.actgate)
        .arg("check")
        .arg(&dir)
        .output()
        .map_err(anyhow::Error::from)?;
    let said = String::from_utf8_lossy(&check.stdout);
    expect_eq!(
        said.contains(&format!("{} rules", 2 * SCALE_RULES)),
        true,
        "`actgate check` counts {} rules: {said}",
        2 * SCALE_RULES
    );
    let middle = SCALE_RULES / 2;
    let (first, last) = (0, SCALE_RULES - 1);
    for i in [first, middle, last, SCALE_RULES] {
        harness::write(std::path::Path::new(&scale_path(ctx, i)), "x")?;
    }
    let addr = |i: usize| format!("{}:{SCALE_PORT}", scale_addr(i));
    let listeners = Listeners::start(&[&addr(middle), &addr(SCALE_RULES)])?;
    let started = Instant::now();
    let daemon = Daemon::start(ctx, &dir, &[])?;
    let ready_after = started.elapsed();
    let outcome = (|| -> Outcome {
        for i in [middle, first, last] {
            expect_eq!(
                ctx.attempt(Some(SCALE), &["open-read", &scale_path(ctx, i)]),
                "EPERM",
                "read of the path of rule {i} of {SCALE_RULES} (ready after {ready_after:?})"
            );
        }
        expect_eq!(
            ctx.attempt(Some(SCALE), &["open-read", &scale_path(ctx, SCALE_RULES)]),
            "OK",
            "read of a path next to the rules"
        );
        attempt(
            ctx,
            &listeners,
            Some(SCALE),
            "connect-tcp",
            &addr(middle),
            "EPERM",
        )?;
        for i in [first, last] {
            expect_eq!(
                ctx.attempt(Some(SCALE), &["connect-tcp", &addr(i)]),
                "EPERM",
                "connect to the address of rule {i} of {SCALE_RULES}"
            );
        }
        attempt(
            ctx,
            &listeners,
            Some(SCALE),
            "connect-tcp",
            &addr(SCALE_RULES),
            "OK",
        )
    })();
    outcome.and(daemon.stop_cleanly().map_err(NotPassed::from))
}

/// Runs the network tests, the audit test, the reload scenario and the scale test, each
/// group with its own daemon, one daemon at a time.
pub fn suite(ctx: &Ctx, selected: &dyn Fn(&str) -> bool) -> Results {
    let mut results: Results = Vec::new();
    connect_phase(ctx, selected, &mut results);
    reload_phase(ctx, selected, &mut results);
    const SCALE_TEST: &str = "policy_with_10000_path_and_10000_network_rules_loads_and_enforces";
    if selected(SCALE_TEST) {
        let outcome = own_tmpfs(&ctx.path("scale"))
            .map_err(NotPassed::from)
            .and_then(|()| scale_policy_loads_and_enforces(ctx));
        unmount(&ctx.path("scale"));
        results.push((SCALE_TEST, outcome));
    }
    results
}
