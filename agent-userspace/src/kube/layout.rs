//! Where the kubelet puts a pod's cgroup, relative to the cgroup v2 mount.
//!
//! From the kubelet's source, pkg/kubelet/cm in kubernetes/kubernetes:
//! - qos_container_manager_linux.go: Guaranteed pods sit directly under the node's `kubepods`
//!   cgroup, Burstable ones under `kubepods/burstable`, BestEffort ones under
//!   `kubepods/besteffort` (the QoS class lowercased).
//! - pod_container_manager_linux.go (`GetPodContainerName`) and types.go
//!   (`GetPodCgroupNameSuffix`): a pod's own cgroup is `pod<UID>` under its QoS cgroup.
//! - cgroup_manager_linux.go: the cgroupfs driver joins those names with `/`
//!   (`CgroupName.ToCgroupfs`); the systemd driver replaces each `-` inside a name with `_`
//!   (`escapeSystemdCgroupName`), joins the names with `-`, adds `.slice` and expands the
//!   slice into its parents (`ToSystemd`, runc's `ExpandSlice`), so
//!   `{kubepods, burstable, pod12-34}` is
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice`.
//!
//! This assumes the kubelet's defaults `--cgroup-root=/` and `--cgroups-per-qos=true`.

use std::path::PathBuf;

/// A pod's QoS class, as `status.qosClass` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub const ALL: [Qos; 3] = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];

    /// `status.qosClass`'s value; None for anything else.
    pub fn parse(text: &str) -> Option<Qos> {
        match text {
            "Guaranteed" => Some(Qos::Guaranteed),
            "Burstable" => Some(Qos::Burstable),
            "BestEffort" => Some(Qos::BestEffort),
            _ => None,
        }
    }

    /// The kubelet's name components for this class's parent cgroup.
    fn parent(self) -> &'static [&'static str] {
        match self {
            Qos::Guaranteed => &["kubepods"],
            Qos::Burstable => &["kubepods", "burstable"],
            Qos::BestEffort => &["kubepods", "besteffort"],
        }
    }
}

/// The kubelet's two ways of naming cgroups (`--cgroup-driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    pub const ALL: [Driver; 2] = [Driver::Systemd, Driver::Cgroupfs];
}

/// Whether `uid` can be a pod UID: the API server hands out RFC 4122 UUIDs. Anything else
/// (a `/`, `..`) must never be joined to a path.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The cgroup of the pod with `uid` and class `qos` under `driver`, relative to the cgroup v2
/// mount. `uid` must be `valid_uid`.
pub fn pod_cgroup(driver: Driver, qos: Qos, uid: &str) -> PathBuf {
    let mut names: Vec<String> = qos.parent().iter().map(|s| s.to_string()).collect();
    names.push(format!("pod{uid}"));
    match driver {
        Driver::Cgroupfs => names.iter().collect(),
        Driver::Systemd => {
            // ExpandSlice: "a-b-c.slice" is a.slice/a-b.slice/a-b-c.slice.
            let escaped: Vec<String> = names.iter().map(|n| n.replace('-', "_")).collect();
            (1..=escaped.len())
                .map(|n| format!("{}.slice", escaped[..n].join("-")))
                .collect()
        }
    }
}

/// Where to look for a pod's cgroup, most likely first: its own class's (when known) under
/// both drivers, then the other classes'. A pod without `status.qosClass` (or a class this
/// code doesn't know) is looked for under all three.
pub fn candidates(uid: &str, qos: Option<Qos>) -> Vec<PathBuf> {
    let classes = qos
        .into_iter()
        .chain(Qos::ALL.into_iter().filter(|q| Some(*q) != qos));
    classes
        .flat_map(|q| Driver::ALL.map(|d| pod_cgroup(d, q, uid)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1234abcd-5678-90ef-1234-567890abcdef";

    #[test]
    fn systemd_driver_names_match_the_kubelet() {
        assert_eq!(
            pod_cgroup(Driver::Systemd, Qos::Guaranteed, UID),
            PathBuf::from("kubepods.slice/kubepods-pod1234abcd_5678_90ef_1234_567890abcdef.slice")
        );
        assert_eq!(
            pod_cgroup(Driver::Systemd, Qos::Burstable, UID),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1234abcd_5678_90ef_1234_567890abcdef.slice"
            )
        );
        assert_eq!(
            pod_cgroup(Driver::Systemd, Qos::BestEffort, UID),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod1234abcd_5678_90ef_1234_567890abcdef.slice"
            )
        );
    }

    #[test]
    fn cgroupfs_driver_names_match_the_kubelet() {
        assert_eq!(
            pod_cgroup(Driver::Cgroupfs, Qos::Guaranteed, UID),
            PathBuf::from(format!("kubepods/pod{UID}"))
        );
        assert_eq!(
            pod_cgroup(Driver::Cgroupfs, Qos::Burstable, UID),
            PathBuf::from(format!("kubepods/burstable/pod{UID}"))
        );
        assert_eq!(
            pod_cgroup(Driver::Cgroupfs, Qos::BestEffort, UID),
            PathBuf::from(format!("kubepods/besteffort/pod{UID}"))
        );
    }

    #[test]
    fn the_known_class_is_looked_for_first_then_all_others() {
        let c = candidates(UID, Some(Qos::BestEffort));
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], pod_cgroup(Driver::Systemd, Qos::BestEffort, UID));
        assert_eq!(c[1], pod_cgroup(Driver::Cgroupfs, Qos::BestEffort, UID));
        assert_eq!(c[2], pod_cgroup(Driver::Systemd, Qos::Guaranteed, UID));
        let unknown = candidates(UID, None);
        assert_eq!(unknown.len(), 6);
        assert_eq!(
            unknown[0],
            pod_cgroup(Driver::Systemd, Qos::Guaranteed, UID)
        );
        assert!(unknown.contains(&pod_cgroup(Driver::Cgroupfs, Qos::BestEffort, UID)));
    }

    #[test]
    fn only_uuid_characters_make_a_uid() {
        assert!(valid_uid(UID));
        assert!(!valid_uid(""));
        assert!(!valid_uid("../../etc"));
        assert!(!valid_uid("abc/def"));
        assert!(!valid_uid("abc_def"));
    }

    #[test]
    fn qos_classes_parse_as_the_api_spells_them() {
        assert_eq!(Qos::parse("Burstable"), Some(Qos::Burstable));
        assert_eq!(Qos::parse("burstable"), None);
    }
}
