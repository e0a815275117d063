//! Debian's package sources, as this machine configures them.
//!
//! The mirror is never written down here: a backports suite is added from the URI of the
//! machine's own main suite, so the repository names no registry host.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::run;

const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
/// The file setup writes when the machine has no source for the backports suite yet.
const OUR_SOURCE: &str = "/etc/apt/sources.list.d/actgate-backports.list";

/// The release's codename (`bookworm`), from /etc/os-release.
pub fn codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    os_release_codename(&text).context("/etc/os-release names no VERSION_CODENAME")
}

fn os_release_codename(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Every active source file's text: sources.list, and `*.list` / `*.sources` beside it.
fn source_files() -> Vec<(String, String)> {
    let mut paths = vec![Path::new(SOURCES_LIST).to_path_buf()];
    if let Ok(dir) = fs::read_dir(SOURCES_DIR) {
        let mut more: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        paths.extend(more);
    }
    paths
        .into_iter()
        .filter_map(|p| Some((p.display().to_string(), fs::read_to_string(&p).ok()?)))
        .collect()
}

/// One source: the archive's URI and the suites it serves.
#[derive(Debug, PartialEq)]
struct Source {
    uri: String,
    suites: Vec<String>,
}

/// The sources of one file, in either format: one-line (`deb [opts] URI suite comp...`) or
/// deb822 stanzas (`URIs:` / `Suites:`).
fn parse_sources(name: &str, text: &str) -> Vec<Source> {
    if name.ends_with(".sources") {
        return text
            .split("\n\n")
            .filter_map(|stanza| {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
                    })
                };
                if field("Types").is_some_and(|t| !t.split_whitespace().any(|t| t == "deb"))
                    || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
                {
                    return None;
                }
                Some(Source {
                    uri: field("URIs")?.split_whitespace().next()?.to_string(),
                    suites: field("Suites")?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect();
    }
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "deb" {
                return None;
            }
            let mut word = words.next()?;
            if word.starts_with('[') {
                // Options run up to the word that ends with ']'.
                while !word.ends_with(']') {
                    word = words.next()?;
                }
                word = words.next()?;
            }
            Some(Source {
                uri: word.to_string(),
                suites: vec![words.next()?.to_string()],
            })
        })
        .collect()
}

/// Makes `<codename>-backports` installable: nothing when a source already serves it,
/// otherwise a source for it on the mirror that serves `<codename>`.
pub fn ensure_suite(codename: &str, suite: &str) -> Result<()> {
    let sources: Vec<Source> = source_files()
        .iter()
        .flat_map(|(name, text)| parse_sources(name, text))
        .collect();
    if sources.iter().any(|s| s.suites.iter().any(|x| x == suite)) {
        return Ok(());
    }
    let Some(main) = sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == codename))
    else {
        bail!(
            "no apt source serves {codename}, so setup can't tell which mirror to take \
             {suite} from; add a source for {suite} and run setup again"
        );
    };
    let line = format!("deb {} {suite} main\n", main.uri);
    fs::write(OUR_SOURCE, &line).with_context(|| format!("writing {OUR_SOURCE}"))?;
    println!("setup: added {OUR_SOURCE}: {}", line.trim_end());
    Ok(())
}

/// True when any installed package whose name starts with `prefix` is a backport (Debian
/// marks backported versions with `~bpo`).
pub fn installed_backport(prefix: &str) -> bool {
    let listing = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Version}\n"])
        .arg(format!("{prefix}*"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    any_installed_backport(&listing)
}

fn any_installed_backport(listing: &str) -> bool {
    listing
        .lines()
        .any(|l| l.starts_with("ii") && l.contains("~bpo"))
}

/// `apt-get install`, from `suite` when given (`-t`), else from the default candidates.
pub fn install(suite: Option<&str>, packages: &[&str]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"]);
    if let Some(suite) = suite {
        cmd.args(["-t", suite]);
    }
    run(cmd.args(packages))
}

/// Installs one file of Debian's `package` at `to`, without installing the package: the
/// package is downloaded from the machine's sources and unpacked in a scratch directory.
pub fn extract(package: &str, file: &str, to: &Path) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("actgate-setup-{package}"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // Not `run`, which runs everything from the repository's root: the download lands in
    // the current directory.
    println!("$ cd {} && apt-get download {package}", scratch.display());
    let status = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&scratch)
        .status()
        .context("starting apt-get download")?;
    if !status.success() {
        bail!("apt-get download {package} failed ({status})");
    }
    let deb = fs::read_dir(&scratch)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let tree = scratch.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::copy(tree.join(file), to)
        .with_context(|| format!("installing {file} of {package} as {}", to.display()))?;
    let _ = fs::remove_dir_all(&scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_release_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(os_release_codename("ID=debian\n"), None);
    }

    #[test]
    fn deb822_stanzas_give_uri_and_suites() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://off.invalid/debian\nSuites: trixie\nEnabled: no\n";
        assert_eq!(
            parse_sources("debian.sources", text),
            vec![Source {
                uri: "http://mirror.invalid/debian".into(),
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
            }]
        );
    }

    #[test]
    fn one_line_sources_skip_options_and_deb_src() {
        let text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian \
                    bookworm main\ndeb-src http://m.invalid/debian bookworm main\n\
                    deb http://m.invalid/debian bookworm-backports main contrib\n";
        assert_eq!(
            parse_sources("sources.list", text),
            vec![
                Source {
                    uri: "http://m.invalid/debian".into(),
                    suites: vec!["bookworm".into()],
                },
                Source {
                    uri: "http://m.invalid/debian".into(),
                    suites: vec!["bookworm-backports".into()],
                },
            ]
        );
    }

    #[test]
    fn a_backported_install_is_recognised() {
        let listing = "ii  1:10.0.2+ds-2+deb13u1~bpo12+1\nun  \n";
        assert!(any_installed_backport(listing));
        assert!(!any_installed_backport("ii  1:7.2+dfsg-7+deb12u18+b2\n"));
        // Known but removed (config files left) is not installed.
        assert!(!any_installed_backport("rc  1:10.0.2+ds-2~bpo12+1\n"));
    }
}
