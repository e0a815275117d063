//! Loading policy files and validating them, collecting every problem rather than the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use agent_common::{ANONYMOUS, MAX_LABELS, SocketKind, capability_by_name};

use crate::diagnostic::{Diagnostic, Pos};
use crate::model::{
    Fallback, Hosts, Mode, NetPattern, PathPattern, PathSite, Policy, PolicySet, ProcessRules,
    Rules,
};
use crate::pattern::{
    CgroupPattern, ConnectPattern, PatternError, parse_cgroup, parse_connect, parse_listen,
    parse_path, parse_unix,
};
use crate::yaml::{Node, Value, parse_documents};

mod limits;

pub use limits::{BUDGET_ACTIONS, LimitError, parse_count, parse_duration_ms};

/// Most policies a set may hold: each needs its own rule set number in the kernel keys.
pub const MAX_POLICIES: usize = 16384;
pub const MAX_NAME_LEN: usize = 128;
/// Labels become cgroup directory names.
pub const MAX_LABEL_LEN: usize = 64;

const POLICY_KEYS: &[&str] = &[
    "name",
    "labels",
    "cgroups",
    "mode",
    "exec",
    "files",
    "network",
    "process",
    "budgets",
    "revoke_after",
];
const FILES_KEYS: &[&str] = &["write", "read", "delete"];
const NETWORK_KEYS: &[&str] = &[
    "connect",
    "unix",
    "listen",
    "raw",
    "packet",
    "sctp",
    "ip_options",
];
const PROCESS_KEYS: &[&str] = &["capabilities", "namespaces"];
const RULES_KEYS: &[&str] = &["default", "allow", "deny"];

/// Load a policy file, or every `*.yaml`/`*.yml` file directly in a directory, and check the
/// policies together. Any problem anywhere fails the whole load, so a typo never leaves a
/// workload running under a partial policy.
pub fn load_path(path: &Path) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let files = match list_files(path) {
        Ok(files) => files,
        Err(d) => return Err(vec![d]),
    };
    let mut parsed = Vec::new();
    for file in &files {
        match std::fs::read(file) {
            Ok(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => parsed.extend(parse_file(file, text, &mut diags)),
                Err(e) => diags.push(not_utf8(file, &bytes, &e)),
            },
            Err(e) => diags.push(Diagnostic::new(
                file,
                Pos::START,
                format!("cannot read policy file: {e}"),
            )),
        }
    }
    if parsed.is_empty() && diags.is_empty() {
        let message = if path.is_dir() {
            "no policies found: the directory has no *.yaml or *.yml file with a policy"
        } else {
            "no policies found in this file"
        };
        diags.push(Diagnostic::new(path, Pos::START, message));
    }
    let set = check_set(parsed, &mut diags);
    if diags.is_empty() {
        Ok(set)
    } else {
        Err(dedup(diags))
    }
}

/// Parse and validate the policies of one file's text. Returns the valid policies and every
/// problem found (including duplicate names and labels within the file).
pub fn parse_str(file: &Path, text: &str) -> (Vec<Policy>, Vec<Diagnostic>) {
    let (set, diags) = parse_set(file, text);
    (set.policies, diags)
}

/// `parse_str`, keeping where each path pattern was written.
pub fn parse_set(file: &Path, text: &str) -> (PolicySet, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let parsed = parse_file(file, text, &mut diags);
    let set = check_set(parsed, &mut diags);
    (set, dedup(diags))
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Diagnostic::new(path, Pos::START, format!("cannot read policy path: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Diagnostic::new(path, Pos::START, format!("cannot list directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Diagnostic::new(path, Pos::START, format!("cannot list directory: {e}"))
        })?;
        let file = entry.path();
        let yaml = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        // `is_file` follows symlinks, and skips dangling ones such as editor lock files.
        if yaml && file.is_file() {
            files.push(file);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

fn not_utf8(file: &Path, bytes: &[u8], e: &std::str::Utf8Error) -> Diagnostic {
    let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
    let text = std::str::from_utf8(valid).unwrap_or_default();
    let line = text.matches('\n').count() + 1;
    let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let byte = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
    Diagnostic::new(
        file,
        Pos { line, column },
        format!("file is not valid UTF-8 (byte 0x{byte:02x})"),
    )
}

/// Order problems by file (in reading order) and position, and report each once: alias
/// expansion can repeat one problem many times.
fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(usize, Diagnostic)> = Vec::new();
    for d in diags {
        if !seen.insert(d.clone()) {
            continue;
        }
        let index = match files.iter().position(|f| *f == d.file) {
            Some(i) => i,
            None => {
                files.push(d.file.clone());
                files.len() - 1
            }
        };
        out.push((index, d));
    }
    out.sort_by_key(|(file, d)| (*file, d.line, d.column));
    out.into_iter().map(|(_, d)| d).collect()
}

/// One document of a file: the policy if it is valid, plus what set-wide checks need even
/// when it is not (so a broken policy still claims its name and labels).
struct Parsed {
    policy: Option<Policy>,
    file: PathBuf,
    pos: Pos,
    name: Option<(String, Pos)>,
    labels: Vec<(String, Pos)>,
    sites: Vec<PathSite>,
}

fn parse_file(file: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> Vec<Parsed> {
    let documents = parse_documents(text);
    let mut checker = Checker {
        file,
        diags,
        partial: false,
        sites: Vec::new(),
    };
    let mut parsed: Vec<Parsed> = documents
        .complete
        .iter()
        .map(|doc| checker.policy(doc))
        .collect();
    if let Some(doc) = &documents.partial {
        checker.partial = true;
        parsed.push(checker.policy(doc));
    }
    if let Some(e) = documents.error {
        diags.push(Diagnostic::new(file, e.pos, e.message));
    }
    parsed
}

/// Checks across policies: unique names, each label in one policy, limits.
fn check_set(parsed: Vec<Parsed>, diags: &mut Vec<Diagnostic>) -> PolicySet {
    let mut names: HashMap<String, (PathBuf, Pos)> = HashMap::new();
    let mut labels: HashMap<String, (String, PathBuf, Pos)> = HashMap::new();
    let mut set = PolicySet::default();
    for (index, p) in parsed.into_iter().enumerate() {
        let before = diags.len();
        if index == MAX_POLICIES {
            diags.push(Diagnostic::new(
                &p.file,
                p.pos,
                format!("too many policies: at most {MAX_POLICIES} are supported"),
            ));
        }
        // A policy whose name is invalid still owns its labels, but cannot be named.
        let owner = p
            .name
            .as_ref()
            .map_or_else(|| "a policy".to_owned(), |(n, _)| format!("policy `{n}`"));
        if let Some((name, pos)) = &p.name {
            if let Some((file, first)) = names.get(name) {
                diags.push(Diagnostic::new(
                    &p.file,
                    *pos,
                    format!(
                        "duplicate policy name `{name}`; first defined at {}:{first}",
                        file.display()
                    ),
                ));
            } else {
                names.insert(name.clone(), (p.file.clone(), *pos));
            }
        }
        for (label, pos) in &p.labels {
            if let Some((other, file, first)) = labels.get(label) {
                diags.push(Diagnostic::new(
                    &p.file,
                    *pos,
                    format!(
                        "label `{label}` is already used by {other} at {}:{first}",
                        file.display()
                    ),
                ));
                continue;
            }
            labels.insert(label.clone(), (owner.clone(), p.file.clone(), *pos));
            if labels.len() == MAX_LABELS as usize + 1 {
                diags.push(Diagnostic::new(
                    &p.file,
                    *pos,
                    format!("too many labels: at most {MAX_LABELS} across all policies"),
                ));
            }
        }
        if diags.len() == before
            && let Some(policy) = p.policy
        {
            set.policies.push(policy);
            set.sites.extend(p.sites);
        }
    }
    set
}

/// Validates one document's tree, recording problems as it goes.
struct Checker<'a> {
    file: &'a Path,
    diags: &'a mut Vec<Diagnostic>,
    /// Checking a document cut short by a syntax error: absent keys may come after it.
    partial: bool,
    /// The path patterns of the document being checked, where they were written.
    sites: Vec<PathSite>,
}

impl Checker<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(self.file, pos, message));
    }

    /// Report a problem with the shape of `node`, unless a syntax error cut it short.
    fn shape_error(&mut self, node: &Node, message: impl Into<String>) {
        if !node.incomplete {
            self.error(node.pos, message);
        }
    }

    fn policy(&mut self, doc: &Node) -> Parsed {
        let before = self.diags.len();
        let mut parsed = Parsed {
            policy: None,
            file: self.file.to_path_buf(),
            pos: doc.pos,
            name: None,
            labels: Vec::new(),
            sites: Vec::new(),
        };
        let Some(fields) = self.fields(doc, "a policy", POLICY_KEYS) else {
            return parsed;
        };
        let mut mode = Mode::Enforce;
        let mut exec = Rules::default();
        let mut anonymous_exec = None;
        let mut file_write = Rules::default();
        let mut file_read = Rules::default();
        let mut file_delete = Rules::default();
        let mut connect = Rules::default();
        let mut hosts = Hosts::default();
        let mut unix = Rules::default();
        let mut listen = Rules::default();
        let mut sockets = Vec::new();
        let mut process = ProcessRules::default();
        let mut budgets = Vec::new();
        let mut breaker = None;
        let mut cgroups = Vec::new();
        for (key, key_pos, value) in &fields {
            match *key {
                "name" => parsed.name = self.name(value),
                "labels" => parsed.labels = self.labels(value),
                "cgroups" => cgroups = self.cgroups(value, *key_pos),
                "mode" => {
                    if let Some(m) = self.choice(
                        value,
                        "mode",
                        &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
                    ) {
                        mode = m;
                    }
                }
                "exec" => (exec, anonymous_exec) = self.exec_rules(value),
                "files" => {
                    if let Some(files) = self.fields(value, "`files`", FILES_KEYS) {
                        for (key, _, value) in &files {
                            match *key {
                                "write" => file_write = self.path_rules(value, "files.write"),
                                "read" => file_read = self.path_rules(value, "files.read"),
                                "delete" => file_delete = self.path_rules(value, "files.delete"),
                                _ => {}
                            }
                        }
                    }
                }
                "network" => {
                    if let Some(network) = self.fields(value, "`network`", NETWORK_KEYS) {
                        for (key, _, value) in &network {
                            match *key {
                                "connect" => (connect, hosts) = self.connect_rules(value),
                                "unix" => {
                                    unix = without_sites(self.rules(
                                        value,
                                        "network.unix",
                                        "socket patterns",
                                        parse_unix,
                                    ))
                                }
                                "listen" => {
                                    listen = without_sites(self.rules(
                                        value,
                                        "network.listen",
                                        "network patterns",
                                        parse_listen,
                                    ))
                                }
                                kind => sockets.extend(self.socket_kind(value, kind)),
                            }
                        }
                    }
                }
                "process" => process = self.process(value),
                "budgets" => budgets = self.budgets(value),
                "revoke_after" => breaker = self.breaker(value),
                // `fields` only returns the keys it was given.
                _ => {}
            }
        }
        self.require(doc, &fields, &["name", "labels"], "policy");
        if let Some((_, pos)) = cgroups.first()
            && parsed.labels.len() > 1
        {
            let n = parsed.labels.len();
            self.error(
                *pos,
                format!(
                    "`cgroups` binds cgroups to one label, but this policy names {n}; give each \
                     label its own policy"
                ),
            );
        }
        parsed.sites = std::mem::take(&mut self.sites);
        if self.partial || self.diags.len() != before {
            return parsed;
        }
        if let (Some((name, _)), false) = (&parsed.name, parsed.labels.is_empty()) {
            parsed.policy = Some(Policy {
                name: name.clone(),
                labels: parsed.labels.iter().map(|(l, _)| l.clone()).collect(),
                cgroups: cgroups.into_iter().map(|(c, _)| c).collect(),
                mode,
                exec,
                anonymous_exec,
                file_write,
                file_read,
                file_delete,
                connect,
                hosts,
                unix,
                listen,
                sockets,
                process,
                budgets,
                breaker,
                file: self.file.to_path_buf(),
                line: doc.pos.line,
            });
        }
        parsed
    }

    /// The entries of a mapping with known keys, each key once, in source order. Reports
    /// non-mappings, non-string keys, unknown and duplicate keys.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&'static str],
    ) -> Option<Vec<(&'static str, Pos, &'n Rc<Node>)>> {
        let Value::Map(entries) = &node.value else {
            self.shape_error(
                node,
                format!(
                    "expected {what} (a mapping with keys {}), found {}",
                    allowed.join(", "),
                    node.kind()
                ),
            );
            return None;
        };
        let mut fields: Vec<(&'static str, Pos, &'n Rc<Node>)> = Vec::new();
        for (key, value) in entries {
            let Value::Str(k) = &key.value else {
                self.error(
                    key.pos,
                    format!("expected a string key in {what}, found {}", key.kind()),
                );
                continue;
            };
            let Some(known) = allowed.iter().find(|a| **a == k.as_str()) else {
                self.error(
                    key.pos,
                    format!(
                        "unknown key `{k}` in {what}; allowed keys: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            };
            if let Some((_, first, _)) = fields.iter().find(|(f, _, _)| f == known) {
                let first = *first;
                self.error(
                    key.pos,
                    format!("duplicate key `{k}` in {what}; first at {first}"),
                );
                continue;
            }
            fields.push((known, key.pos, value));
        }
        Some(fields)
    }

    /// Reports each key of `required` that the mapping `node` lacks, unless a syntax error
    /// cut it short: the key may lie beyond the error.
    fn require(
        &mut self,
        node: &Node,
        fields: &[(&'static str, Pos, &Rc<Node>)],
        required: &[&str],
        what: &str,
    ) {
        if self.partial || node.incomplete {
            return;
        }
        for key in required {
            if !fields.iter().any(|(k, _, _)| k == key) {
                self.error(node.pos, format!("missing required key `{key}` in {what}"));
            }
        }
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.shape_error(node, format!("expected {what}, found {}", node.kind()));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let text = self.string(node, &format!("`{key}`: {}", names.join(" or ")))?;
        let found = options.iter().find(|(n, _)| *n == text).map(|(_, v)| *v);
        if found.is_none() {
            self.error(
                node.pos,
                format!("invalid `{key}` `{text}`: expected {}", names.join(" or ")),
            );
        }
        found
    }

    fn name(&mut self, node: &Node) -> Option<(String, Pos)> {
        let text = self.string(node, "a policy name")?;
        match identifier_problem(text, MAX_NAME_LEN) {
            Some(problem) => {
                self.error(node.pos, format!("invalid policy name `{text}`: {problem}"));
                None
            }
            None => Some((text.to_owned(), node.pos)),
        }
    }

    fn labels(&mut self, node: &Node) -> Vec<(String, Pos)> {
        let Value::Seq(items) = &node.value else {
            self.shape_error(
                node,
                format!("expected a list of labels, found {}", node.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.shape_error(node, "`labels` must name at least one label");
        }
        let mut labels: Vec<(String, Pos)> = Vec::new();
        // A hash map, because the list can be as long as the input makes it.
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for item in items {
            let Some(text) = self.string(item, "a label") else {
                continue;
            };
            if let Some(problem) = identifier_problem(text, MAX_LABEL_LEN) {
                self.error(item.pos, format!("invalid label `{text}`: {problem}"));
            } else if let Some(first) = seen.get(text).copied() {
                self.error(
                    item.pos,
                    format!("label `{text}` listed twice; first at {first}"),
                );
            } else {
                seen.insert(text, item.pos);
                labels.push((text.to_owned(), item.pos));
            }
        }
        labels
    }

    /// `cgroups:`, a list of cgroup patterns (each position kept: the first one is where a
    /// policy with several labels is told it can't bind). `key` is where the key was written.
    fn cgroups(&mut self, node: &Node, key: Pos) -> Vec<(CgroupPattern, Pos)> {
        let Value::Seq(items) = &node.value else {
            self.shape_error(
                node,
                format!("expected a list of cgroup patterns, found {}", node.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                key,
                "`cgroups` must name at least one cgroup (or leave it out)",
            );
        }
        let mut out: Vec<(CgroupPattern, Pos)> = Vec::new();
        for item in items {
            let Some(text) = self.string(item, "a cgroup pattern") else {
                continue;
            };
            match parse_cgroup(text) {
                Ok(p) if out.iter().any(|(q, _)| *q == p) => {
                    self.error(item.pos, format!("cgroup pattern `{p}` listed twice"))
                }
                Ok(p) => out.push((p, item.pos)),
                Err(e) => self.error(item.pos, e.to_string()),
            }
        }
        out
    }

    fn process(&mut self, node: &Node) -> ProcessRules {
        let mut process = ProcessRules::default();
        let Some(fields) = self.fields(node, "`process`", PROCESS_KEYS) else {
            return process;
        };
        for (key, _, value) in fields {
            match key {
                "capabilities" => process.capabilities = self.capabilities(value),
                "namespaces" => {
                    let options = [("allow", Fallback::Allow), ("deny", Fallback::Deny)];
                    if let Some(n) = self.choice(value, "process.namespaces", &options) {
                        process.namespaces = n;
                    }
                }
                _ => {}
            }
        }
        process
    }

    /// `network.raw: allow` and its siblings: the kind when allowed.
    fn socket_kind(&mut self, node: &Node, key: &str) -> Option<SocketKind> {
        let kind = SocketKind::ALL.into_iter().find(|k| k.as_str() == key)?;
        let options = [("allow", true), ("deny", false)];
        self.choice(node, &format!("network.{key}"), &options)?
            .then_some(kind)
    }

    fn capabilities(&mut self, node: &Node) -> Vec<u8> {
        let Value::Seq(items) = &node.value else {
            self.shape_error(
                node,
                format!(
                    "expected a list of capabilities for `process.capabilities`, found {}",
                    node.kind()
                ),
            );
            return Vec::new();
        };
        let mut caps = Vec::new();
        for item in items {
            let Some(name) = self.string(item, "a capability name") else {
                continue;
            };
            match capability_by_name(name) {
                Some(cap) if !caps.contains(&cap) => caps.push(cap),
                Some(_) => {}
                None => self.error(
                    item.pos,
                    format!(
                        "unknown capability `{name}`: expected a name as capabilities(7) \
                         spells it, such as CAP_NET_RAW"
                    ),
                ),
            }
        }
        caps
    }

    /// `rules` of path patterns, whose sites are kept for `symlinks`.
    fn path_rules(&mut self, node: &Node, section: &str) -> Rules<PathPattern> {
        let rules = self.rules(node, section, "path patterns", parse_path);
        self.keep_sites(rules)
    }

    /// Records where each path pattern was written, and returns the rules without it.
    fn keep_sites(&mut self, rules: Rules<(PathPattern, Pos)>) -> Rules<PathPattern> {
        let file = self.file;
        self.sites.extend(
            rules
                .allow
                .iter()
                .chain(&rules.deny)
                .map(|(pattern, pos)| PathSite {
                    pattern: pattern.clone(),
                    file: file.to_path_buf(),
                    pos: *pos,
                }),
        );
        without_sites(rules)
    }

    /// `exec`'s rules, whose lists may also name `anonymous` (deny beats allow).
    fn exec_rules(&mut self, node: &Node) -> (Rules<PathPattern>, Option<Fallback>) {
        // `None` stands for `anonymous` until it is taken out of the lists.
        let parse = |text: &str| match text {
            ANONYMOUS => Ok(None),
            _ => parse_path(text).map(Some),
        };
        let rules = self.rules(node, "exec", "path patterns or `anonymous`", parse);
        let names = |list: &[(Option<_>, Pos)]| list.iter().any(|(p, _)| p.is_none());
        let anonymous = if names(&rules.deny) {
            Some(Fallback::Deny)
        } else if names(&rules.allow) {
            Some(Fallback::Allow)
        } else {
            None
        };
        let patterns = |list: Vec<(Option<PathPattern>, Pos)>| {
            list.into_iter()
                .filter_map(|(p, pos)| p.map(|p| (p, pos)))
                .collect()
        };
        let exec = Rules {
            default: rules.default,
            allow: patterns(rules.allow),
            deny: patterns(rules.deny),
            protect: Vec::new(),
        };
        (self.keep_sites(exec), anonymous)
    }

    /// `network.connect`'s rules, whose lists mix address and host name patterns.
    fn connect_rules(&mut self, node: &Node) -> (Rules<NetPattern>, Hosts) {
        let rules = without_sites(self.rules(
            node,
            "network.connect",
            "network patterns or host names",
            parse_connect,
        ));
        let split = |list: Vec<ConnectPattern>| {
            let mut nets = Vec::new();
            let mut hosts = Vec::new();
            for pattern in list {
                match pattern {
                    ConnectPattern::Net(net) => nets.push(net),
                    ConnectPattern::Host(host) => hosts.push(host),
                }
            }
            (nets, hosts)
        };
        let (allow, allow_hosts) = split(rules.allow);
        let (deny, deny_hosts) = split(rules.deny);
        let connect = Rules {
            default: rules.default,
            allow,
            deny,
            protect: Vec::new(),
        };
        let hosts = Hosts {
            allow: allow_hosts,
            deny: deny_hosts,
        };
        (connect, hosts)
    }

    fn rules<P>(
        &mut self,
        node: &Node,
        section: &str,
        items: &str,
        parse: fn(&str) -> Result<P, PatternError>,
    ) -> Rules<(P, Pos)> {
        let mut rules = Rules::default();
        let Some(fields) = self.fields(node, &format!("`{section}`"), RULES_KEYS) else {
            return rules;
        };
        for (key, _, value) in fields {
            match key {
                "default" => {
                    let options = [("allow", Fallback::Allow), ("deny", Fallback::Deny)];
                    if let Some(d) = self.choice(value, &format!("{section}.default"), &options) {
                        rules.default = d;
                    }
                }
                "allow" => rules.allow = self.patterns(value, section, key, items, parse),
                "deny" => rules.deny = self.patterns(value, section, key, items, parse),
                _ => {}
            }
        }
        rules
    }

    fn patterns<P>(
        &mut self,
        node: &Node,
        section: &str,
        key: &str,
        items: &str,
        parse: fn(&str) -> Result<P, PatternError>,
    ) -> Vec<(P, Pos)> {
        let Value::Seq(list) = &node.value else {
            self.shape_error(
                node,
                format!(
                    "expected a list of {items} for `{section}.{key}`, found {}",
                    node.kind()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in list {
            let Value::Str(text) = &item.value else {
                // An unquoted `[v6]:port` parses as a YAML list or mapping.
                let hint = if section.starts_with("network")
                    && section != "network.unix"
                    && matches!(item.value, Value::Seq(_) | Value::Map(_))
                {
                    " (quote bracketed IPv6 patterns, as in \"[2001:db8::/32]:443\")"
                } else {
                    ""
                };
                self.shape_error(
                    item,
                    format!(
                        "expected one of the {items} of `{section}.{key}`, found {}{hint}",
                        item.kind()
                    ),
                );
                continue;
            };
            match parse(text) {
                Ok(p) => out.push((p, item.pos)),
                Err(e) => self.error(item.pos, e.to_string()),
            }
        }
        out
    }
}

/// `rules` without where each pattern was written.
fn without_sites<P>(rules: Rules<(P, Pos)>) -> Rules<P> {
    Rules {
        default: rules.default,
        allow: rules.allow.into_iter().map(|(p, _)| p).collect(),
        deny: rules.deny.into_iter().map(|(p, _)| p).collect(),
        protect: Vec::new(),
    }
}

/// Why `text` is not a valid label name, if it is not: the rule policies' `labels:` follow,
/// for labels named elsewhere (a pod's annotation).
pub fn label_problem(text: &str) -> Option<String> {
    identifier_problem(text, MAX_LABEL_LEN)
}

/// Why `text` is not a valid policy name or label, if it is not. Labels name cgroup
/// directories, so they must be a single safe path component.
fn identifier_problem(text: &str, max: usize) -> Option<String> {
    if text.is_empty() {
        return Some("must not be empty".into());
    }
    if text.len() > max {
        return Some(format!(
            "{} characters long; at most {max} are allowed",
            text.chars().count()
        ));
    }
    if text == "." || text == ".." {
        return Some("`.` and `..` are not allowed".into());
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "character {c:?} not allowed; use letters, digits, `.`, `_` and `-`"
        ));
    }
    None
}
