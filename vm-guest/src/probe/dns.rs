//! `vm-guest try dns-query`: one DNS query the way a workload makes it, to a server the
//! workload chose, then connects to the addresses answered.
//!
//! It prints one line, `RCODE[ ADDR[=VERDICT[,VERDICT]]]…`: the reply's rcode (`NOERROR`,
//! `REFUSED`, …), each address of its A/AAAA records and, with `--connect PORT`, what a TCP
//! connect to it met (`OK` or the errno's name), again after `--again-after SECS`. A query
//! that got no usable reply prints what failed instead (`send EPERM`, `recv timed out`, a
//! reply from another address than the server asked) and exits 1.

use std::{
    fmt::Write as _,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    thread,
    time::Duration,
};

use clap::{Args, ValueEnum};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{RData, RecordType},
};

use super::{connect_tcp, errno_name};
use crate::dns_server::fqdn;

/// How long the probe waits for a reply: longer than the daemon's own forward may take.
const REPLY_WITHIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, ValueEnum)]
pub enum QType {
    A,
    Aaaa,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Via {
    /// sendto(2) and recvfrom(2) on an unconnected UDP socket.
    Udp,
    /// connect(2), send(2) and recvfrom(2) on a UDP socket, as glibc's stub resolver does.
    UdpConnected,
    /// A TCP connection, each message after its two-byte length.
    Tcp,
}

#[derive(Args, Clone)]
pub struct Lookup {
    /// The name to look up.
    name: String,
    #[arg(value_enum)]
    qtype: QType,
    #[arg(long, value_enum, default_value = "udp")]
    via: Via,
    /// The DNS server asked, at port 53: nothing needs to listen there for a labelled task,
    /// whose queries the kernel steers to the daemon.
    #[arg(long, default_value = "127.0.0.99")]
    server: IpAddr,
    /// The server's port: 53 but in the probe's own unit test.
    #[arg(long, default_value_t = 53, hide = true)]
    port: u16,
    /// Connect over TCP to each address answered, at this port.
    #[arg(long)]
    connect: Option<u16>,
    /// Connect to each address once more, this many seconds after the first connects.
    #[arg(long, requires = "connect")]
    again_after: Option<f64>,
}

/// What a failed step met: the errno's name, or "timed out".
fn met(step: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{step} timed out"),
        _ => format!("{step} {}", errno_name(e)),
    }
}

/// Fails unless `seen`, the reply's source or the socket's peer, is the server asked.
fn expect_server(what: &str, seen: SocketAddr, server: SocketAddr) -> Result<(), String> {
    if seen == server {
        Ok(())
    } else {
        Err(format!("{what} says {seen}, not {server}"))
    }
}

fn udp(server: SocketAddr, query: &[u8], connected: bool) -> Result<Vec<u8>, String> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => "0.0.0.0:0".parse(),
        SocketAddr::V6(_) => "[::]:0".parse(),
    }
    .map_err(|e| format!("{e}"))?;
    let s = UdpSocket::bind(any).map_err(|e| met("bind", &e))?;
    s.set_read_timeout(Some(REPLY_WITHIN))
        .map_err(|e| met("setsockopt", &e))?;
    if connected {
        s.connect(server).map_err(|e| met("connect", &e))?;
        expect_server(
            "getpeername",
            s.peer_addr().map_err(|e| met("getpeername", &e))?,
            server,
        )?;
        s.send(query).map_err(|e| met("send", &e))?;
    } else {
        s.send_to(query, server).map_err(|e| met("send", &e))?;
    }
    let mut buf = vec![0u8; 65535];
    let (n, from) = s.recv_from(&mut buf).map_err(|e| met("recv", &e))?;
    expect_server("recvfrom", from, server)?;
    buf.truncate(n);
    Ok(buf)
}

fn tcp(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(server).map_err(|e| met("connect", &e))?;
    expect_server(
        "getpeername",
        s.peer_addr().map_err(|e| met("getpeername", &e))?,
        server,
    )?;
    s.set_read_timeout(Some(REPLY_WITHIN))
        .map_err(|e| met("setsockopt", &e))?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    s.write_all(&framed).map_err(|e| met("send", &e))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| met("recv", &e))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut reply).map_err(|e| met("recv", &e))?;
    Ok(reply)
}

/// The rcode as dig and the RFCs write it.
fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn verdict(addr: SocketAddr) -> String {
    match connect_tcp(&addr) {
        Ok(()) => "OK".into(),
        Err(e) => errno_name(&e),
    }
}

fn lookup(l: &Lookup) -> Result<String, String> {
    let name = fqdn(&l.name).map_err(|e| format!("{e:#}"))?;
    let ty = match l.qtype {
        QType::A => RecordType::A,
        QType::Aaaa => RecordType::AAAA,
    };
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(name, ty));
    let bytes = query
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))?;
    let server = SocketAddr::new(l.server, l.port);
    let reply = match l.via {
        Via::Udp => udp(server, &bytes, false)?,
        Via::UdpConnected => udp(server, &bytes, true)?,
        Via::Tcp => tcp(server, &bytes)?,
    };
    let reply = Message::from_vec(&reply).map_err(|e| format!("undecodable reply: {e}"))?;
    if reply.metadata.message_type != MessageType::Response
        || reply.metadata.id != query.metadata.id
    {
        return Err(format!(
            "reply id {} is no response to query id {}",
            reply.metadata.id, query.metadata.id
        ));
    }
    let addrs: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    let mut verdicts: Vec<String> = match l.connect {
        Some(port) => addrs
            .iter()
            .map(|a| verdict(SocketAddr::new(*a, port)))
            .collect(),
        None => Vec::new(),
    };
    if let (Some(port), Some(secs)) = (l.connect, l.again_after) {
        thread::sleep(Duration::from_secs_f64(secs));
        for (a, v) in addrs.iter().zip(&mut verdicts) {
            *v = format!("{v},{}", verdict(SocketAddr::new(*a, port)));
        }
    }
    let mut line = rcode_name(reply.metadata.response_code);
    for (i, a) in addrs.iter().enumerate() {
        let _ = write!(line, " {a}");
        if let Some(v) = verdicts.get(i) {
            let _ = write!(line, "={v}");
        }
    }
    Ok(line)
}

pub fn run(l: &Lookup) -> ExitCode {
    match lookup(l) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{why}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::dns_server::{Upstream, Zone};

    #[test]
    fn probe_reads_the_upstreams_answers_and_connects_over_each_transport() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let zone = Zone::default().record("ok.actgate.test", ip, 60);
        let up = Upstream::start(SocketAddr::new(ip, 0), zone).unwrap();
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let lookup_of = |name: &str, via, connect| Lookup {
            name: name.into(),
            qtype: QType::A,
            via,
            server: ip,
            port: up.addr().port(),
            connect,
            again_after: None,
        };
        let port = listener.local_addr().unwrap().port();
        for via in [Via::Udp, Via::UdpConnected, Via::Tcp] {
            assert_eq!(
                lookup(&lookup_of("ok.actgate.test", via, Some(port))),
                Ok("NOERROR 127.0.0.1=OK".to_string())
            );
            assert_eq!(
                lookup(&lookup_of("no.actgate.test", via, None)),
                Ok("NXDOMAIN".to_string())
            );
        }
        assert_eq!(up.queries("OK.actgate.test."), 3);
    }
}
