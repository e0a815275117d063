//! Builds the kernel programs (agent-ebpf) with nightly for the BPF target and leaves the
//! object in OUT_DIR, where src/bpf.rs includes it.
fn main() -> anyhow::Result<()> {
    // aya-build only watches the eBPF crate's own folder; the shared types change it too.
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: "../agent-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
