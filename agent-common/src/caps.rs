//! Linux capabilities by number (include/uapi/linux/capability.h), and the ones actgate denies
//! to labelled tasks unless their policy grants them by name.

/// Every capability the kernels of the matrix know, indexed by its number.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability numbered `name`, if the kernel has one by that name.
pub fn capability_by_name(name: &str) -> Option<u8> {
    CAPABILITIES
        .iter()
        .position(|c| *c == name)
        .map(|i| i as u8)
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The bit of a capability, checked at compile time.
const fn bit(name: &str) -> u64 {
    let mut i = 0;
    while i < CAPABILITIES.len() {
        if same(CAPABILITIES[i], name) {
            return 1 << i;
        }
        i += 1;
    }
    panic!("not a capability")
}

/// Capabilities that would let root in a label undo or sidestep the policy: load or change BPF
/// programs and maps (BPF, PERFMON, SYS_ADMIN), reach the daemon (SYS_PTRACE), change the
/// kernel or its memory (SYS_MODULE, SYS_RAWIO, SYS_BOOT: kexec loads a kernel without the
/// LSM), other LSMs' state (MAC_ADMIN, MAC_OVERRIDE), the network past connect rules
/// (NET_ADMIN, NET_RAW), paths the kernel reports differently (SYS_CHROOT changes what
/// d_path returns), second names for a disk (MKNOD: a device node in the workspace), and
/// files opened by handle (DAC_READ_SEARCH: open_by_handle_at gives a file whose path the
/// kernel can't tell, judged by its last components only).
pub const DENIED_CAPABILITIES: u64 = bit("CAP_SYS_ADMIN")
    | bit("CAP_BPF")
    | bit("CAP_PERFMON")
    | bit("CAP_SYS_PTRACE")
    | bit("CAP_SYS_MODULE")
    | bit("CAP_SYS_RAWIO")
    | bit("CAP_MAC_ADMIN")
    | bit("CAP_MAC_OVERRIDE")
    | bit("CAP_NET_ADMIN")
    | bit("CAP_NET_RAW")
    | bit("CAP_SYS_CHROOT")
    | bit("CAP_MKNOD")
    | bit("CAP_SYS_BOOT")
    | bit("CAP_DAC_READ_SEARCH");

/// Room for a capability's name and its NUL in an event.
pub const CAP_NAME_LEN: usize = 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_event_and_numbers_match_the_kernel() {
        assert!(CAPABILITIES.iter().all(|c| c.len() < CAP_NAME_LEN));
        assert_eq!(capability_by_name("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_by_name("CAP_BPF"), Some(39));
        assert_eq!(capability_by_name("CAP_NET_RAW"), Some(13));
        assert_eq!(capability_by_name("cap_net_raw"), None);
        assert_eq!(DENIED_CAPABILITIES.count_ones(), 14);
    }
}
