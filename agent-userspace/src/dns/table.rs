//! The kernel's `HOSTS` map as a projection of each label's lookups. The daemon keeps what
//! each name resolved to and until when; the map holds, per label, address and port, what the
//! names say (allow, deny or both) and the latest expiry. Every change is written to the map
//! before the answer that caused it is sent, so the workload never holds an address the
//! kernel doesn't allow yet.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use agent_common::{
    NET_FAMILY_V4, NET_FAMILY_V6, RULE_ALLOW, RULE_DENY,
    dns::{HostEntry, HostKey},
};
use agent_policy::NameJudgement;
use aya::maps::{HashMap as BpfHashMap, MapData};
use thiserror::Error;

use super::telemetry::Telemetry;

/// Most names a label has addresses for at once.
pub const MAX_NAMES: usize = 512;
/// Most (address, port) entries a label has in `HOSTS` at once.
pub const MAX_ENTRIES: usize = 2048;

#[derive(Debug, Error)]
pub enum TableError {
    #[error("writing {action} the kernel's HOSTS map: {source}")]
    Map {
        action: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What one name resolved to for one label.
struct Lookup {
    /// The name's id in `Telemetry`'s names, for events.
    host: u32,
    judgement: NameJudgement,
    /// Address → CLOCK_MONOTONIC ns after which it no longer counts.
    addrs: HashMap<IpAddr, u64>,
}

impl Lookup {
    fn expires(&self) -> u64 {
        self.addrs.values().copied().max().unwrap_or(0)
    }
}

#[derive(Default)]
struct Label {
    lookups: HashMap<String, Lookup>,
    /// What `HOSTS` holds for the label now.
    entries: HashMap<HostKey, HostEntry>,
}

/// One label's answer to record.
pub struct Answer<'a> {
    pub name: &'a str,
    pub judgement: &'a NameJudgement,
    /// The admitted addresses and their records' TTLs (s).
    pub addrs: &'a [(IpAddr, u32)],
}

pub struct Table {
    map: BpfHashMap<MapData, HostKey, HostEntry>,
    labels: HashMap<u32, Label>,
    /// Seconds an address stays past its TTL.
    grace_s: u64,
}

impl Table {
    pub fn new(map: BpfHashMap<MapData, HostKey, HostEntry>, grace_s: u64) -> Self {
        Self {
            map,
            labels: HashMap::new(),
            grace_s,
        }
    }

    /// Records an answer for `label` and writes what changes into `HOSTS`. Names and entries
    /// over the label's limits evict the lookups that expire first (counted); a full map
    /// evicts the same way, and fails when nothing of the label is left to evict.
    pub fn record(
        &mut self,
        label: u32,
        answer: &Answer,
        now_ns: u64,
        telemetry: &Telemetry,
    ) -> Result<(), TableError> {
        let grace = self.grace_s;
        let l = self.labels.entry(label).or_default();
        let lookup = l
            .lookups
            .entry(answer.name.to_owned())
            .or_insert_with(|| Lookup {
                host: telemetry.name_id(answer.name),
                judgement: answer.judgement.clone(),
                addrs: HashMap::new(),
            });
        lookup.judgement = answer.judgement.clone();
        for (ip, ttl) in answer.addrs {
            let until = now_ns + (u64::from(*ttl) + grace) * 1_000_000_000;
            let at = lookup.addrs.entry(ip.to_canonical()).or_insert(0);
            *at = (*at).max(until);
        }
        while l.lookups.len() > MAX_NAMES && evict(l, answer.name, telemetry, label) {}
        loop {
            let wanted = project(label, &l.lookups, now_ns);
            if wanted.len() > MAX_ENTRIES && evict(l, answer.name, telemetry, label) {
                continue;
            }
            match apply(&mut self.map, &mut l.entries, wanted) {
                Ok(()) => break,
                Err(e) if !evict(l, answer.name, telemetry, label) => return Err(e),
                Err(_) => {}
            }
        }
        telemetry.set_addresses(label, addresses(&l.entries));
        Ok(())
    }

    /// Drops what has expired. The kernel ignores expired entries already; this frees them.
    pub fn sweep(&mut self, now_ns: u64, telemetry: &Telemetry) {
        for (label, l) in &mut self.labels {
            for lookup in l.lookups.values_mut() {
                lookup.addrs.retain(|_, until| *until > now_ns);
            }
            forget(l, |lookup| lookup.addrs.is_empty(), telemetry);
            let wanted = project(*label, &l.lookups, now_ns);
            if let Err(e) = apply(&mut self.map, &mut l.entries, wanted) {
                tracing::warn!(label, "removing expired host addresses: {e}");
            }
            telemetry.set_addresses(*label, addresses(&l.entries));
        }
    }

    /// Judges the label's lookups again under new rules: names now refused are forgotten,
    /// addresses `keep` rejects are dropped, ports follow the new rules.
    pub fn rejudge(
        &mut self,
        label: u32,
        judge: impl Fn(&str) -> NameJudgement,
        keep: impl Fn(&NameJudgement, IpAddr) -> bool,
        now_ns: u64,
        telemetry: &Telemetry,
    ) {
        let Some(l) = self.labels.get_mut(&label) else {
            return;
        };
        for (name, lookup) in &mut l.lookups {
            lookup.judgement = judge(name);
            let j = &lookup.judgement;
            lookup.addrs.retain(|ip, _| !j.refused && keep(j, *ip));
        }
        forget(l, |lookup| lookup.addrs.is_empty(), telemetry);
        let wanted = project(label, &l.lookups, now_ns);
        if let Err(e) = apply(&mut self.map, &mut l.entries, wanted) {
            tracing::warn!(label, "rewriting host addresses after a reload: {e}");
        }
        telemetry.set_addresses(label, addresses(&l.entries));
    }

    /// Removes everything of a label that no longer has a resolver.
    pub fn remove_label(&mut self, label: u32, telemetry: &Telemetry) {
        let Some(mut l) = self.labels.remove(&label) else {
            return;
        };
        forget(&mut l, |_| true, telemetry);
        if let Err(e) = apply(&mut self.map, &mut l.entries, HashMap::new()) {
            tracing::warn!(label, "removing a label's host addresses: {e}");
        }
        telemetry.set_addresses(label, 0);
    }
}

/// Forgets the lookups `gone` picks, retiring their names.
fn forget(l: &mut Label, gone: impl Fn(&Lookup) -> bool, telemetry: &Telemetry) {
    l.lookups.retain(|_, lookup| {
        let keep = !gone(lookup);
        if !keep {
            telemetry.retire(lookup.host);
        }
        keep
    });
}

/// Evicts the lookup that expires first, other than `current`'s; false when there is none.
fn evict(l: &mut Label, current: &str, telemetry: &Telemetry, label: u32) -> bool {
    let victim = l
        .lookups
        .iter()
        .filter(|(name, _)| name.as_str() != current)
        .min_by_key(|(_, lookup)| lookup.expires())
        .map(|(name, _)| name.clone());
    let Some(victim) = victim else {
        return false;
    };
    if let Some(lookup) = l.lookups.remove(&victim) {
        telemetry.retire(lookup.host);
    }
    telemetry.evicted(label);
    true
}

pub fn host_key(label: u32, ip: IpAddr, port: u16) -> HostKey {
    let mut addr = [0u8; 16];
    // IPv4-mapped IPv6 addresses as IPv4: the kernel judges such connects as IPv4.
    let family = match ip.to_canonical() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            NET_FAMILY_V4
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            NET_FAMILY_V6
        }
    };
    HostKey {
        label,
        port,
        family,
        _pad: 0,
        addr,
    }
}

/// The entries the label's lookups call for at `now_ns`: per address and port, the flags of
/// every name that resolved to it (deny beats allow in the kernel), and the latest expiry
/// with the name that gave it.
fn project(
    label: u32,
    lookups: &HashMap<String, Lookup>,
    now_ns: u64,
) -> HashMap<HostKey, HostEntry> {
    let mut out: HashMap<HostKey, HostEntry> = HashMap::new();
    for lookup in lookups.values() {
        let j = &lookup.judgement;
        let ports = j
            .allow
            .iter()
            .map(|p| (p, RULE_ALLOW))
            .chain(j.deny.iter().map(|p| (p, RULE_DENY)));
        for (port, flag) in ports {
            for (ip, &until) in lookup.addrs.iter().filter(|(_, u)| **u > now_ns) {
                let e = out
                    .entry(host_key(label, *ip, port.unwrap_or(0)))
                    .or_insert(HostEntry {
                        expires_ns: 0,
                        host: lookup.host,
                        flags: 0,
                        _pad: [0; 3],
                    });
                e.flags |= flag;
                if until > e.expires_ns {
                    e.expires_ns = until;
                    e.host = lookup.host;
                }
            }
        }
    }
    out
}

/// Writes the difference between `held` and `wanted` into the map. New and changed entries go
/// first, so a failure leaves no entry removed that should have stayed.
fn apply(
    map: &mut BpfHashMap<MapData, HostKey, HostEntry>,
    held: &mut HashMap<HostKey, HostEntry>,
    wanted: HashMap<HostKey, HostEntry>,
) -> Result<(), TableError> {
    for (key, entry) in &wanted {
        if held.get(key) != Some(entry) {
            map.insert(key, entry, 0)
                .map_err(|source| TableError::Map {
                    action: "into",
                    source,
                })?;
            held.insert(*key, *entry);
        }
    }
    let stale: Vec<HostKey> = held
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(TableError::Map {
                    action: "removing from",
                    source,
                });
            }
        }
        held.remove(&key);
    }
    Ok(())
}

/// Distinct addresses among a label's entries.
fn addresses(entries: &HashMap<HostKey, HostEntry>) -> u64 {
    entries
        .keys()
        .map(|k| (k.family, k.addr))
        .collect::<HashSet<_>>()
        .len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judgement(allow: &[Option<u16>], deny: &[Option<u16>]) -> NameJudgement {
        NameJudgement {
            refused: false,
            allow: allow.to_vec(),
            deny: deny.to_vec(),
            guarded: false,
        }
    }

    fn lookup(host: u32, j: NameJudgement, addrs: &[(&str, u64)]) -> Lookup {
        Lookup {
            host,
            judgement: j,
            addrs: addrs
                .iter()
                .map(|(a, u)| (a.parse().unwrap(), *u))
                .collect(),
        }
    }

    #[test]
    fn a_shared_address_takes_every_names_flags_and_the_latest_expiry() {
        let mut lookups = HashMap::new();
        lookups.insert(
            "a.x.test".into(),
            lookup(1, judgement(&[Some(443)], &[]), &[("10.0.0.1", 100)]),
        );
        lookups.insert(
            "b.x.test".into(),
            lookup(2, judgement(&[], &[Some(443)]), &[("10.0.0.1", 200)]),
        );
        let out = project(7, &lookups, 50);
        let e = out[&host_key(7, "10.0.0.1".parse().unwrap(), 443)];
        assert_eq!(e.flags, RULE_ALLOW | RULE_DENY);
        assert_eq!((e.expires_ns, e.host), (200, 2));
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn expired_addresses_and_any_port_rules_project_as_expected() {
        let mut lookups = HashMap::new();
        lookups.insert(
            "a.test".into(),
            lookup(
                1,
                judgement(&[None], &[]),
                &[("::ffff:127.0.0.5", 100), ("::1", 10)],
            ),
        );
        let out = project(1, &lookups, 50);
        let key = host_key(1, "127.0.0.5".parse().unwrap(), 0);
        assert_eq!(key.family, NET_FAMILY_V4);
        assert_eq!(&key.addr[..4], &[127, 0, 0, 5]);
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![key]);
    }

    #[test]
    fn distinct_addresses_ignore_ports() {
        let mut entries = HashMap::new();
        let e = HostEntry {
            expires_ns: 1,
            host: 1,
            flags: RULE_ALLOW,
            _pad: [0; 3],
        };
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        entries.insert(host_key(1, ip, 443), e);
        entries.insert(host_key(1, ip, 80), e);
        entries.insert(host_key(1, "::1".parse().unwrap(), 80), e);
        assert_eq!(addresses(&entries), 2);
    }
}
