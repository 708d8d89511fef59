//! The root cgroup (cgroup v2): which controllers exist and which are delegated to child cgroups.

use std::path::{Path, PathBuf};

use crate::error::InitError;

/// Where init mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The controllers init enables in the root's `cgroup.subtree_control`, in the kernel's order, when the
/// kernel has them.
pub const WANTED: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];

/// Parses a `cgroup.controllers` or `cgroup.subtree_control` file (space-separated names).
pub fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// The wanted controllers that are available, in [`WANTED`] order.
pub fn to_enable(available: &[String]) -> Vec<&'static str> {
    WANTED.iter().copied().filter(|w| available.iter().any(|a| a == w)).collect()
}

/// The `cgroup.subtree_control` write that enables `controllers` ("+cpu +memory").
pub fn enable_line(controllers: &[&str]) -> String {
    controllers.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ")
}

fn read(path: PathBuf) -> Result<String, InitError> {
    std::fs::read_to_string(&path).map_err(|source| InitError::ReadFile { path, source })
}

/// Enables every available wanted controller in `root`'s subtree and returns what the subtree then has.
pub fn enable_controllers(root: &Path) -> Result<Vec<String>, InitError> {
    let available = parse_controllers(&read(root.join("cgroup.controllers"))?);
    let enable = to_enable(&available);
    if !enable.is_empty() {
        let line = enable_line(&enable);
        std::fs::write(root.join("cgroup.subtree_control"), &line)
            .map_err(|source| InitError::EnableControllers { controllers: line, source })?;
    }
    Ok(parse_controllers(&read(root.join("cgroup.subtree_control"))?))
}

/// Whether the kernel reports pressure stall information.
pub fn psi_available() -> bool {
    std::fs::read_to_string("/proc/pressure/cpu").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_lists_parse() {
        assert_eq!(parse_controllers("cpuset cpu io memory pids\n"), ["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(parse_controllers("\n").is_empty());
        assert!(parse_controllers("").is_empty());
    }

    #[test]
    fn only_available_wanted_controllers_are_enabled_in_kernel_order() {
        let avail = parse_controllers("pids memory hugetlb cpu misc");
        assert_eq!(to_enable(&avail), ["cpu", "memory", "pids"]);
        assert_eq!(enable_line(&to_enable(&avail)), "+cpu +memory +pids");
        assert!(to_enable(&[]).is_empty());
    }

    #[test]
    fn enabling_in_a_fake_root_writes_subtree_control() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("bulkhead-zone-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory rdma pids\n")?;
        let got = enable_controllers(&dir);
        let written = std::fs::read_to_string(dir.join("cgroup.subtree_control"));
        std::fs::remove_dir_all(&dir)?;
        // A plain file keeps what was written: the "+" lines come back as written.
        assert_eq!(written?, "+cpu +memory +pids");
        assert_eq!(got?, ["+cpu", "+memory", "+pids"]);
        Ok(())
    }
}
