//! One label's resolver: UDP and TCP sockets on loopback, where the kernel steers the label's
//! queries (agent-ebpf's dns.rs). The port a query arrives on says whose it is.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use agent_common::dns::Resolver;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
    time::timeout,
};
use tracing::warn;

use super::{Shared, telemetry::Outcome};

/// Queries of one label in flight at once; more are refused rather than queued without end.
const IN_FLIGHT: usize = 64;
/// A TCP client idle this long is hung up on.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The tasks of one label's sockets, stopped when dropped.
pub struct Server {
    tasks: Vec<JoinHandle<()>>,
    pub ports: Resolver,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Server {
    /// Binds the label's sockets on 127.0.0.1 and ::1 (ports the kernel picks). A family that
    /// can't be bound (no IPv6 loopback) gets port 0: the kernel then refuses that family's
    /// queries.
    pub async fn start(label: u32, shared: Arc<Shared>) -> anyhow::Result<Self> {
        let mut tasks = Vec::new();
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut ports = Resolver::default();
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        for (ip, udp, tcp) in [
            (v4, &mut ports.udp4, &mut ports.tcp4),
            (v6, &mut ports.udp6, &mut ports.tcp6),
        ] {
            match UdpSocket::bind(SocketAddr::new(ip, 0)).await {
                Ok(sock) => {
                    *udp = sock.local_addr()?.port();
                    let job = serve_udp(Arc::new(sock), label, shared.clone(), limit.clone());
                    tasks.push(tokio::spawn(job));
                }
                Err(e) if no_ipv6(ip, &e) => warn!(label, "no IPv6 DNS for labels: {e}"),
                Err(e) => return Err(e.into()),
            }
            match TcpListener::bind(SocketAddr::new(ip, 0)).await {
                Ok(listener) => {
                    *tcp = listener.local_addr()?.port();
                    let job = serve_tcp(listener, label, shared.clone(), limit.clone());
                    tasks.push(tokio::spawn(job));
                }
                Err(e) if no_ipv6(ip, &e) => {
                    warn!(label, "no IPv6 DNS over TCP for labels: {e}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self { tasks, ports })
    }
}

/// Whether binding `ip` failed because the host has no IPv6 loopback, the one failure that
/// leaves a family without a resolver rather than stopping the daemon.
fn no_ipv6(ip: IpAddr, e: &std::io::Error) -> bool {
    ip.is_ipv6()
        && matches!(
            e.raw_os_error(),
            Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
        )
}

async fn serve_udp(sock: Arc<UdpSocket>, label: u32, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(label, "receiving a DNS query: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        let permit = limit.clone().try_acquire_owned();
        tokio::spawn(async move {
            let reply = match permit {
                Ok(_held) => reply(&shared, label, &query, Transport::Udp).await,
                Err(_) => busy(&shared, label, &query),
            };
            if let Some(reply) = reply {
                let _ = sock.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, label: u32, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            label,
            shared.clone(),
            limit.clone(),
        ));
    }
}

/// Queries on one TCP connection, each with a two-byte length (RFC 1035 4.2.2), in turn.
async fn serve_connection(
    mut stream: TcpStream,
    label: u32,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
) {
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let reply = match limit.clone().try_acquire_owned() {
            Ok(_held) => reply(&shared, label, &query, Transport::Tcp).await,
            Err(_) => busy(&shared, label, &query),
        };
        let Some(reply) = reply else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&len.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

/// A reply with no records and `code`, to `request`.
fn error_reply(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    reply.to_vec().ok()
}

/// Too many queries of the label in flight: REFUSED, counted as failed.
fn busy(shared: &Shared, label: u32, query: &[u8]) -> Option<Vec<u8>> {
    shared.telemetry.count(label, Outcome::Failed);
    error_reply(&Message::from_vec(query).ok()?, ResponseCode::Refused)
}

/// The reply to one query of `label`, None when there is nothing to answer.
async fn reply(shared: &Shared, label: u32, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let Ok(request) = Message::from_vec(query) else {
        shared.telemetry.count(label, Outcome::Failed);
        return None;
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let (outcome, reply) = shared.resolve(label, &request, query, transport).await;
    shared.telemetry.count(label, outcome);
    match reply {
        Ok(bytes) => Some(bytes),
        Err(code) => error_reply(&request, code),
    }
}
