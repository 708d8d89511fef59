//! Pod sandboxes are zones: from kubelet's `PodSandboxConfig` to the daemon's zone spec, and from the
//! daemon's zone status back to CRI's views of a sandbox.

use std::collections::HashMap;

use bulkhead_api::control::v1 as pb;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

/// The label that marks the zones and workloads bulkhead-cri made (other clients' zones are not pods).
pub const MANAGED_LABEL: &str = "bulkhead.dev/cri";
/// Pod annotation choosing the zone's virtualization mode: `auto`, `pv` or `pvh`.
pub const VIRT_BACKEND_ANNOTATION: &str = "bulkhead.dev/virt-backend";
/// Pod annotation choosing one of the node's zone kernels by name (see [`SandboxDefaults::kernels_dir`]).
pub const KERNEL_ANNOTATION: &str = "bulkhead.dev/kernel";
/// The runtime handler name RuntimeClasses use.
pub const RUNTIME_HANDLER: &str = "bulkhead";

const MIB: i64 = 1 << 20;
/// What a zone costs the node outside its own memory, MiB: Xen's per-domain memory and dom0's per-zone memory
/// (bulkheadd, blkback, the channel). ci/bench/zone-overhead.sh measured 2.4 MiB in dom0 and under 1 MiB in
/// Xen; the rest is room for dom0's noise, so that the node never pays more than the pod's limit + overhead
/// (checked by `bulkhead-cri overhead-check`, see runtime/cri/runtimeclass.yaml).
pub const HOST_OVERHEAD_MIB: u32 = 8;

/// What the node gives a pod that asks for nothing.
#[derive(Debug, Clone)]
pub struct SandboxDefaults {
    /// Memory of a zone whose pod sets no memory limit, MiB.
    pub memory_mib: u32,
    /// vCPUs of a zone whose pod sets no CPU limit.
    pub vcpus: u32,
    /// The part of a pod's overhead the node spends outside the zone, MiB: the zone gets the rest.
    pub host_overhead_mib: u32,
    /// Directory of named zone kernels: `<dir>/<name>/kernel` and `<dir>/<name>/initrd`.
    pub kernels_dir: std::path::PathBuf,
}

/// What bulkhead-cri keeps with a zone (its `client_state`), to answer CRI about it later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Kubelet's config, as given.
    pub config: cri::PodSandboxConfig,
    /// The runtime handler it was run with.
    pub runtime_handler: String,
}

/// A zone name for the pod: readable (`<namespace>-<name>`, shortened) and unique per pod uid and attempt
/// (a hash of the full identity ends it).
pub fn zone_name(meta: &cri::PodSandboxMetadata) -> String {
    let identity = format!("{}\n{}\n{}\n{}", meta.namespace, meta.name, meta.uid, meta.attempt);
    let hash = hex::encode(&Sha256::digest(identity.as_bytes())[..5]);
    let mut readable: String = format!("{}-{}", meta.namespace, meta.name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    readable.truncate(63 - hash.len() - 1);
    let readable = readable.trim_matches('-');
    if readable.is_empty() { format!("pod-{hash}") } else { format!("{readable}-{hash}") }
}

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// Refuses host namespaces: a pod's network, PID and IPC namespaces are its zone's, and the node's cannot
/// be shared into a VM.
fn check_namespaces(linux: Option<&cri::LinuxPodSandboxConfig>) -> Result<(), Status> {
    let Some(ns) = linux.and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref()) else {
        return Ok(());
    };
    let node = cri::NamespaceMode::Node as i32;
    for (mode, field) in [(ns.network, "hostNetwork"), (ns.pid, "hostPID"), (ns.ipc, "hostIPC")] {
        if mode == node {
            return Err(invalid(format!(
                "{field} is not supported by the bulkhead runtime: each pod runs in its own VM, which cannot \
                 share the node's namespaces; run this pod with another RuntimeClass"
            )));
        }
    }
    Ok(())
}

/// Memory (MiB, rounded up) and vCPUs for the pod: its containers' limits (or the node's defaults when the
/// pod sets none) plus the RuntimeClass overhead, less the part of the overhead the node spends outside the
/// zone: the scheduler counts limit + overhead, and that is what the node pays.
fn size(linux: Option<&cri::LinuxPodSandboxConfig>, defaults: &SandboxDefaults) -> Result<(u32, u32), Status> {
    let resources = linux.and_then(|l| l.resources.as_ref());
    let overhead = linux.and_then(|l| l.overhead.as_ref());
    let bytes = |r: Option<&cri::LinuxContainerResources>| r.map_or(0, |r| r.memory_limit_in_bytes.max(0));
    let in_zone = (bytes(overhead) - i64::from(defaults.host_overhead_mib) * MIB).max(0);
    let memory_mib = match bytes(resources) {
        0 => i64::from(defaults.memory_mib) + (in_zone + MIB - 1) / MIB,
        limit => (limit + in_zone + MIB - 1) / MIB,
    };
    let cpus = |r: Option<&cri::LinuxContainerResources>| match r {
        Some(r) if r.cpu_quota > 0 && r.cpu_period > 0 => r.cpu_quota as f64 / r.cpu_period as f64,
        _ => 0.0,
    };
    let vcpus = match cpus(resources) {
        c if c <= 0.0 => f64::from(defaults.vcpus),
        c => (c + cpus(overhead)).ceil(),
    };
    let memory_mib =
        u32::try_from(memory_mib).map_err(|_| invalid(format!("a pod memory limit of {memory_mib} MiB is absurd")))?;
    Ok((memory_mib, vcpus.clamp(1.0, f64::from(u32::MAX)) as u32))
}

fn virt_mode(annotations: &HashMap<String, String>) -> Result<pb::VirtMode, Status> {
    match annotations.get(VIRT_BACKEND_ANNOTATION).map(String::as_str) {
        None | Some("auto") => Ok(pb::VirtMode::Auto),
        Some("pv") => Ok(pb::VirtMode::Pv),
        Some("pvh") => Ok(pb::VirtMode::Pvh),
        Some(other) => {
            Err(invalid(format!("annotation {VIRT_BACKEND_ANNOTATION}={other:?}: use one of auto, pv or pvh")))
        }
    }
}

/// The kernel and initrd a pod's annotation names, as paths; none: the node's default.
fn kernel(annotations: &HashMap<String, String>, defaults: &SandboxDefaults) -> Result<(String, String), Status> {
    let Some(name) = annotations.get(KERNEL_ANNOTATION) else { return Ok(Default::default()) };
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !plain {
        return Err(invalid(format!(
            "annotation {KERNEL_ANNOTATION}={name:?}: give the name of a kernel installed under {} \
             (letters, digits, '.', '-', '_')",
            defaults.kernels_dir.display()
        )));
    }
    let dir = defaults.kernels_dir.join(name);
    let path = |f: &str| dir.join(f).display().to_string();
    Ok((path("kernel"), path("initrd")))
}

/// The zone spec for a pod sandbox; every refusal is INVALID_ARGUMENT saying what to change.
pub fn zone_spec(
    config: &cri::PodSandboxConfig,
    runtime_handler: &str,
    defaults: &SandboxDefaults,
) -> Result<pb::ZoneSpec, Status> {
    let meta = config.metadata.as_ref().ok_or_else(|| invalid("the pod sandbox config has no metadata".into()))?;
    if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
        return Err(invalid("the pod sandbox metadata needs a name, a namespace and a uid".into()));
    }
    if !runtime_handler.is_empty() && runtime_handler != RUNTIME_HANDLER {
        return Err(invalid(format!(
            "runtime handler {runtime_handler:?} is not served here: this runtime's handler is {RUNTIME_HANDLER:?}"
        )));
    }
    let linux = config.linux.as_ref();
    check_namespaces(linux)?;
    let (memory_mib, vcpus) = size(linux, defaults)?;
    let (kernel, initrd) = kernel(&config.annotations, defaults)?;
    let record = SandboxRecord { config: config.clone(), runtime_handler: runtime_handler.to_owned() };
    let client_state = serde_json::to_string(&record)
        .map_err(|e| Status::internal(format!("recording the pod sandbox config: {e}")))?;
    Ok(pb::ZoneSpec {
        name: zone_name(meta),
        memory_mib,
        vcpus,
        virt_mode: virt_mode(&config.annotations)?.into(),
        kernel,
        initrd,
        kernel_args: vec![],
        hostname: config.hostname.clone(),
        labels: [(MANAGED_LABEL.to_owned(), "sandbox".to_owned())].into_iter().collect(),
        annotations: Default::default(),
        client_state,
    })
}

/// A zone bulkhead-cri made, with its record; `None` for other zones.
pub fn record(zone: &pb::ZoneStatus) -> Option<SandboxRecord> {
    let spec = zone.spec.as_ref()?;
    if spec.labels.get(MANAGED_LABEL).map(String::as_str) != Some("sandbox") {
        return None;
    }
    serde_json::from_str(&spec.client_state).ok()
}

/// READY while the zone can run containers (or is still coming up under RunPodSandbox); NOTREADY once it
/// is stopping, stopped or failed.
pub fn state(zone: &pb::ZoneStatus) -> cri::PodSandboxState {
    match zone.state() {
        pb::ZoneState::Ready | pb::ZoneState::Starting => cri::PodSandboxState::SandboxReady,
        _ => cri::PodSandboxState::SandboxNotready,
    }
}

/// The sandbox as ListPodSandbox shows it.
pub fn to_cri(zone: &pb::ZoneStatus, record: &SandboxRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: zone.id.clone(),
        metadata: record.config.metadata.clone(),
        state: state(zone).into(),
        created_at: zone.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        runtime_handler: record.runtime_handler.clone(),
    }
}

/// The sandbox as PodSandboxStatus shows it, with the pod IP its zone was started on.
pub fn status_to_cri(zone: &pb::ZoneStatus, record: &SandboxRecord) -> cri::PodSandboxStatus {
    let pod = to_cri(zone, record);
    cri::PodSandboxStatus {
        id: pod.id,
        metadata: pod.metadata,
        state: pod.state,
        created_at: pod.created_at,
        network: Some(network_status(zone)),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: record
                    .config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref())
                    .and_then(|s| s.namespace_options.clone()),
            }),
        }),
        labels: pod.labels,
        annotations: pod.annotations,
        runtime_handler: pod.runtime_handler,
    }
}

/// The pod IP: the address (without its prefix length) of the network the zone was started on.
fn network_status(zone: &pb::ZoneStatus) -> cri::PodSandboxNetworkStatus {
    let mut ips = zone.network.iter().flat_map(|n| &n.addresses).map(|a| a.split('/').next().unwrap_or(a).to_owned());
    cri::PodSandboxNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip }).collect(),
    }
}

/// Whether `pod` passes ListPodSandbox's filter (ids match by prefix, as crictl's short ids do).
pub fn matches(pod: &cri::PodSandbox, filter: Option<&cri::PodSandboxFilter>) -> bool {
    let Some(f) = filter else { return true };
    pod.id.starts_with(&f.id)
        && f.state.as_ref().is_none_or(|s| s.state == pod.state)
        && f.label_selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SandboxDefaults {
        SandboxDefaults {
            memory_mib: 256,
            vcpus: 1,
            host_overhead_mib: 4,
            kernels_dir: "/usr/lib/bulkhead/zone/kernels".into(),
        }
    }

    fn config() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-7f9c".into(),
                uid: "0b7e".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            hostname: "web-7f9c".into(),
            labels: [("app".to_owned(), "web".to_owned())].into_iter().collect(),
            ..Default::default()
        }
    }

    fn resources(memory: i64, quota: i64) -> Option<cri::LinuxContainerResources> {
        Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: memory,
            cpu_quota: quota,
            cpu_period: 100_000,
            ..Default::default()
        })
    }

    #[test]
    fn zone_names_are_readable_labels_unique_per_attempt() {
        let meta = config().metadata.unwrap_or_default();
        let name = zone_name(&meta);
        assert!(name.starts_with("shop-web-7f9c-"), "{name}");
        assert!(name.len() <= 63);
        assert_ne!(name, zone_name(&cri::PodSandboxMetadata { attempt: 1, ..meta.clone() }));
        let long = cri::PodSandboxMetadata { name: "X".repeat(200), ..meta };
        let long = zone_name(&long);
        assert!(long.len() <= 63, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{long}");
    }

    #[test]
    fn the_runtime_class_names_our_handler_and_the_label_our_nodes_carry() -> Result<(), String> {
        let manifest = include_str!("../runtimeclass.yaml");
        let dropin = include_str!("../../../image/tree/usr/lib/systemd/system/kubelet.service.d/10-bulkhead.conf");
        assert!(manifest.lines().any(|l| l == format!("handler: {RUNTIME_HANDLER}")), "{manifest}");
        let label = dropin
            .split_whitespace()
            .find_map(|w| w.strip_prefix("--node-labels="))
            .ok_or("kubelet's drop-in sets no --node-labels")?;
        let (key, value) = label.split_once('=').ok_or(format!("label {label:?} has no value"))?;
        assert!(manifest.lines().any(|l| l.trim() == format!("{key}: {value}")), "{manifest}");
        Ok(())
    }

    #[test]
    fn size_is_the_pods_limits_plus_overhead_or_the_defaults() -> Result<(), Status> {
        let mut c = config();
        let spec = zone_spec(&c, "", &defaults())?;
        assert_eq!((spec.memory_mib, spec.vcpus), (256, 1));
        c.linux = Some(cri::LinuxPodSandboxConfig {
            resources: resources(100 * MIB + 1, 150_000),
            overhead: resources(40 * MIB, 10_000),
            ..Default::default()
        });
        let spec = zone_spec(&c, "bulkhead", &defaults())?;
        // 100 MiB + 1 byte of limits, 40 MiB of overhead of which 4 stay outside the zone.
        assert_eq!((spec.memory_mib, spec.vcpus), (137, 2));
        if let Some(l) = c.linux.as_mut() {
            l.overhead = resources(3 * MIB, 0);
        }
        let spec = zone_spec(&c, "bulkhead", &defaults())?;
        assert_eq!(spec.memory_mib, 101, "an overhead below the host's part adds nothing to the zone");
        Ok(())
    }

    #[test]
    fn host_namespaces_handlers_and_bad_annotations_are_refused_with_the_reason() {
        let mut c = config();
        c.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = zone_spec(&c, "", &defaults()).err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(e.contains("hostNetwork is not supported"), "{e}");
        let e = zone_spec(&config(), "runc", &defaults()).err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(e.contains("\"runc\""), "{e}");
        let mut c = config();
        c.annotations.insert(VIRT_BACKEND_ANNOTATION.into(), "hvm".into());
        assert!(zone_spec(&c, "", &defaults()).is_err());
        let mut c = config();
        c.annotations.insert(KERNEL_ANNOTATION.into(), "../../etc".into());
        assert!(zone_spec(&c, "", &defaults()).is_err());
        assert!(zone_spec(&cri::PodSandboxConfig::default(), "", &defaults()).is_err());
    }

    #[test]
    fn annotations_choose_the_mode_and_kernel_and_the_record_round_trips() -> Result<(), Status> {
        let mut c = config();
        c.annotations.insert(VIRT_BACKEND_ANNOTATION.into(), "pv".into());
        c.annotations.insert(KERNEL_ANNOTATION.into(), "lts-6.12".into());
        let spec = zone_spec(&c, "bulkhead", &defaults())?;
        assert_eq!(spec.virt_mode(), pb::VirtMode::Pv);
        assert_eq!(spec.kernel, "/usr/lib/bulkhead/zone/kernels/lts-6.12/kernel");
        assert_eq!(spec.initrd, "/usr/lib/bulkhead/zone/kernels/lts-6.12/initrd");
        let zone = pb::ZoneStatus {
            id: "z1".into(),
            spec: Some(spec),
            state: pb::ZoneState::Ready.into(),
            ..Default::default()
        };
        let rec = record(&zone).ok_or_else(|| Status::internal("no record"))?;
        let pod = to_cri(&zone, &rec);
        assert_eq!(pod.metadata, c.metadata);
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pod.state(), cri::PodSandboxState::SandboxReady);
        assert!(matches(&pod, Some(&cri::PodSandboxFilter { id: "z".into(), ..Default::default() })));
        let other = cri::PodSandboxFilter {
            label_selector: [("app".to_owned(), "db".to_owned())].into_iter().collect(),
            ..Default::default()
        };
        assert!(!matches(&pod, Some(&other)));
        Ok(())
    }
}
