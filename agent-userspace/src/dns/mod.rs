//! Egress by host name. The kernel steers each labelled task's DNS queries (UDP and TCP to
//! port 53, any address) to this label's resolver in the daemon. The resolver judges the name
//! against the label's `network.connect` name rules, forwards allowed names to the upstream,
//! writes the answered addresses into the kernel's `HOSTS` map and only then replies. A
//! connect is then allowed by a name only to addresses this label's own lookups returned,
//! until their TTL and a grace have passed.

mod answer;
mod server;
mod table;
pub mod telemetry;
mod upstream;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use agent_common::{
    dns::{HostEntry, HostKey, Resolver},
    maps,
};
use agent_policy::{Mode, NameJudgement, Policy, PolicySet};
use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use clap::Args;
use hickory_proto::op::{Message, ResponseCode};
use tracing::{info, warn};

pub(crate) use self::answer::internal;
use self::{
    answer::{OwnAddresses, admit},
    server::{Server, Transport},
    table::{Answer, Table},
    telemetry::{Outcome, Telemetry},
    upstream::Upstream,
};
use crate::{counters::Counters, events::since_boot, maps::take, plan::LabelState};

/// `actgate run`'s DNS options.
#[derive(Args, Clone, Debug)]
#[group(id = "dns")]
pub struct Options {
    /// Where the labels' DNS queries are forwarded: ADDR or ADDR:PORT ([V6]:PORT). Default:
    /// the first nameserver in /etc/resolv.conf.
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub dns_upstream: Option<String>,
    /// Seconds an answered address stays allowed after its record's TTL.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub dns_grace: u64,
}

/// A label's rules as the resolver applies them.
struct LabelRules {
    policy: Arc<Policy>,
    audit: bool,
}

/// What every label's resolver shares.
pub struct Shared {
    upstream: Upstream,
    rules: RwLock<HashMap<u32, LabelRules>>,
    table: Mutex<Table>,
    telemetry: Arc<Telemetry>,
    counters: Arc<Counters>,
    own: OwnAddresses,
}

fn now_ns() -> u64 {
    since_boot().as_nanos() as u64
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the rebinding guard lets `ip` through for a name judged `j`: a name matched
    /// only by wildcards, or a public one, may not point inside (loopback, link-local,
    /// private, this host) unless an address rule allows that address.
    fn keeps(&self, policy: &Policy, j: &NameJudgement, ip: IpAddr) -> bool {
        !j.guarded || !(internal(ip) || self.own.contains(ip)) || policy.trusts_address(ip)
    }

    /// Judges, forwards and records one query: the outcome to count, and the reply's bytes or
    /// the error code to answer with.
    async fn resolve(
        &self,
        label: u32,
        request: &Message,
        query: &[u8],
        transport: Transport,
    ) -> (Outcome, Result<Vec<u8>, ResponseCode>) {
        let refused = (Outcome::Refused, Err(ResponseCode::Refused));
        let Some((policy, audit)) = self
            .rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&label)
            .map(|r| (r.policy.clone(), r.audit))
        else {
            return refused;
        };
        // A revoked label reaches nothing, its resolver included.
        if self.counters.revocations.get(label).is_some() {
            return refused;
        }
        let [question] = request.queries.as_slice() else {
            return (Outcome::Failed, Err(ResponseCode::FormErr));
        };
        let name = normalize(&question.name().to_ascii());
        let judgement = policy.judge_name(&name);
        if judgement.refused && !audit {
            return refused;
        }
        let forwarded = match transport {
            Transport::Udp => self.upstream.udp(query).await,
            Transport::Tcp => self.upstream.tcp(query).await,
        };
        let bytes = match forwarded {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(label, name, "forwarding a DNS query: {e:#}");
                return (Outcome::Failed, Err(ResponseCode::ServFail));
            }
        };
        if judgement.refused {
            // Audit mode: answered, counted as what enforce mode would have refused; its
            // addresses stay out of the map, so the kernel records the connects as audits.
            return (Outcome::Audit, Ok(bytes));
        }
        let Ok(mut reply) = Message::from_vec(&bytes) else {
            return (Outcome::Failed, Err(ResponseCode::ServFail));
        };
        let admitted = admit(&mut reply, |ip| self.keeps(&policy, &judgement, ip));
        if let Err(e) = self.record(label, &name, &judgement, &admitted.addrs) {
            warn!(label, name, "{e}");
            return (Outcome::Failed, Err(ResponseCode::ServFail));
        }
        // Audit mode drops nothing: the guard's addresses stay out of the map only.
        if admitted.dropped == 0 || audit {
            return (Outcome::Allowed, Ok(bytes));
        }
        self.telemetry.dropped(label, admitted.dropped);
        match reply.to_vec() {
            Ok(bytes) => (Outcome::Allowed, Ok(bytes)),
            Err(_) => (Outcome::Failed, Err(ResponseCode::ServFail)),
        }
    }

    fn record(
        &self,
        label: u32,
        name: &str,
        judgement: &NameJudgement,
        addrs: &[(IpAddr, u32)],
    ) -> Result<(), table::TableError> {
        let answer = Answer {
            name,
            judgement,
            addrs,
        };
        self.table()
            .record(label, &answer, now_ns(), &self.telemetry)
    }
}

/// A question's name as rules see it: lower case, without the root's dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The resolvers of the labels in force.
pub struct Dns {
    shared: Arc<Shared>,
    resolvers: BpfHashMap<MapData, u32, Resolver>,
    servers: HashMap<u32, Server>,
}

/// Descriptors each label's resolver holds: UDP and TCP, on 127.0.0.1 and ::1.
const FDS_PER_LABEL: u64 = 4;

/// Raises the limit of open files for the resolvers of `MAX_LABELS` labels, beyond the usual
/// soft limit of 1,024: root may raise the hard limit too; otherwise the soft one goes up to
/// the hard one. A limit still too low is logged; starting a resolver then fails with the
/// reason.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = u64::from(agent_common::MAX_LABELS) * FDS_PER_LABEL + 1024;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let raised = [wanted.max(hard), hard]
        .into_iter()
        .filter(|&n| n > soft)
        .find(|&n| setrlimit(Resource::RLIMIT_NOFILE, n, n.max(hard)).is_ok())
        .unwrap_or(soft);
    if raised < wanted {
        warn!(
            "the limit of open files ({raised}) is below the {wanted} that the DNS resolvers of \
             {} labels need",
            agent_common::MAX_LABELS
        );
    }
}

impl Dns {
    pub fn new(
        opts: &Options,
        ebpf: &mut Ebpf,
        telemetry: Arc<Telemetry>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        raise_fd_limit();
        let upstream = Upstream::choose(opts.dns_upstream.as_deref())?;
        info!(upstream = %upstream.0, "labels' DNS queries are forwarded to {}", upstream.0);
        let hosts: BpfHashMap<MapData, HostKey, HostEntry> = take(ebpf, maps::HOSTS)?;
        let shared = Arc::new(Shared {
            upstream,
            rules: RwLock::new(HashMap::new()),
            table: Mutex::new(Table::new(hosts, opts.dns_grace)),
            telemetry,
            counters,
            own: OwnAddresses::default(),
        });
        let sweeper = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeper.table().sweep(now_ns(), &sweeper.telemetry);
            }
        });
        Ok(Self {
            shared,
            resolvers: take(ebpf, maps::DNS_RESOLVERS)?,
            servers: HashMap::new(),
        })
    }

    /// Gives every label in force a resolver under its policy's rules, and takes it from
    /// labels no longer in force (orphaned labels included: their queries are then refused
    /// by the kernel). Lookups of labels that stay are judged again under their new rules.
    pub async fn configure(
        &mut self,
        labels: &BTreeMap<u32, LabelState>,
        set: &PolicySet,
    ) -> Result<()> {
        let mut wanted = HashMap::new();
        for (index, state) in labels.iter().filter(|(_, s)| !s.orphaned) {
            if let Some(policy) = set.policies.iter().find(|p| p.labels.contains(&state.name)) {
                let rules = LabelRules {
                    policy: Arc::new(policy.clone()),
                    audit: state.mode == Mode::Audit,
                };
                wanted.insert(*index, rules);
            }
        }
        let gone: Vec<u32> = self
            .servers
            .keys()
            .filter(|i| !wanted.contains_key(i))
            .copied()
            .collect();
        for index in gone {
            if let Err(e) = self.resolvers.remove(&index) {
                warn!(
                    label = index,
                    "removing a label's resolver from the kernel: {e}"
                );
            }
            self.servers.remove(&index);
            let telemetry = &self.shared.telemetry;
            self.shared.table().remove_label(index, telemetry);
        }
        for (index, rules) in &wanted {
            let policy = rules.policy.clone();
            let shared = &self.shared;
            shared.table().rejudge(
                *index,
                |name| policy.judge_name(name),
                |j, ip| shared.keeps(&policy, j, ip),
                now_ns(),
                &shared.telemetry,
            );
        }
        let new: Vec<u32> = wanted
            .keys()
            .filter(|i| !self.servers.contains_key(i))
            .copied()
            .collect();
        *self.shared.rules.write().unwrap_or_else(|e| e.into_inner()) = wanted;
        for index in new {
            let server = Server::start(index, self.shared.clone())
                .await
                .with_context(|| format!("starting the DNS resolver of label {index}"))?;
            self.resolvers
                .insert(index, server.ports, 0)
                .with_context(|| format!("registering the DNS resolver of label {index}"))?;
            self.servers.insert(index, server);
        }
        Ok(())
    }
}
