//! Socket uses that reach destinations the connect rules never see (`Action::Socket`): raw and
//! packet sockets (any header, any destination), SCTP (connectx and its control messages
//! carry addresses of their own) and IP options that reroute (source routing). Each is denied
//! unless the policy allows its kind.

use agent_common::{Hook, SocketKind, Verdict};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{hook::frame_when, judge};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;
const SOCK_SEQPACKET: i32 = 5;
/// socket(2)'s type also carries SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: i32 = 0xf;
const IPPROTO_SCTP: i32 = 132;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SOL_SCTP: i32 = 132;
const IP_OPTIONS: i32 = 4;
const IP_RETOPTS: i32 = 7;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_RTHDR: i32 = 57;
const SCTP_DSTADDRV4: i32 = 8;
const SCTP_DSTADDRV6: i32 = 9;

/// The kind of a new socket that `network` must allow by name, if any. Netlink is local (and
/// glibc's resolver opens SOCK_RAW netlink sockets); AF_UNIX turns SOCK_RAW into SOCK_DGRAM.
/// Ping sockets (SOCK_DGRAM, IPPROTO_ICMP) are no kind: their destinations are judged as
/// connects on send.
#[inline(always)]
fn created_kind(family: i32, ty: i32, protocol: i32) -> Option<SocketKind> {
    let ty = ty & SOCK_TYPE_MASK;
    let inet = family == AF_INET || family == AF_INET6;
    if family == AF_PACKET {
        Some(SocketKind::Packet)
    } else if ty == SOCK_RAW && family != AF_UNIX && family != AF_NETLINK {
        Some(SocketKind::Raw)
    } else if inet && (protocol == IPPROTO_SCTP || ty == SOCK_SEQPACKET) {
        // SCTP is the only internet SOCK_SEQPACKET protocol, so protocol 0 picks it too.
        Some(SocketKind::Sctp)
    } else {
        None
    }
}

#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // Worked out inside the frame, after the previous verdict (see `net::socket_listen`).
    let kind = || {
        let kern: i32 = ctx.arg(3);
        // Sockets the kernel makes for itself are no task's action.
        if kern != 0 {
            return None;
        }
        created_kind(ctx.arg(0), ctx.arg(1), ctx.arg(2))
    };
    frame_when(
        &ctx,
        Hook::SOCKET_CREATE,
        || kind().is_some(),
        |info| Ok(kind().map_or(Verdict::Allow, |k| judge::socket_use(info, k))),
    )
}

/// Socket options that set IP options or an IPv6 routing header: both send packets through
/// hops of the sender's choosing. IPV6_2292PKTOPTIONS takes control messages that may carry a
/// routing header. setsockopt's value isn't given to the hook, so every such call is judged.
#[inline(always)]
fn option_kind(level: i32, name: i32) -> Option<SocketKind> {
    let reroutes = match level {
        SOL_IP => name == IP_OPTIONS,
        SOL_IPV6 => matches!(name, IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS),
        _ => false,
    };
    reroutes.then_some(SocketKind::IpOptions)
}

#[lsm(hook = "socket_setsockopt")]
pub fn socket_setsockopt(ctx: LsmContext) -> i32 {
    // Worked out inside the frame, after the previous verdict (see `net::socket_listen`).
    let kind = || option_kind(ctx.arg(1), ctx.arg(2));
    frame_when(
        &ctx,
        Hook::SOCKET_SETSOCKOPT,
        || kind().is_some(),
        |info| Ok(kind().map_or(Verdict::Allow, |k| judge::socket_use(info, k))),
    )
}

/// Most control messages looked at in one sendmsg. A message with more is judged as
/// rerouting, since the rest can't be read.
const MAX_CMSGS: usize = 16;
/// `struct cmsghdr`: cmsg_len (size_t), cmsg_level, cmsg_type (int). UAPI.
const CMSG_HDR: usize = 16;

/// The kind of the first control message of a sendmsg that chooses where the packet goes:
/// IP_RETOPTS (IP options), an IPv6 routing header, or an SCTP destination address.
///
/// ____sys_sendmsg copies msg_control into kernel memory before security_socket_sendmsg, and
/// the kernel walks it the same way (for_each_cmsghdr: each header 8-byte aligned, a length
/// below the header's own ends the walk with EINVAL). A buffer that can't be read is judged
/// as rerouting: what can't be judged is denied.
#[inline(always)]
pub fn rerouting_cmsg(control: *const u8, len: usize) -> Option<SocketKind> {
    let mut at = 0usize;
    for _ in 0..MAX_CMSGS {
        if at + CMSG_HDR > len {
            return None;
        }
        let hdr: Option<[u8; CMSG_HDR]> = read_cmsg(control, at);
        let Some(hdr) = hdr else {
            return Some(SocketKind::IpOptions);
        };
        let cmsg_len = u64::from_ne_bytes([
            hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7],
        ]) as usize;
        let level = i32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let ty = i32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        let kind = match (level, ty) {
            (SOL_IP, IP_RETOPTS) => Some(SocketKind::IpOptions),
            (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR) => Some(SocketKind::IpOptions),
            (SOL_SCTP, SCTP_DSTADDRV4 | SCTP_DSTADDRV6) => Some(SocketKind::Sctp),
            _ => None,
        };
        if kind.is_some() {
            return kind;
        }
        if cmsg_len < CMSG_HDR || cmsg_len > len - at {
            // The kernel refuses the message (EINVAL) before it sends anything.
            return None;
        }
        at += (cmsg_len + 7) & !7;
    }
    (at + CMSG_HDR <= len).then_some(SocketKind::IpOptions)
}

/// One control message header, None when the buffer can't be read.
#[inline(always)]
fn read_cmsg(control: *const u8, at: usize) -> Option<[u8; CMSG_HDR]> {
    // SAFETY: bpf_probe_read_kernel checks the address; a user address fails.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(control.wrapping_add(at) as *const [u8; CMSG_HDR])
    }
    .ok()
}
