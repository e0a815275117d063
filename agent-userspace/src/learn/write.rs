//! The policy a learning run calls for, as YAML text that `actgate check` accepts and a
//! person can review: every rule says how often the run used it, a tree why it was folded
//! and what it covers, and whatever needs a person's decision is listed at the top under
//! `# REVIEW:`.
//!
//! What it allows and denies:
//! - `exec`, `files.write`, `files.delete`, `network.connect`, `network.unix` and
//!   `network.listen`: `default: deny`, and what the run used (folded, see `fold`).
//! - `files.read`: `default: allow`. Reads are many and differ from run to run (`/proc/PID`,
//!   caches, whatever an interpreter imports), so a list of them would deny the next run.
//!   What reads must not reach is denied instead: the sensitive locations of the run's home
//!   (`fold::SENSITIVE_HOME`), the password hashes, and every other sensitive file the run
//!   read. A person decides about those, which the top of the file lists.
//! - The socket kinds, capabilities and namespaces the run used are allowed, with a note.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use agent_common::{ANONYMOUS, Action, SocketKind, capability_by_name};
use agent_policy::{Fallback, Mode, NetPattern, PathPattern, parse_host, parse_path, parse_unix};

use crate::dns::internal;

use super::{
    fold::{self, Context, Evidence, Folded, SENSITIVE_FILES, SENSITIVE_HOME, SIBLINGS, Scope},
    observe::Observations,
};

/// How the written policy is named and enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnOptions {
    /// The policy's `name`.
    pub name: String,
    /// `enforce` unless asked otherwise: the point of learning is a policy that confines.
    pub mode: Mode,
}

impl LearnOptions {
    /// A policy named after its label, in enforce mode.
    pub fn new(label: &str) -> Self {
        LearnOptions {
            name: label.to_owned(),
            mode: Mode::Enforce,
        }
    }
}

/// Actions no policy can allow (see the README): a run that tried them failed there, and
/// will again.
const ALWAYS_DENIED: &[Action] = &[Action::Bpf, Action::Signal, Action::Ptrace, Action::Cgroup];

/// Comment lines are wrapped to this width.
const WIDTH: usize = 96;

/// One entry of an allow or deny list.
struct Item {
    /// The pattern, as YAML.
    text: String,
    comment: String,
}

impl Item {
    fn new(pattern: &str, comment: String) -> Self {
        Item {
            text: scalar(pattern),
            comment,
        }
    }
}

/// One section with `default`, `allow` and `deny`.
struct Section {
    default: Fallback,
    allow: Vec<Item>,
    deny: Vec<Item>,
    /// Why the section is as it is, when that isn't obvious.
    note: Option<&'static str>,
}

impl Section {
    fn deny_by_default() -> Self {
        Section {
            default: Fallback::Deny,
            allow: Vec::new(),
            deny: Vec::new(),
            note: None,
        }
    }
}

/// The YAML text of the policy `obs` calls for.
pub fn write_policy(obs: &Observations, opts: &LearnOptions) -> String {
    let mut w = Writer::default();
    let run = &obs.run;
    let sensitive_paths = obs.sensitive_paths();
    let cx = Context {
        run,
        sensitive: &sensitive_paths,
    };
    let mut review = Vec::new();
    w.comment(
        0,
        &format!(
            "Learnt by `actgate learn` from {} of label `{}` (working directory {}). Every \
             rule says how often the run used it; a tree (`dir/**`) also why the paths were \
             folded into it and one of them. `actgate diff` replays a run's events against \
             this file.",
            plural(obs.events, "event", "events"),
            commented(&run.label),
            commented(&run.workdir)
        ),
    );
    if run.dropped > 0 {
        review.push(format!(
            "{} dropped while learning (the kernel's ring buffer was full). \
             What they recorded is missing below, so this policy may deny part of the same \
             run: learn again, or replay a run's events with `actgate diff`.",
            plural(run.dropped, "event was", "events were")
        ));
    }

    let exec_targets: BTreeMap<&str, u64> = obs
        .targets(Action::Exec)
        .into_iter()
        .filter(|(t, _)| *t != ANONYMOUS)
        .collect();
    let mut exec = path_section(
        &fold::fold(&exec_targets, &cx, Scope::Execs),
        "exec",
        &mut review,
    );
    if let Some(n) = obs.targets(Action::Exec).get(ANONYMOUS) {
        exec.allow.push(Item::new(ANONYMOUS, uses(*n)));
        review.push(format!(
            "The run executed or mapped files with no path on disk {} (memfd, O_TMPFILE, \
             deleted files; JITs do this), so `exec.allow` names `anonymous`. Any binary can \
             be copied into such a file: remove it unless the workload needs it.",
            times(*n)
        ));
    }
    let write = path_section(
        &fold::fold(&obs.targets(Action::FileWrite), &cx, Scope::Writes),
        "files.write",
        &mut review,
    );
    let delete = path_section(
        &fold::fold(&obs.targets(Action::FileDelete), &cx, Scope::Writes),
        "files.delete",
        &mut review,
    );
    let read = read_section(obs, &mut review);
    let connect = connect_section(obs, &mut review);
    let unix = unix_section(obs, &mut review);
    let listen = listen_section(obs, &mut review);

    for (action, n) in obs.unjudged() {
        review.push(format!(
            "The kernel could not judge {} of `{action}` (reason `unjudged`, see \
             `actgate_kernel_errors_total`); they were refused, and will be again.",
            plural(*n, "action", "actions")
        ));
    }
    for action in ALWAYS_DENIED {
        let n: u64 = obs.uses(*action).values().sum();
        if n > 0 {
            review.push(format!(
                "The run tried `{}` {}, which actgate refuses to every label whatever its \
                 policy: the same run will fail there again.",
                action.as_str(),
                times(n)
            ));
        }
    }
    let namespaces: u64 = obs.uses(Action::Namespace).values().sum();
    if namespaces > 0 {
        review.push(format!(
            "The run created namespaces or mounted {}, so `process.namespaces` is `allow`. \
             Within its own mounts the label's path rules no longer hold (see the README): \
             prefer a label of its own for the tool that needs it.",
            times(namespaces)
        ));
    }

    for item in &review {
        w.comment(0, &format!("REVIEW: {item}"));
    }
    w.line(0, &format!("name: {}", scalar(&opts.name)));
    w.line(0, &format!("labels: [{}]", scalar(&run.label)));
    let mode = match opts.mode {
        Mode::Enforce => "enforce",
        Mode::Audit => "audit",
    };
    w.line(0, &format!("mode: {mode}"));
    w.section(0, "exec", &exec);
    w.line(0, "files:");
    w.section(1, "write", &write);
    w.section(1, "read", &read);
    w.section(1, "delete", &delete);
    w.line(0, "network:");
    w.section(1, "connect", &connect);
    w.section(1, "unix", &unix);
    w.section(1, "listen", &listen);
    for kind in SocketKind::ALL {
        let n: u64 = obs
            .uses(Action::Socket)
            .iter()
            .filter(|(s, _)| s.target == kind.as_str())
            .map(|(_, n)| n)
            .sum();
        if n > 0 {
            w.item_line(1, &format!("{}: allow", kind.as_str()), &uses(n));
        }
    }
    let capabilities: Vec<(&str, u64)> = obs
        .uses(Action::Capability)
        .iter()
        .filter(|(s, _)| capability_by_name(&s.target).is_some())
        .map(|(s, n)| (s.target.as_str(), *n))
        .collect();
    if !capabilities.is_empty() || namespaces > 0 {
        w.line(0, "process:");
    }
    if !capabilities.is_empty() {
        w.line(1, "capabilities:");
        let items: Vec<Item> = capabilities
            .iter()
            .map(|(cap, n)| Item::new(cap, uses(*n)))
            .collect();
        w.items(2, &items);
    }
    if namespaces > 0 {
        w.item_line(
            1,
            "namespaces: allow",
            &format!("REVIEW: {}", uses(namespaces)),
        );
    }
    w.text
}

/// "1 use", "12 uses".
fn uses(n: u64) -> String {
    plural(n, "use", "uses")
}

/// "once", "12 times".
fn times(n: u64) -> String {
    if n == 1 {
        "once".to_owned()
    } else {
        format!("{n} times")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Text from events made safe for a comment: no line breaks or other control characters.
fn commented(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A YAML scalar for `text`: plain when it reads back as the same string (paths, addresses,
/// names), double-quoted otherwise. A JSON string is a valid YAML double-quoted scalar.
fn scalar(text: &str) -> String {
    let first_ok = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.'));
    // `*` only starts an alias; `/usr/lib/**` is a plain string.
    let rest_ok = text.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '/' | '_' | '.' | '-' | '+' | '~' | ':' | '@' | '*')
    });
    let special = matches!(text, "null" | "Null" | "NULL") || text.ends_with(':');
    if first_ok && rest_ok && !special {
        text.to_owned()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
    }
}

/// The comment of a folded path rule.
fn rule_comment(rule: &fold::Rule) -> String {
    let Some(evidence) = rule.evidence else {
        return uses(rule.uses);
    };
    let why = match evidence {
        Evidence::Created => "the workload created it".to_owned(),
        Evidence::Siblings(n) => format!("{n} entries under it"),
        Evidence::SystemTree => "a system tree".to_owned(),
        Evidence::TempDir => "a temp directory: scratch names change from run to run".to_owned(),
        Evidence::Unnameable => "paths no exact rule can name".to_owned(),
    };
    format!(
        "{} of {} ({why}), e.g. {}",
        uses(rule.uses),
        plural(rule.paths as u64, "path", "paths"),
        commented(&rule.example)
    )
}

/// A `default: deny` path section allowing what `folded` holds, and denying its sensitive
/// paths (for the record: the default denies them too) with a note at the top.
fn path_section(folded: &Folded, key: &str, review: &mut Vec<String>) -> Section {
    let mut section = Section::deny_by_default();
    section.allow = folded
        .rules
        .iter()
        .map(|r| Item::new(&r.pattern.to_string(), rule_comment(r)))
        .collect();
    note_sensitive(&folded.sensitive, key, review);
    section.deny = folded
        .sensitive
        .iter()
        .filter(|(p, _, _)| parse_path(p).is_ok())
        .map(|(p, n, why)| Item::new(p, format!("REVIEW: {why}, {}", uses(*n))))
        .collect();
    note_unnameable(&folded.unnameable, key, review);
    section
}

/// A top-of-file note listing the sensitive paths a section's action used.
fn note_sensitive(sensitive: &[(String, u64, &'static str)], key: &str, review: &mut Vec<String>) {
    if sensitive.is_empty() {
        return;
    }
    let list: Vec<String> = sensitive
        .iter()
        .map(|(p, n, why)| format!("{} ({why}, {})", commented(p), uses(*n)))
        .collect();
    review.push(format!(
        "The run used sensitive files under `{key}`; they are denied below. Decide whether \
         the workload needs them: {}.",
        list.join("; ")
    ));
}

fn note_unnameable(paths: &[(String, u64)], key: &str, review: &mut Vec<String>) {
    if paths.is_empty() {
        return;
    }
    let list: Vec<String> = paths
        .iter()
        .map(|(p, n)| format!("{} ({})", commented(p), uses(*n)))
        .collect();
    review.push(format!(
        "No rule of `{key}` can name these targets (wildcard characters or too long), and \
         no directory above them may be allowed as a whole, so they are left out: {}.",
        list.join("; ")
    ));
}

/// `files.read`: `default: allow`, denying the sensitive locations and every sensitive
/// file the run read (see the module's documentation).
fn read_section(obs: &Observations, review: &mut Vec<String>) -> Section {
    let home = obs.run.home.as_deref();
    let mut denied: Vec<PathPattern> = SENSITIVE_FILES
        .iter()
        .map(|f| PathPattern::Exact((*f).to_owned()))
        .collect();
    if let Some(home) = home {
        denied.extend(SENSITIVE_HOME.iter().map(|(name, dir)| {
            let path = format!("{home}/{name}");
            if *dir {
                PathPattern::Tree(path)
            } else {
                PathPattern::Exact(path)
            }
        }));
    }
    let reads = obs.targets(Action::FileRead);
    let sensitive: Vec<(String, u64, &'static str)> = reads
        .iter()
        .filter_map(|(p, n)| Some(((*p).to_owned(), *n, fold::sensitive(p, home)?)))
        .collect();
    note_sensitive(&sensitive, "files.read", review);
    let mut unnameable = Vec::new();
    for (path, _, _) in &sensitive {
        if denied.iter().any(|d| d.matches(path)) {
            continue;
        }
        match parse_path(path) {
            Ok(p) => denied.push(p),
            Err(_) => {
                unnameable.push((path.clone(), reads.get(path.as_str()).copied().unwrap_or(0)))
            }
        }
    }
    note_unnameable(&unnameable, "files.read.deny", review);
    let deny = denied
        .iter()
        .map(|d| {
            let n: u64 = sensitive
                .iter()
                .filter(|(p, _, _)| d.matches(p))
                .map(|(_, n, _)| n)
                .sum();
            let comment = match n {
                0 => "sensitive; not read during the run".to_owned(),
                n => format!("REVIEW: sensitive, {}", uses(n)),
            };
            Item::new(&d.to_string(), comment)
        })
        .collect();
    Section {
        default: Fallback::Allow,
        allow: Vec::new(),
        deny,
        note: Some(
            "Reads are many and differ from run to run, so they are allowed but for the \
             sensitive locations below.",
        ),
    }
}

/// A destination of `network.connect` or `network.listen`: a name or an address, and a port
/// (0 for none).
type Destination = (String, u16);

/// One destination rule: uses, and an address the name stood for.
#[derive(Default)]
struct DestinationUses {
    uses: u64,
    example: Option<String>,
    /// The name an address rule is there for (see `connect_section`).
    guard: Option<String>,
}

/// The pattern text of an address (a single host) and port.
fn address_pattern(ip: IpAddr, port: u16) -> String {
    NetPattern {
        net: ipnet::IpNet::from(ip.to_canonical()),
        port: (port != 0).then_some(port),
    }
    .to_string()
}

/// Folds ports: a name or address the run reached on at least `SIBLINGS` ports (a test
/// server on ephemeral ports, say) is allowed on every port, since the next run picks
/// others. Each rule comes with its uses and, when folded, how many ports it stands for.
fn fold_ports(
    seen: BTreeMap<Destination, DestinationUses>,
) -> Vec<(String, DestinationUses, Option<usize>)> {
    let mut ports: BTreeMap<String, usize> = BTreeMap::new();
    for (name, _) in seen.keys() {
        *ports.entry(name.clone()).or_default() += 1;
    }
    let mut rules: BTreeMap<String, (DestinationUses, Option<usize>)> = BTreeMap::new();
    for ((name, port), u) in seen {
        let wide = ports.get(&name).copied().filter(|n| *n >= SIBLINGS);
        let text = match (name.parse::<IpAddr>(), wide) {
            (Ok(ip), Some(_)) => address_pattern(ip, 0),
            (Ok(ip), None) => address_pattern(ip, port),
            (Err(_), Some(_)) => name,
            (Err(_), None) => format!("{name}:{port}"),
        };
        let (rule, _) = rules
            .entry(text)
            .or_insert((DestinationUses::default(), wide));
        rule.uses += u.uses;
        rule.example = rule.example.take().or(u.example);
        rule.guard = rule.guard.take().or(u.guard);
    }
    rules
        .into_iter()
        .map(|(t, (u, wide))| (t, u, wide))
        .collect()
}

/// The comment of a destination rule.
fn destination_comment(u: &DestinationUses, ports: Option<usize>) -> String {
    let mut text = uses(u.uses);
    if let Some(n) = ports {
        text.push_str(&format!(" on {n} ports"));
    }
    if let Some(example) = &u.example {
        text.push_str(&format!(", e.g. {}", commented(example)));
    }
    if let Some(name) = &u.guard {
        text.push_str(&format!(
            ", as {}: the rebinding guard keeps an address inside only when an address rule \
             allows it",
            commented(name)
        ));
    }
    text
}

/// `network.connect`: `default: deny`, allowing each name the label looked up on the ports it
/// used, and each address it reached without a name.
fn connect_section(obs: &Observations, review: &mut Vec<String>) -> Section {
    let mut seen: BTreeMap<Destination, DestinationUses> = BTreeMap::new();
    let mut unnameable = Vec::new();
    for (s, n) in obs.uses(Action::Connect) {
        let Ok(addr) = s.target.parse::<SocketAddr>() else {
            unnameable.push((s.target.clone(), *n));
            continue;
        };
        let (key, example) = match &s.host {
            // The resolver refuses a name no rule allows, so an address rule can't stand in
            // for one that no rule can spell.
            Some(h) if parse_host(&format!("{h}:{}", addr.port())).is_err() => {
                unnameable.push((format!("{h} ({})", s.target), *n));
                continue;
            }
            Some(h) => (h.clone(), Some(s.target.clone())),
            None => (addr.ip().to_canonical().to_string(), None),
        };
        let ip = addr.ip().to_canonical();
        if s.host.is_some() && internal(ip) {
            // The rebinding guard drops answers of public names that point inside, unless an
            // address rule allows the address.
            let u = seen.entry((ip.to_string(), addr.port())).or_default();
            u.uses += n;
            u.guard = s.host.clone();
        }
        let u = seen.entry((key, addr.port())).or_default();
        u.uses += n;
        u.example = u.example.take().or(example);
    }
    destinations_section(seen, &unnameable, "network.connect", review)
}

/// `network.listen`: `default: deny`, allowing the addresses the run listened on.
fn listen_section(obs: &Observations, review: &mut Vec<String>) -> Section {
    let mut seen: BTreeMap<Destination, DestinationUses> = BTreeMap::new();
    let mut unnameable = Vec::new();
    for (s, n) in obs.uses(Action::Listen) {
        match s.target.parse::<SocketAddr>() {
            Ok(addr) => {
                seen.entry((addr.ip().to_canonical().to_string(), addr.port()))
                    .or_default()
                    .uses += n;
            }
            Err(_) => unnameable.push((s.target.clone(), *n)),
        }
    }
    destinations_section(seen, &unnameable, "network.listen", review)
}

/// A `default: deny` section of `key` allowing the destinations `seen` (ports folded), with
/// the targets no rule can name left to the review.
fn destinations_section(
    seen: BTreeMap<Destination, DestinationUses>,
    unnameable: &[(String, u64)],
    key: &str,
    review: &mut Vec<String>,
) -> Section {
    note_unnameable(unnameable, key, review);
    let mut section = Section::deny_by_default();
    section.allow = fold_ports(seen)
        .iter()
        .map(|(text, u, ports)| Item::new(text, destination_comment(u, *ports)))
        .collect();
    section
}

/// `network.unix`: `default: deny`, allowing each socket the run reached, by name.
fn unix_section(obs: &Observations, review: &mut Vec<String>) -> Section {
    let mut section = Section::deny_by_default();
    let mut unnameable = Vec::new();
    for (s, n) in obs.uses(Action::UnixConnect) {
        if parse_unix(&s.target).is_ok() {
            section.allow.push(Item::new(&s.target, uses(*n)));
        } else {
            unnameable.push((s.target.clone(), *n));
        }
    }
    note_unnameable(&unnameable, "network.unix", review);
    section
}

/// The text being written.
#[derive(Default)]
struct Writer {
    text: String,
}

impl Writer {
    fn line(&mut self, indent: usize, text: &str) {
        self.text.push_str(&"  ".repeat(indent));
        self.text.push_str(text);
        self.text.push('\n');
    }

    /// `text` as comment lines, wrapped at `WIDTH`; continuation lines indented.
    fn comment(&mut self, indent: usize, text: &str) {
        let lead = "  ".repeat(indent);
        let mut current = format!("{lead}#");
        for word in text.split_whitespace() {
            let first = current.len() == lead.len() + 1;
            if !first && current.len() + 1 + word.len() > WIDTH {
                self.text.push_str(&current);
                self.text.push('\n');
                current = format!("{lead}#  ");
            } else {
                current.push(' ');
            }
            current.push_str(word);
        }
        self.text.push_str(&current);
        self.text.push('\n');
    }

    /// A line with a comment after it.
    fn item_line(&mut self, indent: usize, text: &str, comment: &str) {
        self.line(indent, &format!("{text}  # {comment}"));
    }

    /// List items, their comments aligned.
    fn items(&mut self, indent: usize, items: &[Item]) {
        let width = items
            .iter()
            .map(|i| i.text.len())
            .max()
            .unwrap_or(0)
            .min(60);
        for item in items {
            let text = format!("- {:width$}", item.text);
            self.item_line(indent, &text, &item.comment);
        }
    }

    fn section(&mut self, indent: usize, key: &str, section: &Section) {
        self.line(indent, &format!("{key}:"));
        if let Some(note) = section.note {
            self.comment(indent + 1, note);
        }
        let default = match section.default {
            Fallback::Allow => "allow",
            Fallback::Deny => "deny",
        };
        self.line(indent + 1, &format!("default: {default}"));
        for (list, items) in [("allow", &section.allow), ("deny", &section.deny)] {
            if !items.is_empty() {
                self.line(indent + 1, &format!("{list}:"));
                self.items(indent + 2, items);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_policy::Policy;

    use super::*;
    use crate::learn::{
        diff,
        events::{
            Event,
            tests::{events, line},
        },
        observe::{Run, tests::run},
    };

    /// A run's events: its own commands, libraries, a build directory, temp files, reads
    /// everywhere, names and addresses, sockets and grants.
    fn busy() -> Vec<String> {
        let mut lines = vec![
            line("exec", "/usr/bin/git", None),
            line("exec", "/usr/bin/git", None),
            line("exec", "/usr/bin/python3.11", None),
            line("exec", "/usr/lib/x86_64-linux-gnu/libc.so.6", None),
            line("exec", "/usr/lib/x86_64-linux-gnu/libz.so.1", None),
            line("exec", "/home/u/proj/build/app", None),
            line("exec", ANONYMOUS, None),
            line("file_write", "/home/u/proj/build", None),
            line("file_write", "/home/u/proj/notes.md", None),
            line("file_write", "/dev/null", None),
            line("file_write", "/home/u/.gitconfig", None),
            line("file_write", "/tmp/job-1/out.txt", None),
            line("file_delete", "/tmp/job-1/out.txt", None),
            line("file_read", "/etc/ld.so.cache", None),
            line("file_read", "/proc/4242/status", None),
            line("connect", "140.82.112.5:443", Some("github.com")),
            line("connect", "140.82.112.6:443", Some("github.com")),
            line("connect", "192.0.2.10:8080", None),
            line("connect", "10.1.2.3:443", Some("vpn.example.com")),
            line("connect", "[2001:db8::1]:443", None),
            line("unix_connect", "/run/nscd/socket", None),
            line("unix_connect", "@/tmp/.X11-unix/X0", None),
            line("listen", "0.0.0.0:8000", None),
            line("listen", "[::]:0", None),
            line("socket", "raw", None),
            line("capability", "CAP_NET_RAW", None),
        ];
        for i in 0..10 {
            lines.push(line(
                "file_write",
                &format!("/home/u/proj/build/obj{i}.o"),
                None,
            ));
            lines.push(line(
                "file_write",
                &format!("/home/u/proj/src/m{i}.rs"),
                None,
            ));
            lines.push(line("connect", &format!("127.0.0.1:{}", 40000 + i), None));
        }
        lines
    }

    /// The policy learnt from `lines` under `run`, its text and what parsing it found.
    fn learn(lines: &[String], run: Run) -> (String, Policy, Vec<Event>) {
        let events = events(lines);
        let mut obs = Observations::new(run);
        for e in &events {
            obs.record(e);
        }
        let text = write_policy(&obs, &LearnOptions::new("agent"));
        let (mut policies, problems) = agent_policy::parse_str(Path::new("learnt.yaml"), &text);
        assert_eq!(problems, vec![], "{text}");
        (text, policies.remove(0), events)
    }

    /// The events `policy` refuses, as `action target`.
    fn refused(policy: &Policy, events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter(|e| diff::judge(policy, e).unwrap().verdict != agent_common::Verdict::Allow)
            .map(|e| format!("{} {}", e.action.as_str(), e.target))
            .collect()
    }

    #[test]
    fn the_learnt_policy_lets_the_same_run_do_everything_again() {
        let mut r = run();
        r.created_dirs.insert("/home/u/proj/build".into());
        r.created_dirs.insert("/tmp/job-1".into());
        let (text, policy, events) = learn(&busy(), r);
        assert_eq!(refused(&policy, &events), Vec::<String>::new(), "{text}");
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.exec.default, Fallback::Deny);
        assert_eq!(policy.file_write.default, Fallback::Deny);
        assert_eq!(policy.connect.default, Fallback::Deny);
        // Tight: what the run didn't do stays denied.
        let tighter = [
            line("exec", "/usr/bin/curl", None),
            line("file_write", "/home/u/.bashrc", None),
            line("file_write", "/home/u/proj/other", None),
            line("file_read", "/home/u/.ssh/id_ed25519", None),
            line("connect", "140.82.112.5:22", Some("github.com")),
            line("connect", "192.0.2.11:8080", None),
            line("unix_connect", "/run/docker.sock", None),
            line("socket", "packet", None),
        ];
        assert_eq!(
            refused(&policy, &events_of(&tighter)).len(),
            tighter.len(),
            "{text}"
        );
    }

    #[test]
    fn a_rule_taken_out_of_the_learnt_policy_refuses_what_it_allowed() {
        let (text, _, events) = learn(&busy(), run());
        let edited: String = text
            .lines()
            .filter(|l| !l.contains("- /usr/bin/git ") && !l.contains("- github.com:443 "))
            .map(|l| format!("{l}\n"))
            .collect();
        let (mut policies, problems) = agent_policy::parse_str(Path::new("edited.yaml"), &edited);
        assert_eq!(problems, vec![], "{edited}");
        let set = agent_policy::PolicySet {
            policies: vec![policies.remove(0)],
            sites: Vec::new(),
        };
        let replay = diff::replay(&set, &events).unwrap();
        assert_eq!(
            diff::tests::why(&replay),
            [
                "exec /usr/bin/git: exec: default: deny",
                "exec /usr/bin/git: exec: default: deny",
                "connect 140.82.112.5:443: network.connect: default: deny",
                "connect 140.82.112.6:443: network.connect: default: deny",
            ]
        );
    }

    #[test]
    fn rules_say_their_uses_and_trees_their_evidence_and_an_example() {
        let mut r = run();
        r.created_dirs.insert("/home/u/proj/build".into());
        let (text, _, _) = learn(&busy(), r);
        for want in [
            "    - /usr/bin/git ",
            "# 2 uses\n",
            "    - /usr/lib/**",
            "# 2 uses of 2 paths (a system tree), e.g. /usr/lib/x86_64-linux-gnu/libc.so.6\n",
            "      - /home/u/proj/build/**",
            "(the workload created it), e.g. /home/u/proj/build/app\n",
            "      - /home/u/proj/src/**",
            "# 10 uses of 10 paths (10 entries under it), e.g. /home/u/proj/src/m0.rs\n",
            "      - /home/u/.gitconfig",
            "      - github.com:443",
            "# 2 uses, e.g. 140.82.112.5:443\n",
            "      - \"[2001:db8::1]:443\"",
            "      - 127.0.0.1 ",
            "# 10 uses on 10 ports\n",
            "      - \"@/tmp/.X11-unix/X0\"",
            "      - \"::\" ",
            "  raw: allow  # 1 use\n",
            "    - CAP_NET_RAW  # 1 use\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(text.contains("mode: enforce\n"), "{text}");
    }

    #[test]
    fn sensitive_reads_are_called_out_at_the_top_and_denied() {
        let lines = [
            line("file_read", "/home/u/.ssh/id_ed25519", None),
            line("file_read", "/home/u/proj/.env", None),
            line("file_read", "/home/u/proj/src/main.rs", None),
        ];
        let (text, policy, events) = learn(&lines, run());
        let review = unwrapped(&text);
        assert!(
            review.contains("# REVIEW: The run used sensitive files under `files.read`"),
            "{text}"
        );
        assert!(
            review.contains("/home/u/.ssh/id_ed25519 (credentials in a home directory, 1 use)"),
            "{text}"
        );
        assert!(review.contains("/home/u/proj/.env"), "{text}");
        assert_eq!(
            refused(&policy, &events),
            [
                "file_read /home/u/.ssh/id_ed25519",
                "file_read /home/u/proj/.env"
            ]
        );
        // Unread sensitive locations are denied too, so the reviewer sees them.
        let unread = events_of(&[line("file_read", "/home/u/.aws/credentials", None)]);
        assert_eq!(refused(&policy, &unread).len(), 1);
        assert!(text.contains("/home/u/.aws/**"), "{text}");
    }

    fn events_of(lines: &[String]) -> Vec<Event> {
        events(lines)
    }

    /// `text` with wrapped comments joined up again.
    fn unwrapped(text: &str) -> String {
        text.replace("\n#  ", " ")
    }

    #[test]
    fn dropped_events_are_said_at_the_top() {
        let mut r = run();
        r.dropped = 3;
        let (text, _, _) = learn(&[line("exec", "/usr/bin/git", None)], r);
        assert!(
            text.starts_with("# Learnt by `actgate learn` from 1 event of label `agent`"),
            "{text}"
        );
        assert!(
            unwrapped(&text).contains("# REVIEW: 3 events were dropped while learning"),
            "{text}"
        );
        let (text, _, _) = learn(&[line("exec", "/usr/bin/git", None)], run());
        assert!(!text.contains("dropped"), "{text}");
    }

    #[test]
    fn awkward_targets_are_quoted_or_left_out_and_the_policy_still_parses() {
        let odd = [
            "/home/u/proj/a file with spaces",
            "/home/u/proj/quote\"and\\backslash",
            "/home/u/proj/new\nline",
            "/home/u/proj/#hash",
            "/home/u/proj/colon: space",
            "/home/u/proj/ünï",
            "/home/u/proj/star*",
            "/opt/x/brace{1}",
            "/home/u/proj/-dash",
            "/null",
        ];
        let mut lines: Vec<String> = odd.iter().map(|p| line("file_write", p, None)).collect();
        lines.push(line("connect", "10.0.0.1:443", Some("null")));
        lines.push(line("connect", "10.0.0.2:443", Some("bad_name-.com")));
        lines.push(line("unix_connect", "@name with spaces", None));
        lines.push(line("unix_connect", "@ends-in**", None));
        lines.push(line("connect", "not an address", None));
        lines.push(line("capability", "CAP_NOT_A_THING", None));
        let (text, policy, events) = learn(&lines, run());
        // The unnameable `/opt` one and the broken ones are listed for a person.
        let review = unwrapped(&text);
        assert!(review.contains("/opt/x/brace{1} (1 use)"), "{text}");
        assert!(review.contains("not an address (1 use)"), "{text}");
        assert!(
            review.contains("bad_name-.com (10.0.0.2:443) (1 use)"),
            "{text}"
        );
        assert!(review.contains("@ends-in** (1 use)"), "{text}");
        let refused = refused(
            &policy,
            &events
                .into_iter()
                .filter(|e| e.target != "not an address" && e.target != "CAP_NOT_A_THING")
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            refused,
            [
                "file_write /opt/x/brace{1}",
                "connect 10.0.0.2:443",
                "unix_connect @ends-in**"
            ],
            "{text}"
        );
    }

    #[test]
    fn several_runs_write_policies_that_parse() {
        let lines = busy();
        for n in [0, 1, 5, lines.len()] {
            for home in [None, Some("/root".to_owned())] {
                for workdir in ["/", "/home/u", "/home/u/proj", "/tmp"] {
                    let r = Run {
                        workdir: workdir.into(),
                        home: home.clone(),
                        dropped: n as u64,
                        ..run()
                    };
                    let (text, policy, events) = learn(&lines[..n], r);
                    assert_eq!(refused(&policy, &events), Vec::<String>::new(), "{text}");
                }
            }
        }
    }
}
