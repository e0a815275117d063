//! `network.unix`, `network.listen` and the socket kinds (`network.raw` and its siblings):
//! parsing with positions, and what they compile into.

use std::path::Path;

use agent_common::{
    Action, NET_ANY_PORT_RULES, NET_KEY_HEADER, NET_PORT_RULES, PATH_KEY_HEADER, RULE_ALLOW,
    RULE_DENY, SocketKind,
};
use agent_policy::{
    Fallback, PathPattern, Policy, UnixPattern, compile_net, compile_paths, defaults, has_rules,
    parse_str,
};

fn parse(text: &str) -> (Vec<Policy>, Vec<String>) {
    let (policies, diags) = parse_str(Path::new("p.yaml"), text);
    let diags = diags
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
        .collect();
    (policies, diags)
}

fn one(text: &str) -> Policy {
    let (mut policies, diags) = parse(text);
    assert!(diags.is_empty(), "{diags:#?}");
    policies.remove(0)
}

const SOCKETS: &str = r#"
name: p
labels: [l]
network:
  unix:
    default: allow
    allow: [/run/user/**, "@dbus-session"]
    deny: [/run/docker.sock, /run/dbus/**, "@**"]
  listen:
    default: allow
    deny: ["0.0.0.0/0", "[::/0]:8080"]
  raw: allow
  packet: deny
  sctp: allow
"#;

#[test]
fn parses_unix_listen_and_socket_kinds() {
    let p = one(SOCKETS);
    assert_eq!(p.unix.default, Fallback::Allow);
    assert_eq!(
        p.unix.allow,
        [
            UnixPattern::Path(PathPattern::Tree("/run/user".into())),
            UnixPattern::Abstract("dbus-session".into()),
        ]
    );
    assert_eq!(
        p.unix.deny,
        [
            UnixPattern::Path(PathPattern::Exact("/run/docker.sock".into())),
            UnixPattern::Path(PathPattern::Tree("/run/dbus".into())),
            UnixPattern::AnyAbstract,
        ]
    );
    assert_eq!(p.listen.deny.len(), 2);
    assert_eq!(p.sockets, [SocketKind::Raw, SocketKind::Sctp]);
    let shown: Vec<String> = p.unix.deny.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["/run/docker.sock", "/run/dbus/**", "@**"]);
}

#[test]
fn without_the_new_keys_unix_and_listen_allow_and_every_socket_kind_is_denied() {
    let p = one("name: p\nlabels: [l]\n");
    let d = defaults(&p);
    assert_eq!(d[Action::UnixConnect as usize], RULE_ALLOW);
    assert_eq!(d[Action::Listen as usize], RULE_ALLOW);
    assert_eq!(d[Action::Socket as usize], RULE_DENY);
    let h = has_rules(&p);
    assert_eq!(h[Action::UnixConnect as usize], 0);
    assert_eq!(h[Action::Listen as usize], 0);
    assert_eq!(h[Action::Socket as usize], 0);
}

#[test]
fn bad_unix_patterns_and_kinds_are_reported_where_they_are() {
    let text = r#"
name: p
labels: [l]
network:
  unix:
    deny: [run/x, "@", "@x**", /run/, 7]
  raw: maybe
  listen:
    allow: [/run/x]
  telnet: allow
"#;
    let (policies, diags) = parse(text);
    assert!(policies.is_empty());
    let expected = [
        ("6:12", "expected a socket path"),
        ("6:19", "empty abstract socket name"),
        ("6:24", "an abstract name is matched exactly"),
        ("6:32", "trailing `/`"),
        ("6:39", "`7`: expected a socket path"),
        (
            "7:8",
            "invalid `network.raw` `maybe`: expected allow or deny",
        ),
        ("9:13", "invalid IP address"),
        ("10:3", "unknown key `telnet` in `network`"),
    ];
    assert_eq!(diags.len(), expected.len(), "{diags:#?}");
    for (d, (at, piece)) in diags.iter().zip(expected) {
        assert!(d.starts_with(&format!("{at}: ")), "expected at {at}: {d}");
        assert!(d.contains(piece), "expected {piece:?} in {d}");
    }
}

/// The key bytes after the header of every entry of `action`, with their flags.
fn path_entries(p: &Policy, action: Action) -> Vec<(Vec<u8>, u8)> {
    compile_paths(p, 1)
        .iter()
        .filter(|(k, _)| k.data[2] == action as u8)
        .map(|(k, f)| {
            let len = k.prefix_len as usize / 8;
            (k.data[PATH_KEY_HEADER..len].to_vec(), *f)
        })
        .collect()
}

#[test]
fn unix_rules_compile_into_their_own_path_entries() {
    let p = one(SOCKETS);
    let entries = path_entries(&p, Action::UnixConnect);
    let find = |b: &[u8]| entries.iter().find(|(k, _)| k == b).map(|(_, f)| *f);
    assert_eq!(find(b"/run/docker.sock\0"), Some(RULE_DENY));
    // `/run/user/**` lies under no other rule.
    assert_eq!(find(b"/run/user/"), Some(RULE_ALLOW));
    assert_eq!(find(b"/run/dbus/"), Some(RULE_DENY));
    // `@**` is the prefix of every abstract name, so `@dbus-session` carries its denial too:
    // deny beats allow, as everywhere.
    assert_eq!(find(b"@"), Some(RULE_DENY));
    assert_eq!(find(b"@dbus-session\0"), Some(RULE_ALLOW | RULE_DENY));
    assert_eq!(entries.len(), 5);
    assert!(path_entries(&p, Action::FileWrite).is_empty());
    assert_eq!(has_rules(&p)[Action::UnixConnect as usize], 1);
}

#[test]
fn listen_rules_are_keyed_apart_from_connect_rules() {
    let mut p = one(SOCKETS);
    p.connect.deny = vec![agent_policy::parse_net("0.0.0.0/0").unwrap()];
    let nets = compile_net(&p, 1);
    let action_of = |a: Action| {
        nets.iter()
            .filter(|(k, _)| k.data[NET_KEY_HEADER - 1] == a as u8)
            .count()
    };
    assert_eq!(action_of(Action::Connect), 1);
    assert_eq!(action_of(Action::Listen), 2);
    let h = has_rules(&p);
    assert_eq!(
        h[Action::Listen as usize],
        NET_ANY_PORT_RULES | NET_PORT_RULES
    );
    assert_eq!(h[Action::Connect as usize], NET_ANY_PORT_RULES);
}

#[test]
fn allowed_socket_kinds_become_bits() {
    let p = one(SOCKETS);
    assert_eq!(
        has_rules(&p)[Action::Socket as usize],
        SocketKind::Raw.bit() | SocketKind::Sctp.bit()
    );
    let names: Vec<&str> = SocketKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ["raw", "packet", "sctp", "ip_options"]);
    for k in SocketKind::ALL {
        let name = SocketKind::EVENT_NAMES[k as usize];
        let end = name.iter().position(|b| *b == 0).unwrap();
        assert_eq!(&name[..end], k.as_str().as_bytes());
    }
}
