//! Parsing and validation through the public API: accepted forms, and for every kind of
//! problem, that it is reported at the right line and column.

use std::path::{Path, PathBuf};

use agent_policy::{Fallback, HostPattern, Mode, NetPattern, PathPattern, load_path, parse_str};

fn parse(text: &str) -> (Vec<agent_policy::Policy>, Vec<String>) {
    let (policies, diags) = parse_str(Path::new("p.yaml"), text);
    let diags = diags
        .iter()
        .map(|d| {
            assert_eq!(d.file, Path::new("p.yaml"));
            format!("{}:{}: {}", d.line, d.column, d.message)
        })
        .collect();
    (policies, diags)
}

/// Asserts the text yields exactly these problems, each given as `line:col` and a piece
/// of its message.
#[track_caller]
fn expect(text: &str, expected: &[(&str, &str)]) {
    let (policies, diags) = parse(text);
    assert_eq!(diags.len(), expected.len(), "got {diags:#?}");
    for (d, (at, piece)) in diags.iter().zip(expected) {
        assert!(d.starts_with(&format!("{at}: ")), "expected at {at}: {d}");
        assert!(d.contains(piece), "expected {piece:?} in {d}");
    }
    // Only the policies without problems come back.
    assert!(expected.is_empty() || policies.len() < text.matches("name:").count().max(1));
}

const FULL: &str = r#"
name: coding-agent
labels: [coding-agent]
mode: enforce
exec:
  default: allow
  allow: []
  deny: [/usr/bin/nc, /opt/tools/**]
files:
  write:
    default: deny
    allow: [/workspace/**, /tmp/**, /dev/null]
    deny: [/workspace/.git/hooks/**]
  read:
    default: allow
    deny: [/etc/shadow, /root/.ssh/**]
network:
  connect:
    default: deny
    allow: ["127.0.0.0/8", "10.20.0.0/16:443", "[2001:db8::/32]:443", "::1/128"]
    deny: ["169.254.169.254/32"]
"#;

#[test]
fn parses_the_documented_example() {
    let (policies, diags) = parse(FULL);
    assert!(diags.is_empty(), "{diags:#?}");
    let [p] = policies.as_slice() else {
        panic!("{policies:?}")
    };
    assert_eq!(p.name, "coding-agent");
    assert_eq!(p.labels, ["coding-agent"]);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.line, 2);
    assert_eq!(p.exec.default, Fallback::Allow);
    assert_eq!(
        p.exec.deny,
        [
            PathPattern::Exact("/usr/bin/nc".into()),
            PathPattern::Tree("/opt/tools".into())
        ]
    );
    assert_eq!(p.file_write.default, Fallback::Deny);
    assert_eq!(p.file_write.allow.len(), 3);
    assert_eq!(p.file_read.deny.len(), 2);
    assert_eq!(p.connect.default, Fallback::Deny);
    let allow: Vec<String> = p.connect.allow.iter().map(NetPattern::to_string).collect();
    assert_eq!(
        allow,
        [
            "127.0.0.0/8",
            "10.20.0.0/16:443",
            "[2001:db8::/32]:443",
            "::1"
        ]
    );
}

#[test]
fn sections_are_optional() {
    let (policies, diags) = parse("name: a\nlabels: [a]\n");
    assert!(diags.is_empty(), "{diags:?}");
    let p = &policies[0];
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.exec, Default::default());
    assert_eq!(p.connect.default, Fallback::Allow);
    let (policies, diags) =
        parse("name: a\nlabels: [a]\nmode: audit\nfiles:\n  read:\n    allow: [/x]\nnetwork: {}\n");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(policies[0].mode, Mode::Audit);
    assert_eq!(policies[0].file_read.allow.len(), 1);
}

#[test]
fn several_documents_and_empty_ones() {
    let text =
        "---\n# nothing\n---\nname: a\nlabels: [a]\n---\n---\nname: b\nlabels: [b, c]\n...\n";
    let (policies, diags) = parse(text);
    assert!(diags.is_empty(), "{diags:?}");
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(policies[1].line, 8);
    assert_eq!(parse("").0.len(), 0);
    assert_eq!(parse("# only a comment\n").1.len(), 0);
}

#[test]
fn unknown_keys_name_the_allowed_ones() {
    expect(
        "name: a\nlabels: [a]\nexecs: {}\nfiles:\n  writes: {}\nnetwork:\n  connect:\n    defualt: deny\n",
        &[
            (
                "3:1",
                "unknown key `execs` in a policy; allowed keys: name, labels, cgroups, mode, exec, files, network",
            ),
            (
                "5:3",
                "unknown key `writes` in `files`; allowed keys: write, read",
            ),
            (
                "8:5",
                "unknown key `defualt` in `network.connect`; allowed keys: default, allow, deny",
            ),
        ],
    );
}

#[test]
fn wrong_types() {
    expect(
        "name: [a]\nlabels: a\nexec: []\nfiles:\n  write:\n    allow: /x\n    deny:\n      - {a: b}\nnetwork: 1\n",
        &[
            ("1:7", "expected a policy name, found a list"),
            ("2:9", "expected a list of labels, found a string"),
            (
                "3:7",
                "expected `exec` (a mapping with keys default, allow, deny), found a list",
            ),
            (
                "6:12",
                "expected a list of path patterns for `files.write.allow`, found a string",
            ),
            ("8:9", "found a mapping"),
            (
                "9:10",
                "expected `network` (a mapping with keys connect, unix, listen, raw, packet, sctp, ip_options), found a string",
            ),
        ],
    );
    expect(
        "name: a\nlabels: [a]\nexec:\n  allow:\n",
        &[(
            "4:8",
            "expected a list of path patterns or `anonymous` for `exec.allow`, found nothing",
        )],
    );
}

#[test]
fn bad_enumerations() {
    expect(
        "name: a\nlabels: [a]\nmode: Enforce\nexec:\n  default: permit\n",
        &[
            ("3:7", "invalid `mode` `Enforce`: expected enforce or audit"),
            (
                "5:12",
                "invalid `exec.default` `permit`: expected allow or deny",
            ),
        ],
    );
}

#[test]
fn bad_patterns_point_at_the_item() {
    expect(
        concat!(
            "name: a\nlabels: [a]\n",
            "exec:\n  deny: [usr/bin/nc, /usr/*/nc, '/a/../b', /a//b, /a/, /a/**/b]\n",
            "network:\n  connect:\n    allow:\n",
            "      - 10.1.2.3/8\n",
            "      - \"1.2.3.4:0\"\n",
            "      - 300.1.1.1\n",
            "      - ::1/129\n",
            "      - [2001:db8::/32]:443\n",
        ),
        &[
            ("4:10", "relative path `usr/bin/nc`"),
            ("4:22", "unsupported wildcard in `/usr/*/nc`"),
            ("4:33", "`..` component"),
            ("4:44", "empty component"),
            ("4:51", "trailing `/`"),
            ("4:56", "unsupported wildcard"),
            (
                "8:9",
                "`10.1.2.3/8`: host bits set; did you mean 10.0.0.0/8?",
            ),
            ("9:9", "invalid port `0`"),
            ("10:9", "invalid IP address `300.1.1.1`"),
            ("11:9", "invalid prefix length `129`"),
            ("12:9", "quote bracketed IPv6 patterns"),
            ("12:24", "YAML syntax error"),
        ],
    );
}

#[test]
fn long_paths_say_the_limit() {
    let long = format!("/{}", "a".repeat(300));
    let (_, diags) = parse(&format!(
        "name: a\nlabels: [a]\nexec:\n  deny: [{long}, {long}/**]\n"
    ));
    assert_eq!(diags.len(), 2, "{diags:?}");
    let limit = agent_common::MAX_RULE_PATH.to_string();
    assert!(diags.iter().all(|d| d.contains(&limit)), "{diags:?}");
}

#[test]
fn names_and_labels() {
    expect(
        "name: 'a b'\nlabels: [ok, '..', x/y, '', ok]\n",
        &[
            ("1:7", "invalid policy name `a b`"),
            ("2:14", "invalid label `..`"),
            ("2:20", "invalid label `x/y`"),
            ("2:25", "invalid label ``"),
            ("2:29", "label `ok` listed twice; first at 2:10"),
        ],
    );
    expect("name: a\nlabels: []\n", &[("2:9", "at least one label")]);
    let long = "l".repeat(65);
    expect(
        &format!("name: a\nlabels: [{long}]\n"),
        &[("2:10", "at most 64")],
    );
    expect(
        &format!("name: {}\nlabels: [a]\n", "n".repeat(129)),
        &[("1:7", "at most 128")],
    );
}

#[test]
fn missing_and_duplicate_keys() {
    expect(
        "mode: audit\n",
        &[
            ("1:1", "missing required key `name`"),
            ("1:1", "missing required key `labels`"),
        ],
    );
    expect(
        "name: a\nlabels: [a]\nexec: {}\nexec: {}\n",
        &[("4:1", "duplicate key `exec` in a policy; first at 3:1")],
    );
}

#[test]
fn duplicates_within_a_file() {
    expect(
        "name: a\nlabels: [x]\n---\nname: a\nlabels: [y]\n---\nname: c\nlabels: [z, x]\n",
        &[
            (
                "4:7",
                "duplicate policy name `a`; first defined at p.yaml:1:7",
            ),
            (
                "8:13",
                "label `x` is already used by policy `a` at p.yaml:2:10",
            ),
        ],
    );
}

#[test]
fn syntax_errors_keep_earlier_problems() {
    expect(
        "name: a\nlabels: [a]\n---\nname: b\nlabels: [b]\nbogus: 1\nexec: [\n",
        &[
            ("6:1", "unknown key `bogus`"),
            ("7:7", "YAML syntax error: unclosed bracket"),
        ],
    );
    let (_, diags) = parse("name: a\nlabels: [a\n");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(diags[0].contains("YAML syntax error"), "{diags:?}");
    let (_, diags) = parse("name: a\n\tlabels: [a]\n");
    assert!(
        diags.iter().any(|d| d.contains("YAML syntax error")),
        "{diags:?}"
    );
}

#[test]
fn aliases_expand_and_bombs_are_refused() {
    let (policies, diags) =
        parse("name: a\nlabels: &l [a]\nexec:\n  deny: &d [/x]\nfiles:\n  read:\n    deny: *d\n");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(
        policies[0].file_read.deny,
        [PathPattern::Exact("/x".into())]
    );
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 {
            "a".to_owned()
        } else {
            format!("a{}", i - 1)
        };
        bomb.push_str(&format!("b{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let (_, diags) = parse(&bomb);
    assert!(diags.iter().any(|d| d.contains("too large")), "{diags:?}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agent-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_path_checks_across_files() {
    let dir = temp_dir("across");
    std::fs::write(dir.join("b.yml"), "name: one\nlabels: [shared]\n").unwrap();
    std::fs::write(dir.join("a.yaml"), "name: zero\nlabels: [mine]\n").unwrap();
    std::fs::write(dir.join("c.yaml"), "name: one\nlabels: [other, shared]\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "not yaml").unwrap();
    std::fs::create_dir(dir.join("sub.yaml")).unwrap();
    let diags = load_path(&dir).unwrap_err();
    let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
    let b = dir.join("b.yml");
    let c = dir.join("c.yaml");
    assert_eq!(
        text,
        [
            format!(
                "{}:1:7: duplicate policy name `one`; first defined at {}:1:7",
                c.display(),
                b.display()
            ),
            format!(
                "{}:2:17: label `shared` is already used by policy `one` at {}:2:10",
                c.display(),
                b.display()
            ),
        ]
    );

    std::fs::remove_file(&c).unwrap();
    let set = load_path(&dir).unwrap();
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["zero", "one"]);
    assert_eq!(set.label_count(), 2);
    assert_eq!(set.rule_count(), 0);
    assert_eq!(set.policies[1].file, b);

    // A single file works too.
    assert_eq!(load_path(&b).unwrap().policies.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_path_whole_file_problems() {
    let dir = temp_dir("empty");
    let diags = load_path(&dir).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(
        (diags[0].file.as_path(), diags[0].line, diags[0].column),
        (dir.as_path(), 1, 1)
    );
    assert!(
        diags[0].message.contains("no policies found"),
        "{}",
        diags[0]
    );

    std::fs::write(dir.join("empty.yaml"), "---\n# nothing yet\n").unwrap();
    let diags = load_path(&dir).unwrap_err();
    assert!(
        diags[0].message.contains("no policies found"),
        "{}",
        diags[0]
    );

    std::fs::write(dir.join("bad.yaml"), b"name: a\nlabels: [\xff]\n").unwrap();
    let diags = load_path(&dir).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!((diags[0].line, diags[0].column), (2, 10));
    assert!(diags[0].message.contains("UTF-8"), "{}", diags[0]);

    let missing = dir.join("missing");
    let diags = load_path(&missing).unwrap_err();
    assert_eq!(diags[0].file, missing);
    assert!(diags[0].message.contains("cannot read"), "{}", diags[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn label_limit() {
    let labels: Vec<String> = (0..=agent_common::MAX_LABELS)
        .map(|i| format!("l{i}"))
        .collect();
    let text = format!("name: a\nlabels: [{}]\n", labels.join(", "));
    let (policies, diags) = parse(&text);
    assert!(policies.is_empty());
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert!(
        diags[0].contains("too many labels: at most 1024"),
        "{diags:?}"
    );
}

#[test]
fn policy_limit() {
    let max = agent_policy::parse::MAX_POLICIES;
    let text: String = (0..=max)
        .map(|i| format!("---\nname: p{i}\nlabels: [l{i}]\n"))
        .collect();
    let (_, diags) = parse(&text);
    let line = 3 * max + 2;
    assert!(
        diags
            .iter()
            .any(|d| *d == format!("{line}:1: too many policies: at most {max} are supported")),
        "{:?}",
        &diags
    );
    // Each policy needs a label, so the label limit trips too.
    assert!(
        diags.iter().any(|d| d.contains("too many labels")),
        "{diags:?}"
    );
}

#[test]
fn the_shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = match load_path(&dir) {
        Ok(set) => set,
        Err(diags) => panic!(
            "{}",
            diags.iter().map(|d| format!("{d}\n")).collect::<String>()
        ),
    };
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["coding-agent", "research-agent", "research-summarizer"]
    );
    assert_eq!(set.policies[1].mode, Mode::Audit);
    assert!(set.policies[0].uses_names());
    for (i, p) in set.policies.iter().enumerate() {
        let ruleset = i as u16;
        assert!(!agent_policy::compile_paths(p, ruleset).is_empty());
        assert!(!agent_policy::compile_net(p, ruleset).is_empty());
    }
}

#[test]
fn process_grants_capabilities_by_name_and_may_allow_namespaces() {
    let (policies, diags) = parse(
        "name: p\nlabels: [l]\nprocess:\n  capabilities: [CAP_NET_RAW, CAP_CHOWN]\n  namespaces: allow\n",
    );
    assert!(diags.is_empty(), "{diags:#?}");
    let process = &policies[0].process;
    assert_eq!(process.capabilities, [13, 0]);
    assert_eq!(process.namespaces, Fallback::Allow);
    // Without the section nothing is granted and namespaces are denied.
    let (policies, _) = parse("name: p\nlabels: [l]\n");
    assert!(policies[0].process.capabilities.is_empty());
    assert_eq!(policies[0].process.namespaces, Fallback::Deny);
}

#[test]
fn process_problems_are_reported_where_they_are() {
    expect(
        "name: p\nlabels: [l]\nprocess:\n  capabilities: [CAP_NET_RAW, CAP_NETRAW]\n",
        &[("4:31", "unknown capability `CAP_NETRAW`")],
    );
    expect(
        "name: p\nlabels: [l]\nprocess:\n  namespaces: maybe\n",
        &[("4:15", "invalid `process.namespaces` `maybe`")],
    );
    expect(
        "name: p\nlabels: [l]\nprocess:\n  capabilities: CAP_NET_RAW\n",
        &[("4:17", "expected a list of capabilities")],
    );
    expect(
        "name: p\nlabels: [l]\nprocess:\n  users: [root]\n",
        &[("4:3", "unknown key `users` in `process`")],
    );
}

#[test]
fn anonymous_is_an_exec_target_and_nothing_else() {
    let policy = |exec: &str| {
        let (policies, diags) = parse(&format!("name: a\nlabels: [a]\nexec:\n{exec}"));
        assert!(diags.is_empty(), "{diags:#?}");
        policies.into_iter().next().expect("one policy")
    };
    let p = policy("  default: deny\n  allow: [anonymous, /usr/lib/**]\n");
    assert_eq!(p.anonymous_exec, Some(Fallback::Allow));
    assert_eq!(p.exec.allow, [PathPattern::Tree("/usr/lib".into())]);
    assert_eq!(p.rule_count(), 2);
    // Deny beats allow, as for paths.
    let p = policy("  allow: [anonymous]\n  deny: [anonymous]\n");
    assert_eq!(p.anonymous_exec, Some(Fallback::Deny));
    assert!(p.exec.is_empty());
    assert_eq!(policy("  default: allow\n").anonymous_exec, None);

    let only_exec = "`anonymous` (a file with no path on disk) is an exec target only";
    expect(
        "name: a\nlabels: [a]\nfiles:\n  write:\n    allow: [/tmp/**, anonymous]\n  read:\n    deny:\n      - anonymous\n",
        &[("5:22", only_exec), ("8:9", only_exec)],
    );
    // Only the bare word: anything else is a path pattern, and must be absolute.
    expect(
        "name: a\nlabels: [a]\nexec:\n  allow: [Anonymous]\n",
        &[("4:11", "relative path `Anonymous`")],
    );
}

#[test]
fn files_delete_has_the_shape_of_files_write() {
    let (policies, diags) = parse(
        "name: a\nlabels: [a]\nfiles:\n  delete:\n    default: deny\n    allow: [/w/**]\n    deny: [/w/.git/**, /w/keep]\n",
    );
    assert!(diags.is_empty(), "{diags:#?}");
    let p = &policies[0];
    assert_eq!(p.file_delete.default, Fallback::Deny);
    assert_eq!(p.file_delete.allow, [PathPattern::Tree("/w".into())]);
    assert_eq!(
        p.file_delete.deny,
        [
            PathPattern::Tree("/w/.git".into()),
            PathPattern::Exact("/w/keep".into())
        ]
    );
    assert_eq!(p.rule_count(), 3);
    assert!(p.file_write.is_empty());
    // Without the section, deletes are allowed (files.write still applies).
    let (policies, _) = parse("name: a\nlabels: [a]\nfiles:\n  write: {deny: [/x]}\n");
    assert_eq!(policies[0].file_delete, Default::default());

    expect(
        "name: a\nlabels: [a]\nfiles:\n  delete:\n    default: keep\n    deny: [w/x, anonymous]\n    ask: []\n",
        &[
            (
                "5:14",
                "invalid `files.delete.default` `keep`: expected allow or deny",
            ),
            ("6:12", "relative path `w/x`"),
            ("6:17", "is an exec target only"),
            (
                "7:5",
                "unknown key `ask` in `files.delete`; allowed keys: default, allow, deny",
            ),
        ],
    );
    expect(
        "name: a\nlabels: [a]\nfiles:\n  delete: [/x]\n",
        &[(
            "4:11",
            "expected `files.delete` (a mapping with keys default, allow, deny), found a list",
        )],
    );
}

#[test]
fn connect_takes_host_names_beside_addresses() {
    let (policies, diags) = parse(concat!(
        "name: a\nlabels: [a]\nnetwork:\n  connect:\n    default: deny\n",
        "    allow: [127.0.0.0/8, api.github.com:443, \"*.githubusercontent.com:443\", pkg.example.org]\n",
        "    deny: [\"[::1]:22\", localhost, Evil.Example.COM.]\n",
    ));
    assert!(diags.is_empty(), "{diags:#?}");
    let p = &policies[0];
    let shown = |list: &[HostPattern]| list.iter().map(HostPattern::to_string).collect::<Vec<_>>();
    assert_eq!(
        shown(&p.hosts.allow),
        [
            "api.github.com:443",
            "*.githubusercontent.com:443",
            "pkg.example.org"
        ]
    );
    assert_eq!(shown(&p.hosts.deny), ["localhost", "evil.example.com"]);
    assert_eq!(p.connect.allow.len(), 1);
    assert_eq!(p.connect.deny.len(), 1);
    assert_eq!(p.rule_count(), 7);
    assert!(p.uses_names());
}

#[test]
fn bad_host_names_point_at_the_entry() {
    let long = "a".repeat(64);
    expect(
        &format!(
            concat!(
                "name: a\nlabels: [a]\nnetwork:\n  connect:\n    allow:\n",
                "      - a.*.com\n",
                "      - \"*x.com\"\n",
                "      - x.*\n",
                "      - \"**.x.com\"\n",
                "      - \"*\"\n",
                "      - {long}.com\n",
                "      - x.com:0\n",
                "      - x.com:ssh\n",
                "      - x-.com\n",
                "      - a..com\n",
                "      - foo.123\n",
                "    deny: [1.2.3.4.5, 300.1.1.1, bad_char!.com]\n",
                "  listen:\n    allow: [0.0.0.0/0:8080, localhost:8080]\n",
            ),
            long = long
        ),
        &[
            (
                "6:9",
                "`a.*.com`: a `*` may only start a host name, as `*.example.com`",
            ),
            ("7:9", "`*x.com`: a `*` may only start a host name"),
            ("8:9", "`x.*`: a `*` may only start a host name"),
            ("9:9", "`**.x.com`: a `*` may only start a host name"),
            ("10:9", "`*` alone is not a host name pattern"),
            ("11:9", "host name label longer than 63 characters (64)"),
            ("12:9", "invalid port `0`: expected 1..=65535"),
            ("13:9", "invalid port `ssh`"),
            ("14:9", "label `x-` starts or ends with `-`"),
            ("15:9", "`a..com`: empty label in host name"),
            (
                "16:9",
                "`foo.123`: a host name cannot end in an all-digit label",
            ),
            ("17:12", "invalid IP address `1.2.3.4.5`"),
            ("17:23", "invalid IP address `300.1.1.1`"),
            ("17:34", "character '!' not allowed in a host name"),
            (
                "19:29",
                "`localhost:8080` is not an address: `network.listen` takes addresses only",
            ),
        ],
    );
}

#[test]
fn an_unquoted_wildcard_is_a_yaml_alias_and_the_error_says_to_quote_it() {
    expect(
        "name: a\nlabels: [a]\nnetwork:\n  connect:\n    allow:\n      - *.x.com:443\n",
        &[(
            "6:9",
            "quote host name wildcards, as in \"*.example.com:443\"",
        )],
    );
}

#[test]
fn cgroups_bind_existing_cgroups_to_the_one_label() {
    let (policies, diags) = parse(
        "name: ci\nlabels: [ci-runner]\ncgroups: [\"system.slice/gitlab-runner.service\", \"/system.slice/docker-*.scope\"]\n",
    );
    assert!(diags.is_empty(), "{diags:#?}");
    let cgroups: Vec<String> = policies[0].cgroups.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        cgroups,
        [
            "system.slice/gitlab-runner.service",
            "system.slice/docker-*.scope"
        ]
    );
    assert!(policies[0].cgroups[1].matches("system.slice/docker-42.scope"));
}

#[test]
fn cgroups_problems_are_placed() {
    expect(
        "name: ci\nlabels: [a, b]\ncgroups: [x.slice]\n",
        &[(
            "3:11",
            "binds cgroups to one label, but this policy names 2",
        )],
    );
    expect(
        "name: ci\nlabels: [a]\ncgroups: [x.slice, \"actgate/a\", \"y/../z\", x.slice]\n",
        &[
            ("3:20", "where `actgate exec` puts labels"),
            ("3:33", "`..` component"),
            ("3:43", "listed twice"),
        ],
    );
    expect(
        "name: ci\nlabels: [a]\ncgroups: []\n",
        &[("3:1", "must name at least one cgroup")],
    );
    expect(
        "name: ci\nlabels: [a]\ncgroups: \"x.slice\"\n",
        &[("3:10", "expected a list of cgroup patterns")],
    );
}
