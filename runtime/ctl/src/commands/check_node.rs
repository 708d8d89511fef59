//! The postinstall verdicts: what systemd, bulkheadd and bulkhead-cri answered (gathered by `check`), judged.
//! Kept apart from the gathering so every verdict is tested without a bus or a daemon.

use bulkhead_api::control::v1 as pb;

use super::check::{Check, Group};
use super::check_host::HostRoot;
use crate::systemd::UnitState;

/// A systemd unit the node runs.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    /// The unit's name.
    pub name: &'static str,
    /// Whether it must be installed, or is checked only once it is.
    pub presence: Presence,
    /// What it does, for the detail line.
    pub what: &'static str,
}

/// When a unit is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Every node has it: not installed is a failure.
    Always,
    /// Required once installed. Not installed is a warning, never a pass: the node lacks what it provides.
    WhenInstalled,
}

/// The units postinstall checks, in order.
pub const UNITS: &[Unit] = &[
    Unit { name: "xenstored.service", presence: Presence::Always, what: "Xen's store" },
    Unit { name: "xen-init-dom0.service", presence: Presence::Always, what: "dom0's entries in the store" },
    Unit { name: "xenconsoled.service", presence: Presence::Always, what: "zones' consoles" },
    Unit { name: "bulkheadd.service", presence: Presence::Always, what: "the daemon" },
    Unit { name: "bulkhead-cri.service", presence: Presence::WhenInstalled, what: "kubelet's CRI endpoint" },
];

/// Where the node image lists the images baked into it (`FILE REFERENCE` per line).
pub const BAKED_IMAGES_LIST: &str = "/usr/share/bulkhead/images/images.list";

/// Each unit's state, or why it could not be read; `Err` when systemd could not be reached at all.
pub type UnitStates = Result<Vec<(&'static str, Result<UnitState, String>)>, String>;

/// Each baked reference and the id of the image the daemon has under it (`None`: the daemon has none), or
/// why it could not be asked; `Err` when the daemon could not be reached.
pub type BakedImages = Result<Vec<(String, Result<Option<String>, String>)>, String>;

/// What the services answered; each `Err` is one line saying what failed.
#[derive(Debug)]
pub struct NodeFacts {
    /// The units' states.
    pub units: UnitStates,
    /// bulkheadd's GetHostInfo; `None` when the daemon answers but does not serve HostService.
    pub host_info: Result<Option<pb::GetHostInfoResponse>, String>,
    /// bulkhead-cri's Version.
    pub cri: Result<k8s_cri::v1::VersionResponse, String>,
    /// The baked images.
    pub baked_images: BakedImages,
}

/// The references in the node image's baked-images list (none when there is no list).
pub fn baked_image_references(root: &HostRoot) -> Vec<String> {
    let Ok(text) = root.read(BAKED_IMAGES_LIST) else { return Vec::new() };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// All postinstall checks beyond preinstall's.
pub fn postinstall(facts: &NodeFacts) -> Vec<Check> {
    let mut checks = unit_checks(&facts.units);
    let cri_installed = match &facts.units {
        Ok(states) => states
            .iter()
            .find(|(n, _)| *n == "bulkhead-cri.service")
            .and_then(|(_, s)| s.as_ref().ok())
            .map(UnitState::is_installed),
        Err(_) => None,
    };
    checks.extend(daemon_checks(&facts.host_info));
    checks.push(cri_check(&facts.cri, cri_installed));
    checks.extend(baked_image_checks(&facts.baked_images));
    checks
}

fn unit_checks(units: &UnitStates) -> Vec<Check> {
    let states = match units {
        Ok(s) => s,
        Err(e) => {
            return UNITS
                .iter()
                .map(|u| {
                    Check::fail(
                        format!("unit:{}", u.name),
                        Group::Required,
                        format!("cannot ask systemd: {e}"),
                        "run as root on the node, where systemd and D-Bus run",
                    )
                })
                .collect();
        }
    };
    UNITS
        .iter()
        .map(|u| {
            let id = format!("unit:{}", u.name);
            match states.iter().find(|(n, _)| *n == u.name).map(|(_, s)| s) {
                None => Check::fail(id, Group::Required, "not asked", "report this as a bug"),
                Some(Err(e)) => Check::fail(
                    id,
                    Group::Required,
                    format!("cannot read its state: {e}"),
                    format!("systemctl status {}", u.name),
                ),
                Some(Ok(s)) => unit_verdict(u, s),
            }
        })
        .collect()
}

fn unit_verdict(u: &Unit, s: &UnitState) -> Check {
    let id = format!("unit:{}", u.name);
    if !s.is_installed() {
        return match u.presence {
            Presence::Always => Check::fail(
                id,
                Group::Required,
                format!("not installed ({})", u.what),
                "install the Bulkhead node image, or the unit from image/tree/usr/lib/systemd/system/",
            ),
            Presence::WhenInstalled => Check::warn(
                id,
                Group::Required,
                format!("not installed: this node has no {}", u.what),
                format!("install {} to let kubelet use this node", u.name),
            ),
        };
    }
    if s.is_active() {
        Check::pass(id, Group::Required, format!("{s} ({})", u.what))
    } else {
        Check::fail(
            id,
            Group::Required,
            format!("{s} ({})", u.what),
            format!("see journalctl -b -u {} and systemctl start {}", u.name, u.name),
        )
    }
}

fn daemon_checks(host_info: &Result<Option<pb::GetHostInfoResponse>, String>) -> Vec<Check> {
    let h = match host_info {
        Ok(Some(h)) => h,
        // Alive but without HostService: what only GetHostInfo knows is unknown, and said so.
        Ok(None) => {
            return vec![
                Check::pass("bulkheadd", Group::Required, "answers (ListImages); GetHostInfo is not implemented"),
                Check::warn(
                    "virt-mode",
                    Group::Required,
                    "unknown: this bulkheadd does not serve GetHostInfo",
                    "use a bulkheadd that serves HostService.GetHostInfo to see the mode zones will use",
                ),
                Check::skip("zone-memory", Group::Advisory, "bulkheadd does not serve GetHostInfo"),
                Check::skip("zone-cpus", Group::Advisory, "bulkheadd does not serve GetHostInfo"),
            ];
        }
        Err(e) => {
            return vec![
                Check::fail(
                    "bulkheadd",
                    Group::Required,
                    format!("GetHostInfo: {e}"),
                    "systemctl status bulkheadd; journalctl -b -u bulkheadd",
                ),
                Check::skip("virt-mode", Group::Required, "bulkheadd did not answer"),
                Check::skip("zone-memory", Group::Advisory, "bulkheadd did not answer"),
                Check::skip("zone-cpus", Group::Advisory, "bulkheadd did not answer"),
            ];
        }
    };
    let daemon = Check::pass(
        "bulkheadd",
        Group::Required,
        format!("answers GetHostInfo: bulkheadd {}, {} {}", h.daemon_version, h.hypervisor, h.hypervisor_version),
    );
    let caps = format!("PV {}, PVH {}", yes_no(h.pv_capable), yes_no(h.pvh_capable));
    let mode = match pb::VirtMode::try_from(h.auto_virt_mode) {
        Ok(pb::VirtMode::Pv) => {
            Check::pass("virt-mode", Group::Required, format!("zones run PV ({}; {caps})", h.auto_virt_mode_reason))
        }
        Ok(pb::VirtMode::Pvh) => {
            Check::pass("virt-mode", Group::Required, format!("zones run PVH ({}; {caps})", h.auto_virt_mode_reason))
        }
        _ => Check::fail(
            "virt-mode",
            Group::Required,
            format!("bulkheadd resolves no mode for zones ({}; {caps})", h.auto_virt_mode_reason),
            "check [zone] auto-virt-mode in /etc/bulkhead/bulkheadd.toml and Xen's capabilities (xl info)",
        ),
    };
    let free_mib = h.free_memory_bytes / (1 << 20);
    let total_mib = h.total_memory_bytes / (1 << 20);
    let memory_detail = format!("Xen has {free_mib} MiB free of {total_mib} MiB for zones");
    let memory = if free_mib < 256 {
        Check::warn(
            "zone-memory",
            Group::Advisory,
            memory_detail,
            "free memory for zones (destroy idle zones), or give the machine more",
        )
    } else {
        Check::pass("zone-memory", Group::Advisory, memory_detail)
    };
    let cpus = if h.cpus < 2 {
        Check::warn(
            "zone-cpus",
            Group::Advisory,
            format!("Xen has {} CPU", h.cpus),
            "use 2 CPUs or more: dom0 and zones share them",
        )
    } else {
        Check::pass("zone-cpus", Group::Advisory, format!("Xen has {} CPUs", h.cpus))
    };
    vec![daemon, mode, memory, cpus]
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `installed`: whether systemd has bulkhead-cri.service (`None`: unknown). Required once installed; a node
/// without it is reported as a warning, and a node that answers without the unit passes (run by hand).
fn cri_check(cri: &Result<k8s_cri::v1::VersionResponse, String>, installed: Option<bool>) -> Check {
    const ID: &str = "cri";
    match (cri, installed) {
        (Ok(v), _) => Check::pass(
            ID,
            Group::Required,
            format!("answers Version: {} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version),
        ),
        (Err(e), Some(false)) => Check::warn(
            ID,
            Group::Required,
            format!("bulkhead-cri is not installed ({e})"),
            "install bulkhead-cri.service to let kubelet use this node",
        ),
        (Err(e), _) => Check::fail(
            ID,
            Group::Required,
            format!("CRI socket does not answer: {e}"),
            "systemctl status bulkhead-cri; journalctl -b -u bulkhead-cri",
        ),
    }
}

fn baked_image_checks(baked: &BakedImages) -> Vec<Check> {
    const ID: &str = "baked-images";
    let list = match baked {
        Ok(l) => l,
        Err(_) => return vec![Check::skip(ID, Group::Required, "bulkheadd did not answer")],
    };
    if list.is_empty() {
        return vec![Check::skip(ID, Group::Required, format!("no images baked into this node ({BAKED_IMAGES_LIST})"))];
    }
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (reference, found) in list {
        match found {
            Ok(Some(_)) => present.push(reference.as_str()),
            Ok(None) => missing.push(format!("{reference} (not imported)")),
            Err(e) => missing.push(format!("{reference} ({e})")),
        }
    }
    if missing.is_empty() {
        vec![Check::pass(ID, Group::Required, format!("imported: {}", present.join(", ")))]
    } else {
        vec![Check::fail(
            ID,
            Group::Required,
            format!("missing: {}", missing.join(", ")),
            "systemctl restart bulkhead-baked-images; journalctl -b -u bulkhead-baked-images",
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::check::{Report, Status};
    use crate::commands::check_host::tests::FakeRoot;

    fn state(load: &str, active: &str, sub: &str) -> UnitState {
        UnitState { load_state: load.into(), active_state: active.into(), sub_state: sub.into() }
    }

    fn all_running() -> Vec<(&'static str, Result<UnitState, String>)> {
        UNITS.iter().map(|u| (u.name, Ok(state("loaded", "active", "running")))).collect()
    }

    fn host_info() -> pb::GetHostInfoResponse {
        pb::GetHostInfoResponse {
            daemon_version: "0.1.0".into(),
            hypervisor: "xen".into(),
            hypervisor_version: "4.17.6".into(),
            pv_capable: true,
            pvh_capable: false,
            auto_virt_mode: pb::VirtMode::Pv.into(),
            auto_virt_mode_reason: "auto: the host has no HAP, using PV".into(),
            total_memory_bytes: 2048 << 20,
            free_memory_bytes: 900 << 20,
            cpus: 2,
        }
    }

    fn healthy() -> NodeFacts {
        NodeFacts {
            units: Ok(all_running()),
            host_info: Ok(Some(host_info())),
            cri: Ok(k8s_cri::v1::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "bulkhead".into(),
                runtime_version: "0.1.0".into(),
                runtime_api_version: "v1".into(),
            }),
            baked_images: Ok(vec![("busybox:baked".into(), Ok(Some("sha256:ab".into())))]),
        }
    }

    fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
        match checks.iter().find(|c| c.id == id) {
            Some(c) => c,
            None => panic!("no check {id} in {checks:#?}"),
        }
    }

    #[test]
    fn a_healthy_node_passes_everything() {
        let checks = postinstall(&healthy());
        for c in &checks {
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
        assert_eq!(checks.len(), UNITS.len() + 6);
        assert_eq!(
            find(&checks, "virt-mode").detail,
            "zones run PV (auto: the host has no HAP, using PV; PV yes, PVH no)"
        );
        assert_eq!(Report::new("postinstall", checks).exit_code(), 0);
    }

    #[test]
    fn a_failed_unit_fails_the_node() {
        let mut f = healthy();
        if let Ok(units) = &mut f.units {
            units[3].1 = Ok(state("loaded", "failed", "failed"));
        }
        let checks = postinstall(&f);
        let c = find(&checks, "unit:bulkheadd.service");
        assert_eq!((c.group, c.status), (Group::Required, Status::Fail));
        assert_eq!(c.detail, "loaded/failed/failed (the daemon)");
        assert_eq!(Report::new("postinstall", checks).exit_code(), 1);
    }

    #[test]
    fn xen_units_must_be_installed() {
        let mut f = healthy();
        if let Ok(units) = &mut f.units {
            units[0].1 = Ok(state("not-found", "inactive", "dead"));
        }
        assert_eq!(find(&postinstall(&f), "unit:xenstored.service").status, Status::Fail);
    }

    #[test]
    fn without_the_cri_unit_the_cri_is_a_warning_not_a_pass() {
        let mut f = healthy();
        if let Ok(units) = &mut f.units {
            units[4].1 = Ok(state("not-found", "inactive", "dead"));
        }
        f.cri = Err("cannot connect to /run/bulkhead/cri.sock: No such file or directory".into());
        let checks = postinstall(&f);
        assert_eq!(find(&checks, "unit:bulkhead-cri.service").status, Status::Warn);
        assert_eq!(find(&checks, "cri").status, Status::Warn);
        assert!(find(&checks, "cri").detail.starts_with("bulkhead-cri is not installed"));
        assert_eq!(Report::new("postinstall", checks).exit_code(), 0);
    }

    #[test]
    fn an_installed_cri_that_does_not_answer_fails() {
        let mut f = healthy();
        f.cri = Err("Version failed: boom".into());
        let checks = postinstall(&f);
        assert_eq!(find(&checks, "cri").status, Status::Fail);
        assert_eq!(Report::new("postinstall", checks).exit_code(), 1);
        // And so does one whose unit state is unknown.
        f.units = Err("cannot connect to the D-Bus system bus".into());
        assert_eq!(find(&postinstall(&f), "cri").status, Status::Fail);
    }

    #[test]
    fn no_systemd_fails_every_unit() {
        let mut f = healthy();
        f.units = Err("no bus".into());
        let checks = postinstall(&f);
        for u in UNITS {
            let c = find(&checks, &format!("unit:{}", u.name));
            assert_eq!(c.status, Status::Fail);
            assert!(c.detail.contains("no bus"));
        }
    }

    #[test]
    fn a_silent_daemon_fails_and_skips_what_depends_on_it() {
        let mut f = healthy();
        f.host_info = Err("cannot connect to /run/bulkhead/control.sock".into());
        f.baked_images = Err("cannot connect".into());
        let checks = postinstall(&f);
        assert_eq!(find(&checks, "bulkheadd").status, Status::Fail);
        for id in ["virt-mode", "zone-memory", "zone-cpus", "baked-images"] {
            assert_eq!(find(&checks, id).status, Status::Skip, "{id}");
        }
        assert_eq!(Report::new("postinstall", checks).exit_code(), 1);
    }

    #[test]
    fn the_mode_zones_use_comes_from_the_daemon() {
        let mut f = healthy();
        if let Ok(Some(h)) = &mut f.host_info {
            h.auto_virt_mode = pb::VirtMode::Pvh.into();
            h.auto_virt_mode_reason = "auto: HVM and HAP".into();
            h.pvh_capable = true;
        }
        assert!(find(&postinstall(&f), "virt-mode").detail.starts_with("zones run PVH (auto: HVM and HAP"));
        if let Ok(Some(h)) = &mut f.host_info {
            h.auto_virt_mode = pb::VirtMode::Unspecified.into();
        }
        assert_eq!(find(&postinstall(&f), "virt-mode").status, Status::Fail);
    }

    #[test]
    fn a_daemon_without_host_info_is_alive_but_the_mode_is_unknown() {
        let mut f = healthy();
        f.host_info = Ok(None);
        let checks = postinstall(&f);
        assert_eq!(find(&checks, "bulkheadd").status, Status::Pass);
        let mode = find(&checks, "virt-mode");
        assert_eq!((mode.group, mode.status), (Group::Required, Status::Warn));
        assert_eq!(find(&checks, "zone-memory").status, Status::Skip);
        assert_eq!(Report::new("postinstall", checks).exit_code(), 0);
    }

    #[test]
    fn little_memory_or_one_cpu_are_advisory_warnings() {
        let mut f = healthy();
        if let Ok(Some(h)) = &mut f.host_info {
            h.free_memory_bytes = 100 << 20;
            h.cpus = 1;
        }
        let checks = postinstall(&f);
        assert_eq!(find(&checks, "zone-memory").status, Status::Warn);
        assert_eq!(find(&checks, "zone-cpus").status, Status::Warn);
        assert_eq!(Report::new("postinstall", checks).exit_code(), 0);
    }

    #[test]
    fn a_baked_image_that_was_not_imported_fails() {
        let mut f = healthy();
        f.baked_images = Ok(vec![
            ("busybox:baked".into(), Ok(Some("sha256:ab".into()))),
            ("app:baked".into(), Ok(None)),
            ("other:baked".into(), Err("GetImage failed: internal".into())),
        ]);
        let c = postinstall(&f);
        let b = find(&c, "baked-images");
        assert_eq!(b.status, Status::Fail);
        assert_eq!(b.detail, "missing: app:baked (not imported), other:baked (GetImage failed: internal)");
        f.baked_images = Ok(Vec::new());
        assert_eq!(find(&postinstall(&f), "baked-images").status, Status::Skip);
    }

    #[test]
    fn baked_references_come_from_the_images_list() -> std::io::Result<()> {
        let r = FakeRoot::healthy_dom0()?;
        assert!(baked_image_references(&r.root()).is_empty());
        r.write(BAKED_IMAGES_LIST, "# FILE REFERENCE\nbusybox.tar busybox:baked\n\n  app.tar   app:v1 \nlonely\n")?;
        assert_eq!(baked_image_references(&r.root()), ["busybox:baked", "app:v1"]);
        Ok(())
    }
}
