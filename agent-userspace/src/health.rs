//! Watching that what the daemon put in the kernel is still what judges: its set owns, its
//! links (the LSM hooks' and DNS steering's) are pinned, and `CONFIG` holds the generation it
//! wrote. Anything else (bpf(2) from outside every label, an `rm` in bpffs) is logged and
//! makes the daemon unready until it is put right.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use agent_common::{Config, HOOKS, dns, maps};
use aya::maps::{Array, Map, MapData};
use tracing::{error, info};

use crate::{bpf::Present, pin::Pins, state::State};

const EVERY: Duration = Duration::from_secs(1);

/// What is wrong with the set `instance`, if anything.
fn check(pins: &Pins, instance: u64, in_force: u32, present: &Present) -> Option<String> {
    match pins.owner() {
        Ok(Some(owner)) if owner == instance => {}
        Ok(owner) => {
            return Some(format!(
                "the owner map names set {}, not this daemon's set {instance}",
                owner.unwrap_or(0)
            ));
        }
        Err(e) => return Some(format!("reading the owner map: {e:#}")),
    }
    let dir = pins.set_dir(instance);
    let hooks = HOOKS
        .iter()
        .zip(present)
        .filter(|(_, p)| **p)
        .map(|(h, _)| h);
    let mut attached = hooks.chain(dns::PROGRAMS);
    if let Some(name) = attached.find(|name| !dir.join("links").join(name).exists()) {
        return Some(format!(
            "the link of {name} is no longer pinned in {}",
            dir.display()
        ));
    }
    let config = MapData::from_pin(dir.join("maps").join(maps::CONFIG))
        .map_err(anyhow::Error::from)
        .and_then(|m| Ok(Array::<MapData, Config>::try_from(Map::Array(m))?))
        .and_then(|a| Ok(a.get(&0, 0)?));
    match config {
        Ok(c) if c.generation == in_force => None,
        Ok(c) => Some(format!(
            "CONFIG holds generation {}, but the daemon put generation {in_force} in force",
            c.generation
        )),
        Err(e) => Some(format!("reading the pinned CONFIG map: {e:#}")),
    }
}

/// Checks every second. A problem seen twice in a row (a reload switches `CONFIG` a moment
/// before it records the new generation) makes the daemon unready and is logged.
pub fn watch(
    pins: Pins,
    instance: u64,
    in_force: Arc<AtomicU32>,
    state: Arc<State>,
    present: Present,
) {
    tokio::spawn(async move {
        let mut seen_once = false;
        loop {
            tokio::time::sleep(EVERY).await;
            let (p, i, g) = (pins.clone(), instance, in_force.load(Ordering::SeqCst));
            let problem = tokio::task::spawn_blocking(move || check(&p, i, g, &present))
                .await
                .unwrap_or_else(|e| Some(format!("the check panicked: {e}")));
            let had = state.enforcement_problem.get();
            match problem {
                None => {
                    seen_once = false;
                    if had.is_some() {
                        info!("the kernel state is this daemon's again; ready");
                        state.enforcement_problem.set(None);
                    }
                }
                Some(p) if seen_once => {
                    if had.as_deref() != Some(p.as_str()) {
                        error!(
                            "NOT READY: the kernel state is not what this daemon put there: {p}"
                        );
                        state.enforcement_problem.set(Some(p));
                    }
                }
                Some(_) => seen_once = true,
            }
        }
    });
}
