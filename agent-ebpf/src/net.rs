//! network.connect: `socket_connect` for connect(2), `socket_sendmsg` for sendto/sendmsg with
//! an explicit destination (UDP without connect, TCP Fast Open). Only IPv4 and IPv6 are
//! network actions; AF_UNIX and other local families pass.

use agent_common::{Hook, NET_FAMILY_V4, NET_FAMILY_V6, Verdict};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    hook::frame_when,
    judge::{self, Dest},
    kernel::{self, field, get, read},
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
            Some(d) => judge::net_action(info, &d),
            None => Verdict::Allow,
        })
    })
}

#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let msg: *const u8 = ctx.arg(1);
    // msg_name points at the kernel's copy of the address, NULL on a connected socket (judged
    // at connect time). Every write to a connected socket passes here, so those leave before
    // the label lookup.
    let name = field::<usize>(msg, get(&kernel::MSGHDR_MSG_NAME)) as *const u8;
    let concerns = || !name.is_null();
    frame_when(&ctx, Hook::SOCKET_SENDMSG, concerns, |info| {
        let len: i32 = field(msg, get(&kernel::MSGHDR_MSG_NAMELEN));
        Ok(match destination(name, len, true) {
            Some(d) => judge::net_action(info, &d),
            None => Verdict::Allow,
        })
    })
}
