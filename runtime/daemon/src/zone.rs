//! Zones as the daemon's core sees them: validated specs, the persisted record, the state machine, and the
//! choice of virtualization mode. No protobuf and no Xen types here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::link::InitInfo;

/// Smallest zone memory accepted; below this the zone kernel does not boot.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Largest zone memory accepted (1 TiB): a typo guard, not a capacity check.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Most vCPUs a zone may have.
pub const MAX_VCPUS: u32 = 128;
/// Xen's limit on a guest command line (MAX_GUEST_CMDLINE), including what the daemon adds itself.
pub const MAX_KERNEL_ARGS_LEN: usize = 1024;
/// Room kept for the daemon's own kernel arguments (console, zone id, hostname, channel path).
const RESERVED_KERNEL_ARGS_LEN: usize = 256;
/// The one `bulkhead.` kernel argument a zone spec may carry: the zone init's self-tests.
const SELFTEST_KERNEL_ARG: &str = "bulkhead.selftest=";
const MAX_LABELS: usize = 64;
/// Largest client record kept with a zone or workload (Kubernetes caps a pod's annotations at 256 KiB).
pub const MAX_CLIENT_STATE_LEN: usize = 256 << 10;
const MAX_LABEL_KEY_LEN: usize = 253;
const MAX_LABEL_VALUE_LEN: usize = 4096;

/// A spec field that failed validation; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `name` is not an RFC 1123 label.
    #[error("name {0:?} is not a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric")]
    Name(String),
    /// `hostname` is not an RFC 1123 label.
    #[error("hostname {0:?} is not a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric")]
    Hostname(String),
    /// `memory_mib` out of range.
    #[error("memory_mib {0} is out of range: give {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}")]
    Memory(u32),
    /// `vcpus` out of range.
    #[error("vcpus {0} is out of range: give 1 to {MAX_VCPUS}")]
    Vcpus(u32),
    /// A path is not absolute.
    #[error("{field} {path:?} must be an absolute path on the node")]
    RelativePath {
        /// Field name.
        field: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A kernel argument is empty or contains whitespace or a control character.
    #[error("kernel argument {0:?} must be one non-empty word without whitespace or control characters")]
    KernelArg(String),
    /// The kernel arguments are too long for Xen.
    #[error("kernel arguments take {0} bytes; at most {max} are allowed", max = MAX_KERNEL_ARGS_LEN - RESERVED_KERNEL_ARGS_LEN)]
    KernelArgsTooLong(usize),
    /// A kernel argument uses the daemon's own namespace.
    #[error("kernel argument {0:?} uses the reserved prefix bulkhead. (only bulkhead.selftest= is allowed)")]
    ReservedKernelArg(String),
    /// The client's record is too large.
    #[error("client_state takes {0} bytes; at most {MAX_CLIENT_STATE_LEN} are kept")]
    ClientState(usize),
    /// Too many labels or annotations, or one too long.
    #[error(
        "{field}: at most {MAX_LABELS} entries, keys up to {MAX_LABEL_KEY_LEN} bytes, values up to {MAX_LABEL_VALUE_LEN}"
    )]
    Labels {
        /// Field name.
        field: &'static str,
    },
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A zone's name: an RFC 1123 label, unique on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ZoneName(String);

impl ZoneName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ZoneName {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        if is_dns_label(&s) { Ok(ZoneName(s)) } else { Err(SpecError::Name(s)) }
    }
}

impl From<ZoneName> for String {
    fn from(n: ZoneName) -> String {
        n.0
    }
}

impl std::fmt::Display for ZoneName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the zone's domain is virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtMode {
    /// PVH where the host can, else PV.
    Auto,
    /// Paravirtualized: runs everywhere Xen runs, including under emulation.
    Pv,
    /// PVH: hardware-assisted (needs VT-x/AMD-V with HAP), smaller attack surface and faster syscalls.
    Pvh,
}

/// What the host can run, as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVirtCaps {
    /// Xen reports HVM support.
    pub hvm: bool,
    /// Xen reports hardware-assisted paging.
    pub hap: bool,
}

/// The mode a zone gets, and the reason shown in its status and in `bulkhead check`.
///
/// `auto_override` is the node's configured answer for `auto` (e.g. `pv` where Xen reports HVM + HAP that
/// cannot run PVH guests, as under software emulation: that cannot be told from inside dom0).
pub fn resolve_virt_mode(
    requested: VirtMode,
    host: HostVirtCaps,
    auto_override: Option<VirtMode>,
) -> Result<(VirtMode, String), String> {
    let pvh_ok = host.hvm && host.hap;
    match requested {
        VirtMode::Pv => Ok((VirtMode::Pv, "requested".to_owned())),
        VirtMode::Pvh if pvh_ok => Ok((VirtMode::Pvh, "requested".to_owned())),
        VirtMode::Pvh => Err(format!(
            "PVH was requested but the host lacks {}; request pv or auto",
            if host.hvm { "hardware-assisted paging (HAP)" } else { "hardware virtualization (HVM)" }
        )),
        VirtMode::Auto => match auto_override {
            Some(VirtMode::Pvh) if !pvh_ok => Err("the node configures auto = pvh but the host cannot run PVH".into()),
            Some(m @ (VirtMode::Pv | VirtMode::Pvh)) => {
                Ok((m, format!("auto: the node configures {}", if m == VirtMode::Pv { "pv" } else { "pvh" })))
            }
            _ if pvh_ok => Ok((VirtMode::Pvh, "auto: the host has HVM with HAP".to_owned())),
            _ => {
                Ok((VirtMode::Pv, format!("auto: the host has no {}, using PV", if host.hvm { "HAP" } else { "HVM" })))
            }
        },
    }
}

/// A validated zone spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSpec {
    /// Unique name.
    pub name: ZoneName,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Requested virtualization mode.
    pub virt_mode: VirtMode,
    /// Guest kernel; `None` = the node's.
    pub kernel: Option<PathBuf>,
    /// Guest initramfs; `None` = the node's.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line words.
    pub kernel_args: Vec<String>,
    /// Hostname; `None` = the name.
    pub hostname: Option<String>,
    /// Labels (selectable).
    pub labels: BTreeMap<String, String>,
    /// Annotations (free-form).
    pub annotations: BTreeMap<String, String>,
    /// The client's opaque record of the zone (see the API's `client_state`).
    #[serde(default)]
    pub client_state: String,
}

impl ZoneSpec {
    /// Checks every field; the first violation is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory(self.memory_mib));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(SpecError::Vcpus(self.vcpus));
        }
        for (field, p) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(SpecError::RelativePath { field, path: p.clone() });
            }
        }
        let mut total = 0;
        for a in &self.kernel_args {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(SpecError::KernelArg(a.clone()));
            }
            // The daemon sets the zone's identity and channel; a caller may only ask for the init's self-tests
            // (e.g. channel fault injection), which can harm nothing but the zone itself.
            if a.starts_with("bulkhead.") && !a.starts_with(SELFTEST_KERNEL_ARG) {
                return Err(SpecError::ReservedKernelArg(a.clone()));
            }
            total += a.len() + 1;
        }
        if total > MAX_KERNEL_ARGS_LEN - RESERVED_KERNEL_ARGS_LEN {
            return Err(SpecError::KernelArgsTooLong(total));
        }
        if let Some(h) = &self.hostname
            && !is_dns_label(h)
        {
            return Err(SpecError::Hostname(h.clone()));
        }
        if self.client_state.len() > MAX_CLIENT_STATE_LEN {
            return Err(SpecError::ClientState(self.client_state.len()));
        }
        for (field, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            let too_big = map.len() > MAX_LABELS
                || map
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_KEY_LEN || v.len() > MAX_LABEL_VALUE_LEN);
            if too_big {
                return Err(SpecError::Labels { field });
            }
        }
        Ok(())
    }

    /// The hostname the zone gets.
    pub fn effective_hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(self.name.as_str())
    }
}

/// Where a zone is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneState {
    /// Recorded, not booted.
    Created,
    /// Domain built; kernel and init coming up.
    Starting,
    /// Init connected; workloads can run.
    Ready,
    /// Asked to power off.
    Stopping,
    /// Powered off; no domain.
    Stopped,
    /// Crashed, init failed, or the domain vanished.
    Failed,
}

/// A state change that the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a zone that is {from:?} cannot become {to:?}")]
pub struct InvalidTransition {
    /// Current state.
    pub from: ZoneState,
    /// Requested state.
    pub to: ZoneState,
}

impl ZoneState {
    /// Whether the zone may go from `self` to `to`.
    pub fn can_become(self, to: ZoneState) -> bool {
        use ZoneState::*;
        matches!(
            (self, to),
            (Created | Stopped | Failed, Starting)
                | (Starting, Ready | Stopping)
                | (Ready, Stopping)
                | (Stopping, Stopped)
                | (Starting | Ready | Stopping, Failed)
        )
    }

    /// Whether a Xen domain should exist for a zone in this state.
    pub fn has_domain(self) -> bool {
        matches!(self, ZoneState::Starting | ZoneState::Ready | ZoneState::Stopping)
    }
}

pub use bulkhead_store::{Nanos, now};

/// The persisted record of one zone: desired spec plus what the daemon knows of its domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRecord {
    /// Daemon-assigned id (also the xenstore/uuid key of its domain).
    pub id: String,
    /// The validated spec.
    pub spec: ZoneSpec,
    /// Current state.
    pub state: ZoneState,
    /// Xen domain id while a domain exists.
    pub domid: Option<u32>,
    /// The mode the domain was built with and why (set when started).
    pub virt_mode: Option<(VirtMode, String)>,
    /// Why the zone failed.
    pub failure_reason: Option<String>,
    /// When recorded.
    pub created_at: Nanos,
    /// When last started.
    pub started_at: Nanos,
    /// When its init connected.
    pub ready_at: Nanos,
    /// When it stopped or failed.
    pub finished_at: Nanos,
    /// What the zone's init reported when it last connected.
    #[serde(default)]
    pub init: Option<InitInfo>,
    /// The pod network it was started on.
    #[serde(default)]
    pub network: Option<crate::network::ZoneNetwork>,
}

impl ZoneRecord {
    /// A new record in state `Created`.
    pub fn new(id: String, spec: ZoneSpec, now: Nanos) -> Self {
        ZoneRecord {
            id,
            spec,
            state: ZoneState::Created,
            domid: None,
            virt_mode: None,
            failure_reason: None,
            created_at: now,
            started_at: 0,
            ready_at: 0,
            finished_at: 0,
            init: None,
            network: None,
        }
    }

    /// Moves to `to`, stamping the matching time; refuses what the state machine does not allow.
    pub fn transition(&mut self, to: ZoneState, now: Nanos) -> Result<(), InvalidTransition> {
        if !self.state.can_become(to) {
            return Err(InvalidTransition { from: self.state, to });
        }
        match to {
            ZoneState::Starting => {
                self.started_at = now;
                self.ready_at = 0;
                self.finished_at = 0;
                self.failure_reason = None;
                self.init = None;
            }
            ZoneState::Ready => self.ready_at = now,
            ZoneState::Stopped | ZoneState::Failed => {
                self.finished_at = now;
                self.domid = None;
            }
            ZoneState::Created | ZoneState::Stopping => {}
        }
        self.state = to;
        Ok(())
    }

    /// Marks the zone failed with `reason` (from any state that has a domain).
    pub fn fail(&mut self, reason: impl Into<String>, now: Nanos) -> Result<(), InvalidTransition> {
        self.transition(ZoneState::Failed, now)?;
        self.failure_reason = Some(reason.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ZoneSpec {
        ZoneSpec {
            name: ZoneName("web-1".into()),
            memory_mib: 128,
            vcpus: 1,
            virt_mode: VirtMode::Auto,
            kernel: None,
            initrd: None,
            kernel_args: vec![],
            hostname: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            client_state: String::new(),
        }
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(ZoneName::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert_eq!(ZoneName::try_from(bad.to_owned()), Err(SpecError::Name(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn deserializing_a_bad_name_fails() {
        let r: Result<ZoneName, _> = serde_json::from_str("\"../etc\"");
        assert!(r.is_err());
    }

    #[test]
    fn valid_spec_passes_and_each_rule_is_enforced() {
        assert_eq!(spec().validate(), Ok(()));
        let selftest = ZoneSpec { kernel_args: vec!["bulkhead.selftest=channel-garbage".into()], ..spec() };
        assert_eq!(selftest.validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut ZoneSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.memory_mib = 16), "memory_mib 16"),
            (Box::new(|s| s.vcpus = 0), "vcpus 0"),
            (Box::new(|s| s.vcpus = 129), "vcpus 129"),
            (Box::new(|s| s.kernel = Some("vmlinux".into())), "kernel \"vmlinux\""),
            (Box::new(|s| s.kernel_args = vec!["a b".into()]), "kernel argument \"a b\""),
            (Box::new(|s| s.kernel_args = vec![String::new()]), "kernel argument \"\""),
            (Box::new(|s| s.kernel_args = vec!["bulkhead.zone=x".into()]), "reserved prefix"),
            (Box::new(|s| s.kernel_args = vec!["bulkhead.channel=x".into()]), "reserved prefix"),
            (Box::new(|s| s.kernel_args = vec!["x".repeat(800)]), "kernel arguments take 801 bytes"),
            (Box::new(|s| s.hostname = Some("Bad".into())), "hostname \"Bad\""),
            (Box::new(|s| s.labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect()), "labels"),
        ];
        for (mutate, expect) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(expect), "expected {expect:?} in {err:?}");
        }
    }

    #[test]
    fn hostname_defaults_to_name() {
        let mut s = spec();
        assert_eq!(s.effective_hostname(), "web-1");
        s.hostname = Some("h".into());
        assert_eq!(s.effective_hostname(), "h");
    }

    const HW: HostVirtCaps = HostVirtCaps { hvm: true, hap: true };
    const NO_HAP: HostVirtCaps = HostVirtCaps { hvm: true, hap: false };
    const NO_HVM: HostVirtCaps = HostVirtCaps { hvm: false, hap: false };

    #[test]
    fn auto_picks_pvh_only_with_hvm_and_hap() {
        assert_eq!(resolve_virt_mode(VirtMode::Auto, HW, None).map(|m| m.0), Ok(VirtMode::Pvh));
        let (m, why) = resolve_virt_mode(VirtMode::Auto, NO_HAP, None).unwrap_or((VirtMode::Auto, String::new()));
        assert_eq!((m, why.as_str()), (VirtMode::Pv, "auto: the host has no HAP, using PV"));
        let (m, why) = resolve_virt_mode(VirtMode::Auto, NO_HVM, None).unwrap_or((VirtMode::Auto, String::new()));
        assert_eq!((m, why.as_str()), (VirtMode::Pv, "auto: the host has no HVM, using PV"));
    }

    #[test]
    fn node_override_wins_for_auto_but_cannot_force_the_impossible() {
        let r = resolve_virt_mode(VirtMode::Auto, HW, Some(VirtMode::Pv));
        assert_eq!(r, Ok((VirtMode::Pv, "auto: the node configures pv".to_owned())));
        assert!(resolve_virt_mode(VirtMode::Auto, NO_HAP, Some(VirtMode::Pvh)).is_err());
        // An explicit request is not overridden.
        assert_eq!(resolve_virt_mode(VirtMode::Pvh, HW, Some(VirtMode::Pv)).map(|m| m.0), Ok(VirtMode::Pvh));
    }

    #[test]
    fn explicit_pvh_on_an_incapable_host_says_what_is_missing() {
        let e = resolve_virt_mode(VirtMode::Pvh, NO_HAP, None).err().unwrap_or_default();
        assert!(e.contains("HAP"), "{e}");
        let e = resolve_virt_mode(VirtMode::Pvh, NO_HVM, None).err().unwrap_or_default();
        assert!(e.contains("HVM"), "{e}");
        assert_eq!(resolve_virt_mode(VirtMode::Pv, NO_HVM, None).map(|m| m.0), Ok(VirtMode::Pv));
    }

    #[test]
    fn lifecycle_follows_the_state_machine() -> Result<(), InvalidTransition> {
        let mut r = ZoneRecord::new("z1".into(), spec(), 1);
        assert_eq!(
            r.transition(ZoneState::Ready, 2),
            Err(InvalidTransition { from: ZoneState::Created, to: ZoneState::Ready })
        );
        r.transition(ZoneState::Starting, 2)?;
        r.domid = Some(7);
        r.transition(ZoneState::Ready, 3)?;
        r.transition(ZoneState::Stopping, 4)?;
        r.transition(ZoneState::Stopped, 5)?;
        assert_eq!((r.started_at, r.ready_at, r.finished_at, r.domid), (2, 3, 5, None));
        // Restart clears the previous run's marks.
        r.transition(ZoneState::Starting, 6)?;
        assert_eq!((r.started_at, r.ready_at, r.finished_at), (6, 0, 0));
        r.domid = Some(9);
        r.fail("kernel panicked", 7)?;
        assert_eq!(r.state, ZoneState::Failed);
        assert_eq!(r.failure_reason.as_deref(), Some("kernel panicked"));
        assert_eq!(r.domid, None);
        // A failed zone can be started again, and that clears the reason.
        r.transition(ZoneState::Starting, 8)?;
        assert_eq!(r.failure_reason, None);
        Ok(())
    }

    #[test]
    fn every_state_pair_is_decided_deliberately() {
        use ZoneState::*;
        let all = [Created, Starting, Ready, Stopping, Stopped, Failed];
        let allowed: Vec<(ZoneState, ZoneState)> =
            all.iter().flat_map(|a| all.iter().map(move |b| (*a, *b))).filter(|(a, b)| a.can_become(*b)).collect();
        assert_eq!(
            allowed,
            vec![
                (Created, Starting),
                (Starting, Ready),
                (Starting, Stopping),
                (Starting, Failed),
                (Ready, Stopping),
                (Ready, Failed),
                (Stopping, Stopped),
                (Stopping, Failed),
                (Stopped, Starting),
                (Failed, Starting),
            ]
        );
        assert!(all.iter().filter(|s| s.has_domain()).eq([Starting, Ready, Stopping].iter()));
    }

    #[test]
    fn records_round_trip_through_json() -> Result<(), serde_json::Error> {
        let mut r = ZoneRecord::new("z1".into(), spec(), 1);
        r.virt_mode = Some((VirtMode::Pv, "requested".into()));
        let back: ZoneRecord = serde_json::from_str(&serde_json::to_string(&r)?)?;
        assert_eq!(back, r);
        Ok(())
    }
}
