//! The decision a policy makes about one action, computed from its rules directly, with no
//! tries involved: the semantics the README documents. The compiled tries must decide the
//! same (the property tests of `compile` check it), so `actgate diff` replays events with
//! these functions instead of a matcher of its own.
//!
//! Deny beats allow: the kernel's longest-prefix match finds one entry, but every entry carries
//! the flags of all its ancestors (see `compile`), so a matching deny anywhere above a path
//! decides, however long the allow rule below it.

use std::net::IpAddr;

use agent_common::{ANONYMOUS, Verdict};

use crate::model::{Fallback, Mode, NetPattern, PathPattern, Policy, Rules, UnixPattern};

/// What decided an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// A rule matched: a `deny` rule (which beats every allow) or, when none did, an `allow`
    /// rule. `pattern` is written as a policy writes it.
    Rule { deny: bool, pattern: String },
    /// A denial actgate adds to every policy, which holds in audit mode too (its own files,
    /// the kernel's settings): the `protect` patterns of `Rules`.
    Protected { pattern: String },
    /// No rule matched: the section's `default`.
    Default(Fallback),
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecidedBy::Rule {
                deny: true,
                pattern,
            } => write!(f, "deny rule `{pattern}`"),
            DecidedBy::Rule {
                deny: false,
                pattern,
            } => write!(f, "allow rule `{pattern}`"),
            DecidedBy::Protected { pattern } => {
                write!(
                    f,
                    "`{pattern}`, which actgate protects whatever the policy says"
                )
            }
            DecidedBy::Default(Fallback::Deny) => f.write_str("default: deny"),
            DecidedBy::Default(Fallback::Allow) => f.write_str("default: allow"),
        }
    }
}

/// A verdict and what gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub by: DecidedBy,
}

impl PathPattern {
    /// Whether the pattern matches `path`, a path as the kernel resolved it.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(e) => path == e,
            // `d/`: beneath `d`, not `d` itself; `/**` (an empty `d`) matches every path.
            PathPattern::Tree(d) => path
                .strip_prefix(d.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

impl UnixPattern {
    /// Whether the pattern matches a peer socket's name: its path, or `@name` for an abstract
    /// socket (as events write it).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            UnixPattern::Path(p) => p.matches(name),
            UnixPattern::Abstract(n) => name.strip_prefix('@') == Some(n.as_str()),
            UnixPattern::AnyAbstract => name.starts_with('@'),
        }
    }
}

impl NetPattern {
    /// Whether the pattern matches a destination. IPv4-mapped IPv6 addresses are judged as
    /// IPv4, as the kernel does.
    pub fn matches(&self, addr: IpAddr, port: u16) -> bool {
        self.net.contains(&addr.to_canonical()) && self.port.is_none_or(|p| p == port)
    }
}

impl<P: std::fmt::Display> Rules<P> {
    /// The decision of these rules under `mode` for a target that the patterns `matches`.
    /// A protected pattern (actgate's own files) denies in audit mode too.
    pub fn decide(&self, mode: Mode, matches: impl Fn(&P) -> bool) -> Decision {
        let rule = |deny: bool, p: &P| DecidedBy::Rule {
            deny,
            pattern: p.to_string(),
        };
        if let Some(p) = self.protect.iter().find(|p| matches(p)) {
            return Decision {
                verdict: Verdict::Deny,
                by: DecidedBy::Protected {
                    pattern: p.to_string(),
                },
            };
        }
        if let Some(p) = self.deny.iter().find(|p| matches(p)) {
            return refused(mode, rule(true, p));
        }
        if let Some(p) = self.allow.iter().find(|p| matches(p)) {
            return Decision {
                verdict: Verdict::Allow,
                by: rule(false, p),
            };
        }
        match self.default {
            Fallback::Allow => Decision {
                verdict: Verdict::Allow,
                by: DecidedBy::Default(Fallback::Allow),
            },
            Fallback::Deny => refused(mode, DecidedBy::Default(Fallback::Deny)),
        }
    }
}

/// The verdict on what `mode` refuses: audit mode only reports it.
pub fn refusal(mode: Mode) -> Verdict {
    match mode {
        Mode::Enforce => Verdict::Deny,
        Mode::Audit => Verdict::Audit,
    }
}

/// A refusal under `mode` (see `refusal`).
pub fn refused(mode: Mode, by: DecidedBy) -> Decision {
    Decision {
        verdict: refusal(mode),
        by,
    }
}

impl Policy {
    /// The rules of a path action (exec, files.write, files.read, files.delete), None for
    /// every other action.
    pub fn path_rules(&self, action: agent_common::Action) -> Option<&Rules<PathPattern>> {
        use agent_common::Action;
        match action {
            Action::Exec => Some(&self.exec),
            Action::FileWrite => Some(&self.file_write),
            Action::FileRead => Some(&self.file_read),
            Action::FileDelete => Some(&self.file_delete),
            _ => None,
        }
    }

    /// The decision on a path action (see `path_rules`), None for another action. An exec of
    /// `anonymous` (a file with no path on disk) is denied unless `exec.allow` names it,
    /// whatever `exec.default` says: no path pattern matches it.
    pub fn decide_path(&self, action: agent_common::Action, path: &str) -> Option<Decision> {
        let rules = self.path_rules(action)?;
        if action == agent_common::Action::Exec && path == ANONYMOUS {
            let by = |deny| DecidedBy::Rule {
                deny,
                pattern: ANONYMOUS.to_owned(),
            };
            return Some(match self.anonymous_exec {
                Some(Fallback::Allow) => Decision {
                    verdict: Verdict::Allow,
                    by: by(false),
                },
                Some(Fallback::Deny) => refused(self.mode, by(true)),
                None => refused(self.mode, DecidedBy::Default(Fallback::Deny)),
            });
        }
        Some(rules.decide(self.mode, |p| p.matches(path)))
    }

    /// The decision of `network.unix` on a peer socket named `name` (a path, or `@name`).
    pub fn decide_unix(&self, name: &str) -> Decision {
        self.unix.decide(self.mode, |p| p.matches(name))
    }

    /// The decision of `network.listen` on a listen at `addr` port `port`.
    pub fn decide_listen(&self, addr: IpAddr, port: u16) -> Decision {
        self.listen.decide(self.mode, |p| p.matches(addr, port))
    }

    /// The decision of `network.connect` on a connection to `addr` port `port`, reached by a
    /// lookup of `host` when the label looked a name up.
    ///
    /// A name the resolver refuses (a deny rule without a port, or no allow rule under
    /// `default: deny`) gives the workload no address, so the connect is refused by that rule
    /// or the default. Otherwise the name's rules act as address rules for the addresses it
    /// resolved to: the kernel ORs the flags of the name's entries with those of the address
    /// rules, and deny beats allow. The rebinding guard, which may drop an answer before any
    /// connect, is the caller's to apply (it depends on the host's own addresses).
    pub fn decide_connect(&self, addr: IpAddr, port: u16, host: Option<&str>) -> Decision {
        let address = self.connect.decide(self.mode, |p| p.matches(addr, port));
        let Some(host) = host else {
            return address;
        };
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let judgement = self.judge_name(&name);
        let matching = |deny: bool| {
            let rules = if deny {
                &self.hosts.deny
            } else {
                &self.hosts.allow
            };
            rules
                .iter()
                .find(|p| p.name.matches(&name) && p.port.is_none_or(|p| p == port))
                .or_else(|| rules.iter().find(|p| p.name.matches(&name)))
                .map(|p| DecidedBy::Rule {
                    deny,
                    pattern: p.to_string(),
                })
        };
        if judgement.refused {
            return refused(
                self.mode,
                matching(true).unwrap_or(DecidedBy::Default(Fallback::Deny)),
            );
        }
        let on_port = |ports: &[Option<u16>]| ports.iter().any(|p| p.is_none_or(|p| p == port));
        if matches!(
            address.by,
            DecidedBy::Rule { deny: true, .. } | DecidedBy::Protected { .. }
        ) {
            return address;
        }
        if on_port(&judgement.deny) {
            return refused(
                self.mode,
                matching(true).unwrap_or(DecidedBy::Default(Fallback::Deny)),
            );
        }
        if on_port(&judgement.allow)
            && !matches!(address.by, DecidedBy::Rule { deny: false, .. })
            && let Some(by) = matching(false)
        {
            return Decision {
                verdict: Verdict::Allow,
                by,
            };
        }
        address
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_common::Action;

    use super::*;

    fn policy(text: &str) -> Policy {
        let text = format!("name: p\nlabels: [l]\n{text}");
        let (mut policies, diags) = crate::parse_str(Path::new("t.yaml"), &text);
        assert!(diags.is_empty(), "{diags:?}");
        policies.remove(0)
    }

    fn rule(deny: bool, pattern: &str) -> DecidedBy {
        DecidedBy::Rule {
            deny,
            pattern: pattern.to_owned(),
        }
    }

    #[test]
    fn a_deny_above_beats_a_longer_allow_below() {
        let p = policy(
            "files:\n  write:\n    default: deny\n    allow: [/w/keep/**]\n    deny: [/w/**]\n",
        );
        let d = p.decide_path(Action::FileWrite, "/w/keep/x").unwrap();
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.by, rule(true, "/w/**"));
        let d = p.decide_path(Action::FileWrite, "/x").unwrap();
        assert_eq!(
            (d.verdict, d.by),
            (Verdict::Deny, DecidedBy::Default(Fallback::Deny))
        );
    }

    #[test]
    fn a_tree_matches_beneath_its_directory_only() {
        let tree = PathPattern::Tree("/a/b".into());
        assert!(tree.matches("/a/b/c"));
        assert!(!tree.matches("/a/b"));
        assert!(!tree.matches("/a/bc"));
        assert!(PathPattern::Tree(String::new()).matches("/anything"));
    }

    #[test]
    fn audit_mode_reports_what_enforce_denies() {
        let p = policy("mode: audit\nexec:\n  default: deny\n  allow: [/usr/bin/git]\n");
        assert_eq!(
            p.decide_path(Action::Exec, "/usr/bin/nc").unwrap().verdict,
            Verdict::Audit
        );
        assert_eq!(
            p.decide_path(Action::Exec, "/usr/bin/git").unwrap().verdict,
            Verdict::Allow
        );
        assert!(p.decide_path(Action::Connect, "/x").is_none());
    }

    #[test]
    fn anonymous_runs_only_where_exec_allow_names_it() {
        let denied = policy("exec:\n  default: allow\n  allow: [/**]\n");
        let d = denied.decide_path(Action::Exec, ANONYMOUS).unwrap();
        assert_eq!(d.verdict, Verdict::Deny);
        let allowed = policy("exec:\n  default: deny\n  allow: [anonymous]\n");
        let d = allowed.decide_path(Action::Exec, ANONYMOUS).unwrap();
        assert_eq!((d.verdict, d.by), (Verdict::Allow, rule(false, ANONYMOUS)));
    }

    #[test]
    fn unix_patterns_match_paths_and_abstract_names() {
        let p = policy(
            "network:\n  unix:\n    default: allow\n    deny: [/run/docker.sock, \"@bus\", /run/user/**]\n",
        );
        for denied in ["/run/docker.sock", "@bus", "/run/user/1000/bus"] {
            assert_eq!(p.decide_unix(denied).verdict, Verdict::Deny, "{denied}");
        }
        for allowed in ["@bus2", "/run/docker.sock2", "/run/user"] {
            assert_eq!(p.decide_unix(allowed).verdict, Verdict::Allow, "{allowed}");
        }
        assert!(UnixPattern::AnyAbstract.matches("@x"));
        assert!(!UnixPattern::AnyAbstract.matches("/x"));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn connects_are_judged_by_address_port_and_looked_up_name() {
        let p = policy(
            "network:\n  connect:\n    default: deny\n    allow: [\"10.0.0.0/8:443\", \"github.com:443\", \"*.x.com\"]\n    deny: [\"10.9.0.0/16\", \"bad.x.com:22\", evil.x.com]\n",
        );
        let d = |addr: &str, port, host| p.decide_connect(ip(addr), port, host);
        assert_eq!(d("10.1.2.3", 443, None).by, rule(false, "10.0.0.0/8:443"));
        assert_eq!(d("10.1.2.3", 80, None).verdict, Verdict::Deny);
        assert_eq!(d("::ffff:10.1.2.3", 443, None).verdict, Verdict::Allow);
        assert_eq!(d("10.9.2.3", 443, None).by, rule(true, "10.9.0.0/16"));
        // A name allows its addresses on its rule's port only.
        let gh = d("140.82.112.5", 443, Some("GitHub.com."));
        assert_eq!(
            (gh.verdict, gh.by),
            (Verdict::Allow, rule(false, "github.com:443"))
        );
        assert_eq!(
            d("140.82.112.5", 22, Some("github.com")).verdict,
            Verdict::Deny
        );
        // A deny rule with a port closes that port of a wildcard-allowed name.
        let bad = d("1.2.3.4", 22, Some("bad.x.com"));
        assert_eq!(
            (bad.verdict, bad.by),
            (Verdict::Deny, rule(true, "bad.x.com:22"))
        );
        assert_eq!(
            d("1.2.3.4", 443, Some("bad.x.com")).by,
            rule(false, "*.x.com")
        );
        // A refused lookup gives the workload no address at all.
        assert_eq!(
            d("1.2.3.4", 443, Some("evil.x.com")).by,
            rule(true, "evil.x.com")
        );
        let unknown = d("10.1.2.3", 443, Some("unknown.org"));
        assert_eq!(
            (unknown.verdict, unknown.by),
            (Verdict::Deny, DecidedBy::Default(Fallback::Deny))
        );
        // An address deny beats the name's allow.
        assert_eq!(
            d("10.9.0.1", 443, Some("a.x.com")).by,
            rule(true, "10.9.0.0/16")
        );
    }

    #[test]
    fn listens_are_judged_by_address() {
        let p = policy("network:\n  listen:\n    default: deny\n    allow: [\"0.0.0.0/0:8080\"]\n");
        assert_eq!(p.decide_listen(ip("0.0.0.0"), 8080).verdict, Verdict::Allow);
        assert_eq!(p.decide_listen(ip("0.0.0.0"), 0).verdict, Verdict::Deny);
    }
}
