//! network.unix: a labelled task's stream or seqpacket connect (`unix_stream_connect`) and
//! datagram connect or send (`unix_may_send`) to a named AF_UNIX socket. The peer is judged by
//! the socket itself, not the caller's string: a path-named socket by the path its inode has
//! (so `/var/run/x` meets the rules for `/run/x`), an abstract one as `@name`. A peer without a
//! name (socketpair, or never bound) is reachable only through a descriptor the task already
//! holds, and passes.

use agent_common::{Action, Hook, Verdict};
use aya_ebpf::{bindings::path, macros::lsm, programs::LsmContext};

use crate::{
    hook::frame_when,
    judge,
    kernel::{self, field, get, read},
    path::Target,
};

/// The address of the AF_UNIX socket `sk` (a `struct sock *`, NULL for none); NULL when it
/// has no name. unix_sock begins with its struct sock; its own members lie past that BTF
/// type, so they are read with the probing helper.
#[inline(always)]
fn address(sk: *const u8) -> *const u8 {
    if sk.is_null() {
        return core::ptr::null();
    }
    read::<usize>(sk, get(&kernel::UNIX_SOCK_ADDR)) as *const u8
}

/// Judges a connect or send to the AF_UNIX socket `peer()`. Everything is read inside the
/// frame, after the previous verdict (see `net::socket_listen`).
#[inline(always)]
fn judge_peer(ctx: &LsmContext, hook: Hook, peer: impl Fn() -> *const u8) -> i32 {
    frame_when(
        ctx,
        hook,
        || !address(peer()).is_null(),
        |info| {
            let sk = peer();
            let addr = address(sk);
            if addr.is_null() {
                return Ok(Verdict::Allow);
            }
            let at = sk.wrapping_add(get(&kernel::UNIX_SOCK_PATH) as usize);
            // `struct path` is { vfsmount *mnt; dentry *dentry; }: only a path-named socket
            // has a dentry.
            let dentry = read::<usize>(at, 8) as *const u8;
            if dentry.is_null() {
                return Ok(judge::abstract_socket(info, addr));
            }
            let target = Target::Walk(at as *const path, dentry);
            judge::path_actions(info, target, None, &[Action::UnixConnect])
        },
    )
}

#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    judge_peer(&ctx, Hook::UNIX_STREAM_CONNECT, || ctx.arg(1))
}

#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    judge_peer(&ctx, Hook::UNIX_MAY_SEND, || {
        let other: *const u8 = ctx.arg(1);
        field::<usize>(other, get(&kernel::SOCKET_SK)) as *const u8
    })
}
