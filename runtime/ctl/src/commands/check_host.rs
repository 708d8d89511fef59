//! The preinstall probes: what the files under a root (`/` on a real run, a fake tree in tests) say about
//! the hypervisor, dom0, the kernel, the tools and the disk. Nothing here talks to a service.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::check::{Check, Group};

/// The oldest Xen Bulkhead runs on: its libxl bindings are built against 4.17.
const XEN_MIN: (u32, u32) = (4, 17);
/// dom0 below this cannot run bulkheadd, image conversion and the zones' backends.
const DOM0_MEMORY_MIN_MIB: u64 = 512;
/// dom0 below this works but leaves little room for image conversion (mkfs.erofs) and many zones' backends.
const DOM0_MEMORY_ADVISED_MIB: u64 = 768;
/// Free space under the state directory below which images cannot be imported.
const DISK_MIN_BYTES: u64 = 1 << 30;
/// Free space below which a few images fill the disk.
const DISK_ADVISED_BYTES: u64 = 10 << 30;
const MIB: u64 = 1 << 20;

/// A file system root to read /sys, /proc, /lib/modules and the state directory under.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// Probes read under `root`.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_owned() }
    }

    /// `path` (absolute, as on the host) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The file's contents, trimmed.
    pub fn read(&self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(path)).map(|s| s.trim().to_owned())
    }

    /// Whether the path exists under the root.
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }
}

/// A kernel driver or feature dom0 needs, and how to find it.
struct Feature {
    id: &'static str,
    group: Group,
    /// Module names as in modules.dep (`-` or `_`, both are accepted).
    module: &'static str,
    /// The file system it registers in /proc/filesystems once available, if it is one.
    filesystem: Option<&'static str>,
    /// Why Bulkhead needs it.
    why: &'static str,
}

const FEATURES: &[Feature] = &[
    Feature { id: "xen-evtchn", group: Group::Required, module: "xen-evtchn", filesystem: None, why: "event channels" },
    Feature { id: "xen-gntdev", group: Group::Required, module: "xen-gntdev", filesystem: None, why: "grant mapping" },
    Feature {
        id: "xen-gntalloc",
        group: Group::Required,
        module: "xen-gntalloc",
        filesystem: None,
        why: "grant allocation (zone channels)",
    },
    Feature {
        id: "xen-privcmd",
        group: Group::Required,
        module: "xen-privcmd",
        filesystem: None,
        why: "hypercalls from libxl",
    },
    Feature { id: "xenfs", group: Group::Required, module: "xenfs", filesystem: Some("xenfs"), why: "/proc/xen" },
    Feature { id: "xen-blkback", group: Group::Required, module: "xen-blkback", filesystem: None, why: "zones' disks" },
    Feature {
        id: "xen-netback",
        group: Group::Required,
        module: "xen-netback",
        filesystem: None,
        why: "zones' network interfaces",
    },
    Feature { id: "loop", group: Group::Required, module: "loop", filesystem: None, why: "image disks of zones" },
    Feature {
        id: "device-mapper",
        group: Group::Optional,
        module: "dm-mod",
        filesystem: None,
        why: "the node image's verified OS",
    },
    Feature {
        id: "dm-verity",
        group: Group::Optional,
        module: "dm-verity",
        filesystem: None,
        why: "the node image's verified OS",
    },
    Feature { id: "tun", group: Group::Optional, module: "tun", filesystem: None, why: "CNI pod networks" },
    Feature { id: "bridge", group: Group::Optional, module: "bridge", filesystem: None, why: "CNI pod networks" },
    Feature {
        id: "erofs",
        group: Group::Advisory,
        module: "erofs",
        filesystem: Some("erofs"),
        why: "inspecting zone images in dom0 (zones mount them in their own kernel)",
    },
    Feature {
        id: "overlay",
        group: Group::Advisory,
        module: "overlay",
        filesystem: Some("overlay"),
        why: "container tooling in dom0 (zones mount their overlay in their own kernel)",
    },
];

/// Where a kernel feature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Availability {
    Loaded,
    BuiltIn,
    Loadable,
    Missing,
}

/// What the kernel has: loaded modules (/sys/module), registered file systems, and the module index of the
/// running kernel (modules.builtin, modules.dep) when it is installed.
struct KernelModules {
    release: Option<String>,
    builtin: Option<BTreeSet<String>>,
    loadable: Option<BTreeSet<String>>,
    filesystems: BTreeSet<String>,
}

impl KernelModules {
    fn probe(root: &HostRoot) -> Self {
        let release = root.read("/proc/sys/kernel/osrelease").ok();
        let index = |file: &str| -> Option<BTreeSet<String>> {
            let rel = release.as_deref()?;
            ["/lib/modules", "/usr/lib/modules"].iter().find_map(|dir| {
                let text = std::fs::read_to_string(root.path(&format!("{dir}/{rel}/{file}"))).ok()?;
                Some(text.lines().filter_map(module_name_of_line).collect())
            })
        };
        let filesystems = root
            .read("/proc/filesystems")
            .map(|t| t.lines().filter_map(|l| l.split_whitespace().last()).map(str::to_owned).collect())
            .unwrap_or_default();
        Self { builtin: index("modules.builtin"), loadable: index("modules.dep"), filesystems, release }
    }

    fn availability(&self, root: &HostRoot, f: &Feature) -> Availability {
        let name = normalize(f.module);
        // initstate exists for loaded modules only; built-in ones with parameters have a /sys/module dir too.
        if root.exists(&format!("/sys/module/{name}/initstate")) {
            return Availability::Loaded;
        }
        let in_set = |s: &Option<BTreeSet<String>>| s.as_ref().is_some_and(|s| s.contains(&name));
        if in_set(&self.builtin)
            || root.exists(&format!("/sys/module/{name}"))
            || f.filesystem.is_some_and(|fs| self.filesystems.contains(fs))
        {
            return Availability::BuiltIn;
        }
        if in_set(&self.loadable) {
            return Availability::Loadable;
        }
        Availability::Missing
    }

    fn check(&self, root: &HostRoot, f: &Feature) -> Check {
        let id = format!("kernel:{}", f.id);
        match self.availability(root, f) {
            Availability::Loaded => Check::pass(id, f.group, format!("loaded ({})", f.why)),
            Availability::BuiltIn => Check::pass(id, f.group, format!("built in ({})", f.why)),
            Availability::Loadable => Check::pass(id, f.group, format!("loadable module ({})", f.why)),
            Availability::Missing => {
                let index = match (&self.release, &self.loadable) {
                    (Some(_), Some(_)) => String::new(),
                    (Some(r), None) => format!("; no module index for {r} under /lib/modules"),
                    (None, _) => "; kernel release unknown (/proc/sys/kernel/osrelease)".to_owned(),
                };
                Check::fail(
                    id,
                    f.group,
                    format!("not loaded, not built in, no module {}{index} (needed for {})", f.module, f.why),
                    format!(
                        "use a kernel with {} (Debian's linux-image-amd64 has it as a module) and install its modules",
                        f.module
                    ),
                )
            }
        }
    }
}

/// `kernel/drivers/xen/xen-evtchn.ko.xz: dep...` -> `xen_evtchn`.
fn module_name_of_line(line: &str) -> Option<String> {
    let path = line.split(':').next()?.trim();
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (!stem.is_empty()).then(|| normalize(stem))
}

/// The kernel treats `-` and `_` in module names alike; /sys/module uses `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// All preinstall checks. `xen_commandline` is Xen's command line when it could be read (`xl info`).
pub fn preinstall(root: &HostRoot, state_dir: &Path, xen_commandline: Option<&str>) -> Vec<Check> {
    let hypervisor = root.read("/sys/hypervisor/type").ok();
    let xen = hypervisor.as_deref() == Some("xen");
    let mut checks = vec![hypervisor_check(root, hypervisor.as_deref())];
    checks.push(xen_version_check(root, xen));
    checks.push(dom0_check(root, xen));
    checks.extend(virt_caps_checks(root, xen));
    checks.push(dom0_memory_check(root, xen_commandline));
    checks.push(dom0_memory_fixed_check(xen, xen_commandline));
    let modules = KernelModules::probe(root);
    checks.extend(FEATURES.iter().map(|f| modules.check(root, f)));
    checks.push(cgroup2_check(root));
    checks.push(file_check(
        root,
        "tool:xen-scripts",
        &["/etc/xen/scripts/block", "/etc/xen/scripts/vif-bridge"],
        "libxl's hotplug scripts",
        "install Xen's tools: apt install xen-utils-4.17",
    ));
    checks.push(file_check(
        root,
        "tool:mkfs.erofs",
        &["/usr/bin/mkfs.erofs", "/usr/sbin/mkfs.erofs", "/sbin/mkfs.erofs"],
        "converts images to zones' root file systems",
        "apt install erofs-utils",
    ));
    checks.push(disk_check(root, state_dir));
    checks.push(cpus_check(root, xen));
    checks
}

fn not_xen(id: &str, group: Group) -> Check {
    Check::skip(id, group, "not running under Xen")
}

fn hypervisor_check(root: &HostRoot, hypervisor: Option<&str>) -> Check {
    const ADVICE: &str = "boot this machine through Xen 4.17 with this kernel as dom0 (install the Bulkhead node \
                          image, or Debian's xen-hypervisor-4.17-amd64 and reboot into its GRUB entry)";
    match hypervisor {
        Some("xen") => Check::pass("hypervisor", Group::Required, format!("xen {}", xen_version_text(root))),
        Some(other) => {
            Check::fail("hypervisor", Group::Required, format!("the hypervisor is {other}, not xen"), ADVICE)
        }
        None => Check::fail("hypervisor", Group::Required, "not running under Xen (no /sys/hypervisor/type)", ADVICE),
    }
}

fn xen_version(root: &HostRoot) -> Option<(u32, u32)> {
    let major = root.read("/sys/hypervisor/version/major").ok()?.parse().ok()?;
    let minor = root.read("/sys/hypervisor/version/minor").ok()?.parse().ok()?;
    Some((major, minor))
}

fn xen_version_text(root: &HostRoot) -> String {
    match xen_version(root) {
        Some((major, minor)) => {
            format!("{major}.{minor}{}", root.read("/sys/hypervisor/version/extra").unwrap_or_default())
        }
        None => "(version unknown)".to_owned(),
    }
}

fn xen_version_check(root: &HostRoot, xen: bool) -> Check {
    const ID: &str = "xen-version";
    if !xen {
        return not_xen(ID, Group::Required);
    }
    let text = xen_version_text(root);
    match xen_version(root) {
        None => Check::fail(
            ID,
            Group::Required,
            "cannot read /sys/hypervisor/version/{major,minor}",
            "load a dom0 kernel with Xen's sysfs (CONFIG_XEN_SYS_HYPERVISOR)",
        ),
        Some(v) if v < XEN_MIN => Check::fail(
            ID,
            Group::Required,
            format!("Xen {text}, older than {}.{}", XEN_MIN.0, XEN_MIN.1),
            "install Xen 4.17 (Debian 12: xen-hypervisor-4.17-amd64)",
        ),
        Some(v) if v > XEN_MIN => Check::warn(
            ID,
            Group::Required,
            format!("Xen {text}; Bulkhead is built and tested against {}.{}", XEN_MIN.0, XEN_MIN.1),
            "run Xen 4.17 or rebuild Bulkhead's bindings (ci/gen-xen-bindings) against this version",
        ),
        Some(_) => Check::pass(ID, Group::Required, format!("Xen {text}")),
    }
}

fn dom0_check(root: &HostRoot, xen: bool) -> Check {
    const ID: &str = "dom0";
    if !xen {
        return not_xen(ID, Group::Required);
    }
    match root.read("/proc/xen/capabilities") {
        Ok(caps) if caps.split_whitespace().any(|c| c == "control_d") => {
            Check::pass(ID, Group::Required, "this kernel is Xen's control domain (/proc/xen/capabilities: control_d)")
        }
        Ok(_) => Check::fail(
            ID,
            Group::Required,
            "this kernel is a Xen guest (domU), not dom0",
            "run Bulkhead in dom0: the kernel Xen boots as its first domain",
        ),
        Err(e) => Check::fail(
            ID,
            Group::Required,
            format!("cannot read /proc/xen/capabilities: {e}"),
            "mount xenfs: modprobe xenfs && mount -t xenfs xenfs /proc/xen (the node image's proc-xen.mount does it)",
        ),
    }
}

fn virt_caps_checks(root: &HostRoot, xen: bool) -> Vec<Check> {
    if !xen {
        return vec![not_xen("pv", Group::Required), not_xen("pvh", Group::Optional)];
    }
    let caps = match root.read("/sys/hypervisor/properties/capabilities") {
        Ok(c) => c,
        Err(e) => {
            return vec![
                Check::fail(
                    "pv",
                    Group::Required,
                    format!("cannot read /sys/hypervisor/properties/capabilities: {e}"),
                    "use a dom0 kernel with Xen's sysfs (CONFIG_XEN_SYS_HYPERVISOR)",
                ),
                Check::skip("pvh", Group::Optional, "Xen's capabilities are unknown"),
            ];
        }
    };
    let has = |cap: &str| caps.split_whitespace().any(|c| c == cap);
    let pv = if has("xen-3.0-x86_64") {
        Check::pass("pv", Group::Required, format!("64-bit PV guests (Xen: {caps})"))
    } else {
        Check::fail(
            "pv",
            Group::Required,
            format!("Xen cannot run 64-bit PV guests (Xen: {caps})"),
            "use an x86_64 Xen built with PV support (CONFIG_PV)",
        )
    };
    let pvh = if has("hvm-3.0-x86_64") {
        Check::pass(
            "pvh",
            Group::Optional,
            "hardware virtualization (HVM): zones run PVH if Xen also has HAP (postinstall asks bulkheadd)",
        )
    } else {
        Check::warn(
            "pvh",
            Group::Optional,
            "no hardware virtualization (HVM): zones will run PV",
            "enable VT-x/AMD-V in the firmware for PVH zones",
        )
    };
    vec![pv, pvh]
}

/// The value of `dom0_mem=` on Xen's command line.
fn dom0_mem(xen_commandline: &str) -> Option<&str> {
    xen_commandline.split_whitespace().find_map(|w| w.strip_prefix("dom0_mem="))
}

fn dom0_memory_check(root: &HostRoot, xen_commandline: Option<&str>) -> Check {
    const ID: &str = "dom0-memory";
    let total_kib = root.read("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
    });
    let Some(kib) = total_kib else {
        return Check::fail(ID, Group::Required, "cannot read MemTotal from /proc/meminfo", "mount /proc");
    };
    let mib = kib * 1024 / MIB;
    let configured = match xen_commandline.and_then(dom0_mem) {
        Some(m) => format!("; Xen dom0_mem={m}"),
        None => String::new(),
    };
    let detail = format!("MemTotal {mib} MiB{configured}");
    if mib < DOM0_MEMORY_MIN_MIB {
        Check::fail(
            ID,
            Group::Required,
            format!("{detail}, below {DOM0_MEMORY_MIN_MIB} MiB"),
            "give dom0 at least 1 GiB: dom0_mem=1024M,max:1024M on Xen's command line (image/boot.conf DOM0_MEMORY)",
        )
    } else if mib < DOM0_MEMORY_ADVISED_MIB {
        Check::warn(
            ID,
            Group::Required,
            format!("{detail}, below {DOM0_MEMORY_ADVISED_MIB} MiB"),
            "give dom0 1 GiB (dom0_mem=1024M,max:1024M) so image conversion and zones' backends have room",
        )
    } else {
        Check::pass(ID, Group::Required, detail)
    }
}

fn dom0_memory_fixed_check(xen: bool, xen_commandline: Option<&str>) -> Check {
    const ID: &str = "dom0-memory-fixed";
    if !xen {
        return not_xen(ID, Group::Advisory);
    }
    let Some(cmdline) = xen_commandline else {
        return Check::skip(ID, Group::Advisory, "Xen's command line is unknown (needs `xl info` as root)");
    };
    match dom0_mem(cmdline) {
        Some(m) if m.split(',').any(|p| p.starts_with("max:")) => {
            Check::pass(ID, Group::Advisory, format!("dom0_mem={m}: dom0 does not balloon"))
        }
        Some(m) => Check::warn(
            ID,
            Group::Advisory,
            format!("dom0_mem={m} has no max: dom0 may balloon"),
            "set dom0_mem=SIZE,max:SIZE on Xen's command line so zones' memory never comes from dom0",
        ),
        None => Check::warn(
            ID,
            Group::Advisory,
            "no dom0_mem on Xen's command line: dom0 starts with all memory and balloons down",
            "set dom0_mem=1024M,max:1024M on Xen's command line",
        ),
    }
}

fn cgroup2_check(root: &HostRoot) -> Check {
    const ID: &str = "kernel:cgroup2";
    if root.exists("/sys/fs/cgroup/cgroup.controllers") {
        let controllers = root.read("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        Check::pass(ID, Group::Optional, format!("unified hierarchy at /sys/fs/cgroup ({controllers})"))
    } else {
        Check::fail(
            ID,
            Group::Optional,
            "/sys/fs/cgroup is not a cgroup v2 (unified) hierarchy",
            "boot dom0 with systemd's unified hierarchy (the default on Debian 12; drop \
             systemd.unified_cgroup_hierarchy=0)",
        )
    }
}

fn file_check(root: &HostRoot, id: &str, candidates: &[&str], why: &str, advice: &str) -> Check {
    match candidates.iter().find(|p| root.exists(p)) {
        Some(p) => Check::pass(id, Group::Required, format!("{p} ({why})")),
        None => Check::fail(id, Group::Required, format!("{} not found ({why})", candidates.join(", ")), advice),
    }
}

/// Free bytes on the file system that holds `path` (or its nearest existing parent), and that parent.
fn free_space(root: &HostRoot, path: &Path) -> io::Result<(u64, PathBuf)> {
    let mut dir = root.path(&path.to_string_lossy());
    while !dir.exists() {
        if !dir.pop() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no existing parent"));
        }
    }
    let st = nix::sys::statvfs::statvfs(&dir).map_err(io::Error::from)?;
    Ok((st.blocks_available() * st.fragment_size(), dir))
}

fn disk_check(root: &HostRoot, state_dir: &Path) -> Check {
    match free_space(root, state_dir) {
        Ok((free, measured_at)) => disk_verdict(state_dir, &measured_at, free),
        Err(e) => Check::fail(
            "disk",
            Group::Required,
            format!("cannot measure free space for {}: {e}", state_dir.display()),
            "check that the state directory's file system is mounted",
        ),
    }
}

fn disk_verdict(state_dir: &Path, measured_at: &Path, free: u64) -> Check {
    let detail = format!("{} MiB free for {} (at {})", free / MIB, state_dir.display(), measured_at.display());
    if free < DISK_MIN_BYTES {
        Check::fail(
            "disk",
            Group::Required,
            format!("{detail}, below {} MiB", DISK_MIN_BYTES / MIB),
            "free space or grow the state file system (images and zone state live there)",
        )
    } else if free < DISK_ADVISED_BYTES {
        Check::warn(
            "disk",
            Group::Required,
            format!("{detail}, below {} MiB", DISK_ADVISED_BYTES / MIB),
            "give the state file system 10 GiB or more: each image is stored as blobs and as an erofs disk",
        )
    } else {
        Check::pass("disk", Group::Required, detail)
    }
}

/// Counts a CPU list like `0-3,6,8-9`.
fn count_cpus(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse::<u32>().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    Some(n)
}

fn cpus_check(root: &HostRoot, xen: bool) -> Check {
    const ID: &str = "cpus";
    let Some(n) = root.read("/sys/devices/system/cpu/online").ok().as_deref().and_then(count_cpus) else {
        return Check::skip(ID, Group::Advisory, "cannot read /sys/devices/system/cpu/online");
    };
    if xen {
        // dom0 sees its own vCPUs (dom0_max_vcpus), not the machine's; postinstall reports Xen's count.
        Check::pass(ID, Group::Advisory, format!("dom0 has {n} vCPU(s)"))
    } else if n < 2 {
        Check::warn(ID, Group::Advisory, format!("{n} CPU"), "use 2 CPUs or more: dom0 and zones share them")
    } else {
        Check::pass(ID, Group::Advisory, format!("{n} CPUs"))
    }
}

/// `xen_commandline` from `xl info`'s output.
pub fn parse_xl_info_commandline(xl_info: &str) -> Option<String> {
    xl_info.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "xen_commandline").then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::commands::check::Status;

    /// A fake root with the files a healthy Xen 4.17 dom0 has; tests change or remove files from it.
    pub(crate) struct FakeRoot {
        pub dir: tempfile::TempDir,
    }

    impl FakeRoot {
        pub fn healthy_dom0() -> io::Result<Self> {
            let r = Self { dir: tempfile::tempdir()? };
            r.write("/sys/hypervisor/type", "xen\n")?;
            r.write("/sys/hypervisor/version/major", "4\n")?;
            r.write("/sys/hypervisor/version/minor", "17\n")?;
            r.write("/sys/hypervisor/version/extra", ".6-pre\n")?;
            r.write(
                "/sys/hypervisor/properties/capabilities",
                "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64\n",
            )?;
            r.write("/proc/xen/capabilities", "control_d\n")?;
            r.write("/proc/meminfo", "MemTotal:         943212 kB\nMemFree:   1000 kB\n")?;
            r.write("/proc/sys/kernel/osrelease", "6.1.0-40-amd64\n")?;
            r.write("/proc/filesystems", "nodev\tsysfs\nnodev\tcgroup2\n\terofs\n")?;
            r.write("/sys/module/xen_evtchn/initstate", "live\n")?;
            r.write("/sys/module/loop/initstate", "live\n")?;
            r.write("/usr/lib/modules/6.1.0-40-amd64/modules.builtin", "kernel/drivers/md/dm-mod.ko\n")?;
            let dep = [
                "xen-gntdev",
                "xen-gntalloc",
                "xen-privcmd",
                "xenfs",
                "xen-blkback",
                "xen-netback",
                "dm-verity",
                "tun",
                "bridge",
                "overlay",
            ]
            .map(|m| format!("kernel/drivers/x/{m}.ko.xz: kernel/lib/dep.ko.xz\n"))
            .concat();
            r.write("/usr/lib/modules/6.1.0-40-amd64/modules.dep", &dep)?;
            r.write("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n")?;
            r.write("/sys/devices/system/cpu/online", "0\n")?;
            r.write("/etc/xen/scripts/block", "")?;
            r.write("/usr/bin/mkfs.erofs", "")?;
            std::fs::create_dir_all(r.dir.path().join("var/lib"))?;
            Ok(r)
        }

        pub fn write(&self, path: &str, text: &str) -> io::Result<()> {
            let p = self.dir.path().join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, text)
        }

        pub fn remove(&self, path: &str) -> io::Result<()> {
            let p = self.dir.path().join(path.trim_start_matches('/'));
            if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
        }

        pub fn root(&self) -> HostRoot {
            HostRoot::new(self.dir.path())
        }
    }

    const CMDLINE: &str = "placeholder console=com1 dom0_mem=1024M,max:1024M dom0_max_vcpus=1";

    fn run(r: &FakeRoot, cmdline: Option<&str>) -> Vec<Check> {
        preinstall(&r.root(), Path::new("/var/lib/bulkhead"), cmdline)
    }

    fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
        match checks.iter().find(|c| c.id == id) {
            Some(c) => c,
            None => panic!("no check {id} in {checks:#?}"),
        }
    }

    /// Every check except `disk`, whose verdict depends on the test machine's free space (tested apart).
    fn all_but_disk(checks: &[Check]) -> impl Iterator<Item = &Check> {
        checks.iter().filter(|c| c.id != "disk")
    }

    #[test]
    fn a_healthy_dom0_passes_everything() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        let checks = run(&r, Some(CMDLINE));
        for c in all_but_disk(&checks) {
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
        assert_eq!(find(&checks, "hypervisor").detail, "xen 4.17.6-pre");
        assert_eq!(find(&checks, "dom0-memory").detail, "MemTotal 921 MiB; Xen dom0_mem=1024M,max:1024M");
        assert_eq!(find(&checks, "kernel:xen-evtchn").detail, "loaded (event channels)");
        assert!(find(&checks, "kernel:device-mapper").detail.starts_with("built in"));
        assert!(find(&checks, "kernel:erofs").detail.starts_with("built in"));
        assert!(find(&checks, "kernel:xen-gntdev").detail.starts_with("loadable module"));
        assert!(find(&checks, "disk").detail.contains("free for /var/lib/bulkhead"));
        Ok(())
    }

    #[test]
    fn without_xen_the_hypervisor_fails_and_xen_checks_are_skipped() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.remove("/sys/hypervisor")?;
        r.remove("/proc/xen")?;
        let checks = run(&r, None);
        let h = find(&checks, "hypervisor");
        assert_eq!((h.group, h.status), (Group::Required, Status::Fail));
        assert!(h.advice.as_deref().is_some_and(|a| a.contains("Xen 4.17")));
        for id in ["xen-version", "dom0", "pv", "pvh", "dom0-memory-fixed"] {
            assert_eq!(find(&checks, id).status, Status::Skip, "{id}");
        }
        // Kernel features are still checked: this kernel may become dom0 once booted under Xen.
        assert_eq!(find(&checks, "kernel:xen-blkback").status, Status::Pass);
        assert_eq!(find(&checks, "cpus").status, Status::Warn, "1 CPU without Xen");
        Ok(())
    }

    #[test]
    fn a_domu_is_not_dom0() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/proc/xen/capabilities", "\n")?;
        let c = run(&r, None);
        assert_eq!(find(&c, "dom0").status, Status::Fail);
        assert!(find(&c, "dom0").detail.contains("domU"));
        r.remove("/proc/xen")?;
        let c = run(&r, None);
        assert!(find(&c, "dom0").advice.as_deref().is_some_and(|a| a.contains("mount -t xenfs")));
        Ok(())
    }

    #[test]
    fn xen_versions_older_fail_newer_warn() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/sys/hypervisor/version/minor", "16")?;
        assert_eq!(find(&run(&r, None), "xen-version").status, Status::Fail);
        r.write("/sys/hypervisor/version/minor", "20")?;
        assert_eq!(find(&run(&r, None), "xen-version").status, Status::Warn);
        r.write("/sys/hypervisor/version/major", "5")?;
        r.write("/sys/hypervisor/version/minor", "0")?;
        assert_eq!(find(&run(&r, None), "xen-version").status, Status::Warn);
        r.write("/sys/hypervisor/version/minor", "x")?;
        assert_eq!(find(&run(&r, None), "xen-version").status, Status::Fail);
        Ok(())
    }

    #[test]
    fn pv_is_required_and_pvh_optional() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/sys/hypervisor/properties/capabilities", "xen-3.0-x86_64 xen-3.0-x86_32p")?;
        let c = run(&r, None);
        assert_eq!(find(&c, "pv").status, Status::Pass);
        assert_eq!((find(&c, "pvh").group, find(&c, "pvh").status), (Group::Optional, Status::Warn));
        r.write("/sys/hypervisor/properties/capabilities", "hvm-3.0-x86_64")?;
        let c = run(&r, None);
        assert_eq!(find(&c, "pv").status, Status::Fail);
        assert_eq!(find(&c, "pvh").status, Status::Pass);
        Ok(())
    }

    #[test]
    fn dom0_memory_thresholds() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/proc/meminfo", "MemTotal: 400000 kB\n")?;
        assert_eq!(find(&run(&r, None), "dom0-memory").status, Status::Fail);
        r.write("/proc/meminfo", "MemTotal: 700000 kB\n")?;
        assert_eq!(find(&run(&r, None), "dom0-memory").status, Status::Warn);
        r.write("/proc/meminfo", "MemFree: 700000 kB\n")?;
        assert_eq!(find(&run(&r, None), "dom0-memory").status, Status::Fail);
        Ok(())
    }

    #[test]
    fn dom0_memory_should_be_fixed() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        assert_eq!(find(&run(&r, None), "dom0-memory-fixed").status, Status::Skip);
        assert_eq!(find(&run(&r, Some("x dom0_mem=1024M")), "dom0-memory-fixed").status, Status::Warn);
        assert_eq!(find(&run(&r, Some("x console=com1")), "dom0-memory-fixed").status, Status::Warn);
        assert_eq!(find(&run(&r, Some(CMDLINE)), "dom0-memory-fixed").status, Status::Pass);
        Ok(())
    }

    #[test]
    fn a_missing_driver_fails_in_its_group() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/usr/lib/modules/6.1.0-40-amd64/modules.dep", "kernel/drivers/x/xen-gntdev.ko: \n")?;
        let c = run(&r, None);
        assert_eq!(find(&c, "kernel:xen-gntdev").status, Status::Pass);
        let netback = find(&c, "kernel:xen-netback");
        assert_eq!((netback.group, netback.status), (Group::Required, Status::Fail));
        assert_eq!(find(&c, "kernel:tun").group, Group::Optional);
        assert_eq!(find(&c, "kernel:tun").status, Status::Fail);
        // Loaded modules and registered file systems need no module index.
        assert_eq!(find(&c, "kernel:xen-evtchn").status, Status::Pass);
        assert_eq!(find(&c, "kernel:erofs").status, Status::Pass);
        r.remove("/usr/lib/modules")?;
        let c = run(&r, None);
        assert!(find(&c, "kernel:xen-netback").detail.contains("no module index for 6.1.0-40-amd64"));
        Ok(())
    }

    #[test]
    fn builtin_modules_count_whatever_their_dashes() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.write("/usr/lib/modules/6.1.0-40-amd64/modules.dep", "")?;
        r.write("/usr/lib/modules/6.1.0-40-amd64/modules.builtin", "kernel/drivers/xen/xen_netback.ko\n")?;
        let c = run(&r, None);
        assert!(find(&c, "kernel:xen-netback").detail.starts_with("built in"));
        assert_eq!(find(&c, "kernel:xen-blkback").status, Status::Fail);
        Ok(())
    }

    #[test]
    fn cgroup_v1_and_missing_tools_fail() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        r.remove("/sys/fs/cgroup/cgroup.controllers")?;
        r.remove("/usr/bin/mkfs.erofs")?;
        r.remove("/etc/xen")?;
        let c = run(&r, None);
        assert_eq!(find(&c, "kernel:cgroup2").status, Status::Fail);
        assert_eq!(find(&c, "tool:mkfs.erofs").status, Status::Fail);
        assert_eq!(find(&c, "tool:xen-scripts").status, Status::Fail);
        r.write("/usr/sbin/mkfs.erofs", "")?;
        assert_eq!(find(&run(&r, None), "tool:mkfs.erofs").status, Status::Pass);
        Ok(())
    }

    #[test]
    fn disk_space_thresholds() {
        let at = Path::new("/var");
        let sd = Path::new("/var/lib/bulkhead");
        assert_eq!(disk_verdict(sd, at, 512 * MIB).status, Status::Fail);
        assert_eq!(disk_verdict(sd, at, 5 << 30).status, Status::Warn);
        assert_eq!(disk_verdict(sd, at, 20 << 30).status, Status::Pass);
    }

    #[test]
    fn free_space_is_measured_on_the_nearest_existing_parent() -> io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        let (free, at) = free_space(&r.root(), Path::new("/var/lib/bulkhead/not/there"))?;
        assert_eq!(at, r.dir.path().join("var/lib"));
        assert!(free > 0);
        Ok(())
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus("a"), None);
    }

    #[test]
    fn xl_info_commandline() {
        let info = "host : n\nxen_commandline        : console=com1 dom0_mem=1024M,max:1024M\ncc_compiler : gcc\n";
        assert_eq!(parse_xl_info_commandline(info).as_deref(), Some("console=com1 dom0_mem=1024M,max:1024M"));
        assert_eq!(parse_xl_info_commandline("host : n\n"), None);
    }
}
