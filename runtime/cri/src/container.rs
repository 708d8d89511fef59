//! Containers are workloads in their pod's zone: from kubelet's `ContainerConfig` to the daemon's workload
//! spec, and from the daemon's workload status back to CRI's views of a container.

use std::path::{Path, PathBuf};

use bulkhead_api::control::v1 as pb;
use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::sandbox::MANAGED_LABEL;

/// What bulkhead-cri keeps with a workload (its `client_state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Kubelet's config, as given.
    pub config: cri::ContainerConfig,
}

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// The workload name for a container attempt: unique in the pod while kubelet keeps the previous attempt
/// (container names are DNS labels, so the dot cannot clash).
pub fn workload_name(meta: &cri::ContainerMetadata) -> String {
    format!("{}.{}", meta.name, meta.attempt)
}

/// The absolute log path kubelet asked for: the sandbox's log directory joined with the container's path.
pub fn log_path(sandbox: &cri::PodSandboxConfig, config: &cri::ContainerConfig) -> Result<Option<PathBuf>, Status> {
    if sandbox.log_directory.is_empty() || config.log_path.is_empty() {
        return Ok(None);
    }
    let rel = Path::new(&config.log_path);
    let plain = rel.is_relative() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(invalid(format!(
            "log_path {:?} must be a relative path below the sandbox's log directory",
            config.log_path
        )));
    }
    Ok(Some(Path::new(&sandbox.log_directory).join(rel)))
}

/// kubelet's runAsUser/runAsUsername, runAsGroup and supplementalGroups, for the daemon to resolve in the
/// image as runc does: without runAsGroup the user's primary group and its groups come from the image's
/// /etc/passwd and /etc/group (containerd leaves the gid to runc the same way); runAsGroup or
/// supplementalGroups alone apply to the image's user.
fn user(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Option<pb::User>, Status> {
    let Some(sc) = sc else { return Ok(None) };
    let id = |v: Option<&cri::Int64Value>, field: &str| -> Result<Option<u32>, Status> {
        v.map(|v| u32::try_from(v.value).map_err(|_| invalid(format!("{field} {} is not a valid id", v.value))))
            .transpose()
    };
    let uid = id(sc.run_as_user.as_ref(), "runAsUser")?;
    let gid = id(sc.run_as_group.as_ref(), "runAsGroup")?;
    if uid.is_some() && !sc.run_as_username.is_empty() {
        return Err(invalid(format!(
            "runAsUser {} and runAsUsername {:?} are both set: give one",
            uid.unwrap_or_default(),
            sc.run_as_username
        )));
    }
    let additional_gids = sc
        .supplemental_groups
        .iter()
        .map(|g| u32::try_from(*g).map_err(|_| invalid(format!("supplemental group {g} is not a valid id"))))
        .collect::<Result<Vec<_>, _>>()?;
    let user = pb::User { uid, gid, name: sc.run_as_username.clone(), additional_gids };
    // An empty message is the image's user; none says the same more plainly.
    Ok((user != pb::User::default()).then_some(user))
}

/// Limits from kubelet's resources; none when it sent none.
pub fn limits(r: Option<&cri::LinuxContainerResources>) -> Result<Option<pb::ResourceLimits>, Status> {
    let Some(r) = r else { return Ok(None) };
    let non_negative = |v: i64, field: &str| {
        u64::try_from(v).map_err(|_| invalid(format!("resources.{field} {v} must not be negative")))
    };
    Ok(Some(pb::ResourceLimits {
        memory_bytes: non_negative(r.memory_limit_in_bytes, "memory_limit_in_bytes")?,
        cpu_quota_us: if r.cpu_quota > 0 { non_negative(r.cpu_quota, "cpu_quota")? } else { 0 },
        cpu_period_us: non_negative(r.cpu_period, "cpu_period")?,
        pids_max: 0,
    }))
}

/// Where a container finds its pod's DNS settings.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The workload spec for a container; every refusal is INVALID_ARGUMENT saying what to change.
pub fn workload_spec(
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    resolv_conf: Option<&std::path::Path>,
) -> Result<pb::WorkloadSpec, Status> {
    let meta = config.metadata.as_ref().ok_or_else(|| invalid("the container config has no metadata".into()))?;
    if meta.name.is_empty() {
        return Err(invalid("the container metadata needs a name".into()));
    }
    let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    if image.is_empty() {
        return Err(invalid(format!("container {}: no image given", meta.name)));
    }
    // Each mount becomes a snapshot or an emptyDir in the zone, or is refused with the reason.
    let mut mounts: Vec<pb::Mount> =
        config.mounts.iter().map(|m| crate::volumes::mount(&meta.name, m)).collect::<Result<_, _>>()?;
    // The pod's resolv.conf, unless the container mounts its own.
    if let Some(path) = resolv_conf
        && !mounts.iter().any(|m| m.container_path == RESOLV_CONF)
    {
        mounts.push(pb::Mount {
            host_path: path.display().to_string(),
            container_path: RESOLV_CONF.into(),
            readonly: false,
            kind: pb::MountKind::Snapshot.into(),
        });
    }
    if let Some(d) = config.devices.first() {
        return Err(invalid(format!(
            "container {}: device {:?}: host devices cannot be passed into zones",
            meta.name, d.host_path
        )));
    }
    let linux = config.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let log_path = log_path(sandbox, config)?.map(|p| p.display().to_string()).unwrap_or_default();
    let client_state = serde_json::to_string(&ContainerRecord { config: config.clone() })
        .map_err(|e| Status::internal(format!("recording the container config: {e}")))?;
    Ok(pb::WorkloadSpec {
        name: workload_name(meta),
        image,
        command: config.command.clone(),
        args: config.args.clone(),
        env: config.envs.iter().map(|kv| pb::EnvVar { name: kv.key.clone(), value: kv.value.clone() }).collect(),
        working_dir: config.working_dir.clone(),
        user: user(sc)?,
        tty: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin && config.stdin_once,
        limits: limits(linux.and_then(|l| l.resources.as_ref()))?,
        readonly_rootfs: sc.is_some_and(|s| s.readonly_rootfs),
        labels: [(MANAGED_LABEL.to_owned(), "container".to_owned())].into_iter().collect(),
        client_state,
        log_path,
        security: Some(crate::security::policy(sc).map_err(|e| {
            Status::invalid_argument(format!("container {}: security context: {}", meta.name, e.message()))
        })?),
        mounts,
    })
}

/// A workload bulkhead-cri made, with its record; `None` for other workloads.
pub fn record(w: &pb::WorkloadStatus) -> Option<ContainerRecord> {
    let spec = w.spec.as_ref()?;
    if spec.labels.get(MANAGED_LABEL).map(String::as_str) != Some("container") {
        return None;
    }
    serde_json::from_str(&spec.client_state).ok()
}

/// CRI's state of a workload.
pub fn state(w: &pb::WorkloadStatus) -> cri::ContainerState {
    match w.state() {
        pb::WorkloadState::Created => cri::ContainerState::ContainerCreated,
        pb::WorkloadState::Running => cri::ContainerState::ContainerRunning,
        pb::WorkloadState::Exited => cri::ContainerState::ContainerExited,
        pb::WorkloadState::Unspecified => cri::ContainerState::ContainerUnknown,
    }
}

fn image_spec(rec: &ContainerRecord) -> Option<cri::ImageSpec> {
    rec.config.image.clone()
}

/// The container as ListContainers shows it.
pub fn to_cri(w: &pb::WorkloadStatus, rec: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: w.id.clone(),
        pod_sandbox_id: w.zone_id.clone(),
        metadata: rec.config.metadata.clone(),
        image: image_spec(rec),
        image_ref: w.image_digest.clone(),
        state: state(w).into(),
        created_at: w.created_at,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        image_id: w.image_digest.clone(),
    }
}

/// Kubelet's reason for an exit: Completed, Error or OOMKilled (the names kubelet and kubectl show).
fn reason(exit: &pb::ExitStatus) -> (&'static str, String) {
    match exit.reason() {
        pb::ExitReason::Completed => ("Completed", String::new()),
        pb::ExitReason::OomKilled => ("OOMKilled", "the container exceeded its memory limit".to_owned()),
        pb::ExitReason::ZoneLost => ("Error", "the pod's zone stopped or went away".to_owned()),
        pb::ExitReason::Signaled => ("Error", format!("killed by signal {}", exit.signal)),
        pb::ExitReason::Error | pb::ExitReason::Unspecified => ("Error", String::new()),
    }
}

/// The container as ContainerStatus shows it.
pub fn status_to_cri(w: &pb::WorkloadStatus, rec: &ContainerRecord) -> cri::ContainerStatus {
    let (exit_code, reason, message) = match &w.exit {
        Some(exit) => {
            let (r, m) = reason(exit);
            (exit.code, r.to_owned(), m)
        }
        None => (0, String::new(), String::new()),
    };
    let limits = w.spec.as_ref().and_then(|s| s.limits.as_ref());
    cri::ContainerStatus {
        id: w.id.clone(),
        metadata: rec.config.metadata.clone(),
        state: state(w).into(),
        created_at: w.created_at,
        started_at: w.started_at,
        finished_at: w.finished_at,
        exit_code,
        image: image_spec(rec),
        image_ref: w.image_digest.clone(),
        reason,
        message,
        labels: rec.config.labels.clone(),
        annotations: rec.config.annotations.clone(),
        mounts: rec.config.mounts.clone(),
        log_path: w.spec.as_ref().map(|s| s.log_path.clone()).unwrap_or_default(),
        resources: limits.map(|l| cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: i64::try_from(l.memory_bytes).unwrap_or(i64::MAX),
                cpu_quota: i64::try_from(l.cpu_quota_us).unwrap_or(i64::MAX),
                cpu_period: i64::try_from(l.cpu_period_us).unwrap_or(i64::MAX),
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: w.image_digest.clone(),
        user: w.spec.as_ref().and_then(|s| s.user.as_ref()).map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid.unwrap_or(0)),
                gid: i64::from(u.gid.unwrap_or(0)),
                supplemental_groups: u.additional_gids.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
    }
}

/// Whether `c` passes ListContainers' filter (ids match by prefix, as crictl's short ids do).
pub fn matches(c: &cri::Container, filter: Option<&cri::ContainerFilter>) -> bool {
    let Some(f) = filter else { return true };
    c.id.starts_with(&f.id)
        && c.pod_sandbox_id.starts_with(&f.pod_sandbox_id)
        && f.state.as_ref().is_none_or(|s| s.state == c.state)
        && f.label_selector.iter().all(|(k, v)| c.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig { log_directory: "/var/log/pods/shop_web_0b7e".into(), ..Default::default() }
    }

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "nginx".into(), attempt: 2 }),
            image: Some(cri::ImageSpec { image: "sha256:abc".into(), ..Default::default() }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            envs: vec![cri::KeyValue { key: "A".into(), value: "1".into() }],
            log_path: "nginx/2.log".into(),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_quota: 50_000,
                    cpu_period: 100_000,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    supplemental_groups: vec![5],
                    readonly_rootfs: true,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_config_becomes_a_workload_spec() -> Result<(), Status> {
        let resolv = std::path::Path::new("/run/bulkhead-cri/pods/z1/resolv.conf");
        let spec = workload_spec(&config(), &sandbox(), Some(resolv))?;
        assert_eq!(spec.name, "nginx.2");
        // The pod's resolv.conf is a snapshot at /etc/resolv.conf, unless the container mounts its own.
        let dns = spec.mounts.iter().find(|m| m.container_path == "/etc/resolv.conf").cloned().unwrap_or_default();
        assert_eq!((dns.host_path.as_str(), dns.kind()), (resolv.to_str().unwrap_or(""), pb::MountKind::Snapshot));
        let mut own = config();
        own.mounts.push(cri::Mount {
            container_path: "/etc/resolv.conf".into(),
            host_path: "/var/lib/kubelet/pods/0b7e/volumes/kubernetes.io~configmap/dns".into(),
            ..Default::default()
        });
        let own = workload_spec(&own, &sandbox(), Some(resolv))?;
        let dns: Vec<_> = own.mounts.iter().filter(|m| m.container_path == "/etc/resolv.conf").collect();
        assert!(dns.len() == 1 && dns[0].host_path.contains("configmap"), "{dns:?}");
        assert_eq!(spec.image, "sha256:abc");
        assert_eq!((spec.command.len(), spec.args.len()), (1, 2));
        assert_eq!(spec.log_path, "/var/log/pods/shop_web_0b7e/nginx/2.log");
        let user = spec.user.clone().unwrap_or_default();
        // No runAsGroup: the daemon takes the primary gid from the image's /etc/passwd.
        assert_eq!((user.uid, user.gid, user.additional_gids), (Some(1000), None, vec![5]));
        assert!(spec.readonly_rootfs);
        let limits = spec.limits.unwrap_or_default();
        assert_eq!((limits.memory_bytes, limits.cpu_quota_us, limits.cpu_period_us), (64 << 20, 50_000, 100_000));
        let w = pb::WorkloadStatus {
            id: "w1".into(),
            zone_id: "z1".into(),
            spec: Some(spec),
            state: pb::WorkloadState::Exited.into(),
            exit: Some(pb::ExitStatus { code: 137, signal: 9, reason: pb::ExitReason::OomKilled.into() }),
            image_digest: "sha256:abc".into(),
            ..Default::default()
        };
        let rec = record(&w).ok_or_else(|| Status::internal("no record"))?;
        let st = status_to_cri(&w, &rec);
        assert_eq!((st.exit_code, st.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(st.log_path, "/var/log/pods/shop_web_0b7e/nginx/2.log");
        assert_eq!(st.state(), cri::ContainerState::ContainerExited);
        let c = to_cri(&w, &rec);
        assert!(matches(&c, Some(&cri::ContainerFilter { pod_sandbox_id: "z".into(), ..Default::default() })));
        assert!(!matches(&c, Some(&cri::ContainerFilter { id: "w2".into(), ..Default::default() })));
        Ok(())
    }

    #[test]
    fn what_zones_cannot_do_is_refused_with_the_reason() {
        let msg = |c: &cri::ContainerConfig| {
            workload_spec(c, &sandbox(), None).err().map(|e| e.message().to_owned()).unwrap_or_default()
        };
        let mut c = config();
        c.mounts.push(cri::Mount { container_path: "/data".into(), host_path: "/srv".into(), ..Default::default() });
        assert!(msg(&c).contains("hostPath volumes cannot be shared into a zone"), "{}", msg(&c));
        let mut c = config();
        c.log_path = "../../etc/passwd".into();
        assert!(msg(&c).contains("relative path below"), "{}", msg(&c));
        let mut c = config();
        c.image = None;
        assert!(msg(&c).contains("no image"), "{}", msg(&c));
        let mut c = config();
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(cri::Int64Value { value: -1 });
        }
        assert!(msg(&c).contains("runAsUser -1"), "{}", msg(&c));
        let mut c = config();
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_username = "nginx".into();
        }
        assert!(msg(&c).contains("runAsUser 1000 and runAsUsername \"nginx\" are both set"), "{}", msg(&c));
    }

    #[test]
    fn users_go_to_the_daemon_to_resolve_in_the_image() -> Result<(), Status> {
        let sc = |f: &dyn Fn(&mut cri::LinuxContainerSecurityContext)| {
            let mut sc = cri::LinuxContainerSecurityContext::default();
            f(&mut sc);
            sc
        };
        assert_eq!(user(None)?, None);
        assert_eq!(user(Some(&sc(&|_| {})))?, None, "nothing set: the image's user");
        let by_name = user(Some(&sc(&|s| s.run_as_username = "nginx".into())))?;
        assert_eq!(by_name, Some(pb::User { name: "nginx".into(), ..Default::default() }));
        // runAsGroup and supplementalGroups without a user: the image's user with them.
        let group_only = user(Some(&sc(&|s| {
            s.run_as_group = Some(cri::Int64Value { value: 3000 });
            s.supplemental_groups = vec![4000];
        })))?;
        assert_eq!(group_only, Some(pb::User { gid: Some(3000), additional_gids: vec![4000], ..Default::default() }));
        let both = user(Some(&sc(&|s| {
            s.run_as_user = Some(cri::Int64Value { value: 0 });
            s.run_as_group = Some(cri::Int64Value { value: 0 });
        })))?;
        assert_eq!(both, Some(pb::User { uid: Some(0), gid: Some(0), ..Default::default() }));
        let bad = user(Some(&sc(&|s| s.run_as_group = Some(cri::Int64Value { value: 1 << 40 }))));
        assert_eq!(bad.map_err(|e| e.code()), Err(tonic::Code::InvalidArgument));
        Ok(())
    }
}
