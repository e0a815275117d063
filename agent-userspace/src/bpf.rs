//! Loading the kernel programs: preflight checks, kernel offsets, attach.

use std::{
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
};

use agent_common::{HOOK_COUNT, Hook, dns, maps};
use anyhow::{Context, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, Lsm,
        links::{FdLink, PinnedLink},
    },
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::{btf, cgroup::LabelRoot, kallsyms, pin::Pins};

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

/// The rule maps: rebuilt by each daemon from its policies, pinned with its set.
const RULE_MAPS: &[&str] = &[
    maps::CONFIG,
    maps::LABELS,
    maps::PATH_RULES,
    maps::NET_RULES,
    maps::INODE_RULES,
    maps::LIMITS,
    maps::DNS_RESOLVERS,
    maps::HOSTS,
];

/// One daemon's program set: loaded, attached and pinned, but judging only once `OWNER`
/// names its instance (see `pin`).
pub struct Set {
    pub ebpf: Ebpf,
    /// Must be kept and drained (`forward_kernel_log`): its map is one the programs write to.
    pub log: KernelLog,
    /// The ring buffer's pin, which this build's sets share.
    pub events_pin: PathBuf,
    /// Held while the daemon runs, so the programs stay attached even if the pins are
    /// removed behind its back; the pins keep them attached after it exits.
    pub links: Vec<PinnedLink>,
    /// The hooks this kernel has, which are the ones attached.
    pub present: Present,
}

/// Per hook of `Hook::ALL`: whether this kernel has it.
pub type Present = [bool; HOOK_COUNT];

/// The hooks of `Hook::ALL` this kernel has. A program that read its hook's arguments at the
/// wrong places would take an argument for the previous program's verdict, so a hook whose
/// argument count differs from the one its program expects is named in the log.
fn present_hooks(btf: &btf::Btf) -> Result<Present> {
    let mut present = [false; HOOK_COUNT];
    for (i, hook) in Hook::ALL.iter().enumerate() {
        let args = btf.lsm_hook_args(hook.name);
        present[i] = match args {
            None if hook.optional => false,
            None => bail!(
                "the kernel has no LSM hook {} (no bpf_lsm_{} in its BTF); actgate needs \
                 Linux 6.1 or later",
                hook.name,
                hook.name
            ),
            Some(n) if n == hook.nargs => true,
            // The program reads either form (see agent-ebpf's attr.rs): 6.9 added the idmap.
            Some(2) if *hook == Hook::INODE_SETATTR => true,
            Some(n) => {
                warn!(
                    hook = hook.name,
                    "LSM hook {} takes {n} arguments on this kernel, but actgate's program \
                     expects {}: it may take an argument for an earlier LSM's verdict. actgate \
                     is tested on Linux 6.1 and 6.12",
                    hook.name,
                    hook.nargs
                );
                true
            }
        };
    }
    Ok(present)
}

/// Switches for the tests of the daemon.
#[derive(Clone, Copy, Default)]
pub struct TestSwitches {
    /// Every hook allows everything, so the start-up self-test must fail.
    pub fake_allow_all: bool,
    /// Behave as another build would when taking over (see `build_id`).
    pub another_build: bool,
}

/// This build's identity: sets of the same build share the ring buffer, whose record layout
/// the build fixes. (std's hasher is deterministic within one binary, which is all a build
/// identity needs; another compiler giving another value only means "another build".)
fn build_id(another: bool) -> u64 {
    let mut h = DefaultHasher::new();
    OBJECT.hash(&mut h);
    another.hash(&mut h);
    h.finish()
}

/// Loads the object with this kernel's offsets as the set `instance` (see `Pins::new_set`),
/// adopting the kept maps pinned there, and attaches and pins every hook. `dir_cache: false`
/// turns the programs' directory cache off.
pub fn load(
    root: &LabelRoot,
    sizes: &Sizes,
    pins: &Pins,
    instance: u64,
    dir_cache: bool,
    test: TestSwitches,
) -> Result<Set> {
    let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
    let kernel_btf = btf::Btf::from_file(vmlinux).context("reading the kernel's BTF")?;
    let offsets = btf::kernel_offsets(&kernel_btf)
        .context("the kernel's BTF lacks a struct member actgate needs")?;
    let present = present_hooks(&kernel_btf)?;
    let list_bias = kernel_btf
        .member_offset("mount", "mnt_instance")
        .unwrap_or_default();
    let setattr_args = kernel_btf
        .lsm_hook_args(Hook::INODE_SETATTR.name)
        .unwrap_or_default() as u64;
    let fake = u64::from(test.fake_allow_all);
    let build = build_id(test.another_build);
    let kept = pins.kept_maps(OBJECT, build)?;
    let dir = pins.set_dir(instance);

    let mut loader = EbpfLoader::new();
    for (name, value) in &offsets {
        loader.override_global(name, value, true);
    }
    // Without the addresses the programs never use the directory cache.
    let seqlocks = match kallsyms::seqlocks() {
        Some(addresses) if dir_cache => addresses,
        Some(_) => [0, 0],
        None => {
            warn!(
                "/proc/kallsyms shows no address for rename_lock and mount_lock: the \
                 directory cache is off, and every labelled open resolves its path"
            );
            [0, 0]
        }
    };
    for ((global, _), address) in kallsyms::SEQLOCKS.iter().zip(&seqlocks) {
        loader.override_global(global, address, true);
    }
    for (name, path) in &kept {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .override_global("FAKE_ALLOW_ALL", &fake, true)
        .override_global("INSTANCE", &instance, true)
        .override_global("INODE_SETATTR_NARGS", &setattr_args, true)
        .override_global("MOUNT_SB_LIST_BIAS", &list_bias, true)
        .map_max_entries(maps::PATH_RULES, sizes.path_rules)
        .map_max_entries(maps::NET_RULES, sizes.net_rules)
        .map_max_entries(maps::INODE_RULES, sizes.inode_rules);
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading actgate's eBPF object into the kernel")?;
    for name in RULE_MAPS {
        let map = ebpf
            .map(name)
            .with_context(|| format!("map {name} is missing from the eBPF object"))?;
        let path = dir.join("maps").join(name);
        map.pin(&path)
            .with_context(|| format!("pinning map {name} at {}", path.display()))?;
    }

    let log = aya_log::EbpfLogger::init(&mut ebpf)
        .context("setting up the kernel programs' log (AYA_LOGS)")?;
    let btf = Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
    let mut links = Vec::new();
    for (Hook { name: hook, .. }, _) in Hook::ALL.iter().zip(present).filter(|(_, p)| *p) {
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
        let id = prog
            .attach()
            .with_context(|| format!("attaching LSM program {hook}"))?;
        let link = FdLink::from(prog.take_link(id)?);
        links.push(pin_attached(&mut ebpf, hook, link, &dir)?);
    }
    // At the hierarchy's root, not actgate's cgroup: a policy binds cgroups anywhere (see
    // `binding`). For an unlabelled socket the programs leave after the label search.
    let cgroup = fs::File::open(&root.mount)
        .with_context(|| format!("opening the cgroup v2 root {}", root.mount.display()))?;
    for name in dns::PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
        prog.load()
            .with_context(|| format!("the kernel refused cgroup sock_addr program {name}"))?;
        // Side by side with the previous set's programs during a take-over; only the set that
        // owns steers (see agent-ebpf's dns.rs). A cgroup link takes no attach flags
        // (bpf_link_create refuses them): links always attach as BPF_F_ALLOW_MULTI does.
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup {}", root.mount.display()))?;
        let link = FdLink::try_from(prog.take_link(id)?)
            .with_context(|| format!("the link of {name} has no fd (kernel older than 5.7)"))?;
        links.push(pin_attached(&mut ebpf, name, link, &dir)?);
    }
    for (hook, _) in Hook::ALL.iter().zip(present).filter(|(_, p)| !*p) {
        info!(
            hook = hook.name,
            "not attached: this kernel doesn't have the hook"
        );
    }
    info!(offsets = ?offsets, instance, "kernel programs loaded");
    Ok(Set {
        ebpf,
        log,
        events_pin: pins.events_path(build),
        links,
        present,
    })
}

/// Pins the link of the attached program `name` and the program in the set's `dir`, and logs
/// what the verifier walked: the figure to watch when a program makes start-up slow.
fn pin_attached(ebpf: &mut Ebpf, name: &str, link: FdLink, dir: &Path) -> Result<PinnedLink> {
    let path = dir.join("links").join(name);
    let pinned = link
        .pin(&path)
        .with_context(|| format!("pinning the link of {name} at {}", path.display()))?;
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing from the eBPF object"))?;
    let path = dir.join("progs").join(name);
    prog.pin(&path)
        .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    let verified = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count());
    info!(program = name, verified_insns = ?verified, "attached");
    Ok(pinned)
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

    use agent_common::{HOOKS, dns, maps};
    use aya_obj::{Object, ProgramSection, generated::bpf_attach_type as Attach};

    use super::OBJECT;

    /// The built object against the lists in agent-common, which the daemon trusts: a map or
    /// program named on one side only would fail at load time, or never be attached.
    #[test]
    fn the_object_has_every_shared_map_and_exactly_the_listed_programs() {
        let obj = Object::parse(OBJECT).expect("parsing the eBPF object");
        for name in maps::ALL {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} is not in the object"
            );
        }
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let listed = HOOKS.iter().chain(dns::PROGRAMS).copied().collect();
        assert_eq!(programs, listed);
        for (name, p) in &obj.programs {
            if HOOKS.contains(&name.as_str()) {
                assert!(
                    matches!(p.section, ProgramSection::Lsm { sleepable: false }),
                    "{name} is not an LSM program"
                );
            }
        }
    }

    /// Each DNS program is attached where its name says: the loader takes the attach type
    /// from the program's section, so a program named for one attach point but declared for
    /// another would steer the wrong calls.
    #[test]
    fn each_dns_program_has_the_attach_type_of_its_name() {
        let obj = Object::parse(OBJECT).expect("parsing the eBPF object");
        for name in dns::PROGRAMS {
            let expected = match *name {
                "connect4" => Attach::BPF_CGROUP_INET4_CONNECT,
                "connect6" => Attach::BPF_CGROUP_INET6_CONNECT,
                "sendmsg4" => Attach::BPF_CGROUP_UDP4_SENDMSG,
                "sendmsg6" => Attach::BPF_CGROUP_UDP6_SENDMSG,
                "recvmsg4" => Attach::BPF_CGROUP_UDP4_RECVMSG,
                "recvmsg6" => Attach::BPF_CGROUP_UDP6_RECVMSG,
                "getpeername4" => Attach::BPF_CGROUP_INET4_GETPEERNAME,
                "getpeername6" => Attach::BPF_CGROUP_INET6_GETPEERNAME,
                other => panic!("no attach type known for {other}"),
            };
            let section = &obj.programs[*name].section;
            assert!(
                matches!(section, ProgramSection::CgroupSockAddr { attach_type } if Attach::from(*attach_type) == expected),
                "{name} is {section:?}"
            );
        }
    }
}
