//! Issue 13, routes 9 and 10: every socket family is judged. AF_UNIX connects and sends to
//! named sockets (`network.unix`), listens on non-loopback addresses (`network.listen`), raw,
//! packet and SCTP sockets and rerouting IP options (`network.raw` and its siblings). Each is
//! tried as root and as `nobody` with python3's socket module, against servers the unlabelled
//! test runs, on loopback only.

use std::{
    fs,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            fs::{PermissionsExt, symlink},
            net::{SocketAddr, UnixDatagram, UnixListener},
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use super::net::connect::missing_events;
use crate::{
    case, expect_eq,
    harness::{self, Ctx, Daemon, NotPassed, Outcome, scrape},
};

/// Judged by `network.unix` and `network.listen` deny lists; granted CAP_NET_RAW, so only
/// actgate's socket check stands between it and a raw socket.
const LABEL: &str = "vmsock";
/// Allows every socket kind, with CAP_NET_RAW.
const OPEN: &str = "vmsock-open";
const USERS: [&str; 2] = ["root", "nobody"];
/// A socket served at /run and connected to through /var/run, where /var/run is a symlink.
const RUN_SOCKET: &str = "/run/actgate-vmtest-sock";
const LISTEN_PORT: u16 = 18_401;
const UDP_PORT: u16 = 18_402;

/// One socket operation per run; prints `OK` or the errno's name.
const SCRIPT: &str = r#"
import errno, socket, sys
op, arg = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
# A NOP, then a loose source route (type 131, length 7, pointer 4) through 127.0.0.1.
LSRR = bytes([1, 131, 7, 4, 127, 0, 0, 1])
IP_RETOPTS = 7
def name(a):
    return "\0" + a[1:] if a.startswith("@") else a
def run():
    if op == "unix-stream":
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(name(arg))
    elif op == "unix-dgram":
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", name(arg))
    elif op == "listen":
        host, port = arg.rsplit(":", 1)
        s = socket.socket(socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            return "bind " + errno.errorcode[e.errno]
        s.listen()
    elif op == "raw":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    elif op == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    elif op == "sctp":
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)
    elif op == "ip-options":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, LSRR)
    elif op == "ipv6-rthdr":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, b"")
    elif op == "retopts":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendmsg([b"x"], [(socket.IPPROTO_IP, IP_RETOPTS, LSRR)], 0, ("127.0.0.1", int(arg)))
    else:
        return "unknown operation " + op
    return "OK"
try:
    print(run())
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn p(ctx: &Ctx, rel: &str) -> PathBuf {
    ctx.path(&format!("sock/{rel}"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The daemon and the unlabelled servers the labelled tasks try to reach.
pub struct Servers {
    daemon: Daemon,
    _streams: Vec<UnixListener>,
    _dgrams: Vec<UnixDatagram>,
    /// Whether `RUN_SOCKET` could be served (/run writable).
    run_socket: bool,
}

fn stream_at(path: &Path) -> Result<UnixListener> {
    let _ = fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("serving {}", path.display()))?;
    // `nobody` needs write permission on a socket to connect to it.
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))?;
    Ok(l)
}

fn dgram_at(path: &Path) -> Result<UnixDatagram> {
    let _ = fs::remove_file(path);
    let d = UnixDatagram::bind(path).with_context(|| format!("serving {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o777))?;
    Ok(d)
}

fn abstract_stream(name: &str) -> Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(name)?;
    UnixListener::bind_addr(&addr).with_context(|| format!("serving @{name}"))
}

fn start(ctx: &Ctx) -> Result<Servers> {
    let dir = p(ctx, "");
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    harness::write(&p(ctx, "op.py"), SCRIPT)?;
    fs::set_permissions(p(ctx, "op.py"), fs::Permissions::from_mode(0o644))?;
    let streams = vec![
        stream_at(&p(ctx, "denied.sock"))?,
        stream_at(&p(ctx, "allowed.sock"))?,
        abstract_stream("actgate-vmtest-denied")?,
        abstract_stream("actgate-vmtest-allowed")?,
    ];
    let _ = fs::remove_file(p(ctx, "link.sock"));
    symlink(p(ctx, "denied.sock"), p(ctx, "link.sock"))?;
    let dgrams = vec![
        dgram_at(&p(ctx, "denied-dgram.sock"))?,
        dgram_at(&p(ctx, "allowed-dgram.sock"))?,
    ];
    let mut streams = streams;
    let run_socket = match stream_at(Path::new(RUN_SOCKET)) {
        Ok(l) => {
            streams.push(l);
            true
        }
        Err(_) => false,
    };
    let policy = format!(
        "name: vmtest-sock\nlabels: [{LABEL}]\nnetwork:\n  unix:\n    default: allow\n    \
         deny: [{}, {}, \"@actgate-vmtest-denied\", {RUN_SOCKET}]\n  listen:\n    \
         default: allow\n    deny: [\"0.0.0.0/0\"]\nprocess:\n  capabilities: [CAP_NET_RAW]\n---\n\
         name: vmtest-sock-open\nlabels: [{OPEN}]\nnetwork:\n  raw: allow\n  packet: allow\n  \
         sctp: allow\n  ip_options: allow\nprocess:\n  capabilities: [CAP_NET_RAW]\n",
        s(&p(ctx, "denied.sock")),
        s(&p(ctx, "denied-dgram.sock")),
    );
    harness::write(&p(ctx, "policies/sock.yaml"), &policy)?;
    Ok(Servers {
        daemon: Daemon::shared(ctx, &p(ctx, "policies"))?,
        _streams: streams,
        _dgrams: dgrams,
        run_socket,
    })
}

/// `python3 op.py OP ARG` as USER in LABEL (or unlabelled with None); its last output line.
fn attempt(ctx: &Ctx, user: &str, label: Option<&str>, op: &str, arg: &str) -> String {
    let script = s(&p(ctx, "op.py"));
    let mut cmd = match label {
        Some(l) => ctx.labelled_command_as(l, user),
        None => Command::new("/usr/bin/env"),
    };
    let out = cmd
        .args(["python3", &script, op, arg])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().last() {
                Some(l) => l.trim().to_string(),
                None => format!(
                    "(no output: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        }
        Err(e) => format!("(did not start: {e})"),
    }
}

/// Fails unless OP ARG meets `want` as every user in `label`.
fn expect_all(ctx: &Ctx, label: &str, op: &str, arg: &str, want: &str) -> Outcome {
    for user in USERS {
        expect_eq!(
            attempt(ctx, user, Some(label), op, arg),
            want,
            "`{op} {arg}` as {user} in {label}"
        );
    }
    Ok(())
}

/// The changes of `LABEL`'s decision counters `(action, verdict)` while `f` runs.
fn counted<const N: usize>(
    changes: [(&str, &str); N],
    f: impl FnOnce() -> Outcome,
) -> Result<[f64; N], NotPassed> {
    let before = scrape()?;
    f()?;
    let after = scrape()?;
    Ok(changes.map(|(action, verdict)| {
        harness::decisions(&after, LABEL, action, verdict)
            - harness::decisions(&before, LABEL, action, verdict)
    }))
}

/// Fails unless the events file shows a denial of `action` on each target for `LABEL`.
fn expect_denial_events(f: &Servers, action: &str, targets: &[String]) -> Outcome {
    let want: Vec<(String, String)> = targets
        .iter()
        .map(|t| (action.to_string(), t.clone()))
        .collect();
    let missing = missing_events(&f.daemon, LABEL, "deny", &want)?;
    expect_eq!(
        missing,
        Vec::<(String, String)>::new(),
        "deny events missing"
    );
    Ok(())
}

fn unix_stream_connects_are_judged_by_the_sockets_own_path(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let (denied, link, allowed) = (
        s(&p(ctx, "denied.sock")),
        s(&p(ctx, "link.sock")),
        s(&p(ctx, "allowed.sock")),
    );
    let [deny, allow] = counted(
        [("unix_connect", "deny"), ("unix_connect", "allow")],
        || {
            expect_all(ctx, LABEL, "unix-stream", &denied, "EPERM")?;
            expect_all(ctx, LABEL, "unix-stream", &link, "EPERM")?;
            expect_all(ctx, LABEL, "unix-stream", &allowed, "OK")
        },
    )?;
    expect_eq!(deny, 4.0, "unix_connect denials (2 paths × 2 users)");
    expect_eq!(allow, 2.0, "unix_connect allows (1 path × 2 users)");
    // The symlink is judged, and reported, as the socket it leads to.
    expect_denial_events(f, "unix_connect", &[denied])?;
    expect_eq!(
        attempt(ctx, "root", None, "unix-stream", &link),
        "OK",
        "an unlabelled connect to the denied socket"
    );
    Ok(())
}

fn unix_connect_through_var_run_meets_the_rule_for_run(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let via = format!("/var/run/{}", RUN_SOCKET.trim_start_matches("/run/"));
    let resolved = fs::canonicalize("/var/run").ok();
    if !f.run_socket || resolved.as_deref() != Some(Path::new("/run")) {
        return Err(NotPassed::Skip(
            "skipping test – /run is not writable or /var/run is no symlink to /run".into(),
        ));
    }
    expect_all(ctx, LABEL, "unix-stream", &via, "EPERM")?;
    expect_denial_events(f, "unix_connect", &[RUN_SOCKET.to_string()])
}

fn abstract_unix_names_are_judged_as_at_names(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let [deny] = counted([("unix_connect", "deny")], || {
        expect_all(ctx, LABEL, "unix-stream", "@actgate-vmtest-denied", "EPERM")?;
        expect_all(ctx, LABEL, "unix-stream", "@actgate-vmtest-allowed", "OK")
    })?;
    expect_eq!(deny, 2.0, "unix_connect denials of the abstract name");
    expect_denial_events(f, "unix_connect", &["@actgate-vmtest-denied".into()])
}

fn unix_datagrams_to_a_denied_socket_are_eperm(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let (denied, allowed) = (
        s(&p(ctx, "denied-dgram.sock")),
        s(&p(ctx, "allowed-dgram.sock")),
    );
    let [deny] = counted([("unix_connect", "deny")], || {
        expect_all(ctx, LABEL, "unix-dgram", &denied, "EPERM")?;
        expect_all(ctx, LABEL, "unix-dgram", &allowed, "OK")
    })?;
    expect_eq!(deny, 2.0, "unix_connect denials of the datagram sends");
    expect_denial_events(f, "unix_connect", &[denied])
}

fn listen_on_a_non_loopback_address_follows_listen_rules(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let any = format!("0.0.0.0:{LISTEN_PORT}");
    let [deny, allow] = counted([("listen", "deny"), ("listen", "allow")], || {
        // bind(2) works; listen(2) is what is refused.
        expect_all(ctx, LABEL, "listen", &any, "EPERM")?;
        expect_all(
            ctx,
            LABEL,
            "listen",
            &format!("127.0.0.1:{LISTEN_PORT}"),
            "OK",
        )
    })?;
    expect_eq!(deny, 2.0, "listen denials on 0.0.0.0");
    expect_eq!(
        allow,
        0.0,
        "listen decisions on loopback (none: not an action)"
    );
    expect_denial_events(f, "listen", &[any])
}

fn raw_and_packet_sockets_are_eperm_even_with_cap_net_raw(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let [deny] = counted([("socket", "deny")], || {
        expect_all(ctx, LABEL, "raw", "", "EPERM")?;
        expect_all(ctx, LABEL, "packet", "", "EPERM")
    })?;
    expect_eq!(deny, 4.0, "socket denials (raw and packet × 2 users)");
    expect_denial_events(f, "socket", &["raw".into(), "packet".into()])?;
    expect_eq!(
        attempt(ctx, "root", Some(OPEN), "raw", ""),
        "OK",
        "a raw socket as root where the policy allows raw sockets and CAP_NET_RAW"
    );
    expect_eq!(
        attempt(ctx, "root", Some(OPEN), "packet", ""),
        "OK",
        "a packet socket as root where the policy allows packet sockets and CAP_NET_RAW"
    );
    Ok(())
}

fn sctp_sockets_are_eperm(ctx: &Ctx, f: &mut Servers) -> Outcome {
    // socket_create runs before the kernel looks for the protocol: no SCTP module needed.
    expect_all(ctx, LABEL, "sctp", "", "EPERM")?;
    expect_denial_events(f, "socket", &["sctp".into()])
}

fn sctp_sockets_allowed_by_policy_work(ctx: &Ctx, _f: &mut Servers) -> Outcome {
    let unlabelled = attempt(ctx, "root", None, "sctp", "");
    if unlabelled != "OK" {
        return Err(NotPassed::Skip(format!(
            "skipping test – this kernel has no SCTP (an unlabelled socket(2) met {unlabelled})"
        )));
    }
    expect_all(ctx, OPEN, "sctp", "", "OK")
}

fn rerouting_ip_options_are_eperm(ctx: &Ctx, f: &mut Servers) -> Outcome {
    let port = UDP_PORT.to_string();
    let [deny] = counted([("socket", "deny")], || {
        expect_all(ctx, LABEL, "ip-options", "", "EPERM")?;
        expect_all(ctx, LABEL, "ipv6-rthdr", "", "EPERM")?;
        expect_all(ctx, LABEL, "retopts", &port, "EPERM")
    })?;
    expect_eq!(deny, 6.0, "socket denials (3 ways × 2 users)");
    expect_denial_events(f, "socket", &["ip_options".into()])?;
    let before = scrape()?;
    for (op, arg) in [("ip-options", ""), ("retopts", port.as_str())] {
        expect_eq!(
            attempt(ctx, "root", Some(OPEN), op, arg),
            "OK",
            "`{op} {arg}` as root where the policy allows ip_options"
        );
        // The kernel refuses nobody on its own (EPERM); actgate must not be what refuses.
        attempt(ctx, "nobody", Some(OPEN), op, arg);
    }
    let after = scrape()?;
    expect_eq!(
        harness::decisions(&after, OPEN, "socket", "deny"),
        harness::decisions(&before, OPEN, "socket", "deny"),
        "{OPEN}'s socket denials where the policy allows ip_options"
    );
    Ok(())
}

fn unlabelled_socket_use_is_not_judged(ctx: &Ctx, _f: &mut Servers) -> Outcome {
    let denied = s(&p(ctx, "denied.sock"));
    let before = scrape()?;
    for (op, arg) in [
        ("unix-stream", denied.as_str()),
        ("unix-stream", "@actgate-vmtest-denied"),
        ("raw", ""),
        ("packet", ""),
        ("ip-options", ""),
    ] {
        expect_eq!(
            attempt(ctx, "root", None, op, arg),
            "OK",
            "unlabelled `{op} {arg}` as root"
        );
    }
    let after = scrape()?;
    expect_eq!(
        harness::decisions(&after, LABEL, "socket", "deny")
            + harness::decisions(&after, LABEL, "unix_connect", "deny"),
        harness::decisions(&before, LABEL, "socket", "deny")
            + harness::decisions(&before, LABEL, "unix_connect", "deny"),
        "the label's counters"
    );
    Ok(())
}

pub fn suite() -> super::Suite<Servers> {
    super::Suite {
        name: "sockets",
        start,
        cases: vec![
            case!(
                unix_stream_connects_are_judged_by_the_sockets_own_path,
                fixture
            ),
            case!(unix_connect_through_var_run_meets_the_rule_for_run, fixture),
            case!(abstract_unix_names_are_judged_as_at_names, fixture),
            case!(unix_datagrams_to_a_denied_socket_are_eperm, fixture),
            case!(
                listen_on_a_non_loopback_address_follows_listen_rules,
                fixture
            ),
            case!(
                raw_and_packet_sockets_are_eperm_even_with_cap_net_raw,
                fixture
            ),
            case!(sctp_sockets_are_eperm, fixture),
            case!(sctp_sockets_allowed_by_policy_work, fixture),
            case!(rerouting_ip_options_are_eperm, fixture),
            case!(unlabelled_socket_use_is_not_judged, fixture),
        ],
        stop: |f| {
            let _ = fs::remove_file(RUN_SOCKET);
            f.daemon.stop_cleanly()
        },
        stop_test: Some("sockets_policies_are_withdrawn_by_a_reload"),
    }
}
