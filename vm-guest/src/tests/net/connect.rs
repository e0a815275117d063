//! network.connect under an enforcing policy, and audit mode (`audit.rs`), against one daemon.

mod audit;

use std::{
    collections::BTreeSet,
    fs,
    net::UdpSocket,
    os::unix::net::UnixListener,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use self::audit::audit_mode_allows_and_counts_would_be_denials_exactly;
use super::listeners::{Listeners, attempt, run_cases};
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome},
    tests::{Enforcing, Suite, mounts::Mount},
};

const LABEL: &str = "vmnet";
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

/// The connect suite's fixtures: the daemon, and the listeners the probes reach.
pub struct Network {
    enforcing: Enforcing,
    listeners: Listeners,
}

fn start(ctx: &Ctx) -> Result<Network> {
    let tmpfs = Mount::tmpfs(&ctx.path("net"))?;
    harness::write(&ctx.path("net/policies/net.yaml"), &net_policy())?;
    harness::write(&ctx.path("net/policies/audit.yaml"), &audit::policy())?;
    let v6 = ipv6_loopback();
    let addrs: Vec<&str> = LISTEN
        .iter()
        .copied()
        .filter(|a| v6 || !a.starts_with('['))
        .collect();
    let listeners = Listeners::start(&addrs)?;
    Ok(Network {
        enforcing: Enforcing {
            daemon: Daemon::shared(ctx, &ctx.path("net/policies"))?,
            mounts: vec![tmpfs],
        },
        listeners,
    })
}

/// Whether the VM has IPv6 loopback at all; without it the IPv6 tests are skipped, never
/// passed.
pub fn ipv6_loopback() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// Skips a test that needs IPv6 loopback (`::1`) where there is none.
pub fn needs_ipv6() -> Outcome {
    if ipv6_loopback() {
        Ok(())
    } else {
        Err(NotPassed::Skip(
            "the VM has no IPv6 loopback address (::1)".into(),
        ))
    }
}

fn labelled_tcp_connect_to_allowed_address_any_port_succeeds(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[("connect-tcp", ANY_1, "OK"), ("connect-tcp", ANY_2, "OK")],
    )
}

fn labelled_tcp_connect_to_allowed_address_and_port_succeeds(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", PORT_OK, "OK")])
}

fn labelled_tcp_connect_to_other_port_of_port_rule_is_eperm(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", PORT_OTHER, "EPERM")])
}

fn labelled_tcp_connect_to_denied_address_inside_allowed_range_is_eperm(
    ctx: &Ctx,
    net: &Network,
) -> Outcome {
    let l = &net.listeners;
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

fn labelled_tcp_connect_outside_every_rule_gets_default_deny(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
    run_cases(ctx, l, Some(LABEL), &[("connect-tcp", NO_RULE, "EPERM")])
}

fn labelled_tcp6_connect_follows_port_rule(ctx: &Ctx, net: &Network) -> Outcome {
    needs_ipv6()?;
    let l = &net.listeners;
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

fn labelled_udp_connect_follows_rules(ctx: &Ctx, net: &Network) -> Outcome {
    needs_ipv6()?;
    let l = &net.listeners;
    run_cases(ctx, l, Some(LABEL), &udp_cases("connect-udp"))
}

fn labelled_udp_sendto_follows_rules(ctx: &Ctx, net: &Network) -> Outcome {
    needs_ipv6()?;
    let l = &net.listeners;
    run_cases(ctx, l, Some(LABEL), &udp_cases("sendto-udp"))
}

/// AF_UNSPEC on an IPv4 UDP socket sends to the address it carries: judged as that address.
fn labelled_udp_sendto_with_af_unspec_is_judged_as_ipv4(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
    run_cases(
        ctx,
        l,
        Some(LABEL),
        &[
            ("sendto-udp-unspec", ANY_1, "OK"),
            ("sendto-udp-unspec", PORT_OK, "OK"),
            ("sendto-udp-unspec", PORT_OTHER, "EPERM"),
            ("sendto-udp-unspec", DENIED, "EPERM"),
            ("sendto-udp-unspec", NO_RULE, "EPERM"),
        ],
    )
}

fn labelled_ipv4_mapped_ipv6_destination_is_judged_as_ipv4(ctx: &Ctx, net: &Network) -> Outcome {
    let l = &net.listeners;
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

fn labelled_unix_socket_connect_is_not_governed(ctx: &Ctx) -> Outcome {
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

fn unlabelled_connects_are_not_governed(ctx: &Ctx, net: &Network) -> Outcome {
    needs_ipv6()?;
    let l = &net.listeners;
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
pub(crate) fn missing_events(
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

fn labelled_denied_connect_is_reported_with_its_destination(ctx: &Ctx, net: &Network) -> Outcome {
    needs_ipv6()?;
    let (l, daemon) = (&net.listeners, &net.enforcing.daemon);
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

/// The connect and audit tests against the shared daemon, whose reload without them is
/// checked last.
pub fn suite() -> Suite<Network> {
    Suite {
        name: "net",
        start,
        cases: vec![
            case!(
                labelled_tcp_connect_to_allowed_address_any_port_succeeds,
                fixture
            ),
            case!(
                labelled_tcp_connect_to_allowed_address_and_port_succeeds,
                fixture
            ),
            case!(
                labelled_tcp_connect_to_other_port_of_port_rule_is_eperm,
                fixture
            ),
            case!(
                labelled_tcp_connect_to_denied_address_inside_allowed_range_is_eperm,
                fixture
            ),
            case!(
                labelled_tcp_connect_outside_every_rule_gets_default_deny,
                fixture
            ),
            case!(labelled_tcp6_connect_follows_port_rule, fixture),
            case!(labelled_udp_connect_follows_rules, fixture),
            case!(labelled_udp_sendto_follows_rules, fixture),
            case!(
                labelled_udp_sendto_with_af_unspec_is_judged_as_ipv4,
                fixture
            ),
            case!(
                labelled_ipv4_mapped_ipv6_destination_is_judged_as_ipv4,
                fixture
            ),
            case!(labelled_unix_socket_connect_is_not_governed),
            case!(unlabelled_connects_are_not_governed, fixture),
            case!(
                labelled_denied_connect_is_reported_with_its_destination,
                fixture
            ),
            case!(
                audit_mode_allows_and_counts_would_be_denials_exactly,
                fixture
            ),
        ],
        stop: |net| net.enforcing.stop(),
        stop_test: Some("net_policies_are_withdrawn_by_a_reload"),
    }
}
