//! network.connect: `socket_connect` for connect(2), `socket_sendmsg` for sendto/sendmsg with
//! an explicit destination (UDP without connect, TCP Fast Open). network.listen:
//! `socket_listen` on a non-loopback address. Only IPv4 and IPv6 are judged here; AF_UNIX
//! peers are judged in `unix.rs`, other socket kinds in `sock.rs`. DNS queries that `dns.rs`
//! sends to the label's resolver pass unjudged: their server is not where they go.

use agent_common::{Action, Hook, NET_FAMILY_V4, NET_FAMILY_V6, Verdict};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    dns,
    hook::frame_when,
    judge::{self, Dest},
    kernel::{self, field, get, read},
    sock,
};

const AF_UNSPEC: u16 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Reads a `sockaddr` the kernel already copied from user space. IPv4-mapped IPv6 addresses
/// (::ffff:a.b.c.d) come back as IPv4, so the IPv4 rules judge them. With `unspec_is_v4`, an
/// AF_UNSPEC address is read as IPv4: that is how the kernel sends a datagram to it on an
/// IPv4 socket (udp_sendmsg and raw_sendmsg accept AF_UNSPEC), so it must be judged as one.
/// An IPv6 socket ignores such an address and sends to its connected peer; judging the bytes
/// as IPv4 there can only refuse, never let anything through.
#[inline(always)]
fn destination(addr: *const u8, len: i32, unspec_is_v4: bool) -> Option<Dest> {
    if addr.is_null() || len < 2 {
        return None;
    }
    // sockaddr_in6 is 28 bytes; sockaddr_in fits in its first 16. UAPI, so stable.
    let raw: [u8; 28] = read(addr, 0);
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut d = Dest {
        family: NET_FAMILY_V4,
        port,
        addr: [0; 16],
    };
    match family {
        AF_INET if len >= 16 => d.addr[..4].copy_from_slice(&raw[4..8]),
        AF_UNSPEC if unspec_is_v4 && len >= 16 => d.addr[..4].copy_from_slice(&raw[4..8]),
        AF_INET6 if len >= 24 => {
            let a = &raw[8..24];
            if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
                d.addr[..4].copy_from_slice(&a[12..16]);
            } else {
                d.family = NET_FAMILY_V6;
                d.addr.copy_from_slice(a);
            }
        }
        _ => return None,
    }
    Some(d)
}

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let addr: *const u8 = ctx.arg(1);
    let len: i32 = ctx.arg(2);
    // Local families (AF_UNIX above all) leave before the label lookup.
    let concerns = || {
        let family: u16 = field(addr, 0);
        len >= 2 && matches!(family, AF_INET | AF_INET6)
    };
    frame_when(&ctx, Hook::SOCKET_CONNECT, concerns, |info| {
        // connect(2) with AF_UNSPEC dissolves an association: no destination to judge.
        Ok(match destination(addr, len, false) {
            Some(d) if dns::steered(info, sock, &d, true) => Verdict::Allow,
            Some(d) => judge::net_action(info, Action::Connect, &d),
            None => Verdict::Allow,
        })
    })
}

/// The address a listening socket accepts on, unless it is a loopback one: an inbound channel
/// only local processes can reach is no network action.
#[inline(always)]
fn listen_address(sk: *const u8) -> Option<Dest> {
    // The verifier allows no arithmetic on a pointer that may be NULL.
    if sk.is_null() {
        return None;
    }
    let family: u16 = field(sk, get(&kernel::SOCK_COMMON_SKC_FAMILY));
    // skc_num is the bound port in host order; 0 when listen(2) picks one.
    let port: u16 = field(sk, get(&kernel::SOCK_COMMON_SKC_NUM));
    let mut d = Dest {
        family: NET_FAMILY_V4,
        port,
        addr: [0; 16],
    };
    match family {
        AF_INET => {
            let a: [u8; 4] = read(sk, get(&kernel::SOCK_COMMON_SKC_RCV_SADDR));
            d.addr[..4].copy_from_slice(&a);
        }
        AF_INET6 => {
            let a: [u8; 16] = read(sk, get(&kernel::SOCK_COMMON_SKC_V6_RCV_SADDR));
            if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
                d.addr[..4].copy_from_slice(&a[12..16]);
            } else {
                d.family = NET_FAMILY_V6;
                d.addr = a;
            }
        }
        _ => return None,
    }
    let loopback = if d.family == NET_FAMILY_V4 {
        d.addr[0] == 127
    } else {
        d.addr[..15].iter().all(|b| *b == 0) && d.addr[15] == 1
    };
    (!loopback).then_some(d)
}

#[lsm(hook = "socket_listen")]
pub fn socket_listen(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let address = || listen_address(field::<usize>(sock, get(&kernel::SOCKET_SK)) as *const u8);
    // listen(2) is rare, so the address is read twice rather than before the frame: work
    // ahead of the frame's read of the previous verdict can leave stale bounds on the
    // register it lands in, and 6.12's verifier then rejects the return value.
    frame_when(
        &ctx,
        Hook::SOCKET_LISTEN,
        || address().is_some(),
        |info| {
            Ok(match address() {
                Some(d) => judge::net_action(info, Action::Listen, &d),
                None => Verdict::Allow,
            })
        },
    )
}

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    // msg_name points at the kernel's copy of the address, NULL on a connected socket (judged
    // at connect time). Every write to a connected socket passes here, so those leave before
    // the label lookup.
    let name = field::<usize>(msg, get(&kernel::MSGHDR_MSG_NAME)) as *const u8;
    // Control messages may reroute (see `sock::rerouting_cmsg`); a plain send has none.
    let control_len: usize = field(msg, get(&kernel::MSGHDR_MSG_CONTROLLEN));
    let concerns = || !name.is_null() || control_len != 0;
    frame_when(&ctx, Hook::SOCKET_SENDMSG, concerns, |info| {
        let len: i32 = field(msg, get(&kernel::MSGHDR_MSG_NAMELEN));
        // Only UDP sends are steered: a TCP send with an address (Fast Open) connects without
        // passing the cgroup connect programs, so its server is judged.
        let to = match destination(name, len, true) {
            Some(d) if dns::steered(info, sock, &d, false) => Verdict::Allow,
            Some(d) => judge::net_action(info, Action::Connect, &d),
            None => Verdict::Allow,
        };
        if to == Verdict::Deny || control_len == 0 {
            return Ok(to);
        }
        let control = field::<usize>(msg, get(&kernel::MSGHDR_MSG_CONTROL)) as *const u8;
        Ok(match sock::rerouting_cmsg(control, control_len) {
            Some(kind) => judge::worst(to, judge::socket_use(info, kind)),
            None => to,
        })
    })
}
