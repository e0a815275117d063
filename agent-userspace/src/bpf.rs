//! Loading the kernel programs: preflight checks, kernel offsets, attach.

use std::{fs, path::Path};

use agent_common::{Hook, maps};
use anyhow::{Context, Result, bail};
use aya::{Btf, Ebpf, EbpfLoader, programs::Lsm};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::info;

use crate::{btf, cgroup::LabelRoot};

/// The object built by build.rs from agent-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Map sizes that the daemon chooses at load time.
pub struct Sizes {
    pub path_rules: u32,
    pub net_rules: u32,
    pub inode_rules: u32,
}

/// Fails with a fix when BPF LSM can't work on this kernel.
pub fn preflight() -> Result<()> {
    let lsm_path = Path::new("/sys/kernel/security/lsm");
    let lsms = fs::read_to_string(lsm_path).with_context(|| {
        format!(
            "reading {}: securityfs is not mounted or the kernel has no LSM support; \
             mount it with `mount -t securityfs none /sys/kernel/security`",
            lsm_path.display()
        )
    })?;
    if !lsms.trim().split(',').any(|l| l == "bpf") {
        bail!(
            "BPF LSM is not active (active LSMs: {}). Add `bpf` to the kernel's LSM list: boot \
             with `lsm={},bpf` on the kernel command line (the kernel needs CONFIG_BPF_LSM=y), \
             then start actgate again",
            lsms.trim(),
            lsms.trim()
        );
    }
    Ok(())
}

/// The kernel programs' aya-log messages, forwarded into the daemon's own log.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Loads the object with this kernel's offsets and attaches every hook. The returned logger
/// must be kept and drained (`forward_kernel_log`): its map is one the programs write to.
pub fn load(root: &LabelRoot, sizes: &Sizes, fake_allow_all: bool) -> Result<(Ebpf, KernelLog)> {
    let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
    let offsets = btf::kernel_offsets(
        &btf::Btf::from_file(vmlinux).context("reading kernel struct offsets from BTF")?,
    )
    .context("the kernel's BTF lacks a struct member actgate needs")?;
    let level = u64::from(root.label_level);
    let fake = u64::from(fake_allow_all);

    let mut loader = EbpfLoader::new();
    for (name, value) in &offsets {
        loader.override_global(name, value, true);
    }
    loader
        .override_global("LABEL_LEVEL", &level, true)
        .override_global("FAKE_ALLOW_ALL", &fake, true)
        .map_max_entries(maps::PATH_RULES, sizes.path_rules)
        .map_max_entries(maps::NET_RULES, sizes.net_rules)
        .map_max_entries(maps::INODE_RULES, sizes.inode_rules);
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading actgate's eBPF object into the kernel")?;

    let logger = aya_log::EbpfLogger::init(&mut ebpf)
        .context("setting up the kernel programs' log (AYA_LOGS)")?;
    let btf = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
    for Hook { name: hook, .. } in Hook::ALL {
        let prog: &mut Lsm = ebpf
            .program_mut(hook)
            .with_context(|| format!("program {hook} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {hook} is not an LSM program"))?;
        prog.load(hook, &btf).with_context(|| {
            format!(
                "the kernel refused LSM program {hook} (verifier or lockdown); run as root on a \
                 kernel with BPF LSM, without lockdown=confidentiality"
            )
        })?;
        prog.attach()
            .with_context(|| format!("attaching LSM program {hook}"))?;
        info!(hook, "attached");
    }
    info!(offsets = ?offsets, label_level = level, "kernel programs loaded");
    Ok((ebpf, logger))
}

/// Drains the kernel programs' log into the daemon's log for as long as the daemon runs.
pub fn forward_kernel_log(logger: KernelLog) -> Result<()> {
    // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for as long as
    // the AsyncFd that owns the logger lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the kernel programs' log: {e}"))?;
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use agent_common::{HOOKS, maps};
    use aya_obj::{Object, ProgramSection};

    use super::OBJECT;

    /// The built object against the lists in agent-common, which the daemon trusts: a map or
    /// program named on one side only would fail at load time, or never be attached.
    #[test]
    fn the_object_has_every_shared_map_and_exactly_the_listed_lsm_programs() {
        let obj = Object::parse(OBJECT).expect("parsing the eBPF object");
        for name in maps::ALL {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} is not in the object"
            );
        }
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(programs, HOOKS.iter().copied().collect());
        for (name, p) in &obj.programs {
            assert!(
                matches!(p.section, ProgramSection::Lsm { sleepable: false }),
                "{name} is not an LSM program"
            );
        }
    }
}
