//! The local servers the probes connect to, and the probe that checks both sides.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};

use crate::{
    expect_eq,
    harness::{Ctx, Outcome},
};

/// A TCP listener and a UDP socket bound to one loopback address and port.
struct Endpoint {
    addr: SocketAddr,
    tcp: TcpListener,
    udp: UdpSocket,
}

/// The local servers the probes connect to, so an allowed connect really connects and a
/// denied one is seen not to.
pub struct Listeners(Vec<Endpoint>);

/// An IPv4-mapped IPv6 address reaches the IPv4 listener.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl Listeners {
    pub fn start(addrs: &[&str]) -> Result<Listeners> {
        let mut eps = Vec::new();
        for a in addrs {
            let addr: SocketAddr = a.parse().with_context(|| format!("address {a}"))?;
            let tcp = TcpListener::bind(addr).with_context(|| format!("TCP listener on {a}"))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(addr).with_context(|| format!("UDP socket on {a}"))?;
            eps.push(Endpoint { addr, tcp, udp });
        }
        Ok(Listeners(eps))
    }

    fn endpoint(&self, addr: &str) -> Result<&Endpoint> {
        let want = unmapped(addr.parse().with_context(|| format!("address {addr}"))?);
        self.0
            .iter()
            .find(|e| e.addr == want)
            .ok_or_else(|| anyhow!("no listener on {want}"))
    }

    /// Connections accepted on `addr`'s listener; waits up to 2 s for the first when `expect`.
    fn accepted(&self, addr: &str, expect: bool) -> Result<usize> {
        let e = self.endpoint(addr)?;
        let deadline = Instant::now() + Duration::from_secs(if expect { 2 } else { 0 });
        let mut n = 0;
        loop {
            match e.tcp.accept() {
                Ok(_) => n += 1,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if n > 0 || Instant::now() >= deadline {
                        return Ok(n);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Datagrams received on `addr`: waits up to 2 s for one when `expect`, 300 ms otherwise.
    fn received(&self, addr: &str, expect: bool) -> Result<usize> {
        let e = self.endpoint(addr)?;
        let mut wait = Duration::from_millis(if expect { 2000 } else { 300 });
        let mut n = 0;
        let mut buf = [0u8; 256];
        loop {
            e.udp.set_read_timeout(Some(wait))?;
            match e.udp.recv(&mut buf) {
                Ok(_) => {
                    n += 1;
                    wait = Duration::from_millis(50);
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(n);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Forgets whatever earlier tests left queued.
    fn drain(&self) -> Result<()> {
        for e in &self.0 {
            let a = e.addr.to_string();
            self.accepted(&a, false)?;
            e.udp.set_nonblocking(true)?;
            let mut buf = [0u8; 256];
            while e.udp.recv(&mut buf).is_ok() {}
            e.udp.set_nonblocking(false)?;
        }
        Ok(())
    }
}

/// One connect probe as `label` (None: unlabelled): asserts its verdict, and that the
/// listener saw exactly one connection or datagram when allowed and none when denied.
pub fn attempt(
    ctx: &Ctx,
    l: &Listeners,
    label: Option<&str>,
    probe: &str,
    addr: &str,
    want: &str,
) -> Outcome {
    l.drain()?;
    let who = label.unwrap_or("unlabelled");
    expect_eq!(
        ctx.attempt(label, &[probe, addr]),
        want,
        "{probe} {addr} as {who}"
    );
    let arrived = if probe == "connect-tcp" {
        l.accepted(addr, want == "OK")?
    } else {
        l.received(addr, want == "OK")?
    };
    let what = if probe == "connect-tcp" {
        "connections accepted"
    } else {
        "datagrams received"
    };
    expect_eq!(
        arrived,
        usize::from(want == "OK"),
        "{what} by the listener on {addr} after {probe} as {who}"
    );
    Ok(())
}

pub fn run_cases(
    ctx: &Ctx,
    l: &Listeners,
    label: Option<&str>,
    cases: &[(&str, &str, &str)],
) -> Outcome {
    for (probe, addr, want) in cases {
        attempt(ctx, l, label, probe, addr, want)?;
    }
    Ok(())
}
