//! `actgate generate`: the man pages and shell completions that the Debian package ships. They
//! are made from the clap definitions, so they can't drift from the command line; `cargo xtask
//! package` runs this on the release binary before cargo-deb packs the files.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use clap::{Arg, ArgGroup, Command};
use clap_complete::Shell;

/// The shells whose completions the package ships.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `actgate.1` and a page per visible subcommand (`actgate-run.1`, …) into `man`, and
/// the completion script of each shell into `completions` (`actgate.bash`, `_actgate`,
/// `actgate.fish`).
pub fn generate(cli: Command, man: &Path, completions: &Path) -> Result<()> {
    for dir in [man, completions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(cli.clone(), man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    let mut visible = visible(&cli);
    for shell in SHELLS {
        let path = clap_complete::generate_to(shell, &mut visible, "actgate", completions)
            .with_context(|| {
                format!(
                    "writing the {shell} completions into {}",
                    completions.display()
                )
            })?;
        println!("{}", path.display());
    }
    println!("man pages in {}", man.display());
    Ok(())
}

/// `cmd` without its hidden subcommands and arguments, for clap_complete, which would offer
/// them too (clap issue 1335): they are internal (`selftest-probe`, `generate`) or for tests
/// only (`run --test-fake-allow-all`). clap_mangen leaves them out by itself.
fn visible(cmd: &Command) -> Command {
    let shown = |a: &&Arg| !a.is_hide_set();
    let mut out = Command::new(cmd.get_name().to_owned())
        .args(cmd.get_arguments().filter(shown).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        );
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(about) = cmd.get_long_about() {
        out = out.long_about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        out = out.version(version.to_owned());
    }
    // A group names its arguments: each keeps those still there.
    for group in cmd.get_groups() {
        let args: Vec<_> = group
            .get_args()
            .filter(|id| cmd.get_arguments().filter(shown).any(|a| a.get_id() == *id))
            .cloned()
            .collect();
        if !args.is_empty() {
            out = out.group(
                ArgGroup::new(group.get_id().clone())
                    .args(args)
                    .multiple(group.clone().is_multiple())
                    .required(group.is_required_set()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and option the completions offer, as bash's script lists them.
    fn bash_words() -> String {
        use clap::CommandFactory;
        let mut cmd = visible(&crate::Cli::command());
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut cmd, "actgate", &mut out);
        String::from_utf8(out).expect("clap_complete writes UTF-8")
    }

    #[test]
    fn completions_offer_every_visible_command_and_nothing_hidden() {
        let words = bash_words();
        for shown in [
            "check",
            "run",
            "exec",
            "learn",
            "--policies",
            "--label",
            "--force",
        ] {
            assert!(words.contains(shown), "{shown} is missing");
        }
        for hidden in [
            "selftest-probe",
            "generate",
            "--test-fake-allow-all",
            "--daemon-pid",
        ] {
            assert!(!words.contains(hidden), "{hidden} is offered");
        }
    }

    #[test]
    fn writes_a_man_page_per_visible_command_and_a_completion_per_shell() {
        use clap::CommandFactory;
        let dir = std::env::temp_dir().join(format!("actgate-generate-{}", std::process::id()));
        let (man, completions) = (dir.join("man"), dir.join("completions"));
        generate(crate::Cli::command(), &man, &completions).expect("generating");
        let mut pages: Vec<_> = fs::read_dir(&man)
            .expect("the man directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .collect();
        pages.sort();
        assert!(pages.contains(&"actgate.1".to_owned()), "{pages:?}");
        assert!(pages.contains(&"actgate-run.1".to_owned()), "{pages:?}");
        assert!(
            !pages
                .iter()
                .any(|p| p.contains("selftest") || p.contains("generate")),
            "{pages:?}"
        );
        for file in ["actgate.bash", "_actgate", "actgate.fish"] {
            assert!(completions.join(file).is_file(), "{file} is missing");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
