//! What a policy's host name rules say about a name the label looked up. The kernel judges
//! addresses only; the daemon answers the label's DNS questions by these judgements and lets
//! it reach the addresses of the names they allow.

use std::net::IpAddr;

use crate::model::{Fallback, HostName, HostPattern, Policy};

/// What a label's rules say about a looked-up name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameJudgement {
    /// Answer REFUSED: a deny rule without a port matches, or no allow rule matches and
    /// `connect.default` is deny.
    pub refused: bool,
    /// Ports the matching allow rules open (None = every port), deduplicated; empty when no
    /// allow rule matches.
    pub allow: Vec<Option<u16>>,
    /// Ports the matching deny rules close (None = every port), deduplicated.
    pub deny: Vec<Option<u16>>,
    /// Rebinding guard: answers pointing to loopback, link-local, private or the host's own
    /// addresses must be dropped (unless an address rule allows them). True when the name is
    /// public, or no *exact* allow rule matches it (it is matched only by wildcards).
    pub guarded: bool,
}

impl Policy {
    /// Judge `name` as it appears in a DNS question: any case, maybe with a trailing dot.
    pub fn judge_name(&self, name: &str) -> NameJudgement {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let allow = ports(&self.hosts.allow, &name);
        let deny = ports(&self.hosts.deny, &name);
        let refused =
            deny.contains(&None) || (allow.is_empty() && self.connect.default == Fallback::Deny);
        // `Any` (the learning policy's) is guarded as the exact rule a learnt policy will
        // have for the name, so that what learning records by name, that rule allows.
        let exact = self.hosts.allow.iter().any(|p| match &p.name {
            HostName::Exact(n) => *n == name,
            HostName::Any => true,
            HostName::Wildcard(_) => false,
        });
        let guarded = if allow.is_empty() {
            // Refused under default deny; under default allow every address is allowed
            // anyway, so there is nothing to guard.
            self.connect.default == Fallback::Deny
        } else {
            // Naming a private name exactly is how a policy says its local answers are meant;
            // a public name, or one reached through a wildcard, could be pointed anywhere.
            !exact || is_public(&name)
        };
        NameJudgement {
            refused,
            allow,
            deny,
            guarded,
        }
    }

    /// Whether an allow address rule of `network.connect` covers `ip` on some port (the
    /// rebinding guard's exception).
    pub fn trusts_address(&self, ip: IpAddr) -> bool {
        // Rules hold IPv4-mapped IPv6 addresses as IPv4, as the kernel looks them up.
        let ip = ip.to_canonical();
        self.connect.allow.iter().any(|p| p.net.contains(&ip))
    }

    /// Whether `network.connect` has any host name rule.
    pub fn uses_names(&self) -> bool {
        !self.hosts.is_empty()
    }
}

impl HostName {
    /// Whether this pattern matches `name` (lowercase, without a trailing dot).
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            HostName::Exact(exact) => exact == name,
            HostName::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
            HostName::Any => true,
        }
    }
}

/// The ports of the `patterns` that match `name`, sorted and deduplicated.
fn ports(patterns: &[HostPattern], name: &str) -> Vec<Option<u16>> {
    let mut ports: Vec<Option<u16>> = patterns
        .iter()
        .filter(|p| p.name.matches(name))
        .map(|p| p.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether `name` (lowercase, without a trailing dot) lies in the public DNS: its top-level
/// domain is on the ICANN part of the public suffix list. The top-level domain rather than the
/// longest suffix, because names under a private-section suffix (`x.github.io`) are public too.
fn is_public(name: &str) -> bool {
    // RFC 8375's residential names are on the list, under `arpa`, but resolve only at home.
    if name == "home.arpa" || name.ends_with(".home.arpa") {
        return false;
    }
    let tld = name.rsplit('.').next().unwrap_or(name);
    psl::suffix(tld.as_bytes()).is_some_and(|s| s.typ() == Some(psl::Type::Icann))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A policy whose `network.connect` is `connect`, a YAML flow mapping.
    fn policy(connect: &str) -> Policy {
        let text = format!("name: p\nlabels: [l]\nnetwork:\n  connect: {connect}\n");
        let (mut policies, diags) = crate::parse_str(Path::new("t.yaml"), &text);
        assert!(diags.is_empty(), "{diags:?}");
        policies.remove(0)
    }

    fn judge(connect: &str, name: &str) -> NameJudgement {
        policy(connect).judge_name(name)
    }

    #[test]
    fn a_wildcard_matches_names_below_its_suffix_only() {
        let p = policy(r#"{default: deny, allow: ["*.x.com"]}"#);
        for name in ["a.x.com", "a.b.x.com", "_srv._tcp.x.com"] {
            assert_eq!(p.judge_name(name).allow, [None], "{name}");
        }
        for name in ["x.com", "ax.com", "a.x.co", "x.com.evil", "com"] {
            let j = p.judge_name(name);
            assert!(j.refused && j.allow.is_empty(), "{name}: {j:?}");
        }
    }

    #[test]
    fn names_match_in_any_case_with_or_without_the_trailing_dot() {
        let p = policy(r#"{default: deny, allow: ["Pkg.Example.org:443", "*.X.com"]}"#);
        for name in [
            "pkg.example.org",
            "PKG.EXAMPLE.ORG",
            "pkg.example.org.",
            "a.x.COM.",
        ] {
            assert!(!p.judge_name(name).refused, "{name}");
        }
        assert!(p.judge_name("pkg.example.org..").refused);
    }

    #[test]
    fn a_deny_without_port_beats_any_allow() {
        let j = judge(
            r#"{default: allow, allow: ["*.x.com"], deny: [evil.x.com]}"#,
            "evil.x.com",
        );
        assert!(j.refused, "{j:?}");
        assert_eq!(j.deny, [None]);
        assert!(!judge(r#"{allow: ["*.x.com"], deny: [evil.x.com]}"#, "good.x.com").refused);
    }

    #[test]
    fn a_deny_with_a_port_closes_that_port_only() {
        let j = judge(
            r#"{default: deny, allow: [x.com], deny: ["x.com:22"]}"#,
            "x.com",
        );
        assert_eq!(
            j,
            NameJudgement {
                refused: false,
                allow: vec![None],
                deny: vec![Some(22)],
                guarded: true,
            }
        );
    }

    #[test]
    fn ports_of_matching_rules_are_deduplicated() {
        let j = judge(
            r#"{default: deny, allow: ["a.x.com:443", "*.x.com:443", "*.x.com:80", "b.x.com"]}"#,
            "a.x.com",
        );
        assert_eq!(j.allow, [Some(80), Some(443)]);
        assert!(j.deny.is_empty());
    }

    #[test]
    fn unmatched_names_follow_connect_default() {
        let j = judge(r#"{default: deny, allow: [pkg.example.org]}"#, "evil.com");
        assert!(
            j.refused && j.allow.is_empty() && j.deny.is_empty(),
            "{j:?}"
        );
        let j = judge(r#"{default: allow, allow: [pkg.example.org]}"#, "evil.com");
        assert_eq!(
            j,
            NameJudgement {
                refused: false,
                allow: Vec::new(),
                deny: Vec::new(),
                guarded: false,
            }
        );
        // A policy without any name rule judges names by its default too.
        assert!(judge("{default: deny}", "pkg.example.org").refused);
        assert!(!judge("{}", "pkg.example.org").refused);
    }

    #[test]
    fn the_rebinding_guard_spares_only_private_names_allowed_exactly() {
        let p = policy(
            r#"{default: deny, allow: [github.com, x.github.io, api.actgate.test, db.internal,
                intranet, nas.home.arpa, foo.localhost, printer.local, "*.corp.test"]}"#,
        );
        for public in ["github.com", "x.github.io"] {
            assert!(p.judge_name(public).guarded, "{public}");
        }
        for private in [
            "api.actgate.test",
            "db.internal",
            "intranet",
            "nas.home.arpa",
            "foo.localhost",
            "printer.local",
        ] {
            assert!(!p.judge_name(private).guarded, "{private}");
        }
        assert!(
            p.judge_name("db.corp.test").guarded,
            "wildcards are guarded"
        );
    }

    #[test]
    fn public_names_are_under_an_icann_top_level_domain() {
        for public in [
            "github.com",
            "pkg.example.org",
            "x.co.uk",
            "a.b.s3.amazonaws.com",
            "onion.io",
        ] {
            assert!(is_public(public), "{public}");
        }
        for private in [
            "test",
            "x.test",
            "home.arpa",
            "a.home.arpa",
            "x.lan",
            "x.example",
        ] {
            assert!(!is_public(private), "{private}");
        }
    }

    #[test]
    fn addresses_are_trusted_when_an_allow_rule_covers_them_on_some_port() {
        let p = policy(
            r#"{default: deny, allow: ["10.20.0.0/16:443", "::1", pkg.example.org],
                deny: ["192.168.0.0/16"]}"#,
        );
        let trusted = |ip: &str| p.trusts_address(ip.parse().unwrap());
        assert!(trusted("10.20.3.4"));
        assert!(trusted("::ffff:10.20.3.4"));
        assert!(trusted("::1"));
        assert!(!trusted("10.21.0.1"));
        assert!(!trusted("127.0.0.1"));
        assert!(!trusted("192.168.1.1"));
    }

    #[test]
    fn uses_names_when_connect_has_a_host_rule() {
        assert!(policy("{allow: [pkg.example.org]}").uses_names());
        assert!(policy(r#"{deny: ["*.x.com:22"]}"#).uses_names());
        assert!(!policy(r#"{allow: ["10.0.0.0/8"]}"#).uses_names());
    }
}
