//! No input, however malformed, may panic the parser, and every problem it reports must
//! point inside the text.

use std::path::Path;

use agent_policy::parse_str;
use proptest::prelude::*;

const EXAMPLE: &str = r#"name: coding-agent
labels: [coding-agent, "b"]
mode: enforce
exec:
  default: allow
  deny: [/usr/bin/nc, /opt/tools/**]
files:
  write:
    default: deny
    allow: [/workspace/**, /tmp/**, /dev/null]
    deny:
      - /workspace/.git/hooks/**
  read: {deny: [/etc/shadow]}
  delete: {deny: [/workspace/.git/**]}
network:
  connect:
    default: deny
    allow: ["127.0.0.0/8", "10.20.0.0/16:443", "[2001:db8::/32]:443", ::1/128, pkg.example.org:443, "*.x.com"]
    deny: &d ["169.254.169.254/32"]
budgets:
  - {action: file_delete, max: 100, per: 1m, then: revoke}
  - {action: connect, max: 60, per: 10s}
revoke_after: {denials: 20, within: 10s}
---
name: other
labels: [o]
"#;

fn check(text: &str) -> Result<(), TestCaseError> {
    let (policies, diags) = parse_str(Path::new("f.yaml"), text);
    // Lines as YAML counts them: a lone CR breaks a line too (spec 5.4, b-break).
    let lines = text.replace("\r\n", "\n").split(['\r', '\n']).count();
    for d in &diags {
        prop_assert!(
            d.line >= 1 && d.line <= lines + 1,
            "{d} (text has {lines} lines)"
        );
        prop_assert!(d.column >= 1, "{d}");
        prop_assert!(!d.message.is_empty());
    }
    // Anything accepted must also compile without trouble.
    for (i, p) in policies.iter().enumerate() {
        let _ = agent_policy::compile_paths(p, i as u16);
        let _ = agent_policy::compile_net(p, i as u16);
        let _ = agent_policy::compile_limits(p, i as u16);
    }
    Ok(())
}

/// Found by `arbitrary_bytes`: the parser rightly reports line 3 of "\r \r\x0e".
#[test]
fn lone_carriage_returns_break_lines() {
    check("\r \r\x0e").unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn yamlish_strings(s in "[a-z:\\-\\[\\]{}&*!|>'\"#%@`,?/.0-9 \t\n]{0,300}") {
        check(&s)?;
    }

    #[test]
    fn policy_shaped_strings(
        s in "((name|labels|mode|exec|files|write|read|delete|budgets|action|max|per|then|revoke_after|denials|within|1m|10s|network|connect|default|allow|deny|audit|enforce|/a/\\*\\*|/b|10\\.0\\.0\\.0/8:443|\\[::1\\]:80|- |: |\\[|\\]|\\{|\\}|, |&a |\\*a|---|\n|  ))*"
    ) {
        check(&s)?;
    }

    #[test]
    fn mutated_example(edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3, any::<char>()), 1..8)) {
        let mut text: Vec<char> = EXAMPLE.chars().collect();
        for (at, op, c) in edits {
            let i = at.index(text.len() + 1);
            match op {
                0 => text.insert(i, c),
                1 if i < text.len() => { text.remove(i); }
                _ if i < text.len() => text[i] = c,
                _ => {}
            }
        }
        check(&text.into_iter().collect::<String>())?;
    }
}

#[test]
fn example_is_valid() {
    let (policies, diags) = parse_str(Path::new("f.yaml"), EXAMPLE);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(policies.len(), 2);
}

#[test]
fn deep_nesting_does_not_overflow() {
    for depth in [100, 1_000, 100_000] {
        check(&"[".repeat(depth)).unwrap();
        check(&format!("{}{}", "[".repeat(depth), "]".repeat(depth))).unwrap();
        let block: String = (0..depth.min(2_000))
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        check(&block).unwrap();
    }
}
