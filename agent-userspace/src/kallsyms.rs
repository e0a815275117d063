//! Addresses of kernel variables, from /proc/kallsyms.
//!
//! The kernel programs' directory cache (agent-ebpf's `dircache.rs`) reads the sequence
//! numbers of two global seqlocks, `rename_lock` and `mount_lock`, which BTF doesn't describe.
//! Without their addresses (a kernel that hides them, `kptr_restrict=2`) the cache stays off
//! and every open resolves its path, as before.

use std::fs;

const KALLSYMS: &str = "/proc/kallsyms";

/// The seqlocks the directory cache needs, as the programs' globals name them.
pub const SEQLOCKS: [(&str, &str); 2] =
    [("RENAME_LOCK", "rename_lock"), ("MOUNT_LOCK", "mount_lock")];

/// The address of each of `names` in a kallsyms listing (0 when missing or hidden).
fn addresses(text: &str, names: &[&str]) -> Vec<u64> {
    let mut found = vec![0; names.len()];
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            // Symbols of modules carry a fourth field, `[module]`; these live in the kernel.
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = u64::from_str_radix(addr, 16).unwrap_or(0);
        }
    }
    found
}

/// The addresses of `SEQLOCKS`, in order; `None` when any of them is unknown.
pub fn seqlocks() -> Option<[u64; 2]> {
    let text = fs::read_to_string(KALLSYMS).ok()?;
    let names = SEQLOCKS.map(|(_, symbol)| symbol);
    let found = addresses(&text, &names);
    let [rename, mount] = [found[0], found[1]];
    (rename != 0 && mount != 0).then_some([rename, mount])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_symbols_and_skips_modules_and_hidden_addresses() {
        let text = "ffffffff82a0b240 D rename_lock\n\
                    ffffffffc0a00000 d mount_lock\t[some_module]\n\
                    ffffffff82a0c000 d mount_lock\n\
                    ffffffff81000000 T _stext\n";
        assert_eq!(
            addresses(text, &["rename_lock", "mount_lock"]),
            [0xffff_ffff_82a0_b240, 0xffff_ffff_82a0_c000]
        );
        let hidden = "0000000000000000 D rename_lock\n";
        assert_eq!(addresses(hidden, &["rename_lock", "mount_lock"]), [0, 0]);
    }
}
