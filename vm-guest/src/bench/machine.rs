//! What the benchmark learns about the machine it runs on, and waits for from it.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use super::report::Machine;

impl Machine {
    /// The CPU model and count, from /proc/cpuinfo.
    pub fn probe() -> Machine {
        let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpu
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            cpu: model,
            cpus: cpu.lines().filter(|l| l.starts_with("processor")).count(),
            emulation: "QEMU TCG (no KVM)",
        }
    }
}

/// Busy and total jiffies of all CPUs, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4)?;
    let total: u64 = v.iter().sum();
    Some((total - idle, total))
}

/// Waits until the machine is idle (under 5% busy over one second), at most 60 s: the kernel
/// finishes tearing down a stopped daemon's programs and maps in the background, and that
/// work would otherwise land in the next run. Returns the seconds waited and the last busy
/// fraction.
pub fn quiesce() -> (f64, f64) {
    let t = Instant::now();
    let mut prev = cpu_jiffies();
    let mut busy = f64::NAN;
    while t.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_secs(1));
        let now = cpu_jiffies();
        if let (Some(a), Some(b)) = (prev, now)
            && b.1 > a.1
        {
            busy = (b.0 - a.0) as f64 / (b.1 - a.1) as f64;
            if busy < 0.05 {
                break;
            }
        }
        prev = now;
    }
    (t.elapsed().as_secs_f64(), busy)
}

/// The file system type of the mount holding `path`.
pub fn fs_type(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            let inside = p == at || at == "/" || p.starts_with(&format!("{at}/"));
            inside.then(|| (at.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}
