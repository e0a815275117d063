//! The names of the maps the daemon opens. aya's `#[map]` names each map after its static, so
//! the kernel side's statics carry these names; a test of the daemon checks the built object
//! against `ALL`.

macro_rules! map_names {
    ($($(#[$doc:meta])* $name:ident,)+) => {
        $($(#[$doc])* pub const $name: &str = stringify!($name);)+
        /// Every map the daemon opens by name.
        pub const ALL: &[&str] = &[$($name),+];
    };
}

map_names! {
    /// `Config`, one element.
    CONFIG,
    /// `LabelKey` → `LabelInfo`.
    LABELS,
    /// The `PathKey` trie.
    PATH_RULES,
    /// The `NetKey` trie.
    NET_RULES,
    /// `InodeKey` → rule flags.
    INODE_RULES,
    /// Per-CPU decision counters, indexed by `decision_index`.
    DECISIONS,
    /// Per-CPU counts of events lost to a full ring buffer, per action.
    EVENTS_DROPPED,
    /// Per-CPU error counts, indexed by `KernelError`.
    ERRORS,
    /// The ring buffer of `Event`s.
    EVENTS,
    /// The program set that judges (a u64 instance number).
    OWNER,
    /// `ProcessKey` → the binary the process runs.
    EXES,
    /// Label index → `Revocation`, for each revoked label.
    REVOKED,
    /// Revocations per label and trigger, indexed by `revocation_index`.
    REVOCATIONS,
    /// `LimitKey` → `Limit`: the budgets and breakers of each rule set.
    LIMITS,
    /// The current window of each label's budget or breaker, indexed by `limit_index`.
    WINDOWS,
    /// Per-CPU counts of actions over budget, indexed by `limit_index`.
    BUDGET_EXCEEDED,
    /// Label index → `dns::Resolver`: where the daemon answers the label's DNS queries.
    DNS_RESOLVERS,
    /// `dns::HostKey` → `dns::HostEntry`: addresses of names the label looked up.
    HOSTS,
}

/// Maps that outlive the daemon and are adopted by the next one, whatever its build, when
/// their definition (type, key and value size, capacity) is unchanged: the counters, which
/// must never go back, the owner switch, and what the kernel remembers about running
/// processes. Their layouts are append-only (see `ACTION_SLOTS`). The rule maps are rebuilt
/// by every daemon from the policies; the ring buffer is kept by the same build only, since
/// the `Event` layout may change between builds.
///
/// Revocations, their counts and the budgets' windows are kept too: a revocation lasts until
/// it is restored, and a restart must not hand a label a fresh budget.
pub const KEPT: &[&str] = &[
    DECISIONS,
    EVENTS_DROPPED,
    ERRORS,
    OWNER,
    EXES,
    REVOKED,
    REVOCATIONS,
    WINDOWS,
    BUDGET_EXCEEDED,
];
