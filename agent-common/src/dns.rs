//! Egress by host name: the label's DNS queries are steered to the daemon's resolver, which
//! writes the addresses of the names the label may reach into `HOSTS` before it answers.

/// The cgroup sock_addr programs that steer the queries, each named after its attach point:
/// its ELF section is `cgroup/<name>`, from which the loader takes the attach type. connect
/// and sendmsg (UDP) send a query to the label's resolver; recvmsg (UDP replies) and
/// getpeername show the server the task asked instead.
pub const PROGRAMS: &[&str] = &[
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// Queries to this port (UDP or TCP, any address) from labelled tasks go to the daemon.
pub const DNS_PORT: u16 = 53;

/// Value of `DNS_RESOLVERS` (label index → resolver): the loopback ports (host order) where
/// the daemon answers the label's queries, on 127.0.0.1 (`*4`) and ::1 (`*6`); 0 where it
/// has none. A label without an entry has no resolver: its queries are refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolver {
    pub udp4: u16,
    pub tcp4: u16,
    pub udp6: u16,
    pub tcp6: u16,
}

/// Key of `HOSTS`: an address that a label's lookup of an allowed (or denied) name returned,
/// for connects to `port` (0: every port). IPv4 addresses fill the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub label: u32,
    pub port: u16,
    /// `NET_FAMILY_V4` or `NET_FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// Value of `HOSTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEntry {
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`) after which the entry no longer counts: the
    /// record's TTL plus a grace. The kernel checks it on every connect, so an entry the
    /// daemon hasn't removed yet can't outlive it.
    pub expires_ns: u64,
    /// The daemon's id of the name looked up, for events (never 0).
    pub host: u32,
    /// `RULE_ALLOW` or `RULE_DENY`, as the name's rules say for this port.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// Most entries of `HOSTS` over all labels.
pub const MAX_HOSTS: u32 = 65536;

/// Value of the kernel's `STEERED` map (socket cookie → the DNS server a steered socket
/// asked): its replies and getpeername show that server, not the daemon's resolver.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steered {
    /// `NET_FAMILY_V4` or `NET_FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    /// Host order.
    pub port: u16,
    pub addr: [u8; 16],
}

/// Sockets whose steered server the kernel remembers (least recently used ones are evicted).
pub const MAX_STEERED: u32 = 16384;
