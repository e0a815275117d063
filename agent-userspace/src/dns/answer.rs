//! What of an upstream answer a label gets: the addresses of its A and AAAA records, less
//! those the rebinding guard drops.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::Message,
    rr::{RData, Record},
};

/// The address of an A or AAAA record.
fn address(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// Addresses a public name has no business pointing at: loopback, link-local (cloud metadata
/// at 169.254.169.254 among them), private and shared ranges, unspecified, multicast.
pub fn internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT: private to the provider's network.
        || (a == 100 && (b & 0xc0) == 64)
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fe80::/10 link-local, fec0::/10 the old site-local, fc00::/7 unique local.
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first & 0xfe00) == 0xfc00
}

/// The host's own addresses, read again when older than a few seconds (interfaces come and go).
#[derive(Debug, Default)]
pub struct OwnAddresses(Mutex<Option<(Instant, Vec<IpAddr>)>>);

const OWN_FRESH_FOR: Duration = Duration::from_secs(5);

impl OwnAddresses {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let stale = held
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > OWN_FRESH_FOR);
        if stale {
            *held = Some((Instant::now(), read_own()));
        }
        held.as_ref().is_some_and(|(_, all)| all.contains(&ip))
    }
}

fn read_own() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        // Unreadable: every address then counts as the host's own only if internal, which
        // the guard drops anyway.
        return Vec::new();
    };
    addrs
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

/// What an answer gave the label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Addresses kept in the answer, with their records' TTLs.
    pub addrs: Vec<(IpAddr, u32)>,
    /// Records removed from the answer.
    pub dropped: u64,
}

/// Removes from the answer section the A and AAAA records `keep` rejects, and returns the
/// addresses of the rest. Records of other types (CNAME chains) stay as they are; addresses
/// in the other sections are never allowed, so a client that uses them is refused.
pub fn admit(reply: &mut Message, keep: impl Fn(IpAddr) -> bool) -> Admitted {
    let mut out = Admitted::default();
    reply.answers.retain(|record| match address(record) {
        Some(ip) if keep(ip) => {
            out.addrs.push((ip, record.ttl));
            true
        }
        Some(_) => {
            out.dropped += 1;
            false
        }
        None => true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, rdata};

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in [
            "140.82.112.5",
            "100.128.0.1",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn admit_drops_rejected_addresses_and_keeps_other_records() {
        let name = Name::from_ascii("a.example.test.").unwrap();
        let mut reply = Message::response(7, hickory_proto::op::OpCode::Query);
        reply.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::CNAME(rdata::CNAME(Name::from_ascii("b.example.test.").unwrap())),
        ));
        reply.add_answer(Record::from_rdata(
            name.clone(),
            30,
            RData::A(rdata::A(Ipv4Addr::new(140, 82, 112, 5))),
        ));
        reply.add_answer(Record::from_rdata(
            name,
            30,
            RData::A(rdata::A(Ipv4Addr::LOCALHOST)),
        ));
        let admitted = admit(&mut reply, |ip| !internal(ip));
        assert_eq!(admitted.dropped, 1);
        assert_eq!(admitted.addrs, vec![("140.82.112.5".parse().unwrap(), 30)]);
        assert_eq!(reply.answers.len(), 2);
    }
}
