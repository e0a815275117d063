//! Turning a validated policy into the entries of the kernel's LPM tries.
//!
//! The kernel does one longest-prefix lookup per path (two per connection: with the port and
//! with port 0) and reads back `RULE_ALLOW | RULE_DENY` flags. A shorter rule that matches is
//! hidden by the longest match, so every entry carries the union of its own flags and those
//! of all its ancestors (entries whose key is a prefix of it).

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{
    ANONYMOUS, Action, BREAKER_SLOT, DENIED_CAPABILITIES, GUARD_ACTION, Limit, LimitKey,
    NET_ANY_PORT_RULES, NET_FAMILY_V4, NET_FAMILY_V6, NET_KEY_DATA, NET_KEY_HEADER, NET_PORT_RULES,
    NetKey, PATH_KEY_DATA, PATH_KEY_HEADER, PathKey, RULE_ALLOW, RULE_DENY, RULE_PROTECT,
    below_key_header, net_key_header, path_key_header, path_key_header_raw,
};
use ipnet::IpNet;

use crate::model::{Fallback, NetPattern, PathPattern, Policy, Rules, UnixPattern};

/// Path trie entries of a policy's exec, file-write, file-read, file-delete and unix rules,
/// under `ruleset`.
///
/// Assumes a validated policy: a pattern too long for a key (which the parser rejects) is
/// left out.
pub fn compile_paths(policy: &Policy, ruleset: u16) -> Vec<(PathKey, u8)> {
    let mut out = Vec::new();
    for (action, rules) in [
        (Action::Exec, &policy.exec),
        (Action::FileWrite, &policy.file_write),
        (Action::FileRead, &policy.file_read),
        (Action::FileDelete, &policy.file_delete),
    ] {
        let mut own: Vec<(Vec<u8>, u8)> = flagged(rules)
            .map(|(p, flag)| (path_bytes(p), flag))
            .collect();
        if let (Action::Exec, Some(anonymous)) = (action, policy.anonymous_exec) {
            // An exact key that no path's key extends, since paths start with `/`.
            own.push((anonymous_bytes(), flag(anonymous)));
        }
        trie_entries(path_key_header(ruleset, action), own.into_iter(), &mut out);
    }
    let own = flagged(&policy.unix).map(|(p, flag)| (unix_bytes(p), flag));
    trie_entries(path_key_header(ruleset, Action::UnixConnect), own, &mut out);
    out
}

/// The entries of one action's patterns (key bytes after `header`, and flags), each carrying
/// the flags of every shorter pattern that is a prefix of it.
fn trie_entries(
    header: [u8; PATH_KEY_HEADER],
    patterns: impl Iterator<Item = (Vec<u8>, u8)>,
    out: &mut Vec<(PathKey, u8)>,
) {
    // Lexicographic order puts every key after all of its prefixes.
    let mut own: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    for (bytes, flag) in patterns {
        if fits(&bytes) {
            *own.entry(bytes).or_default() |= flag;
        }
    }
    // Keys sharing a prefix are contiguous in that order, so the prefixes of the current
    // key are exactly what is left on the stack after popping non-prefixes.
    let mut stack: Vec<(&[u8], u8)> = Vec::new();
    for (bytes, flags) in &own {
        while stack.last().is_some_and(|(top, _)| !bytes.starts_with(top)) {
            stack.pop();
        }
        let combined = flags | stack.last().map_or(0, |(_, f)| *f);
        stack.push((bytes, combined));
        out.push((path_key(header, bytes), combined));
    }
}

/// The key bytes of a unix pattern: a path's as for files; `@name\0` for an abstract name
/// (the kernel looks up `@` and the name), `@` for every abstract name. Paths start with `/`,
/// so the two never meet.
fn unix_bytes(pattern: &UnixPattern) -> Vec<u8> {
    match pattern {
        UnixPattern::Path(p) => path_bytes(p),
        UnixPattern::Abstract(name) => {
            let mut bytes = Vec::with_capacity(name.len() + 2);
            bytes.push(b'@');
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
            bytes
        }
        UnixPattern::AnyAbstract => vec![b'@'],
    }
}

/// Move-guard entries (see `agent_common::GUARD_ACTION`): every directory above each deny
/// pattern of exec, files.write, files.read, files.delete and network.unix, and the pattern's
/// own path (for `D/**`, `D` itself), as exact keys. A labelled process may not rename or hard-link these, since the
/// rule's target would then sit under a name no rule mentions, nor remove or replace them,
/// since a tree of its own would then sit where the rule points.
pub fn compile_guards(policy: &Policy, ruleset: u16) -> Vec<(PathKey, u8)> {
    let header = path_key_header_raw(ruleset, GUARD_ACTION);
    let mut guarded: BTreeSet<&str> = BTreeSet::new();
    // A renamed socket would be judged by its new name.
    let unix = policy.unix.denials().filter_map(|p| match p {
        UnixPattern::Path(p) => Some(p),
        _ => None,
    });
    let files = [
        &policy.exec,
        &policy.file_write,
        &policy.file_read,
        &policy.file_delete,
    ]
    .into_iter()
    .flat_map(Rules::denials);
    for pattern in files.chain(unix) {
        let path = match pattern {
            PathPattern::Exact(p) | PathPattern::Tree(p) => p.as_str(),
        };
        // "/a/b/c" guards "/a", "/a/b" and "/a/b/c"; the root can't be moved.
        for (i, _) in path.match_indices('/').skip(1) {
            guarded.insert(&path[..i]);
        }
        if !path.is_empty() {
            guarded.insert(path);
        }
    }
    guarded
        .into_iter()
        // As an exact pattern, so the NUL after the path is part of the key.
        .map(|p| path_bytes(&PathPattern::Exact(p.to_owned())))
        .filter(|bytes| fits(bytes))
        .map(|bytes| (path_key(header, &bytes), RULE_DENY))
        .collect()
}

/// The "below" marks of path trie `entries` (see `agent_common::PATH_KEY_BELOW`): for each
/// rule of exec, files.write, files.read and files.delete, every directory `D/` strictly
/// above its key, valued with the length of `D/`. The kernel's directory cache may only
/// cache a directory that has no mark: then no rule can tell its entries apart.
pub fn compile_below_marks(entries: &[(PathKey, u8)]) -> Vec<(PathKey, u8)> {
    let cached = [
        Action::Exec,
        Action::FileWrite,
        Action::FileRead,
        Action::FileDelete,
    ];
    let mut marks: BTreeSet<([u8; PATH_KEY_HEADER], &[u8])> = BTreeSet::new();
    for (key, _) in entries {
        let (header, rest) = key.data.split_at(PATH_KEY_HEADER);
        let len = (key.prefix_len as usize / 8).saturating_sub(PATH_KEY_HEADER);
        let bytes = &rest[..len.min(rest.len())];
        let Some(action) = cached.iter().find(|a| **a as u8 == header[2]) else {
            continue;
        };
        if header[3] != 0 {
            continue;
        }
        let ruleset = u16::from_be_bytes([header[0], header[1]]);
        let header = below_key_header(ruleset, *action);
        // "/a/b/c\0" marks "/", "/a/" and "/a/b/"; the tree "/a/b/" marks "/" and "/a/".
        for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if i + 1 < bytes.len() {
                marks.insert((header, &bytes[..=i]));
            }
        }
    }
    marks
        .into_iter()
        .map(|(header, dir)| (path_key(header, dir), dir.len() as u8))
        .collect()
}

/// The key bytes of `agent_common::ANONYMOUS`, as the kernel writes them for a file with no
/// path on disk.
fn anonymous_bytes() -> Vec<u8> {
    let mut bytes = ANONYMOUS.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Whether a pattern's key bytes fit a trie key after the header.
fn fits(bytes: &[u8]) -> bool {
    PATH_KEY_HEADER + bytes.len() <= PATH_KEY_DATA
}

/// A trie key that matches `header` followed by `bytes` (which must `fit`).
fn path_key(header: [u8; PATH_KEY_HEADER], bytes: &[u8]) -> PathKey {
    let mut data = [0u8; PATH_KEY_DATA];
    data[..PATH_KEY_HEADER].copy_from_slice(&header);
    data[PATH_KEY_HEADER..PATH_KEY_HEADER + bytes.len()].copy_from_slice(bytes);
    let prefix_len = 8 * (PATH_KEY_HEADER + bytes.len()) as u32;
    PathKey { prefix_len, data }
}

/// The key bytes of a pattern after the header: `path\0` for an exact path (the NUL stops it
/// matching longer paths), `dir/` for a tree (matching everything beneath, not `dir` itself).
fn path_bytes(pattern: &PathPattern) -> Vec<u8> {
    let mut bytes = Vec::new();
    match pattern {
        PathPattern::Exact(p) => {
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0);
        }
        PathPattern::Tree(d) => {
            bytes.extend_from_slice(d.as_bytes());
            bytes.push(b'/');
        }
    }
    bytes
}

/// Every pattern of `rules` with the flag it sets.
fn flagged<P>(rules: &Rules<P>) -> impl Iterator<Item = (&P, u8)> {
    let allow = rules.allow.iter().map(|p| (p, RULE_ALLOW));
    let deny = rules.deny.iter().map(|p| (p, RULE_DENY));
    let protect = rules.protect.iter().map(|p| (p, RULE_DENY | RULE_PROTECT));
    allow.chain(deny).chain(protect)
}

/// A network rule reduced to what orders and nests it: port and family namespace, then the
/// address left-aligned in 128 bits so prefixes compare the same way for both families.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NetSlot {
    port: u16,
    family: u8,
    addr: u128,
    len: u8,
}

impl NetSlot {
    fn new(pattern: &NetPattern) -> Self {
        let (family, addr) = match pattern.net {
            IpNet::V4(n) => (NET_FAMILY_V4, u128::from(u32::from(n.network())) << 96),
            IpNet::V6(n) => (NET_FAMILY_V6, u128::from(n.network())),
        };
        NetSlot {
            port: pattern.port.unwrap_or(0),
            family,
            addr,
            len: pattern.net.prefix_len(),
        }
    }

    /// Whether the kernel's lookup reaching `other` also passes through `self`.
    fn is_ancestor_of(&self, other: &NetSlot) -> bool {
        let mask = match self.len {
            0 => 0,
            n => u128::MAX << (128 - u32::from(n)),
        };
        self.port == other.port
            && self.family == other.family
            && self.len <= other.len
            && other.addr & mask == self.addr
    }

    fn key(&self, ruleset: u16, action: Action) -> NetKey {
        let mut data = [0u8; NET_KEY_DATA];
        let header = net_key_header(ruleset, action, self.port, self.family);
        data[..NET_KEY_HEADER].copy_from_slice(&header);
        let addr = self.addr.to_be_bytes();
        let width = if self.family == NET_FAMILY_V4 { 4 } else { 16 };
        data[NET_KEY_HEADER..NET_KEY_HEADER + width].copy_from_slice(&addr[..width]);
        NetKey {
            prefix_len: 8 * NET_KEY_HEADER as u32 + u32::from(self.len),
            data,
        }
    }
}

/// Network trie entries of a policy's connect and listen rules, under `ruleset`.
pub fn compile_net(policy: &Policy, ruleset: u16) -> Vec<(NetKey, u8)> {
    let mut out = Vec::new();
    for (action, rules) in [
        (Action::Connect, &policy.connect),
        (Action::Listen, &policy.listen),
    ] {
        let mut own: BTreeMap<NetSlot, u8> = BTreeMap::new();
        for (pattern, flag) in flagged(rules) {
            *own.entry(NetSlot::new(pattern)).or_default() |= flag;
        }
        // Sorted by (port, family, address, length), ancestors come first and each subtree
        // is contiguous, as for paths.
        let mut stack: Vec<(NetSlot, u8)> = Vec::new();
        for (slot, flags) in own {
            while stack
                .last()
                .is_some_and(|(top, _)| !top.is_ancestor_of(&slot))
            {
                stack.pop();
            }
            let combined = flags | stack.last().map_or(0, |(_, f)| *f);
            stack.push((slot, combined));
            out.push((slot.key(ruleset, action), combined));
        }
    }
    out
}

/// The rule flag of a verdict.
fn flag(d: Fallback) -> u8 {
    match d {
        Fallback::Allow => RULE_ALLOW,
        Fallback::Deny => RULE_DENY,
    }
}

/// Per action (indexed by `Action as usize`): `RULE_ALLOW` or `RULE_DENY` when no rule matches.
pub fn defaults(policy: &Policy) -> [u8; Action::COUNT] {
    let mut out = [RULE_ALLOW; Action::COUNT];
    out[Action::Exec as usize] = flag(policy.exec.default);
    out[Action::FileWrite as usize] = flag(policy.file_write.default);
    out[Action::FileRead as usize] = flag(policy.file_read.default);
    out[Action::FileDelete as usize] = flag(policy.file_delete.default);
    out[Action::Connect as usize] = flag(policy.connect.default);
    out[Action::Namespace as usize] = flag(policy.process.namespaces);
    out[Action::UnixConnect as usize] = flag(policy.unix.default);
    out[Action::Listen as usize] = flag(policy.listen.default);
    // Only the kinds `has_rules` names are allowed.
    out[Action::Socket as usize] = RULE_DENY;
    // Nothing grants these: the kernel denies them to every label (in audit mode, reports).
    for action in [
        Action::Bpf,
        Action::Capability,
        Action::Signal,
        Action::Ptrace,
        Action::Cgroup,
    ] {
        out[action as usize] = RULE_DENY;
    }
    out
}

/// The capabilities the kernel denies the policy's labels: actgate's list less those the
/// policy grants.
pub fn denied_capabilities(policy: &Policy) -> u64 {
    let granted = policy.process.capabilities.iter().fold(0u64, |bits, cap| {
        bits | 1u64.checked_shl(u32::from(*cap)).unwrap_or(0)
    });
    DENIED_CAPABILITIES & !granted
}

/// Per action: 0 if the policy has no allow or deny rule for it. Path and unix actions with
/// rules get 1; connect and listen get `NET_ANY_PORT_RULES` and/or `NET_PORT_RULES`, for the
/// lookups that can match; socket gets the `SocketKind::bit` of every allowed kind.
pub fn has_rules(policy: &Policy) -> [u8; Action::COUNT] {
    let mut out = [0; Action::COUNT];
    out[Action::Exec as usize] =
        u8::from(!policy.exec.is_empty() || policy.anonymous_exec.is_some());
    out[Action::FileWrite as usize] = u8::from(!policy.file_write.is_empty());
    out[Action::FileRead as usize] = u8::from(!policy.file_read.is_empty());
    out[Action::FileDelete as usize] = u8::from(!policy.file_delete.is_empty());
    out[Action::UnixConnect as usize] = u8::from(!policy.unix.is_empty());
    let net_kinds = |rules: &Rules<NetPattern>| {
        flagged(rules).fold(0, |bits, (p, _)| {
            bits | if p.port.is_some() {
                NET_PORT_RULES
            } else {
                NET_ANY_PORT_RULES
            }
        })
    };
    out[Action::Connect as usize] = net_kinds(&policy.connect);
    out[Action::Listen as usize] = net_kinds(&policy.listen);
    out[Action::Socket as usize] = policy.sockets.iter().fold(0, |bits, k| bits | k.bit());
    out
}

/// The `LIMITS` slot of the breaker, after every action's.
const BREAKER: u8 = BREAKER_SLOT as u8;
const _: () = assert!(BREAKER as u32 == BREAKER_SLOT && BREAKER_SLOT < u16::BITS);

/// `LIMITS` entries of a policy's budgets (slot: the action) and breaker (slot `BREAKER_SLOT`,
/// always revoking), under `ruleset`.
pub fn compile_limits(policy: &Policy, ruleset: u16) -> Vec<(LimitKey, Limit)> {
    let entry = |slot: u8, max: u32, per_ms: u32, revoke: bool| {
        let key = LimitKey {
            ruleset,
            slot,
            _pad: 0,
        };
        let limit = Limit {
            max,
            per_ms,
            revoke: u8::from(revoke),
            _pad: [0; 3],
        };
        (key, limit)
    };
    let budgets = policy
        .budgets
        .iter()
        .map(|b| entry(b.action as u8, b.max, b.per_ms, b.revoke));
    let breaker = policy
        .breaker
        .iter()
        .map(|b| entry(BREAKER, b.denials, b.within_ms, true));
    budgets.chain(breaker).collect()
}

/// `LabelInfo::limits`: bit n for a budget of the action with discriminant n, bit
/// `BREAKER_SLOT` for a breaker, so the kernel looks up `LIMITS` only for what is there.
pub fn limit_bits(policy: &Policy) -> u16 {
    let budgets = policy
        .budgets
        .iter()
        .fold(0u16, |bits, b| bits | 1 << b.action as u8);
    let breaker = policy.breaker.map_or(0, |_| 1 << BREAKER);
    budgets | breaker
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mode;
    use agent_common::Verdict;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn policy() -> Policy {
        Policy {
            name: "p".into(),
            labels: vec!["l".into()],
            cgroups: Vec::new(),
            mode: Mode::Enforce,
            exec: Rules::default(),
            anonymous_exec: None,
            file_write: Rules::default(),
            file_read: Rules::default(),
            file_delete: Rules::default(),
            connect: Rules::default(),
            hosts: Default::default(),
            unix: Rules::default(),
            listen: Rules::default(),
            sockets: Vec::new(),
            process: Default::default(),
            budgets: Vec::new(),
            breaker: None,
            file: "t.yaml".into(),
            line: 1,
        }
    }

    #[test]
    fn guards_cover_every_directory_above_a_deny_rule_and_its_target() {
        let mut p = policy();
        p.file_read.deny = vec![PathPattern::Tree("/root/.ssh".into())];
        p.exec.deny = vec![PathPattern::Exact("/usr/bin/nc".into())];
        p.file_write.allow = vec![PathPattern::Tree("/tmp".into())];
        let keys: Vec<String> = compile_guards(&p, 7)
            .iter()
            .map(|(k, flags)| {
                assert_eq!(*flags, RULE_DENY);
                assert_eq!(&k.data[..PATH_KEY_HEADER], &[0, 7, GUARD_ACTION, 0]);
                let len = k.prefix_len as usize / 8 - PATH_KEY_HEADER;
                let bytes = &k.data[PATH_KEY_HEADER..PATH_KEY_HEADER + len];
                assert_eq!(bytes.last(), Some(&0), "guards are exact keys");
                String::from_utf8(bytes[..len - 1].to_vec()).unwrap()
            })
            .collect();
        assert_eq!(
            keys,
            ["/root", "/root/.ssh", "/usr", "/usr/bin", "/usr/bin/nc"]
        );
    }

    #[test]
    fn a_tree_rule_guards_its_root_as_an_exact_path() {
        let mut p = policy();
        p.file_write.deny = vec![PathPattern::Tree("/w/.git/hooks".into())];
        let keys: Vec<Vec<u8>> = compile_guards(&p, 0)
            .iter()
            .map(|(k, _)| k.data[PATH_KEY_HEADER..k.prefix_len as usize / 8].to_vec())
            .collect();
        // The root itself (rmdir, rename away or over it, exchange), not only what is beneath
        // it, which the write rule's own `/w/.git/hooks/` key covers.
        assert!(keys.contains(&b"/w/.git/hooks\0".to_vec()), "{keys:?}");
        assert!(
            !keys.iter().any(|k| k.ends_with(b"/")),
            "guards are exact keys"
        );
    }

    /// The semantics as documented, with no tries involved: the library's own model.
    fn decide(policy: &Policy, action: Action, path: &str) -> Verdict {
        policy.decide_path(action, path).unwrap().verdict
    }

    fn decide_net(policy: &Policy, addr: IpAddr, port: u16) -> Verdict {
        policy.decide_connect(addr, port, None).verdict
    }

    fn unmapped(addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        }
    }

    fn bits_equal(a: &[u8], b: &[u8], bits: usize) -> bool {
        let full = bits / 8;
        if a[..full] != b[..full] {
            return false;
        }
        let rest = bits % 8;
        rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
    }

    /// A longest-prefix-match trie lookup, done the slow way.
    fn lpm<'a>(entries: impl Iterator<Item = (u32, &'a [u8], u8)>, key: &[u8], bits: usize) -> u8 {
        entries
            .filter(|(len, data, _)| *len as usize <= bits && bits_equal(data, key, *len as usize))
            .max_by_key(|(len, _, _)| *len)
            .map_or(0, |(_, _, flags)| flags)
    }

    /// The kernel's own verdict on the flags of its lookups.
    fn kernel_verdict(policy: &Policy, flags: u8, action: Action) -> Verdict {
        let mode = match policy.mode {
            Mode::Enforce => agent_common::MODE_ENFORCE,
            Mode::Audit => agent_common::MODE_AUDIT,
        };
        agent_common::verdict(flags, defaults(policy)[action as usize], mode)
    }

    /// What the kernel decides from the compiled entries: one lookup of header + path + NUL,
    /// truncated to the key size.
    fn kernel(
        entries: &[(PathKey, u8)],
        policy: &Policy,
        ruleset: u16,
        action: Action,
        path: &str,
    ) -> Verdict {
        let mut key = path_key_header(ruleset, action).to_vec();
        key.extend_from_slice(path.as_bytes());
        key.push(0);
        key.truncate(PATH_KEY_DATA);
        let flags = if has_rules(policy)[action as usize] == 0 {
            0
        } else {
            lpm(
                entries.iter().map(|(k, f)| (k.prefix_len, &k.data[..], *f)),
                &key,
                key.len() * 8,
            )
        };
        kernel_verdict(policy, flags, action)
    }

    fn kernel_net(
        entries: &[(NetKey, u8)],
        policy: &Policy,
        ruleset: u16,
        addr: IpAddr,
        port: u16,
    ) -> Verdict {
        let lookup = |port: u16| {
            let mut key = [0u8; NET_KEY_DATA];
            let (family, bytes, width) = match unmapped(addr) {
                IpAddr::V4(a) => (NET_FAMILY_V4, a.octets().to_vec(), 32),
                IpAddr::V6(a) => (NET_FAMILY_V6, a.octets().to_vec(), 128),
            };
            key[..NET_KEY_HEADER].copy_from_slice(&net_key_header(
                ruleset,
                Action::Connect,
                port,
                family,
            ));
            key[NET_KEY_HEADER..NET_KEY_HEADER + bytes.len()].copy_from_slice(&bytes);
            lpm(
                entries.iter().map(|(k, f)| (k.prefix_len, &k.data[..], *f)),
                &key,
                NET_KEY_HEADER * 8 + width,
            )
        };
        // Only the lookups `has_rules` says can match, as the kernel does.
        let kinds = has_rules(policy)[Action::Connect as usize];
        let mut flags = 0;
        if kinds & NET_PORT_RULES != 0 {
            flags |= lookup(port);
        }
        if kinds & NET_ANY_PORT_RULES != 0 {
            flags |= lookup(0);
        }
        kernel_verdict(policy, flags, Action::Connect)
    }

    fn fallback() -> impl Strategy<Value = Fallback> {
        prop_oneof![Just(Fallback::Allow), Just(Fallback::Deny)]
    }

    /// Paths over a tiny alphabet, so rules and queries overlap often.
    fn small_path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("ab"), Just(".x")],
            0..4,
        )
        .prop_map(|parts| match parts.is_empty() {
            true => "/".to_owned(),
            false => parts.iter().map(|p| format!("/{p}")).collect(),
        })
    }

    fn path_pattern() -> impl Strategy<Value = PathPattern> {
        (small_path(), any::<bool>()).prop_map(|(p, tree)| match (tree, p.as_str()) {
            (true, "/") => PathPattern::Tree(String::new()),
            (true, _) => PathPattern::Tree(p),
            (false, _) => PathPattern::Exact(p),
        })
    }

    fn path_rules_strategy() -> impl Strategy<Value = Rules<PathPattern>> {
        (
            fallback(),
            proptest::collection::vec(path_pattern(), 0..6),
            proptest::collection::vec(path_pattern(), 0..6),
        )
            .prop_map(|(default, allow, deny)| Rules {
                default,
                allow,
                deny,
                protect: Vec::new(),
            })
    }

    fn small_addr() -> impl Strategy<Value = IpAddr> {
        (any::<bool>(), proptest::collection::vec(0u8..4, 16)).prop_map(|(v6, b)| {
            if v6 {
                let mut o = [0u8; 16];
                o[0] = 0x20;
                o[1] = b[0] * 64;
                o[2..].copy_from_slice(&b[2..]);
                IpAddr::V6(Ipv6Addr::from(o))
            } else {
                IpAddr::V4(Ipv4Addr::new(10 + b[0] * 64, b[1] * 64, b[2], b[3]))
            }
        })
    }

    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![Just(80u16), Just(443), Just(8080)]
    }

    fn net_pattern() -> impl Strategy<Value = NetPattern> {
        (small_addr(), 0u8..=128, proptest::option::of(port())).prop_map(|(addr, len, port)| {
            let len = len.min(if addr.is_ipv4() { 32 } else { 128 });
            let net = IpNet::new(addr, len)
                .unwrap_or_else(|_| IpNet::from(addr))
                .trunc();
            NetPattern { net, port }
        })
    }

    proptest! {
        #[test]
        fn compiled_paths_decide_like_the_reference(
            exec in path_rules_strategy(),
            file_write in path_rules_strategy(),
            file_read in path_rules_strategy(),
            file_delete in path_rules_strategy(),
            audit in any::<bool>(),
            ruleset in any::<u16>(),
            queries in proptest::collection::vec(small_path(), 1..20),
        ) {
            let mut p = policy();
            p.mode = if audit { Mode::Audit } else { Mode::Enforce };
            p.exec = exec;
            p.file_write = file_write;
            p.file_read = file_read;
            p.file_delete = file_delete;
            let entries = compile_paths(&p, ruleset);
            for action in [Action::Exec, Action::FileWrite, Action::FileRead, Action::FileDelete] {
                for q in &queries {
                    prop_assert_eq!(kernel(&entries, &p, ruleset, action, q), decide(&p, action, q), "{:?} {}", action, q);
                }
            }
        }

        /// The kernel's directory cache (agent-ebpf's `dircache.rs`): a directory without a
        /// "below" mark gives each of its entries the flags of the directory's own prefix,
        /// and those must decide like the reference. The marks must not change what the rule
        /// lookups find either.
        #[test]
        fn unmarked_directories_decide_their_entries_like_the_reference(
            file_write in path_rules_strategy(),
            file_read in path_rules_strategy(),
            ruleset in any::<u16>(),
            queries in proptest::collection::vec(small_path(), 1..20),
        ) {
            let mut p = policy();
            p.file_write = file_write;
            p.file_read = file_read;
            let mut entries = compile_paths(&p, ruleset);
            let marks = compile_below_marks(&entries);
            entries.extend(marks);
            let trie = || entries.iter().map(|(k, f)| (k.prefix_len, &k.data[..], *f));
            for action in [Action::FileWrite, Action::FileRead] {
                for q in queries.iter().filter(|q| q.as_str() != "/") {
                    prop_assert_eq!(kernel(&entries, &p, ruleset, action, q), decide(&p, action, q));
                    let dir = &q[..=q.rfind('/').unwrap()];
                    let key = |header: [u8; PATH_KEY_HEADER]| [&header[..], dir.as_bytes()].concat();
                    let bits = 8 * (PATH_KEY_HEADER + dir.len());
                    let mark = lpm(trie(), &key(below_key_header(ruleset, action)), bits);
                    if usize::from(mark) == dir.len() {
                        continue;
                    }
                    let flags = if has_rules(&p)[action as usize] == 0 {
                        0
                    } else {
                        lpm(trie(), &key(path_key_header(ruleset, action)), bits)
                    };
                    prop_assert_eq!(kernel_verdict(&p, flags, action), decide(&p, action, q), "{:?} {}", action, q);
                }
            }
        }

        #[test]
        fn compiled_networks_decide_like_the_reference(
            default in fallback(),
            allow in proptest::collection::vec(net_pattern(), 0..8),
            deny in proptest::collection::vec(net_pattern(), 0..8),
            ruleset in any::<u16>(),
            queries in proptest::collection::vec((small_addr(), port()), 1..20),
        ) {
            let mut p = policy();
            p.connect = Rules {
                default,
                allow,
                deny,
                protect: Vec::new(),
            };
            let entries = compile_net(&p, ruleset);
            for (addr, port) in queries {
                prop_assert_eq!(kernel_net(&entries, &p, ruleset, addr, port), decide_net(&p, addr, port), "{} {}", addr, port);
            }
        }
    }

    fn exact(p: &str) -> PathPattern {
        PathPattern::Exact(p.into())
    }

    fn tree(p: &str) -> PathPattern {
        PathPattern::Tree(p.into())
    }

    #[test]
    fn a_protected_tree_denies_beneath_it_in_any_mode_and_is_guarded() {
        let mut p = policy();
        p.file_write.allow = vec![tree("/run/actgate/open")];
        p.file_write.protect = vec![tree("/run/actgate")];
        let entries = compile_paths(&p, 0);
        let flags: Vec<u8> = entries.iter().map(|(_, f)| *f).collect();
        // The allow rule beneath inherits the protected denial.
        assert_eq!(
            flags,
            [
                RULE_DENY | RULE_PROTECT,
                RULE_ALLOW | RULE_DENY | RULE_PROTECT
            ]
        );
        let guarded: Vec<Vec<u8>> = compile_guards(&p, 0)
            .iter()
            .map(|(k, _)| k.data[4..4 + (k.prefix_len / 8) as usize - 4].to_vec())
            .collect();
        assert_eq!(guarded, [b"/run\0".to_vec(), b"/run/actgate\0".to_vec()]);
        assert_eq!(has_rules(&p)[Action::FileWrite as usize], 1);
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let mut p = policy();
        p.exec.deny = vec![exact("/usr/bin/nc"), tree("")];
        p.exec.allow = vec![exact("/usr/bin/nc")];
        let entries = compile_paths(&p, 0x0102);
        assert_eq!(entries.len(), 2);
        let (root, flags) = &entries[0];
        assert_eq!(root.prefix_len, 8 * 5);
        assert_eq!(&root.data[..6], &[1, 2, Action::Exec as u8, 0, b'/', 0]);
        assert_eq!(*flags, RULE_DENY);
        let (nc, flags) = &entries[1];
        assert_eq!(nc.prefix_len as usize, 8 * (4 + "/usr/bin/nc".len() + 1));
        assert_eq!(&nc.data[4..16], b"/usr/bin/nc\0");
        assert!(nc.data[16..].iter().all(|&b| b == 0));
        assert_eq!(*flags, RULE_ALLOW | RULE_DENY);
    }

    #[test]
    fn net_keys_follow_the_documented_layout() {
        let mut p = policy();
        p.connect.allow = vec![crate::parse_net("10.0.0.0/8:443").unwrap()];
        p.connect.deny = vec![crate::parse_net("[2001:db8::/32]:443").unwrap()];
        let entries = compile_net(&p, 7);
        assert_eq!(entries.len(), 2);
        let (v4, f4) = &entries[0];
        assert_eq!(v4.prefix_len, 48 + 8);
        assert_eq!(
            &v4.data[..10],
            &[
                0,
                7,
                1,
                187,
                NET_FAMILY_V4,
                Action::Connect as u8,
                10,
                0,
                0,
                0
            ]
        );
        assert_eq!(*f4, RULE_ALLOW);
        let (v6, f6) = &entries[1];
        assert_eq!(v6.prefix_len, 48 + 32);
        assert_eq!(
            &v6.data[..10],
            &[
                0,
                7,
                1,
                187,
                NET_FAMILY_V6,
                Action::Connect as u8,
                0x20,
                0x01,
                0x0d,
                0xb8
            ]
        );
        assert_eq!(*f6, RULE_DENY);
    }

    #[test]
    fn long_paths_match_trees_on_their_first_bytes() {
        let mut p = policy();
        let dir = format!("/{}", "d".repeat(agent_common::MAX_RULE_PATH - 1));
        let long_exact = format!("/{}", "e".repeat(agent_common::MAX_RULE_PATH - 1));
        p.file_read.default = Fallback::Deny;
        p.file_read.allow = vec![tree(&dir), exact(&long_exact), tree("/e")];
        p.file_read.deny = vec![exact(
            &format!("{long_exact}x")[..agent_common::MAX_RULE_PATH],
        )];
        let entries = compile_paths(&p, 1);
        for q in [
            format!("{dir}/file"),
            format!("{dir}/{}", "x".repeat(600)),
            long_exact.clone(),
            format!("{long_exact}x"),
            format!("{long_exact}/y"),
            dir.clone(),
            "/e".to_owned(),
        ] {
            assert_eq!(
                kernel(&entries, &p, 1, Action::FileRead, &q),
                decide(&p, Action::FileRead, &q),
                "{q}"
            );
        }
    }

    #[test]
    fn defaults_and_has_rules_per_action() {
        let mut p = policy();
        p.file_write.default = Fallback::Deny;
        p.connect.default = Fallback::Deny;
        p.file_read.deny = vec![exact("/etc/shadow")];
        let d = defaults(&p);
        assert_eq!(d[..4], [RULE_ALLOW, RULE_DENY, RULE_ALLOW, RULE_DENY]);
        assert_eq!(has_rules(&p), [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Without a `process` section every escape route is denied, user namespaces too.
        assert!(
            d[4..=Action::Cgroup as usize]
                .iter()
                .all(|f| *f == RULE_DENY)
        );
        p.process.namespaces = Fallback::Allow;
        assert_eq!(defaults(&p)[Action::Namespace as usize], RULE_ALLOW);
    }

    #[test]
    fn granted_capabilities_leave_the_denied_set_and_others_change_nothing() {
        let mut p = policy();
        assert_eq!(denied_capabilities(&p), DENIED_CAPABILITIES);
        let cap = |n| agent_common::capability_by_name(n).unwrap();
        p.process.capabilities = vec![cap("CAP_NET_RAW"), cap("CAP_CHOWN")];
        assert_eq!(
            denied_capabilities(&p),
            DENIED_CAPABILITIES & !(1 << cap("CAP_NET_RAW"))
        );
    }

    #[test]
    fn connect_has_rules_names_the_lookups_that_can_match() {
        let net = |text: &str, port: Option<u16>| NetPattern {
            net: text.parse().unwrap(),
            port,
        };
        let connect = |p: &Policy| has_rules(p)[Action::Connect as usize];
        let mut p = policy();
        p.connect.allow = vec![net("10.0.0.0/8", None)];
        assert_eq!(connect(&p), NET_ANY_PORT_RULES);
        p.connect.allow = vec![net("10.0.0.0/8", Some(443))];
        assert_eq!(connect(&p), NET_PORT_RULES);
        p.connect.deny = vec![net("::1/128", None)];
        assert_eq!(connect(&p), NET_ANY_PORT_RULES | NET_PORT_RULES);
    }

    #[test]
    fn ten_thousand_rules_compile_correctly() {
        let mut p = policy();
        p.file_write.default = Fallback::Deny;
        p.file_write.allow = (0..5_000).map(|i| tree(&format!("/w/{i}"))).collect();
        p.file_write.deny = (0..5_000)
            .map(|i| exact(&format!("/w/{i}/secret")))
            .collect();
        p.connect.allow = (0..10_000u32)
            .map(|i| NetPattern {
                net: IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))), 24).unwrap(),
                port: Some(443),
            })
            .collect();
        p.connect.deny = vec![crate::parse_net("10.0.0.0/8:443").unwrap()];
        let entries = compile_paths(&p, 3);
        assert_eq!(entries.len(), 10_000);
        for q in [
            "/w/17/secret",
            "/w/17/other",
            "/w/17",
            "/x",
            "/w/4999/secret/x",
        ] {
            assert_eq!(
                kernel(&entries, &p, 3, Action::FileWrite, q),
                decide(&p, Action::FileWrite, q),
                "{q}"
            );
        }
        let net = compile_net(&p, 3);
        assert_eq!(net.len(), 10_001);
        // The /8 deny is an ancestor of every /24 allow, so each carries both flags.
        assert!(net.iter().all(|(_, f)| f & RULE_DENY != 0));
    }

    /// The kernel's decision on a file with no path on disk: a lookup of `anonymous` with
    /// `RULE_DENY` as the default, whatever `exec.default` says.
    fn kernel_anonymous(entries: &[(PathKey, u8)], policy: &Policy) -> Verdict {
        let mut key = path_key_header(5, Action::Exec).to_vec();
        key.extend_from_slice(&anonymous_bytes());
        let flags = if has_rules(policy)[Action::Exec as usize] == 0 {
            0
        } else {
            let entries = entries.iter().map(|(k, f)| (k.prefix_len, &k.data[..], *f));
            lpm(entries, &key, key.len() * 8)
        };
        agent_common::verdict(flags, RULE_DENY, agent_common::MODE_ENFORCE)
    }

    #[test]
    fn anonymous_runs_only_where_exec_allow_names_it() {
        for default in [Fallback::Allow, Fallback::Deny] {
            for named in [None, Some(Fallback::Allow), Some(Fallback::Deny)] {
                for everything in [false, true] {
                    let mut p = policy();
                    p.exec.default = default;
                    p.anonymous_exec = named;
                    if everything {
                        // `/**` covers every path, but `anonymous` is no path.
                        p.exec.allow = vec![PathPattern::Tree(String::new())];
                    }
                    let entries = compile_paths(&p, 5);
                    let want = if named == Some(Fallback::Allow) {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    };
                    let case = format!("default {default:?}, named {named:?}, /** {everything}");
                    assert_eq!(kernel_anonymous(&entries, &p), want, "{case}");
                    // Paths are judged as before.
                    for path in ["/anonymous", "/usr/bin/true"] {
                        assert_eq!(
                            kernel(&entries, &p, 5, Action::Exec, path),
                            decide(&p, Action::Exec, path),
                            "{case}: {path}"
                        );
                    }
                }
            }
        }
    }
}
