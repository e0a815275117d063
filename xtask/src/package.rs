//! `cargo xtask package`: the Debian package, made by cargo-deb from the
//! `[package.metadata.deb]` of agent-userspace/Cargo.toml.
//!
//! cargo-deb packs files; it can't run the binary it built. So the release build comes first,
//! then that binary writes its man pages and completions from its own clap definitions
//! (`actgate generate`), then cargo-deb packs it all without building again.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// Where cargo-deb writes the package (its default).
fn debian_dir() -> PathBuf {
    root().join("target").join("debian")
}

/// Where the generated man pages and completions go; the package's assets name this directory.
fn generated_dir() -> PathBuf {
    root().join("target").join("package")
}

/// Builds target/debian/actgate_<version>_<arch>.deb and returns its path.
pub fn package() -> Result<PathBuf> {
    // The same build as a manual install: the release binary, the eBPF object built into it.
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "agent-userspace",
        "--bin",
        "actgate",
    ]))?;
    let generated = generated_dir();
    // Pages of subcommands that are gone must not ship.
    if generated.exists() {
        fs::remove_dir_all(&generated)
            .with_context(|| format!("removing {}", generated.display()))?;
    }
    let actgate = root().join("target").join("release").join("actgate");
    run(std::process::Command::new(&actgate)
        .arg("generate")
        .arg("--man")
        .arg(generated.join("man"))
        .arg("--completions")
        .arg(generated.join("completions")))?;
    let started = SystemTime::now();
    run(cargo().args(["deb", "--package", "agent-userspace", "--no-build"]))?;
    let Some(deb) = newest_package()?.filter(|(_, built)| *built >= started) else {
        bail!(
            "cargo deb succeeded but wrote no new actgate_*.deb in {}",
            debian_dir().display()
        );
    };
    println!("package: {}", deb.0.display());
    Ok(deb.0)
}

/// The newest target/debian/actgate_*.deb and when it was written, if there is one.
pub fn newest_package() -> Result<Option<(PathBuf, SystemTime)>> {
    let dir = debian_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if !is_actgate_deb(&path) {
            continue;
        }
        let built = entry
            .metadata()
            .and_then(|m| m.modified())
            .with_context(|| format!("reading the time of {}", path.display()))?;
        if newest.as_ref().is_none_or(|(_, t)| built > *t) {
            newest = Some((path, built));
        }
    }
    Ok(newest)
}

fn is_actgate_deb(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("actgate_") && n.ends_with(".deb"))
}

#[cfg(test)]
mod tests {
    use super::is_actgate_deb;
    use std::path::Path;

    #[test]
    fn only_actgate_packages_count() {
        assert!(is_actgate_deb(Path::new(
            "target/debian/actgate_0.1.0-1_amd64.deb"
        )));
        assert!(!is_actgate_deb(Path::new(
            "target/debian/actgate-dbgsym_0.1.0-1_amd64.ddeb"
        )));
        assert!(!is_actgate_deb(Path::new(
            "target/debian/other_1_amd64.deb"
        )));
    }
}
