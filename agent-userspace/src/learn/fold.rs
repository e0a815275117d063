//! Folding the paths a run used into the rules of a policy: tight, since what a run didn't
//! show stays denied, but not brittle, since a workload that writes a few hundred files in
//! its build directory does not need a rule per file, and would write others the next time.
//!
//! A path is folded into the tree of a directory `D/**` only on evidence that the workload
//! owns `D` or works throughout it:
//! - it created `D` (the caller knows which directories are new), or
//! - it used at least `SIBLINGS` distinct entries directly under `D`, or
//! - `D` is a system tree (`SYSTEM_TREES`): the distribution's libraries, data and headers,
//!   which change with package upgrades, not with the workload, or
//! - `D` is a temp directory the run wrote in (writes and deletes only): scratch files are
//!   named anew on every run (mkstemp), so a list of them would deny the next one.
//!
//! And never into a directory where a tree would give away what no run showed: `/`, a
//! top-level directory (`/etc`, `/usr`, `/home`, ...; the standard temp directories are
//! the one exception above), a user's home directory, a directory holding or above a
//! sensitive location (`~/.config` holds `~/.config/gh`), or one under which the run used a
//! sensitive file.

use std::collections::{BTreeMap, BTreeSet};

use agent_policy::{PathPattern, parse_path};

use super::observe::Run;

/// Distinct entries under one directory that make it a tree the workload works in. Fewer
/// are listed one by one: a reviewer reads eight lines easily, and a run that touched eight
/// entries of a directory will most likely touch others there next time.
pub const SIBLINGS: usize = 8;

/// Read-only trees of the distribution, folded into their root whatever the evidence: an
/// exec there is a library or helper the loader maps (`exec: default: deny` must allow every
/// shared library, see the README), and which files of them a program maps changes with
/// package upgrades, not with the workload.
pub const SYSTEM_TREES: &[&str] = &[
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
    "/usr/share",
    "/usr/include",
    "/lib",
    "/lib64",
    "/etc/ssl/certs",
];

/// Locations under a home directory that hold credentials: SSH keys, cloud and GitHub
/// tokens, GPG keys, Kubernetes and registry credentials. `true` for a directory.
pub const SENSITIVE_HOME: &[(&str, bool)] = &[
    (".ssh", true),
    (".aws", true),
    (".config/gh", true),
    (".gnupg", true),
    (".kube", true),
    (".docker", true),
    (".netrc", false),
    (".git-credentials", false),
];

/// The temp directories every system has. A `$TMPDIR` elsewhere is a temp directory too, but
/// folds only where any directory may (never a home directory, say).
pub const STANDARD_TEMP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// System files that hold password hashes.
pub const SENSITIVE_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
];

/// CA bundles by the names the common TLS stacks ship them under: every TLS client reads
/// one, and they hold no secret, so these `.pem` files are not sensitive.
const CA_BUNDLES: &[&str] = &["cacert.pem", "ca-bundle.pem", "ca-certificates.pem"];

/// The home directories `path` lies in: `/root`, any `/home/USER`, and `home`. Sensitive
/// locations are recognized in every user's home, not only the run's.
fn homes_of<'p>(path: &'p str, home: Option<&'p str>) -> impl Iterator<Item = &'p str> {
    let user_home = path.strip_prefix("/home/").and_then(|rest| {
        let user = rest.split('/').next()?;
        Some(&path[.."/home/".len() + user.len()])
    });
    ["/root"]
        .into_iter()
        .chain(user_home)
        .chain(home)
        .filter(move |h| is_below(path, h))
}

/// Whether `path` lies strictly beneath the directory `dir`.
fn is_below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether `path` is `dir` or lies beneath it.
fn is_at_or_below(path: &str, dir: &str) -> bool {
    path == dir || is_below(path, dir)
}

/// Why `path` is sensitive, if it is: credentials a person should decide about rather than
/// a learnt policy allowing them because a run happened to read them.
pub fn sensitive(path: &str, home: Option<&str>) -> Option<&'static str> {
    for h in homes_of(path, home) {
        let rest = &path[h.len() + 1..];
        if SENSITIVE_HOME
            .iter()
            .any(|(name, dir)| rest == *name || (*dir && is_below(rest, name)))
        {
            return Some("credentials in a home directory");
        }
    }
    if SENSITIVE_FILES.contains(&path) {
        return Some("password hashes");
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == ".env" || name.starts_with(".env.") {
        return Some("an environment file (secrets by convention)");
    }
    let system = SYSTEM_TREES.iter().any(|t| is_below(path, t));
    if name.ends_with(".pem") && !system && !CA_BUNDLES.contains(&name) {
        return Some("a PEM file (keys and certificates)");
    }
    None
}

/// Which evidence folds an action's paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Writes and deletes: below the working directory and the temp directories, trees the
    /// workload created or works throughout are folded; elsewhere every path is listed, so
    /// that a reviewer sees each file outside the workload's own place that it changes.
    Writes,
    /// Execs and executable mappings: the system trees fold into their roots, and what the
    /// workload built in a directory it created (below the working directory or a temp
    /// directory) into that directory. Other binaries are listed one by one: eight tools run
    /// from `/usr/bin` are no reason to allow the ninth.
    Execs,
}

/// Why paths were folded into a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// The workload created the directory.
    Created,
    /// The run used at least `SIBLINGS` distinct entries under it.
    Siblings(usize),
    /// One of `SYSTEM_TREES`.
    SystemTree,
    /// A temp directory (writes and deletes).
    TempDir,
    /// The paths can't be written as exact rules (a `*`, `?`, `[` or `{` in a name, or longer
    /// than a rule may be), so the nearest directory that may be folded stands for them.
    Unnameable,
}

/// One rule: a pattern and what it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: PathPattern,
    /// Uses of every path it covers.
    pub uses: u64,
    /// Distinct paths it covers.
    pub paths: usize,
    /// The first path it covers, as an example of a tree.
    pub example: String,
    /// Why a tree is one (None for an exact path).
    pub evidence: Option<Evidence>,
}

/// An action's paths as rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// In pattern order.
    pub rules: Vec<Rule>,
    /// Sensitive paths, with their uses and why they are: left out of the rules, for a person
    /// to decide.
    pub sensitive: Vec<(String, u64, &'static str)>,
    /// Paths no rule can name and no tree may cover, with their uses.
    pub unnameable: Vec<(String, u64)>,
}

/// What folding needs to know about the run.
pub struct Context<'a> {
    pub run: &'a Run,
    /// Sensitive paths the run used, under any action.
    pub sensitive: &'a BTreeSet<&'a str>,
}

impl Context<'_> {
    /// Whether a tree may be made of `dir` for `scope`, whatever the evidence.
    pub fn may_fold(&self, dir: &str, scope: Scope) -> bool {
        let run = self.run;
        let in_place =
            is_at_or_below(dir, &run.workdir) || run.temp_dirs.iter().any(|t| is_below(dir, t));
        let system = scope == Scope::Execs && SYSTEM_TREES.contains(&dir);
        let temp = run.temp_dirs.iter().any(|t| t == dir);
        (in_place || system) && !temp && !self.refused(dir)
    }

    /// Whether the writes beneath the temp directory `dir` fold into `dir/**`.
    fn temp_tree(&self, dir: &str) -> bool {
        if STANDARD_TEMP_DIRS.contains(&dir) {
            !self.sensitive.iter().any(|s| is_below(s, dir))
        } else {
            !self.refused(dir)
        }
    }

    /// The directories no tree is ever made of (see the module's documentation).
    fn refused(&self, dir: &str) -> bool {
        let run = self.run;
        let depth = dir.matches('/').count();
        let top = dir == "/" || dir.is_empty() || depth == 1;
        let user_home = depth == 2 && dir.starts_with("/home/");
        let own = run.home.as_deref() == Some(dir);
        let sensitive_location = homes_of(dir, run.home.as_deref())
            .chain(run.home.as_deref())
            .any(|h| {
                SENSITIVE_HOME.iter().any(|(name, _)| {
                    let location = format!("{h}/{name}");
                    is_at_or_below(&location, dir) || is_below(dir, &location)
                })
            });
        let holds_sensitive = self.sensitive.iter().any(|s| is_below(s, dir));
        top || user_home
            || own
            || sensitive_location
            || holds_sensitive
            || sensitive(dir, run.home.as_deref()).is_some()
    }
}

/// The directories strictly above `path`, outermost first, without `/`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .filter(|d| !d.is_empty())
}

/// For each directory above a path, how many distinct entries directly under it the paths
/// reach (a file, or a directory with paths beneath it).
fn entries_under<'p>(paths: impl Iterator<Item = &'p str>) -> BTreeMap<&'p str, usize> {
    let mut children: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for path in paths {
        let mut dirs: Vec<&str> = ancestors(path).collect();
        dirs.push(path);
        for pair in dirs.windows(2) {
            children.entry(pair[0]).or_default().insert(pair[1]);
        }
        // The entries of `/` don't matter: it is never folded.
    }
    children.into_iter().map(|(d, c)| (d, c.len())).collect()
}

/// Folds the `paths` an action used (with their uses) into rules, under `scope`'s evidence.
pub fn fold(paths: &BTreeMap<&str, u64>, cx: &Context, scope: Scope) -> Folded {
    let mut out = Folded::default();
    let home = cx.run.home.as_deref();
    let (sensitive_paths, plain): (Vec<_>, Vec<_>) = paths
        .iter()
        .partition(|(p, _)| sensitive(p, home).is_some());
    for (path, n) in sensitive_paths {
        let why = sensitive(path, home).unwrap_or_default();
        out.sensitive.push(((*path).to_owned(), *n, why));
    }
    let entries = entries_under(plain.iter().map(|(p, _)| **p));
    let evidence = |dir: &str| -> Option<Evidence> {
        if scope == Scope::Writes && cx.run.temp_dirs.iter().any(|t| t == dir) {
            return cx.temp_tree(dir).then_some(Evidence::TempDir);
        }
        if !cx.may_fold(dir, scope) {
            return None;
        }
        if scope == Scope::Execs && SYSTEM_TREES.contains(&dir) {
            return Some(Evidence::SystemTree);
        }
        if cx.run.created_dirs.contains(dir) {
            return Some(Evidence::Created);
        }
        let n = entries.get(dir).copied().unwrap_or(0);
        (scope == Scope::Writes && n >= SIBLINGS).then_some(Evidence::Siblings(n))
    };
    let mut rules: BTreeMap<PathPattern, Rule> = BTreeMap::new();
    for (path, n) in plain {
        // The outermost directory with evidence: what it holds is one tree.
        let folded = ancestors(path)
            .find_map(|d| evidence(d).map(|e| (PathPattern::Tree(d.to_owned()), Some(e))));
        let chosen = folded.or_else(|| match parse_path(path) {
            Ok(exact @ PathPattern::Exact(_)) => Some((exact, None)),
            // A name with wildcard characters, or too long: the nearest directory that may be
            // folded at all.
            _ => ancestors(path)
                .filter(|d| cx.may_fold(d, scope) && parse_path(&format!("{d}/**")).is_ok())
                .last()
                .map(|d| (PathPattern::Tree(d.to_owned()), Some(Evidence::Unnameable))),
        });
        let Some((pattern, evidence)) = chosen else {
            out.unnameable.push(((*path).to_owned(), *n));
            continue;
        };
        let rule = rules.entry(pattern.clone()).or_insert_with(|| Rule {
            pattern,
            uses: 0,
            paths: 0,
            example: (*path).to_owned(),
            evidence,
        });
        rule.uses += n;
        rule.paths += 1;
    }
    out.rules = merge_covered(rules.into_values().collect());
    // As a reviewer reads paths: a directory before what is in it.
    out.rules.sort_by_key(|r| r.pattern.to_string());
    out
}

/// Folds each rule that a tree rule covers into that tree: a directory that a write created
/// (an exact rule for `D`) beside the tree `D/**` of what is in it stays exact, but `D/x`
/// under `D/**` does not.
fn merge_covered(rules: Vec<Rule>) -> Vec<Rule> {
    let trees: Vec<String> = rules
        .iter()
        .filter_map(|r| match &r.pattern {
            PathPattern::Tree(d) => Some(d.clone()),
            PathPattern::Exact(_) => None,
        })
        .collect();
    let covering = |rule: &Rule| -> Option<String> {
        let path = match &rule.pattern {
            PathPattern::Exact(p) | PathPattern::Tree(p) => p,
        };
        trees.iter().find(|t| is_below(path, t)).cloned()
    };
    let mut kept: BTreeMap<PathPattern, Rule> = BTreeMap::new();
    let mut moved = Vec::new();
    for rule in rules {
        match covering(&rule) {
            Some(tree) => moved.push((tree, rule)),
            None => {
                kept.insert(rule.pattern.clone(), rule);
            }
        }
    }
    for (tree, rule) in moved {
        // The outermost covering tree is kept, since trees are only dropped when covered.
        let outer = kept
            .values_mut()
            .find(|k| matches!(&k.pattern, PathPattern::Tree(d) if is_at_or_below(&tree, d)));
        if let Some(k) = outer {
            k.uses += rule.uses;
            k.paths += rule.paths;
        }
    }
    kept.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::observe::tests::run;

    fn fold_with(run: &Run, paths: &[&str], scope: Scope) -> Folded {
        let uses: BTreeMap<&str, u64> = paths.iter().map(|p| (*p, 1)).collect();
        let sensitive: BTreeSet<&str> = paths
            .iter()
            .copied()
            .filter(|p| sensitive(p, run.home.as_deref()).is_some())
            .collect();
        let cx = Context {
            run,
            sensitive: &sensitive,
        };
        fold(&uses, &cx, scope)
    }

    fn patterns(folded: &Folded) -> Vec<String> {
        folded.rules.iter().map(|r| r.pattern.to_string()).collect()
    }

    fn siblings(dir: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{dir}/f{i}")).collect()
    }

    fn refs(paths: &[String]) -> Vec<&str> {
        paths.iter().map(String::as_str).collect()
    }

    #[test]
    fn enough_siblings_fold_their_directory_and_fewer_stay_exact() {
        let many = siblings("/home/u/proj/src", SIBLINGS);
        let f = fold_with(&run(), &refs(&many), Scope::Writes);
        assert_eq!(patterns(&f), ["/home/u/proj/src/**"]);
        let rule = &f.rules[0];
        assert_eq!((rule.uses, rule.paths), (SIBLINGS as u64, SIBLINGS));
        assert_eq!(rule.example, "/home/u/proj/src/f0");
        assert_eq!(rule.evidence, Some(Evidence::Siblings(SIBLINGS)));
        let few = siblings("/home/u/proj/src", SIBLINGS - 1);
        let f = fold_with(&run(), &refs(&few), Scope::Writes);
        assert_eq!(patterns(&f), refs(&few));
    }

    #[test]
    fn subdirectories_count_as_entries_and_the_outermost_tree_wins() {
        let mut paths: Vec<String> = (0..SIBLINGS)
            .map(|i| format!("/home/u/proj/d{i}/x"))
            .collect();
        paths.extend(siblings("/home/u/proj/d0", SIBLINGS));
        let f = fold_with(&run(), &refs(&paths), Scope::Writes);
        assert_eq!(patterns(&f), ["/home/u/proj/**"]);
        assert_eq!(f.rules[0].paths, paths.len());
    }

    #[test]
    fn a_directory_the_workload_created_is_one_tree() {
        let mut r = run();
        r.created_dirs.insert("/home/u/proj/build".into());
        r.created_dirs.insert("/tmp/job".into());
        let f = fold_with(
            &r,
            &[
                "/home/u/proj/build",
                "/home/u/proj/build/a.o",
                "/home/u/proj/build/deps/b.o",
                "/tmp/job/out",
                "/home/u/proj/README",
            ],
            Scope::Writes,
        );
        // The directory itself stays exact: `D/**` is what is beneath `D`.
        assert_eq!(
            patterns(&f),
            [
                "/home/u/proj/README",
                "/home/u/proj/build",
                "/home/u/proj/build/**",
                "/tmp/**"
            ]
        );
        assert_eq!(f.rules[2].evidence, Some(Evidence::Created));
    }

    #[test]
    fn writes_outside_the_working_and_temp_directories_are_listed_exactly() {
        let mut r = run();
        let cache = siblings("/home/u/.cache/pip", SIBLINGS + 2);
        r.created_dirs.insert("/home/u/.cache/pip".into());
        let f = fold_with(&r, &refs(&cache), Scope::Writes);
        assert_eq!(patterns(&f), refs(&cache));
    }

    #[test]
    fn top_level_and_home_directories_are_never_folded() {
        for dir in ["/etc", "/usr", "/var", "/home", "/root", "/opt", "/srv"] {
            let mut r = run();
            r.workdir = dir.into();
            r.created_dirs.insert(dir.into());
            let paths = siblings(dir, SIBLINGS * 2);
            let f = fold_with(&r, &refs(&paths), Scope::Writes);
            assert!(f.rules.iter().all(|r| r.evidence.is_none()), "{dir}: {f:?}");
        }
        // `/` itself: paths right under it.
        let mut r = run();
        r.workdir = "/".into();
        let f = fold_with(&r, &refs(&siblings("", SIBLINGS)), Scope::Writes);
        assert_eq!(f.rules.len(), SIBLINGS);
        // A home directory, the run's or another user's, even as the working directory.
        for home in ["/home/u", "/home/other", "/srv/users/u"] {
            let mut r = run();
            r.workdir = home.into();
            r.home = Some("/srv/users/u".into());
            let paths = siblings(home, SIBLINGS);
            let f = fold_with(&r, &refs(&paths), Scope::Writes);
            assert_eq!(f.rules.len(), SIBLINGS, "{home}");
        }
    }

    #[test]
    fn writes_in_a_temp_directory_fold_into_it_execs_do_not() {
        let r = run();
        let scratch = ["/tmp/ccA1b2.s", "/tmp/ccA1b2.o", "/var/tmp/x/y"];
        let f = fold_with(&r, &scratch, Scope::Writes);
        assert_eq!(patterns(&f), ["/tmp/**", "/var/tmp/**"]);
        assert_eq!(f.rules[0].evidence, Some(Evidence::TempDir));
        assert_eq!(f.rules[0].paths, 2);
        let f = fold_with(&r, &scratch, Scope::Execs);
        assert_eq!(
            patterns(&f),
            ["/tmp/ccA1b2.o", "/tmp/ccA1b2.s", "/var/tmp/x/y"]
        );
    }

    #[test]
    fn a_temp_directory_is_not_folded_over_a_secret_nor_when_it_is_a_home() {
        let r = run();
        let f = fold_with(&r, &["/tmp/a", "/tmp/k/id.pem"], Scope::Writes);
        assert_eq!(patterns(&f), ["/tmp/a"]);
        assert_eq!(f.sensitive.len(), 1);
        // $TMPDIR set to the home directory, or to `/`.
        for tmpdir in ["/home/u", "/"] {
            let mut r = run();
            r.temp_dirs.push(tmpdir.into());
            let paths = siblings(tmpdir.trim_end_matches('/'), 2);
            let f = fold_with(&r, &refs(&paths), Scope::Writes);
            assert!(
                f.rules.iter().all(|r| r.evidence.is_none()),
                "{tmpdir}: {f:?}"
            );
        }
        // A $TMPDIR below the working directory folds.
        let mut r = run();
        r.temp_dirs.push("/home/u/proj/tmp".into());
        let f = fold_with(&r, &["/home/u/proj/tmp/a"], Scope::Writes);
        assert_eq!(patterns(&f), ["/home/u/proj/tmp/**"]);
    }

    #[test]
    fn sensitive_paths_are_set_apart_and_no_tree_covers_them() {
        let mut paths = siblings("/home/u/proj", SIBLINGS);
        paths.push("/home/u/proj/.env".into());
        paths.push("/home/u/.ssh/id_ed25519".into());
        let f = fold_with(&run(), &refs(&paths), Scope::Writes);
        // The working directory holds `.env`: its siblings stay exact.
        assert_eq!(f.rules.len(), SIBLINGS);
        assert!(f.rules.iter().all(|r| r.evidence.is_none()));
        let sensitive: Vec<&str> = f.sensitive.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(sensitive, ["/home/u/.ssh/id_ed25519", "/home/u/proj/.env"]);
    }

    #[test]
    fn a_directory_above_or_in_a_sensitive_location_is_not_folded() {
        let mut r = run();
        r.workdir = "/home/u".into();
        let config = siblings("/home/u/.config", SIBLINGS);
        let f = fold_with(&r, &refs(&config), Scope::Writes);
        assert!(f.rules.iter().all(|r| r.evidence.is_none()), "{f:?}");
        r.created_dirs.insert("/home/u/.ssh/sub".into());
        let f = fold_with(&r, &["/home/u/.ssh/sub/x"], Scope::Writes);
        assert!(f.rules.is_empty());
        assert_eq!(f.sensitive.len(), 1);
    }

    #[test]
    fn what_is_sensitive() {
        let home = Some("/srv/u");
        for path in [
            "/home/u/.ssh/id_rsa",
            "/root/.aws/credentials",
            "/srv/u/.config/gh/hosts.yml",
            "/home/x/.netrc",
            "/etc/shadow",
            "/w/.env",
            "/w/.env.local",
            "/w/certs/server.pem",
        ] {
            assert!(sensitive(path, home).is_some(), "{path}");
        }
        for path in [
            "/home/u/.sshx",
            "/home/u/.config/ghost",
            "/home/u/w/.envrc",
            "/etc/shadows",
            "/usr/lib/python3/dist-packages/certifi/cacert.pem",
            "/home/u/.venv/lib/python3.11/site-packages/certifi/cacert.pem",
            "/etc/ssl/certs/ISRG_Root_X1.pem",
        ] {
            assert!(sensitive(path, home).is_none(), "{path}");
        }
    }

    #[test]
    fn execs_fold_system_trees_into_their_roots_and_list_other_binaries() {
        let mut r = run();
        r.created_dirs.insert("/home/u/proj/target".into());
        let mut paths: Vec<String> = siblings("/usr/bin", SIBLINGS + 1);
        paths.extend([
            "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            "/usr/lib/git-core/git-remote-https".to_owned(),
            "/home/u/proj/target/debug/app".to_owned(),
            "/home/u/proj/venv/bin/python".to_owned(),
        ]);
        let f = fold_with(&r, &refs(&paths), Scope::Execs);
        let mut want: Vec<String> = vec![
            "/home/u/proj/target/**".into(),
            "/home/u/proj/venv/bin/python".into(),
        ];
        want.extend(siblings("/usr/bin", SIBLINGS + 1));
        want.push("/usr/lib/**".into());
        assert_eq!(patterns(&f), want);
        let lib = f.rules.last().unwrap();
        assert_eq!((lib.paths, lib.evidence), (2, Some(Evidence::SystemTree)));
    }

    #[test]
    fn paths_no_rule_can_name_fold_into_the_nearest_foldable_directory_or_are_reported() {
        let f = fold_with(
            &run(),
            &["/home/u/proj/out/file[1].txt", "/etc/weird*name"],
            Scope::Writes,
        );
        assert_eq!(patterns(&f), ["/home/u/proj/out/**"]);
        assert_eq!(f.rules[0].evidence, Some(Evidence::Unnameable));
        assert_eq!(f.unnameable, [("/etc/weird*name".to_owned(), 1)]);
    }
}
