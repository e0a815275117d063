//! `cargo xtask bench`: what enforcement costs, measured in one VM boot (issue 5).
//!
//! Release builds of `actgate` and `vm-guest` run `vm-guest bench` in a VM; its results come
//! back as `target/bench/results.json` (and the printed table as `results.txt`). Benchmarks
//! are not tests: nothing here asserts a timing.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};

use crate::{root, setup::matrix_kernels, vm};

/// The kernel series the benchmark boots unless told otherwise.
pub const DEFAULT_KERNEL: &str = "6.12";

fn release_bin(name: &str) -> PathBuf {
    root().join("target").join("release").join(name)
}

pub fn bench(
    kernel: &str,
    rounds: Option<u32>,
    secs: Option<f64>,
    reps: Option<u32>,
    only_depth: bool,
) -> Result<()> {
    let Some((release, vmlinuz)) = matrix_kernels()
        .into_iter()
        .rev()
        .find(|(release, _)| release.starts_with(&format!("{kernel}.")) || release == kernel)
    else {
        bail!("no kernel of the matrix matches {kernel}; run `cargo xtask setup`");
    };
    let out = root().join("target").join("bench");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let results = out.join("results.json");
    let table = out.join("results.txt");
    let _ = fs::remove_file(&results);
    let _ = fs::remove_file(&table);
    // The guest writes into its own file; it becomes results.json only when complete.
    let guest_out = out.join("guest-results.json");
    let _ = fs::remove_file(&guest_out);
    let mut command = format!(
        "{} bench --actgate {} --out {}",
        release_bin("vm-guest").display(),
        release_bin("actgate").display(),
        guest_out.display()
    );
    if let Some(r) = rounds {
        command.push_str(&format!(" --rounds {r}"));
    }
    if let Some(s) = secs {
        command.push_str(&format!(" --secs {s}"));
    }
    if let Some(r) = reps {
        command.push_str(&format!(" --reps {r}"));
    }
    if only_depth {
        command.push_str(" --only-depth");
    }
    println!("\n=== Benchmark on Linux {release} (QEMU software emulation; ~10 minutes) ===");
    let status = vm::boot(&vmlinuz, 2, &out, &command, &vm::Output::Terminal)?;
    if !guest_out.exists() {
        bail!("the benchmark VM ({status}) wrote no results");
    }
    fs::copy(&guest_out, &results)
        .with_context(|| format!("copying the results to {}", results.display()))?;
    let _ = fs::rename(guest_out.with_extension("txt"), &table);
    let _ = fs::remove_file(&guest_out);
    println!("results: {}", results.display());
    if table.exists() {
        println!("table:   {}", table.display());
    }
    Ok(())
}
