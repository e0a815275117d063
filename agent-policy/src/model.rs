//! Validated policies: what the parser produces and the compiler consumes.

use std::fmt;
use std::path::PathBuf;

use agent_common::{Action, SocketKind};
use ipnet::IpNet;

use crate::diagnostic::Pos;
use crate::pattern::CgroupPattern;

/// Whether a policy's denials are enforced or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    /// Never deny; a decision that would have denied is reported as "audit".
    Audit,
}

/// What an action gets when no rule matches. Not called `Default` so it does not shadow the
/// prelude trait for everyone who glob-imports this crate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Fallback {
    #[default]
    Allow,
    Deny,
}

/// A validated path pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// Everything beneath this directory (not the directory itself). Holds the directory
    /// without the trailing `/**`; `""` stands for `/**`, i.e. every path.
    Tree(String),
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Tree(d) => write!(f, "{d}/**"),
        }
    }
}

/// A validated `network.unix` pattern: the name a peer socket was bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnixPattern {
    /// A socket bound at a path in the file system, as the kernel resolves it.
    Path(PathPattern),
    /// The abstract socket `@name` (held without the `@`), matched exactly.
    Abstract(String),
    /// Every abstract socket: `@**`.
    AnyAbstract,
}

impl fmt::Display for UnixPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPattern::Path(p) => write!(f, "{p}"),
            UnixPattern::Abstract(name) => write!(f, "@{name}"),
            UnixPattern::AnyAbstract => f.write_str("@**"),
        }
    }
}

/// A validated network pattern: an address or CIDR (host bits clear, IPv4-mapped IPv6 turned
/// into IPv4) and an optional port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetPattern {
    pub net: IpNet,
    /// `None` matches every port.
    pub port: Option<u16>,
}

impl fmt::Display for NetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A single address prints without its prefix, as people write it.
        let host = self.net.prefix_len() == self.net.max_prefix_len();
        match (self.net, self.port, host) {
            (IpNet::V4(n), None, true) => write!(f, "{}", n.addr()),
            (IpNet::V4(n), None, false) => write!(f, "{n}"),
            (IpNet::V4(n), Some(p), true) => write!(f, "{}:{p}", n.addr()),
            (IpNet::V4(n), Some(p), false) => write!(f, "{n}:{p}"),
            (IpNet::V6(n), None, true) => write!(f, "{}", n.addr()),
            (IpNet::V6(n), None, false) => write!(f, "{n}"),
            (IpNet::V6(n), Some(p), true) => write!(f, "[{}]:{p}", n.addr()),
            (IpNet::V6(n), Some(p), false) => write!(f, "[{n}]:{p}"),
        }
    }
}

/// A host name of `network.connect`, lowercase and without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostName {
    /// Exactly this name.
    Exact(String),
    /// `*.suffix`: every name ending in `.suffix`, with any number of labels before it, but
    /// not `suffix` itself. Holds the suffix without the `*.`.
    Wildcard(String),
    /// Every name. No policy file can say it: only the policy `actgate learn` puts a label
    /// under has it, so that every name the label looks up is recorded with its connects.
    Any,
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Exact(name) => f.write_str(name),
            HostName::Wildcard(suffix) => write!(f, "*.{suffix}"),
            HostName::Any => f.write_str("(any name)"),
        }
    }
}

/// A validated host name pattern of `network.connect` and an optional port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    pub name: HostName,
    /// `None` matches every port.
    pub port: Option<u16>,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            None => write!(f, "{}", self.name),
            Some(port) => write!(f, "{}:{port}", self.name),
        }
    }
}

/// The host name rules of `network.connect`. The kernel never sees a name: the daemon judges
/// the label's lookups by them (`Policy::judge_name`), and `connect.default` applies to names
/// that no rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    pub allow: Vec<HostPattern>,
    pub deny: Vec<HostPattern>,
}

impl Hosts {
    /// Number of patterns, allow and deny together.
    pub fn len(&self) -> usize {
        self.allow.len() + self.deny.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rules of one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules<P> {
    pub default: Fallback,
    pub allow: Vec<P>,
    pub deny: Vec<P>,
    /// Denials that hold whatever the policy's mode, audit included: actgate's own files,
    /// added by the daemon. No policy file sets them.
    pub protect: Vec<P>,
}

// Hand-written so `P` need not implement `Default`.
impl<P> Default for Rules<P> {
    fn default() -> Self {
        Rules {
            default: Fallback::Allow,
            allow: Vec::new(),
            deny: Vec::new(),
            protect: Vec::new(),
        }
    }
}

impl<P> Rules<P> {
    /// Number of patterns, allow and deny together.
    pub fn len(&self) -> usize {
        self.allow.len() + self.deny.len() + self.protect.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The patterns that deny, in any mode or only in enforce mode.
    pub fn denials(&self) -> impl Iterator<Item = &P> {
        self.deny.iter().chain(&self.protect)
    }
}

/// What a labelled process may do beyond its files and connections (`process:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRules {
    /// Capabilities (by number) granted from `agent_common::DENIED_CAPABILITIES`; granting
    /// one that isn't denied changes nothing.
    pub capabilities: Vec<u8>,
    /// Whether the label may create user namespaces.
    pub namespaces: Fallback,
}

impl Default for ProcessRules {
    fn default() -> Self {
        ProcessRules {
            capabilities: Vec::new(),
            namespaces: Fallback::Deny,
        }
    }
}

/// A cap on how often a label performs an action (`budgets:`), counted in the kernel across
/// all of the label's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// One of `parse::BUDGET_ACTIONS`.
    pub action: Action,
    /// Actions allowed per window, 1..=`agent_common::LIMIT_MAX`.
    pub max: u32,
    /// The window, `LIMIT_WINDOW_MIN_MS..=LIMIT_WINDOW_MAX_MS`.
    pub per_ms: u32,
    /// `then: revoke`: running out also revokes the label (otherwise only the excess is denied).
    pub revoke: bool,
}

/// The circuit breaker (`revoke_after:`): the label is revoked once it has been denied
/// `denials` times within `within_ms`. Same bounds as a `Budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub denials: u32,
    pub within_ms: u32,
}

/// One validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub labels: Vec<String>,
    /// Cgroups that exist without actgate, bound to the policy's one label (`cgroups:`).
    pub cgroups: Vec<CgroupPattern>,
    pub mode: Mode,
    pub exec: Rules<PathPattern>,
    /// What `exec.allow` or `exec.deny` say about `anonymous`, an exec of a file with no path
    /// on disk (memfd, O_TMPFILE, deleted): `None` when neither names it. Anything but an
    /// allow is a denial, whatever `exec.default` says.
    pub anonymous_exec: Option<Fallback>,
    pub file_write: Rules<PathPattern>,
    pub file_read: Rules<PathPattern>,
    /// `files.delete`: removing or replacing a name. The kernel asks `file_write` too, so a
    /// delete needs both.
    pub file_delete: Rules<PathPattern>,
    /// The address rules of `network.connect`.
    pub connect: Rules<NetPattern>,
    /// The host name rules of `network.connect`; `connect.default` is theirs too.
    pub hosts: Hosts,
    /// `network.unix`: connects and sends to named AF_UNIX sockets.
    pub unix: Rules<UnixPattern>,
    /// `network.listen`: listen(2) on addresses other than loopback.
    pub listen: Rules<NetPattern>,
    /// The socket kinds `network` allows (`raw: allow` and so on); the others are denied.
    pub sockets: Vec<SocketKind>,
    pub process: ProcessRules,
    /// At most one per action, in the order written.
    pub budgets: Vec<Budget>,
    pub breaker: Option<Breaker>,
    /// Where the policy was defined, for messages.
    pub file: PathBuf,
    pub line: usize,
}

impl Policy {
    /// Number of patterns over all actions.
    pub fn rule_count(&self) -> usize {
        self.exec.len()
            + usize::from(self.anonymous_exec.is_some())
            + self.file_write.len()
            + self.file_read.len()
            + self.file_delete.len()
            + self.connect.len()
            + self.hosts.len()
            + self.unix.len()
            + self.listen.len()
    }
}

/// Where a path pattern was written, for messages about it (see `symlinks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSite {
    pub pattern: PathPattern,
    pub file: PathBuf,
    pub pos: Pos,
}

/// Every policy of a directory, checked together (unique names and labels, limits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    /// Every path pattern of the policies, where it was written.
    pub sites: Vec<PathSite>,
}

impl PolicySet {
    /// Number of patterns over all policies and actions.
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(Policy::rule_count).sum()
    }

    pub fn label_count(&self) -> usize {
        self.policies.iter().map(|p| p.labels.len()).sum()
    }

    /// The rule lists whose patterns are paths, of every policy.
    pub fn path_rules_mut(&mut self) -> impl Iterator<Item = &mut Rules<PathPattern>> {
        self.policies.iter_mut().flat_map(|p| {
            [
                &mut p.exec,
                &mut p.file_write,
                &mut p.file_read,
                &mut p.file_delete,
            ]
        })
    }
}
