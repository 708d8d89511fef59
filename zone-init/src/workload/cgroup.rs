//! Per-workload cgroups (v2): `<cgroup root>/workloads/<id>`, with the workload's resource limits.
//!
//! Init enables the controllers in the root's `cgroup.subtree_control` ([`crate::cgroup`]); [`create`]
//! enables the same ones in `workloads/` so that each workload's cgroup has its limit files. A limit asked
//! for whose file is missing (controller not available) is an error, not a silent "unlimited"; the one
//! exception is `memory.swap.max`, which exists only with swap support, and without swap there is nothing
//! to limit. Workload processes start inside their cgroup (`CLONE_INTO_CGROUP`, see [`super::spawn`]).

use std::path::{Path, PathBuf};

use bulkhead_wire::ResourceLimits;

use super::Layout;
use super::error::WorkloadError;
use crate::cgroup::{enable_line, parse_controllers, to_enable};

/// How limits that are `None` are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    /// Not at all: a new cgroup starts unlimited.
    Leave,
    /// As "max": an update replaces the whole set, so a limit it leaves out is lifted.
    Lift,
}

/// The writes that apply `limits`, as (file, value), in order.
pub fn limit_writes(limits: &ResourceLimits, unset: Unset) -> Vec<(&'static str, String)> {
    let lift = |file: &'static str, writes: &mut Vec<(&'static str, String)>| {
        if unset == Unset::Lift {
            writes.push((file, "max".to_owned()));
        }
    };
    let mut writes = Vec::new();
    match limits.memory_bytes {
        Some(bytes) => {
            writes.push(("memory.max", bytes.to_string()));
            // Without this a workload at its limit would swap instead of being OOM-killed.
            writes.push(("memory.swap.max", "0".to_owned()));
        }
        None => {
            lift("memory.max", &mut writes);
            lift("memory.swap.max", &mut writes);
        }
    }
    match limits.cpu {
        Some(cpu) => writes.push(("cpu.max", format!("{} {}", cpu.quota_us, cpu.period_us))),
        None => lift("cpu.max", &mut writes),
    }
    match limits.pids_max {
        Some(pids) => writes.push(("pids.max", pids.to_string())),
        None => lift("pids.max", &mut writes),
    }
    writes
}

fn read(path: PathBuf) -> Result<String, WorkloadError> {
    std::fs::read_to_string(&path).map_err(|source| WorkloadError::ReadCgroup { path, source })
}

fn write(path: PathBuf, value: &str) -> Result<(), WorkloadError> {
    std::fs::write(&path, value).map_err(|source| WorkloadError::WriteCgroup { path, value: value.to_owned(), source })
}

/// Creates (or reuses) workload `workload_id`'s cgroup, applies `limits` and returns its directory.
pub fn create(layout: &Layout, workload_id: u64, limits: &ResourceLimits) -> Result<PathBuf, WorkloadError> {
    let parent = layout.workloads_cgroup();
    mkdir(&parent)?;
    // Delegate to the workloads whatever init delegated to `workloads/` itself.
    let available = parse_controllers(&read(parent.join("cgroup.controllers"))?);
    let enabled = parse_controllers(&read(parent.join("cgroup.subtree_control"))?);
    let missing: Vec<&str> = to_enable(&available).into_iter().filter(|c| !enabled.iter().any(|e| e == c)).collect();
    if !missing.is_empty() {
        write(parent.join("cgroup.subtree_control"), &enable_line(&missing))?;
    }
    let dir = layout.cgroup_dir(workload_id);
    mkdir(&dir)?;
    apply(&dir, limits, Unset::Leave)?;
    Ok(dir)
}

/// Replaces the limits of the workload cgroup `dir` with `limits` (CRI UpdateContainerResources): what
/// `limits` leaves out is lifted. Lowering memory.max below what the workload uses makes the kernel reclaim,
/// then OOM-kill, as on any Linux host.
pub fn update(dir: &Path, limits: &ResourceLimits) -> Result<(), WorkloadError> {
    apply(dir, limits, Unset::Lift)
}

fn apply(dir: &Path, limits: &ResourceLimits, unset: Unset) -> Result<(), WorkloadError> {
    for (file, value) in limit_writes(limits, unset) {
        let path = dir.join(file);
        if !path.exists() {
            // memory.swap.max exists only with swap support; without swap there is nothing to limit. A
            // lifted limit whose controller is missing was never limited either.
            if file == "memory.swap.max" || value == "max" {
                continue;
            }
            return Err(WorkloadError::LimitUnsupported { file, cgroup: dir.to_owned() });
        }
        write(path, &value)?;
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), WorkloadError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(WorkloadError::CreateDir { path: dir.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

/// The `oom_kill` counter of a `memory.events` file: how many processes the OOM killer killed in the cgroup.
pub fn parse_oom_kills(memory_events: &str) -> Option<u64> {
    memory_events.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// Whether the OOM killer killed a process of `cgroup` (its `memory.events` `oom_kill` counter is not 0).
/// False when the file is unreadable (no memory controller): then no memory limit was applied either.
pub fn oom_killed(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("memory.events")).ok().as_deref().and_then(parse_oom_kills).unwrap_or(0) > 0
}

/// Removes a workload's cgroup once its processes are gone. Idempotent. If processes remain (an exec that
/// outlived the workload's pid 1 in another way than the pid namespace's teardown), they are killed through
/// `cgroup.kill` and [`WorkloadError::CgroupBusy`] asks the caller to retry after reaping them.
pub fn remove(cgroup: &Path) -> Result<(), WorkloadError> {
    match std::fs::remove_dir(cgroup) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let kill = cgroup.join("cgroup.kill");
            if kill.exists() {
                write(kill, "1")?;
            }
            Err(WorkloadError::CgroupBusy { path: cgroup.to_path_buf() })
        }
        Err(source) => Err(WorkloadError::RemoveCgroup { path: cgroup.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_wire::CpuLimit;

    #[test]
    fn limits_become_cgroup_writes() {
        assert!(limit_writes(&ResourceLimits::default(), Unset::Leave).is_empty());
        let limits = ResourceLimits {
            memory_bytes: Some(64 << 20),
            cpu: Some(CpuLimit { quota_us: 50_000, period_us: 100_000 }),
            pids_max: Some(100),
        };
        let want =
            [("memory.max", "67108864"), ("memory.swap.max", "0"), ("cpu.max", "50000 100000"), ("pids.max", "100")];
        for unset in [Unset::Leave, Unset::Lift] {
            let writes = limit_writes(&limits, unset);
            let got: Vec<(&str, &str)> = writes.iter().map(|(f, v)| (*f, v.as_str())).collect();
            assert_eq!(got, want, "{unset:?}");
        }
    }

    #[test]
    fn an_update_lifts_what_it_leaves_out() {
        let limits = ResourceLimits { memory_bytes: None, cpu: None, pids_max: Some(10) };
        let writes = limit_writes(&limits, Unset::Lift);
        let got: Vec<(&str, &str)> = writes.iter().map(|(f, v)| (*f, v.as_str())).collect();
        assert_eq!(got, [("memory.max", "max"), ("memory.swap.max", "max"), ("cpu.max", "max"), ("pids.max", "10")]);
    }

    #[test]
    fn oom_kills_come_from_memory_events() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), Some(1));
        assert_eq!(parse_oom_kills("oom 0\noom_kill 0\n"), Some(0));
        assert_eq!(parse_oom_kills("oom_group_kill 3\n"), None);
        assert_eq!(parse_oom_kills(""), None);
    }

    /// A fake cgroup tree of plain files: `workloads/<id>` has the files a kernel with `controllers` would
    /// create (the test creates them, since plain directories do not).
    fn fake_root(name: &str, files: &[&str]) -> Result<Layout, std::io::Error> {
        let root = std::env::temp_dir().join(format!("bulkhead-zone-wlcg-{name}-{}", std::process::id()));
        let workloads = root.join("workloads");
        std::fs::create_dir_all(workloads.join("3"))?;
        std::fs::write(workloads.join("cgroup.controllers"), "cpu memory pids\n")?;
        std::fs::write(workloads.join("cgroup.subtree_control"), "")?;
        for f in files {
            std::fs::write(workloads.join("3").join(f), "max\n")?;
        }
        Ok(Layout { cgroup_root: root, ..Layout::zone() })
    }

    #[test]
    fn creating_writes_limits_and_delegates_controllers() -> Result<(), Box<dyn std::error::Error>> {
        let layout = fake_root("ok", &["memory.max", "cpu.max", "pids.max", "memory.events"])?;
        let limits = ResourceLimits { memory_bytes: Some(1 << 20), cpu: None, pids_max: Some(5) };
        let dir = create(&layout, 3, &limits);
        let read = |f: &str| std::fs::read_to_string(layout.cgroup_dir(3).join(f));
        let (mem, cpu, pids, subtree) =
            (read("memory.max"), read("cpu.max"), read("pids.max"), read("../cgroup.subtree_control"));
        std::fs::write(layout.cgroup_dir(3).join("memory.events"), "oom 1\noom_kill 1\n")?;
        let oom = oom_killed(&layout.cgroup_dir(3));
        std::fs::remove_dir_all(&layout.cgroup_root)?;
        assert_eq!(dir?, layout.cgroup_dir(3));
        assert_eq!((mem?.as_str(), cpu?.as_str(), pids?.as_str()), ("1048576", "max\n", "5"));
        assert_eq!(subtree?, "+cpu +memory +pids");
        assert!(oom);
        Ok(())
    }

    #[test]
    fn an_update_replaces_the_limits() -> Result<(), Box<dyn std::error::Error>> {
        let layout = fake_root("update", &["memory.max", "cpu.max", "pids.max"])?;
        let first = ResourceLimits { memory_bytes: Some(1 << 20), cpu: None, pids_max: Some(5) };
        let dir = create(&layout, 3, &first)?;
        let second = ResourceLimits {
            memory_bytes: None,
            cpu: Some(CpuLimit { quota_us: 20_000, period_us: 100_000 }),
            pids_max: None,
        };
        let updated = update(&dir, &second);
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        let (mem, cpu, pids) = (read("memory.max"), read("cpu.max"), read("pids.max"));
        std::fs::remove_dir_all(&layout.cgroup_root)?;
        updated?;
        assert_eq!((mem?.as_str(), cpu?.as_str(), pids?.as_str()), ("max", "20000 100000", "max"));
        Ok(())
    }

    #[test]
    fn a_limit_without_its_controller_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let layout = fake_root("nomem", &["pids.max"])?;
        let limits = ResourceLimits { memory_bytes: Some(1 << 20), ..ResourceLimits::default() };
        let got = create(&layout, 3, &limits);
        let not_oom = !oom_killed(&layout.cgroup_dir(3));
        std::fs::remove_dir_all(&layout.cgroup_root)?;
        assert!(matches!(got, Err(WorkloadError::LimitUnsupported { file: "memory.max", .. })), "{got:?}");
        assert!(not_oom);
        Ok(())
    }
}
