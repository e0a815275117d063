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
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (text, None),
    };
    // The root's dot, as in `pypi.org.`, names the same host.
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
