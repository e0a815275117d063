//! `cgroups:` patterns: cgroups that exist without actgate (a service's, a container's), bound
//! to a policy's label. A pattern is a path beneath the cgroup v2 mount whose components may
//! hold shell wildcards (`*`, `?`, `[…]`), each within one component: `system.slice/docker-*.scope`.

use std::fmt;

use thiserror::Error;

/// actgate's own cgroup beneath the cgroup v2 root, where `actgate exec` makes the labels'.
pub const OWN_CGROUP: &str = "actgate";

/// Deepest pattern, in components. The kernel finds a label at any level (up to 255), but a
/// binding deeper than this is a mistake more likely than a need.
pub const MAX_CGROUP_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CgroupPatternError {
    #[error("empty cgroup pattern")]
    Empty,
    #[error("`{0}`: a cgroup pattern can't bind the whole hierarchy")]
    Root(String),
    #[error("`{0}`: empty component (`//` or a trailing `/`)")]
    EmptyComponent(String),
    #[error("`{0}`: `{1}` component; write the cgroup's path as it is beneath the cgroup v2 mount")]
    Dot(String, String),
    #[error("`{0}`: invalid wildcard in `{1}`: {2}")]
    Glob(String, String, String),
    #[error(
        "`{0}`: `{OWN_CGROUP}/…` is where `actgate exec` puts labels; name the label in `labels` \
         instead"
    )]
    Own(String),
    #[error("`{0}`: deeper than {MAX_CGROUP_DEPTH} components")]
    TooDeep(String),
}

/// One validated `cgroups:` entry.
#[derive(Clone, Debug)]
pub struct CgroupPattern {
    text: String,
    components: Vec<Component>,
}

/// One component of a pattern: a directory name, or a wildcard over them.
#[derive(Clone, Debug)]
pub struct Component {
    pattern: glob::Pattern,
    /// The name, when the component has no wildcard.
    literal: Option<String>,
}

impl Component {
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches(name)
    }

    /// The name itself, when the component has no wildcard.
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }
}

impl PartialEq for CgroupPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CgroupPattern {}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl CgroupPattern {
    /// The pattern's components, each matching one directory name.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Whether the pattern names one cgroup only (no wildcard).
    pub fn is_exact(&self) -> bool {
        self.components.iter().all(|c| c.literal().is_some())
    }

    /// The pattern that matches the cgroup at `path` only, whatever its names hold.
    pub fn exact(path: &str) -> Result<Self, CgroupPatternError> {
        parse(path, |text, name| {
            let pattern = glob::Pattern::new(&glob::Pattern::escape(name)).map_err(|e| {
                CgroupPatternError::Glob(text.into(), name.into(), e.msg.to_string())
            })?;
            Ok(Component {
                pattern,
                literal: Some(name.to_string()),
            })
        })
    }

    /// Whether `path` (relative to the cgroup v2 mount) matches.
    pub fn matches(&self, path: &str) -> bool {
        let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        names.len() == self.components.len()
            && self
                .components
                .iter()
                .zip(names)
                .all(|(pattern, name)| pattern.matches(name))
    }
}

/// Parses a `cgroups:` entry. A leading `/` is accepted: /proc/PID/cgroup writes paths so.
pub fn parse_cgroup(text: &str) -> Result<CgroupPattern, CgroupPatternError> {
    parse(text, |text, name| {
        if name.contains("**") {
            let why = "each component matches one directory; `**` spans none".to_string();
            return Err(CgroupPatternError::Glob(text.into(), name.into(), why));
        }
        let pattern = glob::Pattern::new(name)
            .map_err(|e| CgroupPatternError::Glob(text.into(), name.into(), e.msg.to_string()))?;
        let literal = (glob::Pattern::escape(name) == name).then(|| name.to_string());
        Ok(Component { pattern, literal })
    })
}

/// A cgroup path's checks, with `component` making each name of `text` a component.
fn parse(
    text: &str,
    component: impl Fn(&str, &str) -> Result<Component, CgroupPatternError>,
) -> Result<CgroupPattern, CgroupPatternError> {
    if text.is_empty() {
        return Err(CgroupPatternError::Empty);
    }
    let relative = text.strip_prefix('/').unwrap_or(text);
    if relative.is_empty() {
        return Err(CgroupPatternError::Root(text.into()));
    }
    let mut components = Vec::new();
    for name in relative.split('/') {
        match name {
            "" => return Err(CgroupPatternError::EmptyComponent(text.into())),
            "." | ".." => return Err(CgroupPatternError::Dot(text.into(), name.into())),
            _ => components.push(component(text, name)?),
        }
    }
    if components.len() > MAX_CGROUP_DEPTH {
        return Err(CgroupPatternError::TooDeep(text.into()));
    }
    if components[0].literal() == Some(OWN_CGROUP) {
        return Err(CgroupPatternError::Own(text.into()));
    }
    Ok(CgroupPattern {
        text: relative.to_string(),
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_match_one_directory_each() {
        let p = parse_cgroup("system.slice/docker-*.scope").unwrap();
        assert!(p.matches("system.slice/docker-0123abcd.scope"));
        assert!(p.matches("/system.slice/docker-1.scope"));
        assert!(!p.matches("system.slice/docker-1.scope/child"));
        assert!(!p.matches("system.slice/sub/docker-1.scope"));
        assert!(!p.matches("system.slice/containerd.service"));
        assert!(!p.is_exact());
        let odd = CgroupPattern::exact("kubepods/pod[1]*").unwrap();
        assert!(
            odd.is_exact() && odd.matches("kubepods/pod[1]*") && !odd.matches("kubepods/pod1x")
        );
        let exact = parse_cgroup("/system.slice/gitlab-runner.service").unwrap();
        assert!(exact.is_exact());
        assert_eq!(exact.to_string(), "system.slice/gitlab-runner.service");
        assert!(exact.matches("system.slice/gitlab-runner.service"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(parse_cgroup(""), Err(CgroupPatternError::Empty));
        assert_eq!(parse_cgroup("/"), Err(CgroupPatternError::Root("/".into())));
        assert!(matches!(
            parse_cgroup("a//b"),
            Err(CgroupPatternError::EmptyComponent(_))
        ));
        assert!(matches!(
            parse_cgroup("a/"),
            Err(CgroupPatternError::EmptyComponent(_))
        ));
        assert!(matches!(
            parse_cgroup("a/../b"),
            Err(CgroupPatternError::Dot(_, _))
        ));
        assert!(matches!(
            parse_cgroup("a/[b"),
            Err(CgroupPatternError::Glob(_, _, _))
        ));
        assert!(matches!(
            parse_cgroup("actgate/coder"),
            Err(CgroupPatternError::Own(_))
        ));
        let deep = vec!["x"; MAX_CGROUP_DEPTH + 1].join("/");
        assert!(matches!(
            parse_cgroup(&deep),
            Err(CgroupPatternError::TooDeep(_))
        ));
    }
}
