//! Parsing of the host name patterns of `network.connect`: `name[:port]`, `*.suffix[:port]`.

use super::{PatternError, parse_port};
use crate::model::{HostName, HostPattern};

/// Longest host name DNS can carry (RFC 1035 §2.3.4: 255 bytes on the wire).
pub const MAX_HOST_NAME: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_HOST_LABEL: usize = 63;

/// Parse a host name pattern: labels of letters, digits, `-` and `_`, in any case (stored
/// lowercase), with at most one trailing dot, an optional leading `*.` and an optional `:port`.
pub fn parse_host(text: &str) -> Result<HostPattern, PatternError> {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(text, port)?)),
        None => (text, None),
    };
    // The root's dot, as in `pkg.example.org.`, names the same host.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host == "*" {
        return Err(PatternError::BareWildcard);
    }
    let (suffix, wildcard) = match host.strip_prefix("*.") {
        Some(suffix) => (suffix, true),
        None => (host, false),
    };
    if suffix.contains('*') {
        return Err(PatternError::HostWildcard(text.to_owned()));
    }
    check_name(text, host, suffix)?;
    let suffix = suffix.to_ascii_lowercase();
    let name = if wildcard {
        HostName::Wildcard(suffix)
    } else {
        HostName::Exact(suffix)
    };
    Ok(HostPattern { name, port })
}

/// Check the labels of `name` (`host` without a leading `*.`), reporting against `text`.
fn check_name(text: &str, host: &str, name: &str) -> Result<(), PatternError> {
    if host.len() > MAX_HOST_NAME {
        return Err(PatternError::HostTooLong(text.to_owned(), host.len()));
    }
    let bad_char = |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_');
    for label in name.split('.') {
        if label.is_empty() {
            return Err(PatternError::EmptyLabel(text.to_owned()));
        }
        if let Some(c) = label.chars().find(|&c| bad_char(c)) {
            return Err(PatternError::HostChar(text.to_owned(), c));
        }
        if label.len() > MAX_HOST_LABEL {
            return Err(PatternError::LabelTooLong(text.to_owned(), label.len()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(PatternError::LabelHyphen(text.to_owned(), label.to_owned()));
        }
    }
    // No top-level domain is numeric, so such a name could only be a mistyped address.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(PatternError::NumericTld(text.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(text: &str) -> HostPattern {
        parse_host(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn exact(name: &str, port: Option<u16>) -> HostPattern {
        HostPattern {
            name: HostName::Exact(name.into()),
            port,
        }
    }

    #[test]
    fn accepts_names_wildcards_and_ports() {
        assert_eq!(
            host("api.github.com:443"),
            exact("api.github.com", Some(443))
        );
        assert_eq!(host("pkg.example.org"), exact("pkg.example.org", None));
        assert_eq!(host("localhost"), exact("localhost", None));
        assert_eq!(host("_srv.x-y.example"), exact("_srv.x-y.example", None));
        assert_eq!(host("1e100.net:65535"), exact("1e100.net", Some(65535)));
        assert_eq!(
            host("*.githubusercontent.com:443"),
            HostPattern {
                name: HostName::Wildcard("githubusercontent.com".into()),
                port: Some(443),
            }
        );
        assert_eq!(
            host("*.com"),
            HostPattern {
                name: HostName::Wildcard("com".into()),
                port: None,
            }
        );
    }

    #[test]
    fn names_are_stored_lowercase_without_the_trailing_dot() {
        assert_eq!(host("Pkg.Example.Org."), exact("pkg.example.org", None));
        assert_eq!(
            host("pkg.example.org.:443"),
            exact("pkg.example.org", Some(443))
        );
        assert_eq!(host("*.X.com.").to_string(), "*.x.com");
    }

    #[test]
    fn wildcards_only_start_a_name() {
        for bad in [
            "a.*.com",
            "*x.com",
            "x.*",
            "**.x.com",
            "*.*.x.com",
            "x*.com",
            "*.x.com*",
        ] {
            let err = parse_host(bad).unwrap_err();
            assert_eq!(err, PatternError::HostWildcard(bad.into()), "{bad}");
            assert!(
                err.to_string()
                    .contains("a `*` may only start a host name, as `*.example.com`"),
                "{err}"
            );
        }
        assert_eq!(parse_host("*"), Err(PatternError::BareWildcard));
        assert_eq!(parse_host("*.:443"), Err(PatternError::BareWildcard));
    }

    #[test]
    fn rejects_bad_names_saying_why() {
        let label = "a".repeat(MAX_HOST_LABEL + 1);
        let long = format!("{label}.com");
        let err = |text: &str| parse_host(text).unwrap_err();
        assert_eq!(err(&long), PatternError::LabelTooLong(long.clone(), 64));
        assert!(
            err(&long)
                .to_string()
                .contains("host name label longer than 63 characters"),
        );
        assert!(parse_host(&format!("{}.com", "a".repeat(MAX_HOST_LABEL))).is_ok());
        assert_eq!(err("a..com"), PatternError::EmptyLabel("a..com".into()));
        assert_eq!(
            err("pkg.example.org.."),
            PatternError::EmptyLabel("pkg.example.org..".into())
        );
        assert_eq!(err("*..com"), PatternError::EmptyLabel("*..com".into()));
        assert_eq!(
            err("a b.com"),
            PatternError::HostChar("a b.com".into(), ' ')
        );
        assert_eq!(
            err("bücher.de"),
            PatternError::HostChar("bücher.de".into(), 'ü')
        );
        assert!(err("bücher.de").to_string().contains("`xn--` form"));
        assert_eq!(
            err("-a.com"),
            PatternError::LabelHyphen("-a.com".into(), "-a".into())
        );
        assert_eq!(
            err("a.b-.com"),
            PatternError::LabelHyphen("a.b-.com".into(), "b-".into())
        );
        assert_eq!(err("foo.123"), PatternError::NumericTld("foo.123".into()));
        assert_eq!(
            err("x.com:0"),
            PatternError::BadPort("x.com:0".into(), "0".into())
        );
        assert_eq!(
            err("x.com:65536"),
            PatternError::BadPort("x.com:65536".into(), "65536".into())
        );
        assert_eq!(
            err("x.com:https"),
            PatternError::BadPort("x.com:https".into(), "https".into())
        );
        assert_eq!(
            err("x.com:"),
            PatternError::BadPort("x.com:".into(), String::new())
        );
    }

    #[test]
    fn name_length_limit() {
        // 4 labels of 63 and the dots between them: 255 characters.
        let labels = vec!["a".repeat(MAX_HOST_LABEL); 4];
        let at_limit = format!("{}.b", labels[..3].join(".")) + &".c".repeat(30);
        assert_eq!(at_limit.len(), 253);
        assert!(parse_host(&at_limit).is_ok());
        assert!(parse_host(&format!("{at_limit}.")).is_ok());
        let over = format!("a{at_limit}");
        assert_eq!(
            parse_host(&over),
            Err(PatternError::HostTooLong(over.clone(), 254))
        );
        let wildcard = format!("*.{}", &at_limit[2..]);
        assert!(parse_host(&wildcard).is_ok());
        let over = format!("*.{}", &at_limit[1..]);
        assert!(matches!(
            parse_host(&over),
            Err(PatternError::HostTooLong(_, 254))
        ));
    }

    proptest! {
        #[test]
        fn host_parser_never_panics(s in "\\PC*") {
            let _ = parse_host(&s);
        }

        #[test]
        fn valid_hosts_round_trip(
            labels in proptest::collection::vec("[a-z0-9_]([a-z0-9_-]{0,8}[a-z0-9_])?", 1..6),
            wildcard in any::<bool>(),
            port in proptest::option::of(1u16..),
        ) {
            prop_assume!(!labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())));
            let name = labels.join(".");
            let name = if wildcard {
                HostName::Wildcard(name)
            } else {
                HostName::Exact(name)
            };
            let pattern = HostPattern { name, port };
            let text = pattern.to_string();
            prop_assert_eq!(parse_host(&text), Ok(pattern.clone()), "{}", text);
            prop_assert_eq!(parse_host(&text.to_uppercase()), Ok(pattern), "{}", text);
        }
    }
}
