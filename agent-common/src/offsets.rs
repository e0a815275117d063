//! The kernel struct members the programs read. Rust eBPF has no CO-RE and layouts move between
//! kernels (`file.f_path` is at 16 on 6.1 and at 64 on 6.12), so the daemon looks each one up
//! in /sys/kernel/btf/vmlinux and writes it into the program's global of the same name before
//! loading. Both sides are generated from the one list in `kernel_offsets!`, so a global can't
//! exist on one side only and silently stay 0.

/// Calls `$apply! { GLOBAL: struct.member, ... }` with every offset the programs read: the
/// kernel side defines a global per entry, the daemon reads each from BTF. `| other` names the
/// member on kernels that replaced it.
#[macro_export]
macro_rules! kernel_offsets {
    ($apply:ident) => {
        $apply! {
            LINUX_BINPRM_FILE: linux_binprm.file,
            FILE_F_PATH: file.f_path,
            FILE_F_MODE: file.f_mode,
            FILE_F_FLAGS: file.f_flags,
            FILE_F_INODE: file.f_inode,
            TASK_STRUCT_REAL_PARENT: task_struct.real_parent,
            TASK_STRUCT_TGID: task_struct.tgid,
            TASK_STRUCT_GROUP_LEADER: task_struct.group_leader,
            TASK_STRUCT_START_TIME: task_struct.start_time,
            TASK_STRUCT_REAL_CRED: task_struct.real_cred,
            TASK_STRUCT_CRED: task_struct.cred,
            DENTRY_D_NAME: dentry.d_name,
            DENTRY_D_INODE: dentry.d_inode,
            DENTRY_D_PARENT: dentry.d_parent,
            QSTR_NAME: qstr.name,
            QSTR_LEN: qstr.len,
            INODE_I_NLINK: inode.i_nlink,
            INODE_I_SB: inode.i_sb,
            INODE_I_INO: inode.i_ino,
            INODE_I_FLAGS: inode.i_flags,
            INODE_I_MODE: inode.i_mode,
            SUPER_BLOCK_S_DEV: super_block.s_dev,
            SUPER_BLOCK_S_MAGIC: super_block.s_magic,
            SUPER_BLOCK_S_ROOT: super_block.s_root,
            SUPER_BLOCK_S_MOUNTS: super_block.s_mounts,
            MOUNT_MNT: mount.mnt,
            MOUNT_MNT_PARENT: mount.mnt_parent,
            MOUNT_MNT_MOUNTPOINT: mount.mnt_mountpoint,
            MOUNT_SB_LINK: mount.mnt_instance | mnt_next_for_sb,
            VFSMOUNT_MNT_ROOT: vfsmount.mnt_root,
            VFSMOUNT_MNT_SB: vfsmount.mnt_sb,
            VFSMOUNT_MNT_FLAGS: vfsmount.mnt_flags,
            MSGHDR_MSG_NAME: msghdr.msg_name,
            MSGHDR_MSG_NAMELEN: msghdr.msg_namelen,
            USER_NAMESPACE_LEVEL: user_namespace.level,
            TASK_STRUCT_CGROUPS: task_struct.cgroups,
            CSS_SET_DFL_CGRP: css_set.dfl_cgrp,
            CGROUP_LEVEL: cgroup.level,
            CGROUP_ANCESTORS: cgroup.ancestors,
            CGROUP_KN: cgroup.kn,
            KERNFS_NODE_ID: kernfs_node.id,
            MSGHDR_MSG_CONTROL: msghdr.msg_control,
            MSGHDR_MSG_CONTROLLEN: msghdr.msg_controllen,
            SOCKET_SK: socket.sk,
            SOCK_SK_PROTOCOL: sock.sk_protocol,
            SOCK_SK_CGRP_DATA: sock.sk_cgrp_data,
            SOCK_CGROUP_DATA_CGROUP: sock_cgroup_data.cgroup,
            SOCK_COMMON_SKC_FAMILY: sock_common.skc_family,
            SOCK_COMMON_SKC_NUM: sock_common.skc_num,
            SOCK_COMMON_SKC_RCV_SADDR: sock_common.skc_rcv_saddr,
            SOCK_COMMON_SKC_V6_RCV_SADDR: sock_common.skc_v6_rcv_saddr,
            UNIX_SOCK_ADDR: unix_sock.addr,
            UNIX_SOCK_PATH: unix_sock.path,
            UNIX_ADDRESS_LEN: unix_address.len,
            UNIX_ADDRESS_NAME: unix_address.name,
            VM_AREA_STRUCT_VM_FILE: vm_area_struct.vm_file,
            BACKING_FILE_USER_PATH: backing_file.user_path,
            TASK_STRUCT_FS: task_struct.fs,
            FS_STRUCT_ROOT: fs_struct.root,
            QSTR_HASH: qstr.hash,
        }
    };
}

/// Globals of `kernel_offsets!` whose struct only some kernels have: the daemon writes 0 where
/// the kernel lacks it, and the programs check for 0. `backing_file` came with 6.8's overlayfs
/// backing files, whose `f_path` is the file on the layer, not the path the user opened.
pub const OPTIONAL_OFFSETS: &[&str] = &["BACKING_FILE_USER_PATH"];

/// One entry of `kernel_offsets!`, for the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffset {
    /// The program's global that receives the offset.
    pub global: &'static str,
    /// The kernel struct, without `struct`.
    pub ty: &'static str,
    /// The member, looked up through anonymous structs and unions.
    pub member: &'static str,
    /// What newer kernels have in its place (6.18 links a file system's mounts through
    /// `mount.mnt_next_for_sb`, not `mnt_instance`).
    pub alt: Option<&'static str>,
}

macro_rules! offset_table {
    ($($global:ident: $ty:ident . $member:ident $(| $alt:ident)?,)+) => {
        /// Every offset the programs read.
        pub const KERNEL_OFFSETS: &[KernelOffset] = &[$(KernelOffset {
            global: stringify!($global),
            ty: stringify!($ty),
            member: stringify!($member),
            alt: offset_table!(@alt $($alt)?),
        }),+];
    };
    (@alt) => { None };
    (@alt $alt:ident) => { Some(stringify!($alt)) };
}

kernel_offsets!(offset_table);
