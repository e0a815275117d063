//! What the benchmark sets up before it times anything: the files it opens, the tiny static
//! program it executes, and the policies of each rule count, checked by `actgate check`.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{
    LABEL, RULES, SCALES,
    depth::DEEP_BOUND,
    workloads::{self, Workload},
};

/// Where each fixture lives, below one root.
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn exe(&self) -> PathBuf {
        self.root.join("bin/true-static")
    }
    /// A readable file in a directory no rule of the policies lies beneath.
    pub fn plain_read_target(&self) -> PathBuf {
        self.root.join("plain/read-target")
    }
    pub fn read_target(&self) -> PathBuf {
        self.root.join("files/read-target")
    }
    pub fn write_target(&self) -> PathBuf {
        self.root.join("files/write-target")
    }
    /// The AF_UNIX listener the `unix_connect` operation connects to.
    pub fn unix_socket(&self) -> PathBuf {
        self.root.join("sock/bench.sock")
    }
    pub fn flood_target(&self) -> PathBuf {
        self.root.join("flood/secret")
    }
    pub fn policies(&self, rules: usize) -> PathBuf {
        self.root.join(format!("policies-{rules}"))
    }
    /// The depth runs' policy: RULES rules per action, DEEP_BOUND bound to the label too.
    pub fn depth_policies(&self) -> PathBuf {
        self.root.join("policies-depth")
    }
}

/// A complete x86-64 ELF executable of 132 bytes: `exit(0)`, nothing else. No loader, no libc,
/// so an exec measures the kernel's work and the hooks', not a dynamic linker's.
fn true_static() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: [u8; 12] = [
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x31, 0xff, // xor edi, edi
        0x0f, 0x05, // syscall
        0x0f, 0x0b, 0x90, // ud2; nop (never reached)
    ];
    let size = (64 + 56 + CODE.len()) as u64;
    let mut b = Vec::with_capacity(size as usize);
    // ELF header.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    b.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    // One PT_LOAD program header mapping the whole file read+execute.
    b.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    b.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    b.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    b.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    b.extend_from_slice(&size.to_le_bytes()); // p_filesz
    b.extend_from_slice(&size.to_le_bytes()); // p_memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    b.extend_from_slice(&CODE);
    b
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The benchmark's policy with `n` rules per action, allowing every benchmarked operation and
/// workload. files.write denies by default and allows the workspace, the directory of the
/// micro-benchmarks' files and /dev/null; the other actions allow by default. Each deny list
/// holds a near miss of its target (sharing the longest prefix), then exact paths and trees
/// beside it, none matching a benchmarked target. files.read also denies the flood's target
/// and real secrets. network.unix lists paths the same way (the AF_UNIX target's near miss,
/// then paths beside it). CAP_SYS_ADMIN is granted for the judged `capable` operation.
/// `bound`: a cgroup (beneath the cgroup v2 mount) the policy binds to the label besides the
/// label's own.
fn policy(p: &Paths, n: usize, bound: Option<&str>) -> String {
    let root = p.root.display();
    let files_dir = p.write_target().parent().map(Path::to_path_buf);
    let write_allow: Vec<String> = [p.workspace(), files_dir.unwrap_or_default()]
        .iter()
        .map(|d| format!("{}/**", d.display()))
        .chain(["/dev/null".to_string()])
        .collect();
    let paths = |action: &str, near_miss: &Path, extra: &[String], count: usize| -> Vec<String> {
        let mut v = vec![format!("{}.deny", near_miss.display())];
        v.extend_from_slice(extra);
        let mut i = v.len();
        while v.len() < count {
            v.push(if i % 2 == 0 {
                format!("{root}/rules/{action}/d{i}/**")
            } else {
                format!("{root}/rules/{action}/f{i}")
            });
            i += 1;
        }
        v.truncate(count);
        v
    };
    let read_extra = [
        p.flood_target().display().to_string(),
        "/etc/shadow".to_string(),
        "/root/.ssh/**".to_string(),
    ];
    let nets: Vec<String> = (0..n)
        .map(|i| match i {
            // Same address, another port; then a neighbouring address.
            0 => "127.0.0.1:1".to_string(),
            1 => "127.0.0.2".to_string(),
            _ => {
                let (a, b) = ((i >> 8) & 0xff, i & 0xff);
                if i % 3 == 0 {
                    format!("10.{a}.{b}.0/24:443")
                } else {
                    format!("10.{a}.{b}.0/24")
                }
            }
        })
        .collect();
    let list = |items: &[String], indent: &str| -> String {
        items
            .iter()
            .map(|s| format!("{indent}- \"{s}\"\n"))
            .collect()
    };
    let cgroups = bound.map_or_else(String::new, |c| format!("cgroups: [\"{c}\"]\n"));
    format!(
        "# Generated by `vm-guest bench`: {n} rules per action, allowing every benchmarked \
         target.\nname: bench\nlabels: [{LABEL}]\n{cgroups}mode: enforce\n\n\
         exec:\n  default: allow\n  deny:\n{}\n\
         files:\n  write:\n    default: deny\n    allow:\n{}    deny:\n{}  \
         read:\n    default: allow\n    deny:\n{}\n\
         network:\n  connect:\n    default: allow\n    deny:\n{}  \
         unix:\n    default: allow\n    deny:\n{}\
         process:\n  capabilities: [CAP_SYS_ADMIN]\n",
        list(&paths("exec", &p.exe(), &[], n), "    "),
        list(&write_allow, "      "),
        list(
            &paths("write", &p.write_target(), &[], n - write_allow.len()),
            "      "
        ),
        list(&paths("read", &p.read_target(), &read_extra, n), "      "),
        list(&nets, "      "),
        list(&paths("unix", &p.unix_socket(), &[], n), "      "),
    )
}

/// Writes every fixture afresh (the workloads' only `with_workloads`) and checks each policy
/// with `actgate check`; returns the workloads left out, each with the reason.
pub fn create(
    p: &Paths,
    actgate: &Path,
    with_workloads: bool,
) -> Result<BTreeMap<Workload, String>> {
    let _ = fs::remove_dir_all(&p.root);
    write_file(&p.exe(), &true_static())?;
    fs::set_permissions(p.exe(), fs::Permissions::from_mode(0o755))?;
    write_file(&p.read_target(), b"benchmark\n")?;
    write_file(&p.plain_read_target(), b"benchmark\n")?;
    write_file(&p.write_target(), b"benchmark\n")?;
    write_file(&p.flood_target(), b"denied\n")?;
    if let Some(dir) = p.unix_socket().parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let policies = SCALES
        .map(|n| (p.policies(n), policy(p, n, None)))
        .into_iter()
        .chain([(p.depth_policies(), policy(p, RULES, Some(DEEP_BOUND)))]);
    for (dir, text) in policies {
        write_file(&dir.join("bench.yaml"), text.as_bytes())?;
        let check = Command::new(actgate).arg("check").arg(&dir).output()?;
        if !check.status.success() {
            bail!(
                "the generated policy in {} is invalid:\n{}",
                dir.display(),
                String::from_utf8_lossy(&check.stdout)
            );
        }
        print!("  {}", String::from_utf8_lossy(&check.stdout));
    }
    if with_workloads {
        return workloads::create(p);
    }
    let why = || "not run: --only-depth".to_string();
    Ok(Workload::ALL.into_iter().map(|w| (w, why())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::DIR;

    #[test]
    fn the_static_program_is_a_complete_elf() {
        let elf = true_static();
        assert_eq!(elf.len(), 132);
        assert_eq!(&elf[..4], b"\x7fELF");
        let filesz = u64::from_le_bytes(elf[96..104].try_into().unwrap());
        assert_eq!(filesz, elf.len() as u64);
    }

    #[test]
    fn the_depth_policy_is_the_main_one_binding_one_cgroup_more() {
        let p = Paths {
            root: PathBuf::from(DIR),
        };
        let bound = format!("labels: [{LABEL}]\ncgroups: [\"{DEEP_BOUND}\"]\n");
        assert_eq!(
            policy(&p, RULES, Some(DEEP_BOUND)).replacen(
                &bound,
                &format!("labels: [{LABEL}]\n"),
                1
            ),
            policy(&p, RULES, None)
        );
    }

    #[test]
    fn policies_hold_n_rules_per_action_and_miss_the_targets() {
        let p = Paths {
            root: PathBuf::from(DIR),
        };
        for n in SCALES {
            let text = policy(&p, n, None);
            assert_eq!(text.matches("\n    - ").count(), n, "exec rules");
            assert_eq!(text.matches("\n      - ").count(), 4 * n, "other rules");
            for target in [p.exe(), p.read_target(), p.write_target(), p.unix_socket()] {
                assert!(!text.contains(&format!("\"{}\"", target.display())));
            }
            for denied in [
                p.flood_target(),
                "/etc/shadow".into(),
                "/root/.ssh/**".into(),
            ] {
                assert!(text.contains(&format!("\"{}\"", denied.display())));
            }
            let write = &text[text.find("  write:").unwrap()..text.find("  read:").unwrap()];
            assert!(write.contains("default: deny"));
            for allowed in [
                format!("{DIR}/work/**"),
                format!("{DIR}/files/**"),
                "/dev/null".into(),
            ] {
                assert!(write.contains(&format!("- \"{allowed}\"")), "{allowed}");
            }
        }
    }
}
