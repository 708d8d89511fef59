//! Kubelet's mounts, mapped to what a zone can have. A zone is a VM with its own kernel and no filesystem
//! shared with the node, so the kind of each mount is decided from where kubelet keeps it:
//!
//! | host path (below `/var/lib/kubelet/pods/<uid>/`) | what | in the zone |
//! |---|---|---|
//! | `etc-hosts` | the pod's /etc/hosts | snapshot |
//! | `containers/<name>/<id>` | the termination log | snapshot (what the container writes stays in the zone) |
//! | `volumes/kubernetes.io~{projected,configmap,secret,downward-api}/<name>` | kubelet-written content | snapshot |
//! | `volumes/kubernetes.io~empty-dir/<name>` | emptyDir | an empty directory, shared by the pod's containers |
//! | anything else (hostPath, CSI, subPath, ...) | | refused |
//!
//! A snapshot is copied into the zone by the daemon when the container is created (bounded; see
//! `bulkheadd`'s volume limits); later updates of a configMap, secret or token do not reach it. Mount
//! propagation other than private needs a filesystem shared with the node and is refused, as are
//! id-mapped and image volumes.

use std::path::{Component, Path};

use bulkhead_api::control::v1 as pb;
use k8s_cri::v1 as cri;
use tonic::Status;

/// Where kubelet keeps its pods' files (its default `--root-dir` plus `pods`).
pub const KUBELET_PODS_DIR: &str = "/var/lib/kubelet/pods";

/// Volume plugin directories whose content kubelet writes itself and a snapshot can carry.
const SNAPSHOT_PLUGINS: [&str; 4] =
    ["kubernetes.io~projected", "kubernetes.io~configmap", "kubernetes.io~secret", "kubernetes.io~downward-api"];

fn refuse(container: &str, m: &cri::Mount, why: &str) -> Status {
    Status::invalid_argument(format!(
        "container {container}: mount of {:?} at {:?}: {why}",
        m.host_path, m.container_path
    ))
}

/// The kind of a host path kubelet gave, or why it cannot be shared into a zone.
fn kind(host_path: &Path) -> Result<pb::MountKind, &'static str> {
    let hostpath = "hostPath volumes cannot be shared into a zone (a VM with its own kernel and no filesystem \
                    shared with the node): use a configMap, secret, downwardAPI, projected or emptyDir volume";
    let rest = host_path.strip_prefix(KUBELET_PODS_DIR).map_err(|_| hostpath)?;
    let parts: Vec<&str> = rest
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(hostpath),
            _ => Err(hostpath),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [_pod, "etc-hosts"] | [_pod, "containers", _, _] => Ok(pb::MountKind::Snapshot),
        [_pod, "volumes", "kubernetes.io~empty-dir", _] => Ok(pb::MountKind::EmptyDir),
        [_pod, "volumes", plugin, _] if SNAPSHOT_PLUGINS.contains(plugin) => Ok(pb::MountKind::Snapshot),
        [_pod, "volumes", ..] => Err("this volume type cannot be shared into a zone: only configMap, secret, \
                                      downwardAPI, projected and emptyDir volumes are supported"),
        [_pod, "volume-subpaths", ..] => Err("subPath mounts are not supported in zones yet: mount the whole volume"),
        _ => Err(hostpath),
    }
}

/// The daemon's mount for one of kubelet's; every refusal is INVALID_ARGUMENT saying what to change.
pub fn mount(container: &str, m: &cri::Mount) -> Result<pb::Mount, Status> {
    let host = Path::new(&m.host_path);
    if !host.is_absolute() || host.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(refuse(container, m, "the host path must be absolute and clean"));
    }
    if !m.container_path.starts_with('/') || m.container_path.split('/').any(|c| c == "..") {
        return Err(refuse(container, m, "the container path must be absolute, without '..'"));
    }
    if m.propagation() != cri::MountPropagation::PropagationPrivate {
        return Err(refuse(
            container,
            m,
            "mount propagation needs a filesystem shared with the node, which zones do not have: \
             leave mountPropagation unset (None)",
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(refuse(container, m, "id-mapped mounts (user namespaces) are not supported in zones"));
    }
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(refuse(container, m, "image volumes are not supported in zones yet"));
    }
    let kind = kind(host).map_err(|why| refuse(container, m, why))?;
    Ok(pb::Mount {
        host_path: m.host_path.clone(),
        container_path: m.container_path.clone(),
        // recursive_read_only is met too: a zone volume has no submounts.
        readonly: m.readonly || m.recursive_read_only,
        kind: kind.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: &str, container: &str) -> cri::Mount {
        cri::Mount { host_path: host.into(), container_path: container.into(), ..Default::default() }
    }

    const POD: &str = "/var/lib/kubelet/pods/0b7e2c3a-1d2e-4f5a-9b8c-7d6e5f4a3b2c";

    #[test]
    fn kubelets_default_mounts_are_snapshots_and_emptydirs_are_zone_directories() -> Result<(), Status> {
        let kind = |host: &str| mount("web", &m(host, "/x")).map(|p| p.kind());
        assert_eq!(kind(&format!("{POD}/etc-hosts"))?, pb::MountKind::Snapshot);
        assert_eq!(kind(&format!("{POD}/containers/web/1a2b3c4d"))?, pb::MountKind::Snapshot);
        assert_eq!(
            kind(&format!("{POD}/volumes/kubernetes.io~projected/kube-api-access-x7k2q"))?,
            pb::MountKind::Snapshot
        );
        for plugin in ["configmap", "secret", "downward-api"] {
            assert_eq!(kind(&format!("{POD}/volumes/kubernetes.io~{plugin}/cfg"))?, pb::MountKind::Snapshot);
        }
        assert_eq!(kind(&format!("{POD}/volumes/kubernetes.io~empty-dir/cache"))?, pb::MountKind::EmptyDir);
        let mut ro = m(&format!("{POD}/volumes/kubernetes.io~secret/s"), "/s");
        ro.readonly = true;
        assert!(mount("web", &ro)?.readonly);
        Ok(())
    }

    #[test]
    fn host_paths_other_volumes_and_propagation_are_refused_with_the_reason() {
        let msg = |mt: cri::Mount| mount("web", &mt).err().map(|e| e.message().to_owned()).unwrap_or_default();
        for host in ["/srv/data", "/var/lib/kubelet/pods", "/var/lib/kubelet/podsX/a/etc-hosts", "/etc"] {
            assert!(msg(m(host, "/data")).contains("hostPath volumes cannot be shared into a zone"), "{host}");
        }
        let csi = format!("{POD}/volumes/kubernetes.io~csi/pvc-1/mount");
        assert!(msg(m(&csi, "/d")).contains("volume type cannot be shared"), "{}", msg(m(&csi, "/d")));
        assert!(msg(m(&format!("{POD}/volumes/kubernetes.io~nfs/n"), "/d")).contains("volume type"));
        assert!(msg(m(&format!("{POD}/volume-subpaths/cfg/web/0"), "/d")).contains("subPath"));
        assert!(msg(m(&format!("{POD}/../../../etc/etc-hosts"), "/d")).contains("absolute and clean"));
        assert!(msg(m(&format!("{POD}/etc-hosts"), "etc/hosts")).contains("container path"));
        let mut p = m(&format!("{POD}/volumes/kubernetes.io~empty-dir/c"), "/c");
        p.propagation = cri::MountPropagation::PropagationBidirectional.into();
        assert!(msg(p.clone()).contains("mount propagation"));
        p.propagation = cri::MountPropagation::PropagationHostToContainer.into();
        assert!(msg(p).contains("mount propagation"));
        let mut idm = m(&format!("{POD}/etc-hosts"), "/etc/hosts");
        idm.uid_mappings.push(cri::IdMapping { host_id: 1000, container_id: 0, length: 1 });
        assert!(msg(idm).contains("id-mapped"));
        let mut img = m(&format!("{POD}/volumes/kubernetes.io~image/i"), "/i");
        img.image = Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() });
        assert!(msg(img).contains("image volumes"));
    }
}
