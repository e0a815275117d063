//! Parsing of the path and network patterns that rules are made of.

mod cgroup;
mod host;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{ANONYMOUS, MAX_RULE_PATH};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::model::{HostPattern, NetPattern, PathPattern, UnixPattern};

pub use cgroup::{
    CgroupPattern, CgroupPatternError, Component, MAX_CGROUP_DEPTH, OWN_CGROUP, parse_cgroup,
};
pub use host::{MAX_HOST_LABEL, MAX_HOST_NAME, parse_host};

/// Why a pattern was rejected. The text is shown to policy authors as is.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PatternError {
    #[error("empty path pattern")]
    EmptyPath,
    #[error(
        "`anonymous` (a file with no path on disk) is an exec target only: name it in `exec.allow` or `exec.deny`"
    )]
    AnonymousNotExec,
    #[error("relative path `{0}`: path patterns must be absolute (start with `/`)")]
    Relative(String),
    #[error("path pattern contains a NUL byte")]
    Nul,
    #[error(
        "unsupported wildcard in `{0}`: a pattern is an exact path or a directory followed by `/**`"
    )]
    Wildcard(String),
    #[error("empty component (`//`) in `{0}`")]
    EmptyComponent(String),
    #[error(
        "trailing `/` in `{0}`: write `{1}` for the path itself or `{1}/**` for everything beneath it"
    )]
    TrailingSlash(String, String),
    #[error("`{1}` component in `{0}`: paths must be normalized")]
    DotComponent(String, &'static str),
    #[error("path `{0}` is {1} bytes long; an exact path can have at most {MAX_RULE_PATH} bytes")]
    ExactTooLong(String, usize),
    #[error(
        "directory `{0}` of a `/**` pattern is {1} bytes long; it can have at most {max} bytes",
        max = MAX_RULE_PATH
    )]
    TreeTooLong(String, usize),
    #[error("empty network pattern")]
    EmptyNet,
    #[error("invalid IP address `{0}`")]
    BadAddr(String),
    #[error("invalid prefix length `{0}`: expected 0..={1}")]
    BadPrefix(String, u8),
    #[error("`{0}`: invalid port `{1}`: expected 1..=65535")]
    BadPort(String, String),
    #[error("`{0}`: brackets are only for IPv6 addresses, as in `[2001:db8::/32]:443`")]
    BracketsNotV6(String),
    #[error("`{0}`: missing `]`")]
    UnclosedBracket(String),
    #[error("`{0}`: expected `:port` after `]`")]
    AfterBracket(String),
    #[error("`{0}`: host bits set; did you mean {1}?")]
    HostBits(String, String),
    #[error(
        "`{0}` is not an address: `network.listen` takes addresses only, not host names, \
         as in `0.0.0.0/0:8080`"
    )]
    HostNotListen(String),
    #[error(
        "`*` alone is not a host name pattern: a wildcard needs a suffix, as `*.example.com` \
         (to allow every destination, write `default: allow`)"
    )]
    BareWildcard,
    #[error("`{0}`: a `*` may only start a host name, as `*.example.com`")]
    HostWildcard(String),
    #[error("`{0}`: empty label in host name (a leading dot or two dots in a row)")]
    EmptyLabel(String),
    #[error(
        "`{0}`: character {1:?} not allowed in a host name; use letters, digits, `-` and `_` \
         (write internationalized names in their `xn--` form)"
    )]
    HostChar(String, char),
    #[error("`{0}`: host name label longer than {MAX_HOST_LABEL} characters ({1})")]
    LabelTooLong(String, usize),
    #[error("`{0}`: host name is {1} characters long; at most {MAX_HOST_NAME} are allowed")]
    HostTooLong(String, usize),
    #[error("`{0}`: host name label `{1}` starts or ends with `-`")]
    LabelHyphen(String, String),
    #[error(
        "`{0}`: a host name cannot end in an all-digit label; if this is an IP address, \
         it has too many parts"
    )]
    NumericTld(String),
    #[error(
        "`{0}`: expected a socket path (`/run/x.sock`, `/run/**`) or an abstract name \
         (`@name`, or `@**` for every abstract name)"
    )]
    NotUnix(String),
    #[error("empty abstract socket name `@`")]
    EmptyAbstract,
    #[error(
        "unsupported wildcard in `{0}`: an abstract name is matched exactly; `@**` matches \
         every abstract name"
    )]
    AbstractWildcard(String),
    #[error("abstract name `{0}` is {1} bytes long; at most {UNIX_NAME_MAX} are allowed")]
    AbstractTooLong(String, usize),
}

/// Longest abstract AF_UNIX name: `sun_path` (108 bytes) less its leading NUL.
pub const UNIX_NAME_MAX: usize = 107;

/// Parse a `network.unix` pattern: a path pattern, `@name` or `@**`.
pub fn parse_unix(text: &str) -> Result<UnixPattern, PatternError> {
    let Some(name) = text.strip_prefix('@') else {
        if text.starts_with('/') || text.is_empty() {
            return parse_path(text).map(UnixPattern::Path);
        }
        return Err(PatternError::NotUnix(text.to_owned()));
    };
    if text.contains('\0') {
        return Err(PatternError::Nul);
    }
    match name {
        "" => Err(PatternError::EmptyAbstract),
        "**" => Ok(UnixPattern::AnyAbstract),
        _ if name.ends_with("**") => Err(PatternError::AbstractWildcard(text.to_owned())),
        _ if name.len() > UNIX_NAME_MAX => {
            Err(PatternError::AbstractTooLong(text.to_owned(), name.len()))
        }
        _ => Ok(UnixPattern::Abstract(name.to_owned())),
    }
}

/// Parse a path pattern: an absolute exact path, or a directory followed by `/**`.
pub fn parse_path(text: &str) -> Result<PathPattern, PatternError> {
    if text.is_empty() {
        return Err(PatternError::EmptyPath);
    }
    if text.contains('\0') {
        return Err(PatternError::Nul);
    }
    if text == ANONYMOUS {
        return Err(PatternError::AnonymousNotExec);
    }
    if !text.starts_with('/') {
        return Err(PatternError::Relative(text.to_owned()));
    }
    if text == "/**" {
        return Ok(PathPattern::Tree(String::new()));
    }
    if let Some(dir) = text.strip_suffix("/**") {
        check_components(text, dir)?;
        // The kernel key holds the directory and its trailing slash.
        if dir.len() + 1 > MAX_RULE_PATH + 1 {
            return Err(PatternError::TreeTooLong(dir.to_owned(), dir.len()));
        }
        return Ok(PathPattern::Tree(dir.to_owned()));
    }
    if text != "/" {
        check_components(text, text)?;
    }
    if text.len() > MAX_RULE_PATH {
        return Err(PatternError::ExactTooLong(text.to_owned(), text.len()));
    }
    Ok(PathPattern::Exact(text.to_owned()))
}

/// Check the components of `path` (absolute, not the root), reporting against `whole`.
fn check_components(whole: &str, path: &str) -> Result<(), PatternError> {
    if path.contains(['*', '?', '[', '{']) {
        return Err(PatternError::Wildcard(whole.to_owned()));
    }
    if let Some(trimmed) = path.strip_suffix('/') {
        let trimmed = trimmed.trim_end_matches('/');
        let shown = if trimmed.is_empty() { "/" } else { trimmed };
        return Err(PatternError::TrailingSlash(
            whole.to_owned(),
            shown.to_owned(),
        ));
    }
    // The first split item is the empty string before the leading `/`.
    for component in path.split('/').skip(1) {
        match component {
            "" => return Err(PatternError::EmptyComponent(whole.to_owned())),
            "." | ".." => {
                let dots = if component == "." { "." } else { ".." };
                return Err(PatternError::DotComponent(whole.to_owned(), dots));
            }
            _ => {}
        }
    }
    Ok(())
}

/// An entry of `network.connect`: an address pattern or a host name pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConnectPattern {
    Net(NetPattern),
    Host(HostPattern),
}

/// Parse an entry of `network.connect`: an address pattern if it is one, otherwise a host
/// name pattern, unless it looks like a broken address (which keeps the address's error).
pub fn parse_connect(text: &str) -> Result<ConnectPattern, PatternError> {
    match parse_net(text) {
        Ok(net) => Ok(ConnectPattern::Net(net)),
        Err(e) if looks_like_address(text) => Err(e),
        Err(_) => parse_host(text).map(ConnectPattern::Host),
    }
}

/// Parse an entry of `network.listen`: an address pattern. A host name names no local
/// address, so it gets its own error.
pub fn parse_listen(text: &str) -> Result<NetPattern, PatternError> {
    parse_net(text).map_err(|e| {
        if looks_like_address(text) {
            e
        } else {
            PatternError::HostNotListen(text.to_owned())
        }
    })
}

/// Whether `text` was meant as an address pattern: it does not start as a host name does, it
/// has a prefix length, brackets or an IPv6 address's colons, or its labels are all numbers
/// (`1.2.3`, `300.1.1.1`).
fn looks_like_address(text: &str) -> bool {
    let name_start = |c: char| c.is_alphanumeric() || c == '_' || c == '*';
    if !text.starts_with(name_start)
        || text.contains(['/', '[', ']'])
        || text.matches(':').count() > 1
    {
        return true;
    }
    let host = text.split_once(':').map_or(text, |(host, _)| host);
    host.split('.')
        .filter(|label| !label.is_empty())
        .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
}

/// Parse a network pattern: `addr`, `addr/len`, `v4[/len]:port`, `[v6[/len]]:port`.
pub fn parse_net(text: &str) -> Result<NetPattern, PatternError> {
    if text.is_empty() {
        return Err(PatternError::EmptyNet);
    }
    let (cidr, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(PatternError::UnclosedBracket(text.to_owned()));
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(parse_port(text, p)?),
                None => return Err(PatternError::AfterBracket(text.to_owned())),
            },
        };
        let (addr, _) = split_prefix(inner);
        if addr.parse::<Ipv6Addr>().is_err() {
            if addr.parse::<Ipv4Addr>().is_ok() {
                return Err(PatternError::BracketsNotV6(text.to_owned()));
            }
            return Err(PatternError::BadAddr(addr.to_owned()));
        }
        (inner, port)
    } else if text.matches(':').count() == 1 {
        // Only IPv4 can carry a port without brackets; one colon in IPv6 is never valid.
        let (cidr, port) = text.split_at(text.find(':').unwrap_or(text.len()));
        (cidr, Some(parse_port(text, &port[1..])?))
    } else {
        (text, None)
    };

    let (addr_text, prefix_text) = split_prefix(cidr);
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| PatternError::BadAddr(addr_text.to_owned()))?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_text {
        None => max,
        Some(p) => parse_number(p, u32::from(max))
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| PatternError::BadPrefix(p.to_owned(), max))?,
    };
    let net = match addr {
        IpAddr::V4(a) => IpNet::V4(
            Ipv4Net::new(a, prefix)
                .map_err(|_| PatternError::BadPrefix(prefix.to_string(), max))?,
        ),
        IpAddr::V6(a) => IpNet::V6(
            Ipv6Net::new(a, prefix)
                .map_err(|_| PatternError::BadPrefix(prefix.to_string(), max))?,
        ),
    };
    let truncated = net.trunc();
    if truncated != net {
        let suggestion = NetPattern {
            net: unmap(truncated),
            port,
        };
        return Err(PatternError::HostBits(
            text.to_owned(),
            suggestion.to_string(),
        ));
    }
    Ok(NetPattern {
        net: unmap(net),
        port,
    })
}

/// The kernel looks IPv4-mapped IPv6 destinations up as IPv4, so rules naming them must be
/// stored as IPv4 to ever match.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => match Ipv4Net::new(v4, n.prefix_len() - 96) {
                Ok(v4net) => IpNet::V4(v4net),
                Err(_) => net,
            },
            None => net,
        },
        _ => net,
    }
}

fn split_prefix(cidr: &str) -> (&str, Option<&str>) {
    match cidr.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (cidr, None),
    }
}

/// The port `text` of the pattern `whole`.
fn parse_port(whole: &str, text: &str) -> Result<u16, PatternError> {
    parse_number(text, 65535)
        .filter(|&p| p != 0)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| PatternError::BadPort(whole.to_owned(), text.to_owned()))
}

/// A decimal number of plain ASCII digits (no sign, unlike `str::parse`), at most `max`.
fn parse_number(text: &str, max: u32) -> Option<u32> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&n| n <= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(s: &str) -> PathPattern {
        parse_path(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn net(s: &str) -> String {
        parse_net(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    #[test]
    fn accepts_exact_and_tree_paths() {
        assert_eq!(path("/"), PathPattern::Exact("/".into()));
        assert_eq!(path("/**"), PathPattern::Tree(String::new()));
        assert_eq!(
            path("/usr/bin/nc"),
            PathPattern::Exact("/usr/bin/nc".into())
        );
        assert_eq!(
            path("/opt/tools/**"),
            PathPattern::Tree("/opt/tools".into())
        );
        assert_eq!(path("/a b/c.d-e"), PathPattern::Exact("/a b/c.d-e".into()));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "",
            "usr/bin",
            "./x",
            "**",
            "/usr/*",
            "/usr/b?n",
            "/usr/[ab]",
            "/usr/{a,b}",
            "/usr/**/bin",
            "/usr**",
            "/**/",
            "/usr/",
            "//",
            "/a//b",
            "/a/./b",
            "/a/..",
            "/a/../b",
            "/..",
            "/.",
            "/a\0b",
            "/a/**/**",
            "/**/**",
            "//**",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_length_limits() {
        let exact = format!("/{}", "a".repeat(MAX_RULE_PATH - 1));
        assert!(parse_path(&exact).is_ok());
        let err = parse_path(&format!("{exact}b")).unwrap_err().to_string();
        assert!(err.contains(&MAX_RULE_PATH.to_string()), "{err}");
        // The tree key is `dir/`, so the directory may be one byte longer than an exact path.
        let dir = format!("/{}", "a".repeat(MAX_RULE_PATH - 1));
        assert!(parse_path(&format!("{dir}/**")).is_ok());
        let err = parse_path(&format!("{dir}b/**")).unwrap_err().to_string();
        assert!(err.contains(&MAX_RULE_PATH.to_string()), "{err}");
    }

    #[test]
    fn accepts_network_forms() {
        assert_eq!(net("1.2.3.4"), "1.2.3.4");
        assert_eq!(net("1.2.3.4/32"), "1.2.3.4");
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(net("10.0.0.0/8:443"), "10.0.0.0/8:443");
        assert_eq!(net("1.2.3.4:80"), "1.2.3.4:80");
        assert_eq!(net("::1"), "::1");
        assert_eq!(net("::1/128"), "::1");
        assert_eq!(net("[2001:db8::/32]:443"), "[2001:db8::/32]:443");
        assert_eq!(net("[::1]:8080"), "[::1]:8080");
        assert_eq!(net("[::1]"), "::1");
        assert_eq!(net("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(net("::/0"), "::/0");
        assert_eq!(net("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(net("[::ffff:10.0.0.0/104]:443"), "10.0.0.0/8:443");
        assert_eq!(net("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(net("1.2.3.4:65535"), "1.2.3.4:65535");
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:",
            "1.2.3.4/",
            "1.2.3.4/+8",
            "1.2.3.4:+80",
            "01.2.3.4",
            "::1:80x",
            "[1.2.3.4]:80",
            "[::1",
            "[::1]80",
            "[::1]:",
            "::1/129",
            "example.com",
            "example.com:443",
            "fe80::1%eth0",
            " 1.2.3.4",
            "1.2.3.4/8/8",
            "[::1]:0",
            "::1/-1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn connect_entries_are_addresses_or_host_names() {
        let connect = |s: &str| parse_connect(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(matches!(connect("10.0.0.0/8:443"), ConnectPattern::Net(_)));
        assert!(matches!(connect("::1"), ConnectPattern::Net(_)));
        for name in [
            "pkg.example.org",
            "localhost:8080",
            "*.x.com:443",
            "_a.b",
            "1e100.net",
        ] {
            match connect(name) {
                ConnectPattern::Host(h) => assert_eq!(h.to_string(), name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn broken_addresses_keep_the_address_error() {
        for (text, error) in [
            ("300.1.1.1", PatternError::BadAddr("300.1.1.1".into())),
            ("1.2.3.4.5", PatternError::BadAddr("1.2.3.4.5".into())),
            ("1.2.3", PatternError::BadAddr("1.2.3".into())),
            ("1.2.3.:80", PatternError::BadAddr("1.2.3.".into())),
            (
                "1.2.3.4:0",
                PatternError::BadPort("1.2.3.4:0".into(), "0".into()),
            ),
            ("fe80::1%eth0", PatternError::BadAddr("fe80::1%eth0".into())),
            (
                "example.com/24",
                PatternError::BadAddr("example.com".into()),
            ),
            (
                "[example.com]:443",
                PatternError::BadAddr("example.com".into()),
            ),
            (":443", PatternError::BadAddr(String::new())),
            ("", PatternError::EmptyNet),
        ] {
            assert_eq!(parse_connect(text), Err(error), "{text}");
        }
        // Not all of its labels are numbers, so it is a (bad) host name.
        assert_eq!(
            parse_connect("foo.123"),
            Err(PatternError::NumericTld("foo.123".into()))
        );
    }

    #[test]
    fn listen_takes_addresses_only() {
        assert_eq!(parse_listen("0.0.0.0/0:8080"), parse_net("0.0.0.0/0:8080"));
        for name in ["localhost:8080", "*.x.com", "a.*.com", "pkg.example.org"] {
            let err = parse_listen(name).unwrap_err();
            assert_eq!(err, PatternError::HostNotListen(name.into()));
            assert!(err.to_string().contains("takes addresses only"), "{err}");
        }
        assert_eq!(
            parse_listen("300.1.1.1"),
            Err(PatternError::BadAddr("300.1.1.1".into()))
        );
    }

    #[test]
    fn host_bits_suggest_the_network() {
        let err = parse_net("10.1.2.3/8").unwrap_err().to_string();
        assert!(
            err.contains("host bits set; did you mean 10.0.0.0/8?"),
            "{err}"
        );
        let err = parse_net("[2001:db8::1/32]:443").unwrap_err().to_string();
        assert!(err.contains("did you mean [2001:db8::/32]:443?"), "{err}");
    }

    proptest! {
        #[test]
        fn path_parser_never_panics(s in "\\PC*") {
            let _ = parse_path(&s);
        }

        #[test]
        fn path_parser_never_panics_on_pathish(s in "[/a.*?\\[{}\0]{0,40}") {
            if let Ok(p) = parse_path(&s) {
                prop_assert_eq!(p.to_string(), s);
            }
        }

        #[test]
        fn net_parser_never_panics(s in "\\PC*") {
            let _ = parse_net(&s);
        }

        #[test]
        fn connect_parser_never_panics(s in "\\PC*") {
            let _ = parse_connect(&s);
        }

        #[test]
        fn net_parser_never_panics_on_netish(s in "[0-9a-f:./\\[\\]]{0,40}") {
            if let Ok(p) = parse_net(&s) {
                prop_assert_eq!(parse_net(&p.to_string()), Ok(p));
            }
        }

        #[test]
        fn valid_paths_round_trip(
            parts in proptest::collection::vec("[a-zA-Z0-9._ -]{1,12}", 0..8),
            tree in any::<bool>(),
        ) {
            prop_assume!(parts.iter().all(|p| p != "." && p != ".."));
            let dir = parts.iter().map(|p| format!("/{p}")).collect::<String>();
            let text = match (tree, dir.is_empty()) {
                (true, _) => format!("{dir}/**"),
                (false, true) => "/".to_owned(),
                (false, false) => dir.clone(),
            };
            let parsed = parse_path(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn valid_networks_round_trip(
            v4 in any::<u32>(), v6 in any::<u128>(), len in 0u8..=128, port in any::<u16>(),
            use_v6 in any::<bool>(), with_port in any::<bool>(),
        ) {
            let net = if use_v6 {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(v6), len).unwrap_or_default().trunc())
            } else {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(v4), len % 33).unwrap_or_default().trunc())
            };
            let port = (with_port && port != 0).then_some(port);
            let pattern = NetPattern { net: unmap(net), port };
            let text = pattern.to_string();
            prop_assert_eq!(parse_net(&text), Ok(pattern), "{}", text);
        }
    }
}
