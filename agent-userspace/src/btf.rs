//! Struct member offsets from the kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! The eBPF programs are compiled once, but kernel struct layouts move between versions, and
//! Rust eBPF has no CO-RE relocations. The daemon reads the few offsets the programs need and
//! passes them in as globals. aya parses BTF but doesn't expose member lookup, and the format
//! is small: a header, a type section and a string section.

use std::{collections::HashMap, fs, path::Path};

use agent_common::{KERNEL_OFFSETS, OPTIONAL_OFFSETS};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1} in the kernel's BTF")]
    NoMember(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
/// The prefix of the functions BPF LSM programs attach to (kernel/bpf/bpf_lsm.c).
const LSM_PREFIX: &str = "bpf_lsm_";

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

enum Type {
    Composite(Vec<Member>),
    /// A function's type: its number of parameters.
    Proto(usize),
    Other,
}

pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id - 1.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    /// LSM hook name (without `bpf_lsm_`) → the type id of its function prototype.
    lsm_hooks: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let tsec = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut btf = Btf {
            strings,
            types: Vec::new(),
            structs: HashMap::new(),
            lsm_hooks: HashMap::new(),
        };
        let mut at = 0;
        while at < tsec.len() {
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            // Bytes that follow the common 12-byte header, per kind (include/uapi/linux/btf.h).
            let extra = match kind {
                1 | 14 | 17 => 4,          // int, var, decl_tag
                3 => 12,                   // array
                4 | 5 => 12 * vlen,        // struct, union
                6 | 13 => 8 * vlen,        // enum, func_proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, cv, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            let ty = if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = at + 12 * i;
                    let off = u32_at(tsec, m + 8)?;
                    members.push(Member {
                        name: u32_at(tsec, m)?,
                        type_id: u32_at(tsec, m + 4)?,
                        // With kind_flag the top 8 bits hold a bitfield size.
                        bit_offset: if kind_flag { off & 0xff_ffff } else { off },
                    });
                }
                if kind == KIND_STRUCT && name != 0 {
                    let id = btf.types.len() as u32 + 1;
                    btf.structs
                        .entry(btf.string(name).to_string())
                        .or_insert(id);
                }
                Type::Composite(members)
            } else if kind == KIND_FUNC_PROTO {
                Type::Proto(vlen)
            } else {
                if kind == KIND_FUNC
                    && let Some(hook) = btf.string(name).strip_prefix(LSM_PREFIX)
                {
                    btf.lsm_hooks
                        .insert(hook.to_string(), u32_at(tsec, at - 4)?);
                }
                Type::Other
            };
            btf.types.push(ty);
            at += extra;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u64, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find(id, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    /// The number of arguments of LSM hook `name`, None when this kernel lacks the hook.
    pub fn lsm_hook_args(&self, name: &str) -> Option<usize> {
        let proto = *self.lsm_hooks.get(name)?;
        match self.types.get(proto.checked_sub(1)? as usize)? {
            Type::Proto(n) => Some(*n),
            _ => None,
        }
    }

    fn find(&self, id: u32, member: &str, base_bits: u64) -> Option<u64> {
        let Some(Type::Composite(members)) = self.types.get(id.checked_sub(1)? as usize) else {
            return None;
        };
        members.iter().find_map(|m| {
            let bits = base_bits + u64::from(m.bit_offset);
            match self.string(m.name) {
                n if n == member => Some(bits),
                "" => self.find(m.type_id, member, bits),
                _ => None,
            }
        })
    }
}

/// Reads every offset the programs need (`agent_common::KERNEL_OFFSETS`), as (global, value);
/// 0 for an `OPTIONAL_OFFSETS` struct this kernel doesn't have.
pub fn kernel_offsets(btf: &Btf) -> Result<Vec<(&'static str, u64)>, BtfError> {
    KERNEL_OFFSETS
        .iter()
        .map(|o| {
            let off = match btf.member_offset(o.ty, o.member) {
                Err(BtfError::NoStruct(_)) if OPTIONAL_OFFSETS.contains(&o.global) => Ok(0),
                Err(e) => o.alt.map_or(Err(e), |alt| btf.member_offset(o.ty, alt)),
                offset => offset,
            }?;
            Ok((o.global, off))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int`, `struct inner { int a; int b; }` and
    /// `struct outer { int x; union { struct inner in; }; int y; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0x\0in\0outer\0y\0bpf_lsm_file_open\0".to_vec();
        let s = |name: &str| {
            let mut at = 0;
            for part in strings.split(|&c| c == 0) {
                if part == name.as_bytes() {
                    return at as u32;
                }
                at += part.len() + 1;
            }
            panic!("{name}")
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| t.extend(w.to_le_bytes()));
        push(&[s("int"), 1 << 24, 4, 32]); // 1: int
        push(&[s("inner"), (4 << 24) | 2, 8, s("a"), 1, 0, s("b"), 1, 32]); // 2
        push(&[0, (5 << 24) | 1, 8, s("in"), 2, 0]); // 3: anonymous union
        push(&[
            s("outer"),
            (4 << 24) | 3,
            24,
            s("x"),
            1,
            0,
            0,
            3,
            64,
            s("y"),
            1,
            128,
        ]); // 4
        push(&[0, (13 << 24) | 1, 1, 0, 1]); // 5: int (int)
        push(&[s("bpf_lsm_file_open"), 12 << 24, 5]); // 6
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend(w.to_le_bytes());
        }
        b.extend(&t);
        b.extend(&strings);
        b
    }

    #[test]
    fn finds_direct_and_nested_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 16);
        assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("nope", "y"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn counts_the_arguments_of_lsm_hooks() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.lsm_hook_args("file_open"), Some(1));
        assert_eq!(btf.lsm_hook_args("file_truncate"), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut b = sample();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn reads_this_kernel_when_it_has_btf() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipping test – {} is missing", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let offs = kernel_offsets(&btf).unwrap();
        assert_eq!(offs.len(), KERNEL_OFFSETS.len());
        for hook in agent_common::Hook::ALL {
            assert!(btf.lsm_hook_args(hook.name).is_some(), "{}", hook.name);
        }
    }
}
