//! The DNS server the daemon forwards to in the VM tests: a fixed zone served over UDP and TCP
//! on one loopback address, which counts every query it receives, so a test can tell that a
//! name the daemon refused never reached it.
//!
//! It runs as threads of the (unlabelled) test process: the kernel steers only labelled
//! tasks' queries, so the daemon's own queries reach it unchanged.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
};

/// How often the server threads look whether they should stop.
const POLL: Duration = Duration::from_millis(100);

/// The names served: each with its addresses and their TTL. A name of the zone without a
/// record of the type asked is answered NOERROR with no records; a name outside it NXDOMAIN.
#[derive(Clone, Default)]
pub struct Zone {
    records: Vec<(String, IpAddr, u32)>,
    /// Names whose queries are counted but never answered, so the daemon's forward fails.
    silent: Vec<String>,
}

impl Zone {
    /// Adds an A or AAAA record (by the address's family) for `name`.
    pub fn record(mut self, name: &str, addr: IpAddr, ttl: u32) -> Zone {
        self.records.push((key(name), addr, ttl));
        self
    }

    /// Makes `name` one that is never answered.
    pub fn silent(mut self, name: &str) -> Zone {
        self.silent.push(key(name));
        self
    }

    /// The answer to `query`, or None for a query left unanswered.
    fn answer(&self, query: &Message) -> Option<Message> {
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.authoritative = true;
        reply.add_queries(query.queries.iter().cloned());
        let Some(q) = query.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Some(reply);
        };
        let name = key(&q.name.to_ascii());
        if self.silent.contains(&name) {
            return None;
        }
        let mut known = false;
        for (n, addr, ttl) in &self.records {
            if *n != name {
                continue;
            }
            known = true;
            let data = match (addr, q.query_type) {
                (IpAddr::V4(a), RecordType::A) => RData::A(A(*a)),
                (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
                _ => continue,
            };
            reply.add_answer(Record::from_rdata(q.name.clone(), *ttl, data));
        }
        if !known {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        Some(reply)
    }
}

/// A name as the zone and the query log keep it: lower case, without the root's dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The running server; stopped when dropped.
pub struct Upstream {
    addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What both transports share.
#[derive(Clone)]
struct Shared {
    zone: Arc<Zone>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    /// Counts the query in `bytes` and returns the reply to send, if any.
    fn handle(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(bytes).ok()?;
        if query.metadata.message_type != MessageType::Query
            || query.metadata.op_code != OpCode::Query
        {
            return None;
        }
        if let Some(q) = query.queries.first() {
            *self
                .queries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key(&q.name.to_ascii()))
                .or_default() += 1;
        }
        self.zone.answer(&query)?.to_vec().ok()
    }

    fn serve_udp(self, socket: UdpSocket) {
        let mut buf = [0u8; 4096];
        while !self.stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if let Some(reply) = self.handle(&buf[..n]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    }

    fn serve_tcp(self, listener: TcpListener) {
        let mut conns = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let shared = self.clone();
                    conns.push(thread::spawn(move || shared.serve_conn(stream)));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    }

    /// Messages on one TCP connection, each after its two-byte length (RFC 1035 4.2.2),
    /// until the peer closes it or the server stops.
    fn serve_conn(self, mut stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(POLL));
        while !self.stop.load(Ordering::Relaxed) {
            let mut len = [0u8; 2];
            match read_all(&mut stream, &mut len, &self.stop) {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if !matches!(read_all(&mut stream, &mut msg, &self.stop), Ok(true)) {
                return;
            }
            if let Some(reply) = self.handle(&msg) {
                let Ok(n) = u16::try_from(reply.len()) else {
                    return;
                };
                let mut framed = n.to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).is_err() {
                    return;
                }
            }
        }
    }
}

/// Fills `buf`, waiting out read timeouts until `stop`; false at end of stream.
fn read_all(stream: &mut TcpStream, buf: &mut [u8], stop: &AtomicBool) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Upstream {
    /// Serves `zone` on `addr` over UDP and TCP (port 0: one the kernel picks).
    pub fn start(addr: SocketAddr, zone: Zone) -> Result<Upstream> {
        let udp = UdpSocket::bind(addr).with_context(|| format!("DNS over UDP on {addr}"))?;
        udp.set_read_timeout(Some(POLL))?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr).with_context(|| format!("DNS over TCP on {addr}"))?;
        tcp.set_nonblocking(true)?;
        let shared = Shared {
            zone: Arc::new(zone),
            queries: Arc::default(),
            stop: Arc::default(),
        };
        let (u, t) = (shared.clone(), shared.clone());
        Ok(Upstream {
            addr,
            queries: shared.queries,
            stop: shared.stop,
            threads: vec![
                thread::spawn(move || u.serve_udp(udp)),
                thread::spawn(move || t.serve_tcp(tcp)),
            ],
        })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The queries for `name` received so far, over both transports.
    pub fn queries(&self, name: &str) -> usize {
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The name as the wire carries it: absolute.
pub fn fqdn(name: &str) -> Result<Name> {
    let mut n = Name::from_ascii(name).with_context(|| format!("DNS name {name}"))?;
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(zone: &Zone, name: &str, ty: RecordType) -> Option<Message> {
        let mut q = Message::query();
        q.add_query(Query::query(fqdn(name).unwrap(), ty));
        let shared = Shared {
            zone: Arc::new(zone.clone()),
            queries: Arc::default(),
            stop: Arc::default(),
        };
        let reply = shared.handle(&q.to_vec().unwrap())?;
        Some(Message::from_vec(&reply).unwrap())
    }

    #[test]
    fn zone_answers_its_records_nxdomain_otherwise_and_stays_silent_where_told() {
        let zone = Zone::default()
            .record("ok.actgate.test", "127.0.0.21".parse().unwrap(), 60)
            .record("ok.actgate.test", "::1".parse().unwrap(), 30)
            .silent("quiet.actgate.test");
        let a = ask(&zone, "OK.actgate.test", RecordType::A).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].ttl, 60);
        assert_eq!(
            a.answers[0].data,
            RData::A(A("127.0.0.21".parse().unwrap()))
        );
        let aaaa = ask(&zone, "ok.actgate.test", RecordType::AAAA).unwrap();
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA("::1".parse().unwrap()))
        );
        let none = ask(&zone, "no.actgate.test", RecordType::A).unwrap();
        assert_eq!(none.metadata.response_code, ResponseCode::NXDomain);
        assert!(ask(&zone, "quiet.actgate.test", RecordType::A).is_none());
    }
}
