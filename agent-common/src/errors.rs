//! Why a hook could not judge an action. What the kernel can't judge is refused (see
//! `crate::unjudged`): such a call is denied, reported with `Reason::Unjudged`, and counted per
//! reason in the kernel's `ERRORS` map, which the daemon exports as
//! `actgate_kernel_errors_total{reason}`.

macro_rules! kernel_errors {
    ($($(#[$doc:meta])* $variant:ident = $value:literal => $reason:literal,)+) => {
        /// The discriminant is the reason's slot in `ERRORS`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum KernelError {
            $($(#[$doc])* $variant = $value,)+
        }

        impl KernelError {
            pub const ALL: &[KernelError] = &[$(KernelError::$variant),+];
            pub const COUNT: u32 = KernelError::ALL.len() as u32;
            /// The capacity of `ERRORS`, fixed because the map outlives the daemon and a
            /// newer build adopts it (see `ACTION_SLOTS`); reasons are append-only.
            pub const SLOTS: u32 = 16;

            /// The metric's `reason` label: stable, lowercase snake_case.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(KernelError::$variant => $reason,)+
                }
            }
        }
    };
}

const _: () = assert!(KernelError::COUNT <= KernelError::SLOTS);

kernel_errors! {
    /// `bpf_d_path` refused the path: longer than `PATH_BUF`, or on a file system it can't
    /// name.
    DPathFailed = 0 => "d_path_failed",
    /// The dentry walk of a `path_*` hook took more steps (components plus mount crossings)
    /// than it follows (`MAX_STEPS`); judging the last ones only would be a guess.
    PathTooDeep = 1 => "path_too_deep",
    /// The dentry walk built a path longer than `PATH_BUF`.
    PathTooLong = 2 => "path_too_long",
    /// A per-CPU scratch buffer (the `SCRATCH` or `WALK` map) could not be looked up.
    ScratchUnavailable = 3 => "scratch_unavailable",
    /// The dentry walk could not read a name, a parent or a mount on its way to the root.
    NameUnreadable = 4 => "name_unreadable",
    /// An attribute hook (xattr, ACL, timestamps) gets a dentry without its mount, and no
    /// mount of the whole file system was found to name it through.
    NoMount = 5 => "no_mount",
    /// The dentry walk reached a directory that is its own parent without reaching its
    /// mount's root: a dentry the kernel found from a file handle (open_by_handle_at), not
    /// yet connected to the tree, whose path would be judged by its last components only.
    Disconnected = 6 => "disconnected",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_slots_with_unique_snake_case_names() {
        for (i, e) in KernelError::ALL.iter().enumerate() {
            assert_eq!(*e as u32, i as u32, "{e:?} is not at its slot");
            let r = e.as_str();
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
            assert!(
                !KernelError::ALL[..i].iter().any(|o| o.as_str() == r),
                "{r} twice"
            );
        }
    }
}
