//! Rules that name a symlink. The kernel judges the file a path resolves to, so a rule for
//! `/usr/bin/nc` (an alternatives link) or `/lib/**` (merged /usr) would never match. `actgate
//! check` warns about each one, and the loaded policy judges the target as well as the name.
//!
//! What a path resolves to depends on the host, so the resolver is a parameter: `on_host` for
//! real use, a table in the tests.

use std::path::{Path, PathBuf};

use crate::{
    diagnostic::Diagnostic,
    model::{PathPattern, PolicySet},
};

/// The pattern `pattern` names once its symlinks are resolved, when that differs.
/// `resolve(path)` returns the resolved path of a path that has a symlink in it.
fn target(pattern: &PathPattern, resolve: &impl Fn(&str) -> Option<String>) -> Option<PathPattern> {
    match pattern {
        PathPattern::Exact(p) => resolve(p).map(PathPattern::Exact),
        // `/**` has nothing to resolve.
        PathPattern::Tree(d) if !d.is_empty() => resolve(d).map(PathPattern::Tree),
        PathPattern::Tree(_) => None,
    }
}

/// One warning per pattern that names a symlink, at the place it was written.
pub fn warnings(set: &PolicySet, resolve: impl Fn(&str) -> Option<String>) -> Vec<Diagnostic> {
    set.sites
        .iter()
        .filter_map(|site| {
            let to = target(&site.pattern, &resolve)?;
            Some(Diagnostic::new(
                &site.file,
                site.pos,
                format!(
                    "warning: `{}` names a symlink on this host; decisions use the file it \
                     resolves to, so the rule is applied to `{to}` as well",
                    site.pattern
                ),
            ))
        })
        .collect()
}

/// Adds, beside every path pattern that names a symlink, the pattern it resolves to, in the
/// same list, so the rule holds for the file the kernel will see.
pub fn follow(set: &mut PolicySet, resolve: impl Fn(&str) -> Option<String>) {
    for rules in set.path_rules_mut() {
        for list in [&mut rules.allow, &mut rules.deny] {
            let targets: Vec<PathPattern> =
                list.iter().filter_map(|p| target(p, &resolve)).collect();
            for t in targets {
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
    }
}

/// Resolves `path` on this host: the longest prefix that exists, with every symlink in it
/// resolved, followed by the rest. None when nothing resolves differently.
pub fn on_host(path: &str) -> Option<String> {
    let path = Path::new(path);
    let (resolved, rest) = path.ancestors().find_map(|prefix| {
        let resolved = std::fs::canonicalize(prefix).ok()?;
        let rest = path.strip_prefix(prefix).ok()?;
        Some((resolved, rest.to_path_buf()))
    })?;
    let full: PathBuf = if rest.as_os_str().is_empty() {
        resolved
    } else {
        resolved.join(rest)
    };
    (full != path).then(|| full.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_set;

    fn resolve(path: &str) -> Option<String> {
        for (link, to) in [("/usr/bin/nc", "/usr/bin/nc.openbsd"), ("/lib", "/usr/lib")] {
            if path == link {
                return Some(to.into());
            }
            if let Some(rest) = path.strip_prefix(&format!("{link}/")) {
                return Some(format!("{to}/{rest}"));
            }
        }
        None
    }

    const POLICY: &str = "name: p\nlabels: [a]\nexec:\n  deny: [/usr/bin/nc, /usr/bin/ssh]\n\
                          files:\n  read:\n    allow:\n      - /lib/**\n      - /usr/lib/**\n";

    fn set() -> PolicySet {
        let (set, problems) = parse_set(Path::new("p.yaml"), POLICY);
        assert_eq!(problems, vec![]);
        set
    }

    #[test]
    fn a_rule_naming_a_symlink_is_warned_about_where_it_was_written() {
        let w: Vec<String> = warnings(&set(), resolve)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("p.yaml:4:10: warning: `/usr/bin/nc` names a symlink"));
        assert!(w[0].ends_with("applied to `/usr/bin/nc.openbsd` as well"));
        assert!(w[1].starts_with("p.yaml:8:9: warning: `/lib/**` names a symlink"));
        assert!(w[1].ends_with("`/usr/lib/**` as well"));
    }

    #[test]
    fn the_loaded_policy_judges_the_target_too_without_duplicates() {
        let mut s = set();
        follow(&mut s, resolve);
        let p = &s.policies[0];
        let exact = |x: &str| PathPattern::Exact(x.into());
        assert_eq!(
            p.exec.deny,
            vec![
                exact("/usr/bin/nc"),
                exact("/usr/bin/ssh"),
                exact("/usr/bin/nc.openbsd")
            ]
        );
        let tree = |x: &str| PathPattern::Tree(x.into());
        assert_eq!(p.file_read.allow, vec![tree("/lib"), tree("/usr/lib")]);
    }

    #[test]
    fn delete_rules_naming_a_symlink_are_followed_too() {
        let text = "name: p\nlabels: [a]\nfiles:\n  delete:\n    deny: [/lib/keep/**]\n";
        let (mut s, problems) = parse_set(Path::new("p.yaml"), text);
        assert_eq!(problems, vec![]);
        assert_eq!(warnings(&s, resolve).len(), 1);
        follow(&mut s, resolve);
        let tree = |x: &str| PathPattern::Tree(x.into());
        assert_eq!(
            s.policies[0].file_delete.deny,
            vec![tree("/lib/keep"), tree("/usr/lib/keep")]
        );
    }

    #[test]
    fn the_host_resolver_follows_links_in_any_component_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("actgate-symlinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        let real = std::fs::canonicalize(dir.join("real")).unwrap();
        let link = dir.join("link/missing/file");
        assert_eq!(
            on_host(&link.display().to_string()),
            Some(real.join("missing/file").display().to_string())
        );
        assert_eq!(on_host(&real.display().to_string()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
