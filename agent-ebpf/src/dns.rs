//! DNS steering: a labelled task's queries (TCP or UDP to port 53, any server) go to its
//! label's resolver in the daemon, which writes the addresses of the names the label may
//! reach into `HOSTS` before it answers (see `judge::net_action`). cgroup sock_addr programs,
//! attached to the labels' parent cgroup, rewrite the destination of connect and UDP sendmsg,
//! and rewrite it back in UDP replies and getpeername, so the task sees the server it asked.
//!
//! The LSM hooks run before these programs and see the original destination: `steered` tells
//! them which calls these programs take over, so they don't judge the server's address.

use agent_common::{
    LabelInfo, NET_FAMILY_V4, NET_FAMILY_V6, RULE_ALLOW, Verdict,
    dns::{DNS_PORT, Steered},
    verdict,
};
use aya_ebpf::{
    EbpfContext, bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{
    hook,
    judge::Dest,
    kernel::{self, field, get},
    label, maps,
};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// Returned by connect and sendmsg programs: 1 lets the call go on, 0 fails it with EPERM.
const PASS: i32 = 1;
const REFUSE: i32 = 0;

/// 127.0.0.1 and ::1 as `bpf_sock_addr` holds them (network order in each u32).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// The third word of an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The port of the label's resolver for a query over TCP (`tcp`) or UDP to an IPv4 (`v4`) or
/// IPv6 server, 0 when the label has none.
#[inline(always)]
fn resolver_port(label: u32, tcp: bool, v4: bool) -> u16 {
    // SAFETY: the value is copied out at once.
    let Some(r) = (unsafe { maps::DNS_RESOLVERS.get(label) }).copied() else {
        return 0;
    };
    match (tcp, v4) {
        (false, true) => r.udp4,
        (true, true) => r.tcp4,
        (false, false) => r.udp6,
        (true, false) => r.tcp6,
    }
}

/// Whether a socket `protocol` is TCP; None for what isn't TCP or UDP (UDP-Lite, ICMP, SCTP,
/// raw), which is never steered.
#[inline(always)]
fn is_tcp(protocol: u32) -> Option<bool> {
    match protocol {
        IPPROTO_TCP => Some(true),
        IPPROTO_UDP => Some(false),
        _ => None,
    }
}

/// For the LSM hooks: whether the cgroup programs will send this connect (or, without `tcp`,
/// UDP send) of the labelled task on `sock` (a BTF-typed `struct socket *`) to `d` to the
/// label's resolver, so the server's address needn't be judged. It says yes only where those
/// programs are certain to steer: the socket is one of the task's own label (the cgroup the
/// socket was made in picks the programs that run), it is TCP or UDP, the label has a
/// resolver for it, and the label's mode lets a rule allow anything at all. Where it says no,
/// the destination is judged as usual (and a labelled query without a resolver is refused by
/// the cgroup programs anyway).
#[inline(always)]
pub fn steered(info: &LabelInfo, sock: *const u8, d: &Dest, tcp: bool) -> bool {
    if d.port != DNS_PORT || verdict(RULE_ALLOW, RULE_ALLOW, info.mode) != Verdict::Allow {
        return false;
    }
    let sk = field::<usize>(sock, get(&kernel::SOCKET_SK)) as *const u8;
    // The verifier allows no arithmetic on a pointer that may be NULL.
    if sk.is_null() {
        return false;
    }
    let protocol: u16 = field(sk, get(&kernel::SOCK_SK_PROTOCOL));
    let Some(is_tcp) = is_tcp(u32::from(protocol)) else {
        return false;
    };
    (tcp || !is_tcp)
        && label::cgroup_of_socket(sk) == label::current_cgroup()
        && resolver_port(info.label, is_tcp, d.family == NET_FAMILY_V4) != 0
}

/// The calling task's label, when this program set is the one that judges.
#[inline(always)]
fn labelled() -> Option<LabelInfo> {
    let info = label::current()?;
    hook::owns().then_some(info)
}

/// The address of a sock_addr call, as the context holds it (network order in each u32): the
/// port in host order, the IPv6 address (zero in IPv4 programs) and its IPv4 one (an IPv6
/// address's last word, which holds it when the address is IPv4-mapped).
struct Addr {
    port: u16,
    ip4: u32,
    ip6: [u32; 4],
}

#[inline(always)]
fn read_addr(sa: *mut bpf_sock_addr, v6: bool) -> Addr {
    // SAFETY: `sa` is the program's context; each field is loaded whole, as the verifier
    // requires. user_port holds the port in network order in its low 16 bits.
    unsafe {
        let port = u16::from_be(core::ptr::read_volatile(&raw const (*sa).user_port) as u16);
        let mut ip6 = [0; 4];
        let ip4 = if v6 {
            for (i, w) in ip6.iter_mut().enumerate() {
                *w = core::ptr::read_volatile(&raw const (*sa).user_ip6[i]);
            }
            ip6[3]
        } else {
            core::ptr::read_volatile(&raw const (*sa).user_ip4)
        };
        Addr { port, ip4, ip6 }
    }
}

/// Rewrites the destination of a sock_addr call: `ip4` for an IPv4 program, `ip6` otherwise.
#[inline(always)]
fn write_addr(sa: *mut bpf_sock_addr, v6: bool, ip4: u32, ip6: [u32; 4], port: u16) {
    // SAFETY: `sa` is the program's context, whose address fields these programs may write;
    // one volatile store per u32 field, since the verifier refuses merged or partial stores.
    unsafe {
        if v6 {
            for (i, w) in ip6.iter().enumerate() {
                core::ptr::write_volatile(&raw mut (*sa).user_ip6[i], *w);
            }
        } else {
            core::ptr::write_volatile(&raw mut (*sa).user_ip4, ip4);
        }
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port.to_be()));
    }
}

fn is_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == MAPPED
}

/// connect and UDP sendmsg: a query goes to the label's resolver, and the server it was for is
/// remembered for the socket. A labelled query without a resolver is refused: the daemon
/// can't see which name it asks for, so nothing the answer leads to could be judged by name.
#[inline(always)]
fn steer(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let to = read_addr(sa, v6);
    if to.port != DNS_PORT {
        return PASS;
    }
    // SAFETY: a whole-field load of the context.
    let protocol = unsafe { core::ptr::read_volatile(&raw const (*sa).protocol) };
    let Some(tcp) = is_tcp(protocol) else {
        return PASS;
    };
    let Some(info) = labelled() else {
        return PASS;
    };
    // A v6 socket's query to ::ffff:a.b.c.d is an IPv4 flow: it goes to the IPv4 resolver.
    let v4 = !v6 || is_mapped(&to.ip6);
    let port = resolver_port(info.label, tcp, v4);
    if port == 0 {
        return REFUSE;
    }
    let mut server = Steered {
        family: NET_FAMILY_V4,
        _pad: 0,
        port: DNS_PORT,
        addr: [0; 16],
    };
    if v4 {
        server.addr[..4].copy_from_slice(&to.ip4.to_ne_bytes());
    } else {
        server.family = NET_FAMILY_V6;
        for (i, w) in to.ip6.iter().enumerate() {
            server.addr[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A failed insert only costs the task the server's address in replies (an LRU map makes
    // room rather than fail); the query itself is still the resolver's to answer.
    let _ = maps::STEERED.insert(cookie, server, 0);
    let resolver6 = if v4 {
        [0, 0, MAPPED, LOOPBACK4]
    } else {
        LOOPBACK6
    };
    write_addr(sa, v6, LOOPBACK4, resolver6, port);
    PASS
}

/// UDP recvmsg and getpeername: an address that is the label's resolver becomes the server the
/// socket asked, so the task sees the reply come from where it sent the query (resolvers drop
/// replies from elsewhere).
#[inline(always)]
fn unsteer(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    let from = read_addr(sa, v6);
    let v4 = !v6 || is_mapped(&from.ip6);
    let resolver = if v4 {
        from.ip4 == LOOPBACK4
    } else {
        from.ip6 == LOOPBACK6
    };
    if !resolver {
        return;
    }
    // SAFETY: a whole-field load of the context.
    let protocol = unsafe { core::ptr::read_volatile(&raw const (*sa).protocol) };
    let Some(tcp) = is_tcp(protocol) else {
        return;
    };
    let Some(info) = labelled() else {
        return;
    };
    if from.port != resolver_port(info.label, tcp, v4) {
        return;
    }
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(server) = (unsafe { maps::STEERED.get(cookie) }).copied() else {
        return;
    };
    let a = server.addr;
    let ip4 = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    let ip6 = if server.family == NET_FAMILY_V6 {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        [w(0), w(4), w(8), w(12)]
    } else {
        [0, 0, MAPPED, ip4]
    };
    write_addr(sa, v6, ip4, ip6, server.port);
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    steer(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    steer(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    steer(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    steer(&ctx, true)
}

// The kernel accepts only 1 from recvmsg and getpeername programs.

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    unsteer(&ctx, false);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    unsteer(&ctx, true);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    unsteer(&ctx, false);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    unsteer(&ctx, true);
    1
}
