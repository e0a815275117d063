//! The resolver the labels' queries are forwarded to: `--dns-upstream`, or the host's own
//! (the first nameserver of /etc/resolv.conf).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// How long the upstream may take to answer one query.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

const DNS_PORT: u16 = agent_common::dns::DNS_PORT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

impl Upstream {
    /// `--dns-upstream`'s value, or the host's resolver.
    pub fn choose(option: Option<&str>) -> Result<Self> {
        match option {
            Some(text) => parse(text).map(Self),
            None => {
                let path = "/etc/resolv.conf";
                let text = fs::read_to_string(path).unwrap_or_default();
                // glibc's own choice when resolv.conf names no server.
                let addr = first_nameserver(&text).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                Ok(Self(SocketAddr::new(addr, DNS_PORT)))
            }
        }
    }

    /// Forwards a query over UDP and returns the reply with the same id.
    pub async fn udp(&self, query: &[u8]) -> Result<Vec<u8>> {
        let local: SocketAddr = match self.0 {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)
            .await
            .context("binding a UDP socket")?;
        sock.connect(self.0)
            .await
            .with_context(|| format!("connecting to {}", self.0))?;
        sock.send(query).await.context("sending the query")?;
        let mut buf = vec![0u8; 65535];
        timeout(ANSWER_WITHIN, async {
            loop {
                let n = sock.recv(&mut buf).await.context("receiving the answer")?;
                // A stray datagram with another id is not the answer.
                if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                    return Ok(buf[..n].to_vec());
                }
            }
        })
        .await
        .with_context(|| format!("{} did not answer within {ANSWER_WITHIN:?}", self.0))?
    }

    /// Forwards a query over TCP (two-byte length prefix, RFC 1035 4.2.2).
    pub async fn tcp(&self, query: &[u8]) -> Result<Vec<u8>> {
        timeout(ANSWER_WITHIN, async {
            let mut s = TcpStream::connect(self.0)
                .await
                .with_context(|| format!("connecting to {}", self.0))?;
            let len = u16::try_from(query.len()).context("query too long")?;
            s.write_all(&len.to_be_bytes()).await?;
            s.write_all(query).await?;
            let n = s.read_u16().await.context("reading the answer's length")?;
            let mut buf = vec![0u8; usize::from(n)];
            s.read_exact(&mut buf).await.context("reading the answer")?;
            anyhow::Ok(buf)
        })
        .await
        .with_context(|| format!("{} did not answer within {ANSWER_WITHIN:?}", self.0))?
    }
}

/// `ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address.
fn parse(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    bail!("--dns-upstream {text:?}: expected ADDR or ADDR:PORT ([V6]:PORT for IPv6)")
}

/// The first `nameserver` line's address (a zone suffix `%eth0` is dropped).
fn first_nameserver(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver")
            .then(|| words.next()?.split('%').next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        assert_eq!(parse("10.0.0.2").unwrap(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(
            parse("127.0.0.53:5353").unwrap(),
            "127.0.0.53:5353".parse().unwrap()
        );
        assert_eq!(parse("[::1]:5353").unwrap(), "[::1]:5353".parse().unwrap());
        assert_eq!(parse("fd00::53").unwrap(), "[fd00::53]:53".parse().unwrap());
        assert!(parse("dns.example").is_err());
    }

    #[test]
    fn resolv_conf_first_nameserver() {
        let text = "# comment\nsearch lan\nnameserver fe80::1%eth0\nnameserver 10.0.0.1\n";
        assert_eq!(first_nameserver(text), Some("fe80::1".parse().unwrap()));
        assert_eq!(first_nameserver("options ndots:2\n"), None);
        assert_eq!(
            first_nameserver("nameserver bogus\nnameserver 1.1.1.1"),
            Some("1.1.1.1".parse().unwrap())
        );
    }
}
