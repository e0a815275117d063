//! Issue 15: egress by host name. `network.connect` rules name hosts; a labelled task's DNS
//! queries, to any server at port 53, are steered to the daemon's resolver, which forwards
//! them to the upstream (here `Upstream`, a fixed zone on 127.0.0.53) and lets the label
//! connect to the addresses answered until their TTL and a grace pass.
//!
//! The policy allows no loopback address by address, except 127.0.0.30 on port 9, which
//! only makes that address trusted by the rebinding guard: every connect to port 8443 that
//! succeeds here succeeds through a name. Each label is its own user's (root in `dnsr`,
//! nobody in `dnsn`), so one user's lookups never open the other's connects.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use super::{
    Case, Suite,
    net::connect::{ipv6_loopback, needs_ipv6},
};
use crate::{
    case,
    dns_server::{Upstream, Zone},
    expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, metric, scrape},
};

/// Where the daemon forwards: an address of its own, since the daemon is unlabelled and its
/// queries are not steered.
const UPSTREAM: &str = "127.0.0.53:53";
/// The label of each user; one policy governs them all.
const USERS: [(&str, &str); 2] = [("root", "dnsr"), ("nobody", "dnsn")];
/// Used by the metrics test alone, so its counters are exact from zero.
const METRICS_LABEL: &str = "dnsm";
/// Every listener's port; the rules name it.
const PORT: u16 = 8443;
/// The port a deny rule of `EVENT` names.
const DENIED_PORT: u16 = 8444;
/// Nothing listens here: only steering makes a query to it work.
const SERVER: &str = "127.0.0.99";

const UDP: (&str, &str) = ("udp.actgate.test", "127.0.0.21");
const TCP: (&str, &str) = ("tcp.actgate.test", "127.0.0.22");
/// In the zone, in no rule.
const OTHER: (&str, &str) = ("other.actgate.test", "127.0.0.23");
const SHARED_A: (&str, &str) = ("shared-a.actgate.test", "127.0.0.24");
const SHARED_B: (&str, &str) = ("shared-b.actgate.test", "127.0.0.25");
/// TTL 1 s; the daemon's grace is 1 s.
const BRIEF: (&str, &str) = ("brief.actgate.test", "127.0.0.26");
/// Allowed on `PORT`, denied on `DENIED_PORT`.
const EVENT: (&str, &str) = ("event.actgate.test", "127.0.0.27");
/// Reached by no name at all.
const NAMELESS: &str = "127.0.0.28";
/// The address an `*.wild.actgate.test` name may lead to: a rule on port 9 trusts it.
const TRUSTED: &str = "127.0.0.30";
/// The loopback address a rebinding answer points at, which no rule trusts.
const UNTRUSTED: &str = "127.0.0.31";
/// AAAA only, at ::1.
const SIX: &str = "six.actgate.test";
/// Allowed, but the upstream never answers it.
const SILENT: &str = "silent.actgate.test";
const WILD: [&str; 2] = ["a.wild.actgate.test", "deep.er.wild.actgate.test"];
/// The bare suffix of the wildcard, which it does not match.
const WILD_SUFFIX: &str = "wild.actgate.test";
/// Matched by the wildcard and by a deny rule without port.
const WILD_DENIED: &str = "bad.wild.actgate.test";
const REBIND: &str = "rebind.wild.actgate.test";
/// A wildcard name whose AAAA record points at ::1.
const REBIND6: &str = "rebind6.wild.actgate.test";
/// A public name (under an ICANN suffix) that an exact rule allows: guarded all the same.
const PUBLIC: (&str, &str) = ("pinned.example.com", "127.0.0.32");
/// A public name, exactly allowed, that points at the trusted address.
const PUBLIC_TRUSTED: &str = "trusted.example.com";

/// The suite's policy directory, beneath the context's.
const POLICIES: &str = "dns/policies";
/// A label in audit mode that the reload test adds.
const AUDIT_LABEL: &str = "dnsaudit";

/// A long TTL: nothing expires during the suite but `BRIEF`.
const TTL: u32 = 300;

fn zone() -> Result<Zone> {
    let ip = |a: &str| a.parse::<IpAddr>().with_context(|| format!("address {a}"));
    let mut zone = Zone::default();
    for (name, addr) in [UDP, TCP, OTHER, SHARED_A, SHARED_B, EVENT] {
        zone = zone.record(name, ip(addr)?, TTL);
    }
    for name in WILD.iter().chain([&WILD_SUFFIX, &WILD_DENIED]) {
        zone = zone.record(name, ip(TRUSTED)?, TTL);
    }
    Ok(zone
        .record(BRIEF.0, ip(BRIEF.1)?, 1)
        .record(SIX, IpAddr::V6(Ipv6Addr::LOCALHOST), TTL)
        .record(REBIND, ip(UNTRUSTED)?, TTL)
        .record(REBIND6, IpAddr::V6(Ipv6Addr::LOCALHOST), TTL)
        .record(PUBLIC.0, ip(PUBLIC.1)?, TTL)
        .record(PUBLIC_TRUSTED, ip(TRUSTED)?, TTL)
        .silent(SILENT))
}

fn policy() -> String {
    let labels: Vec<&str> = USERS
        .iter()
        .map(|(_, l)| *l)
        .chain([METRICS_LABEL])
        .collect();
    let exact: Vec<String> = [
        UDP.0,
        TCP.0,
        SHARED_A.0,
        SHARED_B.0,
        BRIEF.0,
        EVENT.0,
        SIX,
        SILENT,
        PUBLIC.0,
        PUBLIC_TRUSTED,
    ]
    .iter()
    .map(|n| format!("      - {n}:{PORT}\n"))
    .collect();
    format!(
        "name: vmtest-dns
labels: [{labels}]
mode: enforce
network:
  connect:
    default: deny
    allow:
{exact}      - \"*.wild.actgate.test:{PORT}\"
      - {TRUSTED}/32:9
    deny:
      - {WILD_DENIED}
      - {event}:{DENIED_PORT}
",
        labels = labels.join(", "),
        exact = exact.concat(),
        event = EVENT.0,
    )
}

/// The daemon, the upstream it forwards to, and a listener on port `PORT` of each address a
/// name leads to.
pub struct Fixture {
    daemon: Daemon,
    upstream: Upstream,
    listeners: HashMap<SocketAddr, TcpListener>,
}

fn start(ctx: &Ctx) -> Result<Fixture> {
    let upstream_addr: SocketAddr = UPSTREAM.parse()?;
    let upstream = Upstream::start(upstream_addr, zone()?)?;
    let mut listeners = HashMap::new();
    let mut addrs: Vec<IpAddr> = [UDP, TCP, OTHER, SHARED_A, SHARED_B, BRIEF, EVENT]
        .iter()
        .map(|(_, a)| a.parse())
        .chain([
            NAMELESS.parse(),
            TRUSTED.parse(),
            UNTRUSTED.parse(),
            PUBLIC.1.parse(),
        ])
        .collect::<Result<_, _>>()?;
    if ipv6_loopback() {
        addrs.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    for ip in addrs {
        let addr = SocketAddr::new(ip, PORT);
        let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        l.set_nonblocking(true)?;
        listeners.insert(addr, l);
    }
    let dir = ctx.path(POLICIES);
    harness::write(&dir.join("dns.yaml"), &policy())?;
    let daemon = Daemon::start(
        ctx,
        &dir,
        &[
            "--dns-upstream",
            UPSTREAM,
            "--dns-grace",
            "1",
            "--events-allow",
        ],
    )?;
    Ok(Fixture {
        daemon,
        upstream,
        listeners,
    })
}

fn at(addr: &str) -> String {
    match addr.parse::<Ipv6Addr>() {
        Ok(v6) => SocketAddr::new(IpAddr::V6(v6), PORT).to_string(),
        Err(_) => format!("{addr}:{PORT}"),
    }
}

impl Fixture {
    /// Connections accepted on `addr`'s listener since the last call; waits up to 2 s for
    /// the first when `expect`.
    fn accepted(&self, addr: &str, expect: bool) -> Result<usize> {
        let key: SocketAddr = at(addr).parse()?;
        let l = self
            .listeners
            .get(&key)
            .ok_or_else(|| anyhow!("no listener on {key}"))?;
        let deadline = Instant::now() + Duration::from_secs(if expect { 2 } else { 0 });
        let mut n = 0;
        loop {
            match l.accept() {
                Ok(_) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if n > 0 || Instant::now() >= deadline {
                        return Ok(n);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Forgets connections earlier tests left queued.
    fn drain(&self) -> Result<()> {
        for l in self.listeners.values() {
            while l.accept().is_ok() {}
        }
        Ok(())
    }
}

/// `vm-guest try dns-query ARGS…` as USER in LABEL; its line.
fn query(ctx: &Ctx, user: &str, label: &str, args: &[&str]) -> String {
    let mut full = vec!["dns-query"];
    full.extend_from_slice(args);
    ctx.attempt_as(label, user, &full)
}

/// A TCP connect to ADDR:`PORT` as USER in LABEL, with no lookup before it.
fn connect(ctx: &Ctx, user: &str, label: &str, addr: &str) -> String {
    ctx.attempt_as(label, user, &["connect-tcp", &at(addr)])
}

fn port() -> String {
    PORT.to_string()
}

/// Fails unless a connect to `addr` with no lookup before it meets EPERM as USER in LABEL,
/// and the listener there sees nothing.
fn expect_denied_without_lookup(
    ctx: &Ctx,
    f: &Fixture,
    user: &str,
    label: &str,
    addr: &str,
    when: &str,
) -> Outcome {
    f.drain()?;
    expect_eq!(
        connect(ctx, user, label, addr),
        "EPERM",
        "connect to {} as {user} in {label} {when}",
        at(addr)
    );
    expect_eq!(
        f.accepted(addr, false)?,
        0,
        "connections accepted on {}",
        at(addr)
    );
    Ok(())
}

/// Looks NAME up (type QTYPE, over VIA) as USER in LABEL and connects to what it answers:
/// fails unless the line is `NOERROR ADDR=OK` and the listener accepted exactly that one.
fn expect_lookup_connects(
    ctx: &Ctx,
    f: &Fixture,
    (user, label): (&str, &str),
    (name, qtype, via): (&str, &str, &str),
    addr: &str,
) -> Outcome {
    f.drain()?;
    expect_eq!(
        query(
            ctx,
            user,
            label,
            &[name, qtype, "--via", via, "--connect", &port()]
        ),
        format!("NOERROR {addr}=OK"),
        "{qtype} lookup of {name} over {via} as {user} in {label}, then connect"
    );
    expect_eq!(
        f.accepted(addr, true)?,
        1,
        "connections accepted on {}",
        at(addr)
    );
    Ok(())
}

/// Fails unless the daemon forwarded a query for `name` (how often is its cache's business).
fn expect_reached_upstream(f: &Fixture, name: &str) -> Outcome {
    expect_eq!(
        f.upstream.queries(name) > 0,
        true,
        "whether a query for {name} reached the upstream"
    );
    Ok(())
}

fn allowed_name_looked_up_over_udp_connects(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (name, addr) = UDP;
    for (user, label) in USERS {
        expect_denied_without_lookup(ctx, f, user, label, addr, "before any lookup")?;
        expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), addr)?;
    }
    expect_reached_upstream(f, name)
}

fn allowed_name_looked_up_over_tcp_connects(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (name, addr) = TCP;
    for (user, label) in USERS {
        expect_denied_without_lookup(ctx, f, user, label, addr, "before any lookup")?;
        expect_lookup_connects(ctx, f, (user, label), (name, "a", "tcp"), addr)?;
    }
    expect_reached_upstream(f, name)
}

fn allowed_name_aaaa_to_ipv6_loopback_connects(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    needs_ipv6()?;
    for (user, label) in USERS {
        expect_denied_without_lookup(ctx, f, user, label, "::1", "before any lookup")?;
        expect_eq!(
            query(ctx, user, label, &[SIX, "a", "--connect", &port()]),
            "NOERROR",
            "A lookup of {SIX}, which has only AAAA, as {user} in {label}"
        );
        expect_lookup_connects(ctx, f, (user, label), (SIX, "aaaa", "udp"), "::1")?;
    }
    Ok(())
}

fn name_no_rule_allows_is_refused_before_upstream_and_its_address_is_eperm(
    ctx: &Ctx,
    f: &mut Fixture,
) -> Outcome {
    let (name, addr) = OTHER;
    for (user, label) in USERS {
        for via in ["udp", "tcp"] {
            expect_eq!(
                query(
                    ctx,
                    user,
                    label,
                    &[name, "a", "--via", via, "--connect", &port()]
                ),
                "REFUSED",
                "lookup of {name} over {via} as {user} in {label}"
            );
        }
        expect_denied_without_lookup(ctx, f, user, label, addr, "after its lookup was refused")?;
    }
    expect_eq!(
        f.upstream.queries(name),
        0,
        "queries for the refused {name} upstream"
    );
    Ok(())
}

fn address_of_allowed_name_without_own_lookup_is_eperm(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let [(u0, l0), (u1, l1)] = USERS;
    for ((user, label), (other_user, other), (name, addr)) in [
        ((u0, l0), (u1, l1), SHARED_A),
        ((u1, l1), (u0, l0), SHARED_B),
    ] {
        expect_denied_without_lookup(ctx, f, user, label, addr, "before any lookup")?;
        expect_denied_without_lookup(ctx, f, other_user, other, addr, "before any lookup")?;
        expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), addr)?;
        expect_denied_without_lookup(
            ctx,
            f,
            other_user,
            other,
            addr,
            &format!("after {label} looked {name} up"),
        )?;
        f.drain()?;
        expect_eq!(
            connect(ctx, user, label, addr),
            "OK",
            "a later connect to {} as {user} in {label}, which looked {name} up",
            at(addr)
        );
        expect_eq!(
            f.accepted(addr, true)?,
            1,
            "connections accepted on {}",
            at(addr)
        );
    }
    Ok(())
}

fn wildcard_matches_names_below_it_with_trusted_address(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    for (user, label) in USERS {
        // The rule on port 9 makes the address trusted, not reachable on PORT.
        expect_denied_without_lookup(ctx, f, user, label, TRUSTED, "before any lookup")?;
        for name in WILD {
            expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), TRUSTED)?;
        }
        expect_eq!(
            query(ctx, user, label, &[WILD_SUFFIX, "a"]),
            "REFUSED",
            "lookup of the wildcard's bare suffix {WILD_SUFFIX} as {user} in {label}"
        );
    }
    for name in WILD {
        expect_reached_upstream(f, name)?;
    }
    expect_eq!(
        f.upstream.queries(WILD_SUFFIX),
        0,
        "queries for {WILD_SUFFIX} upstream"
    );
    Ok(())
}

fn denied_name_beats_allowed_wildcard_and_is_refused(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    for (user, label) in USERS {
        for via in ["udp", "tcp"] {
            expect_eq!(
                query(
                    ctx,
                    user,
                    label,
                    &[WILD_DENIED, "a", "--via", via, "--connect", &port()]
                ),
                "REFUSED",
                "lookup of {WILD_DENIED} over {via} as {user} in {label}"
            );
        }
    }
    expect_eq!(
        f.upstream.queries(WILD_DENIED),
        0,
        "queries for {WILD_DENIED} upstream"
    );
    Ok(())
}

fn dropped_answers(label: &str) -> Result<f64> {
    Ok(metric(
        &scrape()?,
        &format!("actgate_dns_dropped_answers_total{{label=\"{label}\"}}"),
    ))
}

fn rebinding_answer_to_untrusted_loopback_is_dropped_and_counted(
    ctx: &Ctx,
    f: &mut Fixture,
) -> Outcome {
    for (user, label) in USERS {
        let before = dropped_answers(label)?;
        expect_eq!(
            query(ctx, user, label, &[REBIND, "a", "--connect", &port()]),
            "NOERROR",
            "lookup of {REBIND} (→ {UNTRUSTED}) as {user} in {label}"
        );
        expect_denied_without_lookup(ctx, f, user, label, UNTRUSTED, "after the dropped answer")?;
        // ::1 may be open to the label through six.actgate.test: only the answer is checked.
        expect_eq!(
            query(ctx, user, label, &[REBIND6, "aaaa"]),
            "NOERROR",
            "AAAA lookup of {REBIND6} (→ ::1) as {user} in {label}"
        );
        expect_eq!(
            dropped_answers(label)? - before,
            2.0,
            "change of actgate_dns_dropped_answers_total{{label=\"{label}\"}}"
        );
    }
    expect_reached_upstream(f, REBIND)?;
    expect_reached_upstream(f, REBIND6)
}

fn exact_rule_for_a_public_name_is_still_guarded(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (name, addr) = PUBLIC;
    for (user, label) in USERS {
        let before = dropped_answers(label)?;
        expect_eq!(
            query(ctx, user, label, &[name, "a", "--connect", &port()]),
            "NOERROR",
            "lookup of the public {name} (→ {addr}) as {user} in {label}"
        );
        expect_denied_without_lookup(ctx, f, user, label, addr, "after the dropped answer")?;
        expect_eq!(
            dropped_answers(label)? - before,
            1.0,
            "change of actgate_dns_dropped_answers_total{{label=\"{label}\"}}"
        );
        // The address rule on port 9 trusts 127.0.0.30 for public names too.
        expect_lookup_connects(ctx, f, (user, label), (PUBLIC_TRUSTED, "a", "udp"), TRUSTED)?;
    }
    expect_reached_upstream(f, name)
}

fn address_expires_after_ttl_and_grace(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (name, addr) = BRIEF;
    for (user, label) in USERS {
        let before = addresses(label)?;
        // TTL 1 s and grace 1 s: the second connect, 3.5 s after the answer, comes after both.
        expect_eq!(
            query(
                ctx,
                user,
                label,
                &[name, "a", "--connect", &port(), "--again-after", "3.5"]
            ),
            format!("NOERROR {addr}=OK,EPERM"),
            "lookup of {name} (TTL 1 s) as {user} in {label}, connect, and again 3.5 s later"
        );
        expect_eq!(
            addresses_settled(label, before)?,
            before,
            "actgate_dns_addresses{{label=\"{label}\"}} once {name} expired"
        );
        expect_denied_without_lookup(ctx, f, user, label, addr, "after the TTL and grace")?;
        expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), addr)?;
    }
    Ok(())
}

/// `actgate_dns_addresses` of `label` now.
fn addresses(label: &str) -> Result<f64> {
    Ok(metric(
        &scrape()?,
        &dns_series("actgate_dns_addresses", label, None),
    ))
}

/// `actgate_dns_addresses` of `label` once it is `want`, or after 5 s: the daemon frees
/// expired addresses once a second.
fn addresses_settled(label: &str, want: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = addresses(label)?;
        if got == want || Instant::now() > deadline {
            return Ok(got);
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn reply_appears_to_come_from_the_server_asked(ctx: &Ctx, _f: &mut Fixture) -> Outcome {
    let mut servers = vec![SERVER, "127.0.0.98"];
    if ipv6_loopback() {
        servers.push("::1");
    }
    let (name, addr) = UDP;
    for (user, label) in USERS {
        for server in &servers {
            for via in ["udp", "udp-connected", "tcp"] {
                // The probe checks recvfrom's source and getpeername itself, and says
                // what it saw instead of the rcode when they aren't the server.
                expect_eq!(
                    query(
                        ctx,
                        user,
                        label,
                        &[name, "a", "--via", via, "--server", server]
                    ),
                    format!("NOERROR {addr}"),
                    "lookup of {name} from {server}:53 over {via} as {user} in {label}"
                );
            }
        }
    }
    Ok(())
}

/// Only what the cgroup programs steer passes the connect rules unjudged: TCP Fast Open to
/// port 53 (a connect carried by sendto, which no connect program sees) and a connect to
/// another port of the same server are judged by their address, and refused.
fn other_routes_to_a_dns_server_are_judged_by_address(ctx: &Ctx, _f: &mut Fixture) -> Outcome {
    let dns = format!("{SERVER}:53");
    let other = format!("{SERVER}:54");
    for (user, label) in USERS {
        for (args, what) in [
            (["sendto-tcp-fastopen", &dns], "TCP Fast Open sendto"),
            (["connect-tcp", &other], "TCP connect to port 54"),
            (["sendto-udp", &other], "UDP sendto port 54"),
        ] {
            expect_eq!(
                ctx.attempt_as(label, user, &args),
                "EPERM",
                "{what} of {} as {user} in {label}",
                args[1]
            );
        }
    }
    Ok(())
}

fn unlabelled_dns_is_not_steered(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let before = f.upstream.queries(UDP.0);
    expect_eq!(
        ctx.attempt(None, &["dns-query", UDP.0, "a", "--via", "tcp"]),
        "connect ECONNREFUSED",
        "an unlabelled lookup over TCP from {SERVER}:53, where nothing listens"
    );
    let upstream = f.upstream.addr().ip().to_string();
    expect_eq!(
        ctx.attempt(None, &["dns-query", UDP.0, "a", "--server", &upstream]),
        format!("NOERROR {}", UDP.1),
        "an unlabelled lookup from the upstream itself"
    );
    expect_eq!(
        f.upstream.queries(UDP.0) - before,
        1,
        "queries for {} upstream",
        UDP.0
    );
    Ok(())
}

/// Learnt under `actgate learn`, in a label no policy names.
const LEARN_LABEL: &str = "dnslearn";

/// `actgate learn` records a connect to a name the workload looked up by that name, and the
/// policy it writes allows the same lookup and connect, and refuses another name.
fn learnt_policy_allows_a_name_by_name(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (name, addr) = TCP;
    let out_file = ctx.path("dns/learnt.yaml");
    f.drain()?;
    let port = port();
    let probe = ["try", "dns-query", name, "a", "--connect", port.as_str()];
    let learnt = Command::new(&ctx.actgate)
        .args(["learn", "--label", LEARN_LABEL, "--user", "root", "--out"])
        .arg(&out_file)
        .arg("--")
        .arg(&ctx.guest)
        .args(probe)
        .stdin(Stdio::null())
        .output()
        .context("running actgate learn")?;
    let policy = fs::read_to_string(&out_file).unwrap_or_default();
    let said = format!(
        "{}{}\n{policy}",
        String::from_utf8_lossy(&learnt.stdout),
        String::from_utf8_lossy(&learnt.stderr)
    );
    expect_eq!(
        learnt.status.code(),
        Some(0),
        "actgate learn's exit status ({said})"
    );
    let rule = format!("      - {name}:{PORT}");
    expect_eq!(
        policy.lines().any(|l| l.starts_with(&format!("{rule} "))),
        true,
        "whether the learnt policy allows `{name}:{PORT}` by name ({said})"
    );
    harness::write(&ctx.path(POLICIES).join("learnt.yaml"), &policy)?;
    f.daemon.signal(libc::SIGHUP);
    harness::eventually("enforce", || {
        let mode = harness::label_status(ctx, LEARN_LABEL)?
            .and_then(|l| l.get("mode").and_then(|m| m.as_str()).map(str::to_owned));
        Ok(mode.unwrap_or_default())
    })?;
    f.drain()?;
    expect_eq!(
        ctx.attempt_as(LEARN_LABEL, "root", &probe[1..]),
        format!("NOERROR {addr}=OK"),
        "the learnt run again, under the learnt policy"
    );
    let (other, _) = OTHER;
    expect_eq!(
        query(ctx, "root", LEARN_LABEL, &[other, "a"]),
        "REFUSED",
        "a lookup of {other}, which the learnt run did not make"
    );
    Ok(())
}

/// A reload judges the lookups made before it again: a name it no longer allows stops
/// opening its address at once, and its next lookup is refused. A label in audit mode is
/// answered what enforce mode would refuse, and its connect is let through.
fn reload_rejudges_lookups_and_audit_answers_what_enforce_refuses(
    ctx: &Ctx,
    f: &mut Fixture,
) -> Outcome {
    let (name, addr) = UDP;
    let (user, label) = USERS[0];
    expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), addr)?;
    // The audit label's file first: a reload that sees the narrower rules sees it too,
    // whether SIGHUP or the directory watcher starts it.
    let dir = ctx.path(POLICIES);
    let audit = format!(
        "name: vmtest-dns-audit\nlabels: [{AUDIT_LABEL}]\nmode: audit\n\
         network:\n  connect:\n    default: deny\n"
    );
    harness::write(&dir.join("audit.yaml"), &audit)?;
    let narrower = policy().replace(&format!("      - {name}:{PORT}\n"), "");
    harness::write(&dir.join("dns.yaml"), &narrower)?;
    f.daemon.signal(libc::SIGHUP);
    let lookup = || Ok(query(ctx, user, label, &[name, "a"]));
    expect_eq!(
        harness::eventually("REFUSED", lookup)?,
        "REFUSED",
        "lookup of {name} as {user} in {label} after a reload dropped its rule"
    );
    expect_denied_without_lookup(ctx, f, user, label, addr, "after a reload dropped its name")?;
    let (other, other_addr) = OTHER;
    f.drain()?;
    expect_eq!(
        query(
            ctx,
            "root",
            AUDIT_LABEL,
            &[other, "a", "--connect", &port()]
        ),
        format!("NOERROR {other_addr}=OK"),
        "lookup of {other} (no rule) in {AUDIT_LABEL}, in audit mode, then connect"
    );
    let series = dns_series("actgate_dns_queries_total", AUDIT_LABEL, Some("audit"));
    expect_eq!(metric(&scrape()?, &series), 1.0, "{series}");
    Ok(())
}

fn dns_series(metric: &str, label: &str, verdict: Option<&str>) -> String {
    match verdict {
        Some(v) => format!("{metric}{{label=\"{label}\",verdict=\"{v}\"}}"),
        None => format!("{metric}{{label=\"{label}\"}}"),
    }
}

fn dns_metrics_count_queries_per_verdict_and_addresses_exactly(
    ctx: &Ctx,
    _f: &mut Fixture,
) -> Outcome {
    let label = METRICS_LABEL;
    let q = |args: &[&str]| query(ctx, "root", label, args);
    expect_eq!(q(&[UDP.0, "a"]), format!("NOERROR {}", UDP.1), "lookup 1");
    expect_eq!(
        q(&[UDP.0, "a", "--via", "tcp"]),
        format!("NOERROR {}", UDP.1),
        "lookup 2"
    );
    expect_eq!(q(&[UDP.0, "aaaa"]), "NOERROR", "lookup 3 (no AAAA record)");
    expect_eq!(q(&[SIX, "aaaa"]), "NOERROR ::1", "lookup 4");
    expect_eq!(q(&[OTHER.0, "a"]), "REFUSED", "lookup 5");
    expect_eq!(q(&[REBIND, "a"]), "NOERROR", "lookup 6 (answer dropped)");
    expect_eq!(q(&[SILENT, "a"]), "SERVFAIL", "lookup 7 (upstream silent)");
    let body = scrape()?;
    for (name, verdict, want) in [
        ("actgate_dns_queries_total", Some("allowed"), 5.0),
        ("actgate_dns_queries_total", Some("refused"), 1.0),
        ("actgate_dns_queries_total", Some("failed"), 1.0),
        // 127.0.0.21 (twice looked up: one address) and ::1.
        ("actgate_dns_addresses", None, 2.0),
        ("actgate_dns_dropped_answers_total", None, 1.0),
        ("actgate_dns_evictions_total", None, 0.0),
    ] {
        let series = dns_series(name, label, verdict);
        expect_eq!(metric(&body, &series), want, "{series} on /metrics");
    }
    Ok(())
}

/// The events of `label` for connects to `target` with `verdict`, waiting up to 10 s for one.
fn connect_events(
    daemon: &Daemon,
    label: &str,
    verdict: &str,
    target: &str,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<serde_json::Value> = fs::read_to_string(&daemon.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["label"] == label
                    && e["action"] == "connect"
                    && e["verdict"] == verdict
                    && e["target"] == target
            })
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn connect_judged_through_a_name_reports_its_host(ctx: &Ctx, f: &mut Fixture) -> Outcome {
    let (user, label) = USERS[0];
    let (name, addr) = EVENT;
    expect_lookup_connects(ctx, f, (user, label), (name, "a", "udp"), addr)?;
    let denied_port = format!("{addr}:{DENIED_PORT}");
    expect_eq!(
        ctx.attempt_as(label, user, &["connect-tcp", &denied_port]),
        "EPERM",
        "connect to {denied_port}, which a deny rule of {name} names"
    );
    expect_denied_without_lookup(ctx, f, user, label, NAMELESS, "(no name leads there)")?;
    for (verdict, target, host) in [
        ("allow", at(addr), Some(name)),
        ("deny", denied_port.clone(), Some(name)),
        ("deny", at(NAMELESS), None),
    ] {
        let events = connect_events(&f.daemon, label, verdict, &target);
        expect_eq!(
            events.len(),
            1,
            "{verdict} events of {label} for connect to {target}"
        );
        let want = host.map_or(serde_json::Value::Null, serde_json::Value::from);
        expect_eq!(
            events[0].get("host").cloned().unwrap_or_default(),
            want,
            "the host of the {verdict} event for {target}: {}",
            events[0]
        );
    }
    Ok(())
}

/// One malformed host name rule per line, as written, and what its problem must name.
const MALFORMED: [(&str, &str); 4] = [
    ("\"*\"", "`*`"),
    ("a.*.b", "`a.*.b`"),
    ("\"*x.com\"", "`*x.com`"),
    ("ok.actgate.test:0", "`0`"),
];

fn check_rejects_malformed_host_names_with_position(ctx: &Ctx) -> Outcome {
    let good = ctx.path("dns/check/good.yaml");
    harness::write(&good, &policy())?;
    let out = Command::new(&ctx.actgate)
        .arg("check")
        .arg(&good)
        .output()
        .map_err(anyhow::Error::from)?;
    expect_eq!(
        out.status.code(),
        Some(0),
        "exit code of check on the suite's policy: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = ctx.path("dns/check/bad.yaml");
    let head =
        "name: bad-dns\nlabels: [bad]\nnetwork:\n  connect:\n    default: deny\n    allow:\n";
    let mut text = head.to_string();
    for (written, _) in MALFORMED {
        text.push_str(&format!("      - {written}\n"));
    }
    text.push_str("      - fine.actgate.test:8443\n");
    harness::write(&bad, &text)?;
    let out = Command::new(&ctx.actgate)
        .arg("check")
        .arg(&bad)
        .output()
        .map_err(anyhow::Error::from)?;
    let said = String::from_utf8_lossy(&out.stdout);
    expect_eq!(
        out.status.code(),
        Some(1),
        "exit code of check on malformed host names: {said}"
    );
    let file = bad.display().to_string();
    let first_line = head.lines().count() + 1;
    // `FILE:LINE:COLUMN: …`, not the closing count `FILE: N problem(s)`.
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| {
            l.strip_prefix(&file)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    expect_eq!(
        problems.len(),
        MALFORMED.len(),
        "problems reported in {said}"
    );
    for (i, (_, names)) in MALFORMED.iter().enumerate() {
        // `      - ` is 8 columns: the scalar (its quote, if quoted) starts at column 9.
        let prefix = format!("{file}:{}:9: ", first_line + i);
        if !problems
            .iter()
            .any(|l| l.starts_with(&prefix) && l.contains(names))
        {
            return Err(NotPassed::Fail(format!(
                "no problem at {prefix} naming {names}:\n{said}"
            )));
        }
    }
    Ok(())
}

pub fn suite() -> Suite<Fixture> {
    Suite {
        name: "dns",
        start,
        cases: vec![
            case!(allowed_name_looked_up_over_udp_connects, fixture),
            case!(allowed_name_looked_up_over_tcp_connects, fixture),
            case!(allowed_name_aaaa_to_ipv6_loopback_connects, fixture),
            case!(
                name_no_rule_allows_is_refused_before_upstream_and_its_address_is_eperm,
                fixture
            ),
            case!(address_of_allowed_name_without_own_lookup_is_eperm, fixture),
            case!(
                wildcard_matches_names_below_it_with_trusted_address,
                fixture
            ),
            case!(denied_name_beats_allowed_wildcard_and_is_refused, fixture),
            case!(
                rebinding_answer_to_untrusted_loopback_is_dropped_and_counted,
                fixture
            ),
            case!(exact_rule_for_a_public_name_is_still_guarded, fixture),
            case!(address_expires_after_ttl_and_grace, fixture),
            case!(reply_appears_to_come_from_the_server_asked, fixture),
            case!(other_routes_to_a_dns_server_are_judged_by_address, fixture),
            case!(unlabelled_dns_is_not_steered, fixture),
            case!(
                dns_metrics_count_queries_per_verdict_and_addresses_exactly,
                fixture
            ),
            case!(connect_judged_through_a_name_reports_its_host, fixture),
            case!(learnt_policy_allows_a_name_by_name, fixture),
            // Last: it changes the suite's policy.
            case!(
                reload_rejudges_lookups_and_audit_answers_what_enforce_refuses,
                fixture
            ),
        ],
        stop: |f| {
            let Fixture {
                daemon, upstream, ..
            } = f;
            let stopped = daemon.stop_cleanly();
            drop(upstream);
            stopped
        },
        stop_test: Some("dns_daemon_stops_with_exit_0"),
    }
}

/// What needs no daemon: `actgate check` of host name rules.
pub fn without_daemon() -> Suite<()> {
    let cases: Vec<Case<()>> = vec![case!(check_rejects_malformed_host_names_with_position)];
    Suite::unchecked("dns", |_| Ok(()), cases)
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The suite's policy allows no loopback address by address but the trust rule on
    /// port 9: a connect that succeeds on `PORT` succeeds through a name.
    #[test]
    fn policy_allows_loopback_only_by_name_and_trust_rule() {
        let p = policy();
        let by_address: Vec<&str> = p
            .lines()
            .filter(|l| l.trim_start().starts_with("- 127.") || l.contains("::"))
            .collect();
        assert_eq!(by_address, [format!("      - {TRUSTED}/32:9")]);
    }
}
