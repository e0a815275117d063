//! The LSM hooks actgate attaches to: one list, read by the kernel programs (argument counts),
//! the daemon (which programs to load and attach) and the self-test (which hook proves which
//! action).

use crate::Action;

/// One LSM hook and the program that judges it. The program is named after the hook (the
/// kernel keeps only 15 characters of a program's name, so the benchmark matches prefixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub name: &'static str,
    /// The hook's own arguments. The BPF LSM passes the previous program's verdict right after
    /// them, as argument `nargs`.
    pub nargs: usize,
    /// The actions the program judges.
    pub actions: &'static [Action],
    /// Not every supported kernel has the hook (`file_truncate` and the ACL hooks came in
    /// 6.2): the daemon attaches it only where the kernel's BTF has `bpf_lsm_<name>`.
    pub optional: bool,
}

macro_rules! hooks {
    ($($konst:ident = $name:literal, $nargs:literal, [$($action:ident),+] $($optional:ident)?;)+) => {
        impl Hook {
            $(pub const $konst: Hook = Hook {
                name: $name,
                nargs: $nargs,
                actions: &[$(Action::$action),+],
                optional: hooks!(@optional $($optional)?),
            };)+
            /// Every hook, in attach order.
            pub const ALL: &[Hook] = &[$(Hook::$konst),+];
        }

        /// The name of every hook, in the order of `Hook::ALL`.
        pub const HOOKS: &[&str] = &[$($name),+];
    };
    (@optional) => { false };
    (@optional optional) => { true };
}

hooks! {
    BPRM_CHECK_SECURITY = "bprm_check_security", 1, [Exec];
    FILE_OPEN = "file_open", 1, [FileWrite, FileRead];
    PATH_TRUNCATE = "path_truncate", 1, [FileWrite];
    PATH_CHMOD = "path_chmod", 2, [FileWrite];
    PATH_CHOWN = "path_chown", 3, [FileWrite];
    PATH_UNLINK = "path_unlink", 2, [FileWrite, FileDelete];
    PATH_RMDIR = "path_rmdir", 2, [FileWrite, FileDelete];
    PATH_MKDIR = "path_mkdir", 3, [FileWrite];
    PATH_SYMLINK = "path_symlink", 3, [FileWrite];
    PATH_MKNOD = "path_mknod", 4, [FileWrite];
    PATH_LINK = "path_link", 3, [FileWrite, FileRead];
    PATH_RENAME = "path_rename", 5, [FileWrite, FileRead, FileDelete];
    SOCKET_CONNECT = "socket_connect", 3, [Connect];
    SOCKET_SENDMSG = "socket_sendmsg", 3, [Connect, Socket];
    SOCKET_LISTEN = "socket_listen", 2, [Listen];
    SOCKET_CREATE = "socket_create", 4, [Socket];
    SOCKET_SETSOCKOPT = "socket_setsockopt", 3, [Socket];
    UNIX_STREAM_CONNECT = "unix_stream_connect", 3, [UnixConnect];
    UNIX_MAY_SEND = "unix_may_send", 2, [UnixConnect];
    BPF = "bpf", 3, [Bpf];
    CAPABLE = "capable", 4, [Capability];
    TASK_KILL = "task_kill", 4, [Signal];
    PTRACE_ACCESS_CHECK = "ptrace_access_check", 2, [Ptrace];
    TASK_ALLOC = "task_alloc", 2, [Cgroup];
    USERNS_CREATE = "userns_create", 1, [Namespace];
    SB_MOUNT = "sb_mount", 5, [Namespace];
    MOVE_MOUNT = "move_mount", 2, [Namespace];
    SB_PIVOTROOT = "sb_pivotroot", 2, [Namespace];
    PATH_CHROOT = "path_chroot", 1, [Namespace];
    FILE_IOCTL = "file_ioctl", 3, [Ptrace];
    FILE_TRUNCATE = "file_truncate", 1, [FileWrite] optional;
    INODE_SETXATTR = "inode_setxattr", 6, [FileWrite];
    INODE_REMOVEXATTR = "inode_removexattr", 3, [FileWrite];
    INODE_SET_ACL = "inode_set_acl", 4, [FileWrite] optional;
    INODE_REMOVE_ACL = "inode_remove_acl", 3, [FileWrite] optional;
    INODE_SETATTR = "inode_setattr", 3, [FileWrite];
    FILE_RECEIVE = "file_receive", 1, [FileWrite, FileRead];
    MMAP_FILE = "mmap_file", 4, [Exec];
    FILE_MPROTECT = "file_mprotect", 3, [Exec];
}

/// Number of hooks in `Hook::ALL`.
pub const HOOK_COUNT: usize = Hook::ALL.len();

impl Hook {
    /// The first hook in `ALL` that judges `action`: the one an exec, an open or a connect(2)
    /// passes through. Every action has one (see the test below).
    pub fn first_for(action: Action) -> Option<Hook> {
        Hook::ALL
            .iter()
            .copied()
            .find(|h| h.actions.contains(&action))
    }

    /// Every hook that judges `action`, with its index in `ALL`.
    pub fn all_for(action: Action) -> impl Iterator<Item = (usize, Hook)> {
        Hook::ALL
            .iter()
            .copied()
            .enumerate()
            .filter(move |(_, h)| h.actions.contains(&action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_hook_and_names_are_unique() {
        for a in Action::ALL {
            assert!(Hook::first_for(a).is_some(), "{a:?}");
        }
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(HOOKS[i], h.name);
            assert!(!HOOKS[..i].contains(&h.name), "{} twice", h.name);
        }
    }

    #[test]
    fn the_self_test_probes_the_hooks_of_exec_open_and_connect() {
        let hook = |a| Hook::first_for(a).map(|h| h.name);
        assert_eq!(hook(Action::Exec), Some("bprm_check_security"));
        assert_eq!(hook(Action::FileWrite), Some("file_open"));
        assert_eq!(hook(Action::FileRead), Some("file_open"));
        assert_eq!(hook(Action::Connect), Some("socket_connect"));
        assert_eq!(hook(Action::Capability), Some("capable"));
        assert_eq!(Hook::all_for(Action::Connect).count(), 2);
        assert_eq!(Hook::all_for(Action::UnixConnect).count(), 2);
        assert_eq!(hook(Action::Listen), Some("socket_listen"));
    }
}
