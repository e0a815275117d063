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
        let exact = self
            .hosts
            .allow
            .iter()
            .any(|p| matches!(&p.name, HostName::Exact(n) if *n == name));
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
    fn matches(&self, name: &str) -> bool {
        match self {
            HostName::Exact(exact) => exact == name,
            HostName::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty()),
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
