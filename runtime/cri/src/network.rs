//! The pod network as kubelet sees it: CRI's NetworkReady condition, from the node's CNI config and
//! plugins (re-read on every Status, as containerd watches its conf dir, so a config dropped in later by a
//! network add-on's DaemonSet makes the node Ready without a restart).

use bulkhead_api::control::v1 as pb;
use bulkhead_cni::{CniConfig, Network};
use k8s_cri::v1 as cri;
use tonic::Status;

/// The reason kubelet shows while the network is not ready (containerd's and CRI-O's word for it).
pub const NOT_READY_REASON: &str = "NetworkPluginNotReady";

/// The node's network config and plugins, or why they are not usable. Reads files: done off the runtime's
/// worker threads.
pub async fn load(cfg: CniConfig) -> Result<Network, String> {
    match tokio::task::spawn_blocking(move || Network::load(&cfg)).await {
        Ok(loaded) => loaded.map_err(|e| e.to_string()),
        Err(e) => Err(format!("loading the CNI config failed: {e}")),
    }
}

/// CRI's NetworkReady condition for what [`load`] found: ready with a usable config and all its plugins
/// (RunPodSandbox joins every zone to that network), else not ready with the reason.
pub fn condition(cni: &Result<Network, String>) -> cri::RuntimeCondition {
    match cni {
        Ok(_) => cri::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
        Err(e) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: NOT_READY_REASON.into(),
            message: format!("the pod network (CNI) is not ready: {e}"),
        },
    }
}

/// The node's network for a new pod, or FAILED_PRECONDITION saying why there is none (as containerd does:
/// a pod without its network is of no use to kubelet).
pub async fn for_new_pod(cfg: CniConfig) -> Result<Network, Status> {
    load(cfg).await.map_err(|e| {
        Status::failed_precondition(format!(
            "the pod network is not ready, so no pod can run: {e}; install a CNI config (e.g. by the cluster's \
             network add-on) and its plugins"
        ))
    })
}

/// What the daemon needs to join the zone to the pod's network: the netns, CNI's `eth0` there with its MAC,
/// its IPv4 address (the pod IP), gateway and IPv4 routes.
pub fn zone_network(pod: &PodNetwork) -> Result<pb::ZoneNetwork, Status> {
    let cfg = bulkhead_cni::zone_link::ZoneNetConfig::from_result(&pod.result, POD_IFNAME)
        .map_err(|e| Status::internal(format!("the pod network's CNI result cannot be used for a zone: {e}")))?;
    let address = cfg.addresses.iter().find(|a| a.addr().is_ipv4()).ok_or_else(|| {
        Status::internal(format!(
            "the pod network gave {POD_IFNAME} no IPv4 address ({:?}): zones take IPv4 pod networks only",
            cfg.addresses
        ))
    })?;
    let text = |ip: Option<std::net::IpAddr>| ip.filter(|i| i.is_ipv4()).map(|i| i.to_string()).unwrap_or_default();
    Ok(pb::ZoneNetwork {
        netns: pod.netns.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        interface: POD_IFNAME.into(),
        mac: cfg.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
        addresses: vec![address.to_string()],
        gateway: text(cfg.gateway),
        routes: cfg
            .routes
            .iter()
            .filter(|(dst, _)| matches!(dst, ipnet::IpNet::V4(_)))
            .map(|(dst, gw)| pb::ZoneRoute { destination: dst.to_string(), gateway: text(*gw) })
            .collect(),
    })
}

/// Where a pod's resolv.conf goes: `<pods_dir>/<sandbox id>/resolv.conf`.
pub fn resolv_conf_path(pods_dir: &std::path::Path, sandbox_id: &str) -> std::path::PathBuf {
    pods_dir.join(sandbox_id).join("resolv.conf")
}

/// resolv.conf for the pod from kubelet's DNSConfig (the cluster's nameservers, searches and options, or the
/// node's for dnsPolicy Default); the runtime writes it, as containerd does.
pub fn resolv_conf(dns: &cri::DnsConfig) -> Result<String, Status> {
    use std::fmt::Write as _;
    // Each entry is one word on its line: nothing may smuggle in another directive.
    let one_word = |s: &&String| !s.is_empty() && !s.contains(char::is_whitespace);
    if let Some(bad) = dns.servers.iter().chain(&dns.searches).chain(&dns.options).find(|s| !one_word(s)) {
        return Err(Status::invalid_argument(format!("the pod's DNS config entry {bad:?} is not one word")));
    }
    let mut out = String::new();
    for s in &dns.servers {
        let _ = writeln!(out, "nameserver {s}");
    }
    if !dns.searches.is_empty() {
        let _ = writeln!(out, "search {}", dns.searches.join(" "));
    }
    if !dns.options.is_empty() {
        let _ = writeln!(out, "options {}", dns.options.join(" "));
    }
    Ok(out)
}

/// Writes the pod's resolv.conf (atomically: concurrent CreateContainers may read it) and returns its path,
/// or `None` when kubelet sent no DNS config (the image's own file stays).
pub async fn write_resolv_conf(
    pods_dir: &std::path::Path,
    sandbox_id: &str,
    dns: Option<&cri::DnsConfig>,
) -> Result<Option<std::path::PathBuf>, Status> {
    let Some(dns) = dns else { return Ok(None) };
    let text = resolv_conf(dns)?;
    bulkhead_cni::netns::check_name(sandbox_id)
        .map_err(|why| Status::invalid_argument(format!("sandbox id {sandbox_id:?}: {why}")))?;
    let path = resolv_conf_path(pods_dir, sandbox_id);
    let fail = |e: std::io::Error| Status::internal(format!("writing the pod's resolv.conf {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(pods_dir);
    tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    let tmp = dir.join(format!(".resolv.conf.{}", std::process::id()));
    tokio::fs::write(&tmp, text).await.map_err(fail)?;
    tokio::fs::rename(&tmp, &path).await.map_err(fail)?;
    Ok(Some(path))
}

/// What Status's verbose info shows: the config in use and its plugins, or the error.
pub fn describe(cni: &Result<Network, String>) -> String {
    let v = match cni {
        Ok(n) => serde_json::json!({
            "config": n.source.display().to_string(),
            "name": n.name,
            "cniVersion": n.cni_version,
            "plugins": n.plugins.iter().map(|p| p.binary.display().to_string()).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({ "error": e }),
    };
    v.to_string()
}

/// A pod's network as RunPodSandbox sets it up: the named netns (`/run/netns/<sandbox id>`) CNI's plugins
/// worked in, and what they returned.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The pod's network namespace.
    pub netns: std::path::PathBuf,
    /// CNI's ADD result (the pod IP, eth0's MAC, routes, DNS).
    pub result: bulkhead_cni::CniResult,
}

/// The interface CNI makes in the pod's netns.
pub const POD_IFNAME: &str = "eth0";

/// CNI's runtime parameters for a pod, with the `CNI_ARGS` containerd passes (plugins such as Calico and
/// Cilium read the pod's identity from them).
pub fn runtime_conf(
    sandbox_id: &str,
    netns: &std::path::Path,
    meta: &cri::PodSandboxMetadata,
) -> bulkhead_cni::RuntimeConf {
    bulkhead_cni::RuntimeConf {
        container_id: sandbox_id.to_owned(),
        netns: netns.to_owned(),
        ifname: POD_IFNAME.into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
            ("K8S_POD_NAME".into(), meta.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), sandbox_id.to_owned()),
            ("K8S_POD_UID".into(), meta.uid.clone()),
        ],
    }
}

/// Creates the pod's netns and runs CNI ADD in it. On failure nothing is left behind: DEL runs (plugins may
/// have done part of their work) and the netns is deleted.
pub async fn setup(net: &Network, sandbox_id: &str, meta: &cri::PodSandboxMetadata) -> Result<PodNetwork, Status> {
    let id = sandbox_id.to_owned();
    let netns = tokio::task::spawn_blocking(move || bulkhead_cni::netns::create(&id))
        .await
        .map_err(|e| Status::internal(format!("creating the pod's network namespace: {e}")))?
        .map_err(|e| Status::internal(format!("creating the pod's network namespace: {e}")))?;
    let rt = runtime_conf(sandbox_id, &netns, meta);
    match net.add(&rt).await {
        Ok(result) => {
            tracing::info!(sandbox = sandbox_id, network = %net.name, ip = ?result.pod_ip(POD_IFNAME).map(|i| i.address), "pod network set up");
            Ok(PodNetwork { netns, result })
        }
        Err(e) => {
            if let Err(d) = net.del(&rt, None).await {
                tracing::warn!(sandbox = sandbox_id, error = %d, "CNI DEL after a failed ADD failed");
            }
            delete_netns(&netns).await;
            Err(Status::internal(format!("setting up the pod network {:?} (CNI): {e}", net.name)))
        }
    }
}

/// Runs CNI DEL for the pod and deletes its netns. Idempotent: a pod whose network is gone already (or was
/// never set up) succeeds, so kubelet's retried StopPodSandbox calls and a restarted bulkhead-cri (which
/// passes no `prev`) both work; the netns stays when DEL fails, so the next attempt can run DEL again.
pub async fn teardown(
    net: &Network,
    sandbox_id: &str,
    meta: &cri::PodSandboxMetadata,
    prev: Option<&bulkhead_cni::CniResult>,
) -> Result<(), Status> {
    let netns = bulkhead_cni::netns::path_of(sandbox_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    net.del(&runtime_conf(sandbox_id, &netns, meta), prev)
        .await
        .map_err(|e| Status::internal(format!("tearing down the pod network {:?} (CNI): {e}", net.name)))?;
    delete_netns(&netns).await;
    Ok(())
}

async fn delete_netns(path: &std::path::Path) {
    let p = path.to_owned();
    let done = tokio::task::spawn_blocking(move || bulkhead_cni::netns::delete(&p)).await;
    if let Err(e) = done.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        tracing::warn!(netns = %path.display(), error = %e, "deleting the pod's network namespace failed");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn cfg(dir: &Path) -> CniConfig {
        CniConfig { conf_dir: dir.join("net.d"), bin_dirs: vec![dir.join("bin")], ..CniConfig::default() }
    }

    fn plugin(dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::write(dir.join("bin").join(name), "#!/bin/sh\n")?;
        std::fs::set_permissions(dir.join("bin").join(name), std::fs::Permissions::from_mode(0o755))
    }

    #[test]
    fn resolv_conf_from_kubelet_s_dns_config() -> TestResult {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dns = cri::DnsConfig {
            servers: s(&["10.96.0.10"]),
            searches: s(&["default.svc.cluster.local", "svc.cluster.local"]),
            options: s(&["ndots:5"]),
        };
        assert_eq!(
            resolv_conf(&dns)?,
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&cri::DnsConfig::default())?, "");
        let smuggled = cri::DnsConfig { servers: s(&["1.1.1.1\nnameserver 6.6.6.6"]), ..Default::default() };
        assert!(resolv_conf(&smuggled).is_err());
        assert!(resolv_conf(&cri::DnsConfig { searches: s(&[""]), ..Default::default() }).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn the_pod_s_resolv_conf_is_written_under_its_id() -> TestResult {
        let dir = tempfile::tempdir()?;
        let dns = cri::DnsConfig { servers: vec!["10.96.0.10".into()], ..Default::default() };
        let path = write_resolv_conf(dir.path(), "pod1", Some(&dns)).await?.ok_or("no path")?;
        assert_eq!(path, dir.path().join("pod1/resolv.conf"));
        assert_eq!(std::fs::read_to_string(&path)?, "nameserver 10.96.0.10\n");
        assert_eq!(write_resolv_conf(dir.path(), "pod1", None).await?, None);
        assert!(write_resolv_conf(dir.path(), "../x", Some(&dns)).await.is_err());
        Ok(())
    }

    #[test]
    fn a_cni_result_becomes_the_zone_s_network() -> TestResult {
        let result = bulkhead_cni::CniResult::parse(
            br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"6a:1b:8e:2b:2c:4c"},
            {"name":"eth0","mac":"3A:5a:2b:77:1e:df","sandbox":"/run/netns/p1"}],
            "ips":[{"interface":1,"address":"fd00::5/64"},{"interface":1,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}"#,
        )?;
        let pod = PodNetwork { netns: "/run/netns/p1".into(), result };
        let z = zone_network(&pod)?;
        assert_eq!((z.netns.as_str(), z.interface.as_str(), z.mac.as_str()), ("p1", "eth0", "3a:5a:2b:77:1e:df"));
        assert_eq!((z.addresses, z.gateway.as_str()), (vec!["10.88.0.5/16".to_owned()], "10.88.0.1"));
        assert_eq!(z.routes, [pb::ZoneRoute { destination: "0.0.0.0/0".into(), gateway: String::new() }]);
        Ok(())
    }

    #[tokio::test]
    async fn the_network_is_ready_with_a_config_and_all_its_plugins() -> TestResult {
        let dir = tempfile::tempdir()?;
        let c = condition(&load(cfg(dir.path())).await);
        assert_eq!((c.r#type.as_str(), c.status, c.reason.as_str()), ("NetworkReady", false, NOT_READY_REASON));
        assert!(c.message.contains(&dir.path().join("net.d").display().to_string()), "{}", c.message);

        std::fs::create_dir_all(dir.path().join("net.d"))?;
        std::fs::write(
            dir.path().join("net.d/10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )?;
        plugin(dir.path(), "bridge")?;
        let c = condition(&load(cfg(dir.path())).await);
        assert!(!c.status && c.reason == NOT_READY_REASON, "{c:?}");
        assert!(c.message.contains("\"portmap\""), "{}", c.message);

        let e = for_new_pod(cfg(dir.path())).await.err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(e.contains("the pod network is not ready") && e.contains("portmap"), "{e}");

        plugin(dir.path(), "portmap")?;
        let cni = load(cfg(dir.path())).await;
        let c = condition(&cni);
        assert!(c.status && c.reason.is_empty(), "{c:?}");
        let info: serde_json::Value = serde_json::from_str(&describe(&cni))?;
        assert_eq!(info["name"], "pods");
        assert_eq!(info["plugins"][1], dir.path().join("bin/portmap").display().to_string());
        Ok(())
    }
}
