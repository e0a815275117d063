//! What outlives the daemon: every program, link and map actgate loads is pinned in bpffs, so
//! the policy stays in force when the daemon exits for any reason, and the next daemon takes
//! over from what it finds.
//!
//! ```text
//! <root>                      /sys/fs/bpf/actgate by default
//!   maps/<NAME>               the maps of `agent_common::maps::KEPT`, shared by every set
//!   maps/EVENTS-<build>       the ring buffer, shared by the sets of one build
//!   maps/LABEL_NAMES          label index → name, so counters keep their label
//!   sets/<instance>/          one daemon's programs: progs/, links/ and its rule maps/
//! ```
//!
//! A set stays attached for as long as its links are pinned, whether or not a daemon runs.
//! Only the set that the `OWNER` map names judges (see agent-ebpf's `hook::frame_when`), so
//! a new daemon attaches its own set beside the old one, fills its rule maps, switches
//! `OWNER` with one write, and only then removes the old set: no labelled action is ever
//! judged by neither.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use agent_common::{LABEL_NAME_LEN, MAX_LABELS, maps};
use anyhow::{Context, Result, bail};
use aya::{
    maps::{Array, Map, MapData},
    programs::links::PinnedLink,
};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::{info, warn};

/// Where actgate pins by default.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/actgate";

const LABEL_NAMES: &str = "LABEL_NAMES";
const REVOKE_REASONS: &str = "REVOKE_REASONS";

/// A label's name as `LABEL_NAMES` stores it: NUL-padded.
type StoredName = [u8; LABEL_NAME_LEN];

/// The pin tree beneath `root`.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// The tree at `root`, mounting bpffs on its parent when no bpffs is mounted there.
    pub fn open(root: &Path) -> Result<Self> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let on_bpffs = statfs(parent)
            .with_context(|| format!("reading the file system of {}", parent.display()))?
            .filesystem_type()
            == BPF_FS_MAGIC;
        if !on_bpffs {
            mount(
                Some("bpf"),
                parent,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .with_context(|| format!("mounting bpffs on {}", parent.display()))?;
            info!(path = %parent.display(), "mounted bpffs");
        }
        let pins = Self {
            root: root.to_path_buf(),
        };
        for dir in [pins.root.join("maps"), pins.root.join("sets")] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(pins)
    }

    /// The tree at `root` if actgate ever pinned there; never mounts or creates anything.
    pub fn existing(root: &Path) -> Option<Self> {
        root.join("sets").is_dir().then(|| Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// The ring buffer's pin: one per build, since the event layout belongs to the build.
    pub fn events_path(&self, build: u64) -> PathBuf {
        self.map_path(&format!("{}-{build:016x}", maps::EVENTS))
    }

    /// The instances whose sets are pinned, oldest first.
    pub fn sets(&self) -> Result<Vec<u64>> {
        let dir = self.root.join("sets");
        let mut sets = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let name = entry?.file_name();
            match name.to_str().and_then(|n| n.parse().ok()) {
                Some(n) => sets.push(n),
                None => {
                    warn!(entry = ?name, "ignoring an entry of {} that isn't a set", dir.display())
                }
            }
        }
        sets.sort_unstable();
        Ok(sets)
    }

    pub fn set_dir(&self, instance: u64) -> PathBuf {
        self.root.join("sets").join(instance.to_string())
    }

    /// Creates the directories of a new set; its instance number is above every pinned one.
    pub fn new_set(&self) -> Result<u64> {
        let instance = self.sets()?.last().map_or(1, |last| last + 1);
        for sub in ["progs", "links", "maps"] {
            let dir = self.set_dir(instance).join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(instance)
    }

    /// Where each kept map is pinned, for the loader to adopt or create. A pinned map whose
    /// definition no longer matches the object's is unpinned first (the set that uses it keeps
    /// it until that set is removed), so the loader creates a fresh one.
    pub fn kept_maps(&self, object: &[u8], build: u64) -> Result<Vec<(&'static str, PathBuf)>> {
        let obj = aya_obj::Object::parse(object).context("parsing actgate's eBPF object")?;
        let mut out = Vec::new();
        for name in maps::KEPT.iter().chain([&maps::EVENTS]) {
            let path = if *name == maps::EVENTS {
                self.events_path(build)
            } else {
                self.map_path(name)
            };
            let def = obj
                .maps
                .get(*name)
                .with_context(|| format!("map {name} is missing from the eBPF object"))?;
            if path.exists() {
                let pinned = MapData::from_pin(&path)
                    .with_context(|| format!("opening the pinned map {}", path.display()))?;
                let info = pinned.info().context("reading a pinned map's definition")?;
                let same = info.map_type().ok().map(|t| t as u32) == Some(def.map_type())
                    && info.key_size() == def.key_size()
                    && info.value_size() == def.value_size()
                    && info.max_entries() == def.max_entries()
                    && info.map_flags() == def.map_flags();
                if same {
                    info!(map = name, "adopting the pinned map");
                } else {
                    warn!(
                        map = name,
                        "the pinned map's definition differs from this build's: starting a new one"
                    );
                    remove(&path)?;
                }
            }
            out.push((*name, path));
        }
        Ok(out)
    }

    /// Label index → name, created on first use.
    pub fn label_names(&self) -> Result<LabelNames> {
        Ok(LabelNames(self.label_array(LABEL_NAMES)?))
    }

    /// Label index → the reason an operator gave for revoking it, created on first use.
    pub fn revoke_reasons<const N: usize>(&self) -> Result<Array<MapData, [u8; N]>> {
        self.label_array(REVOKE_REASONS)
    }

    /// A pinned array of one value per label index, that only the daemon uses, created on
    /// first use.
    fn label_array<const N: usize>(&self, name: &str) -> Result<Array<MapData, [u8; N]>> {
        let path = self.map_path(name);
        if !path.exists() {
            Array::<MapData, [u8; N]>::create(MAX_LABELS, 0)
                .with_context(|| format!("creating the map {name}"))?
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        Array::try_from(Map::Array(data))
            .with_context(|| format!("{} is not the map {name}", path.display()))
    }

    /// The instance that judges now, if the owner map is pinned and names one.
    pub fn owner(&self) -> Result<Option<u64>> {
        let path = self.map_path(maps::OWNER);
        if !path.exists() {
            return Ok(None);
        }
        let owner = owner_map(&path)?
            .get(&0, 0)
            .context("reading the owner map")?;
        Ok((owner != 0).then_some(owner))
    }

    /// Names the set that judges (0: none).
    pub fn set_owner(&self, instance: u64) -> Result<()> {
        owner_map(&self.map_path(maps::OWNER))?
            .set(0, instance, 0)
            .context("writing the owner map")
    }

    /// Removes a set: its links go, so its programs detach once no daemon holds them.
    pub fn remove_set(&self, instance: u64) -> Result<()> {
        let dir = self.set_dir(instance);
        // Holding the links while their pins go makes this process's close the last
        // reference, which detaches at once; an unpinned link alone is freed later, from a
        // kernel work queue, and the programs would judge a while longer.
        let held: Vec<PinnedLink> = fs::read_dir(dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| PinnedLink::from_pin(e.path()).ok())
            .collect();
        remove(&dir)?;
        drop(held);
        Ok(())
    }

    /// Removes every ring buffer pin but `keep`'s (those of other builds).
    pub fn remove_other_events(&self, keep: &Path) -> Result<()> {
        let dir = self.root.join("maps");
        let prefix = format!("{}-", maps::EVENTS);
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let is_events = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix));
            if is_events && path != keep {
                remove(&path)?;
            }
        }
        Ok(())
    }

    /// Removes everything actgate pinned: every set detaches, and the counters are gone.
    pub fn remove_all(&self) -> Result<()> {
        for set in self.sets()? {
            self.remove_set(set)?;
        }
        remove(&self.root)
    }
}

/// The pinned owner map.
fn owner_map(path: &Path) -> Result<Array<MapData, u64>> {
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Array::try_from(Map::Array(data)).with_context(|| format!("{} is not an array", path.display()))
}

/// Removes a pin or a tree of pins; one already gone is fine.
fn remove(path: &Path) -> Result<()> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Label index → name, kept in bpffs so that a restarted daemon gives each label the index
/// its counters are kept under.
pub struct LabelNames(Array<MapData, StoredName>);

impl LabelNames {
    /// Every label that has an index.
    pub fn read(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for index in 0..MAX_LABELS {
            let stored = self
                .0
                .get(&index, 0)
                .context("reading the label name map")?;
            let len = stored.iter().position(|b| *b == 0).unwrap_or(stored.len());
            if len == 0 {
                continue;
            }
            match std::str::from_utf8(&stored[..len]) {
                Ok(name) => out.push((name.to_string(), index)),
                Err(_) => bail!("label index {index} has a name that isn't UTF-8"),
            }
        }
        Ok(out)
    }

    pub fn write(&mut self, index: u32, name: &str) -> Result<()> {
        let mut stored = [0u8; LABEL_NAME_LEN];
        let bytes = name.as_bytes();
        if bytes.len() > LABEL_NAME_LEN {
            bail!("label {name:?} is longer than {LABEL_NAME_LEN} bytes");
        }
        stored[..bytes.len()].copy_from_slice(bytes);
        self.0
            .set(index, stored, 0)
            .with_context(|| format!("recording label {name:?} as index {index}"))
    }
}
