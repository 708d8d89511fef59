//! The pod network as kubelet sees it: CRI's NetworkReady condition, from the node's CNI config and
//! plugins (re-read on every Status, as containerd watches its conf dir, so a config dropped in later by a
//! network add-on's DaemonSet makes the node Ready without a restart).

use bulkhead_cni::{CniConfig, Network};
use k8s_cri::v1 as cri;

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

/// CRI's NetworkReady condition for what [`load`] found.
pub fn condition(cni: &Result<Network, String>) -> cri::RuntimeCondition {
    let (status, reason, message) = match cni {
        Ok(_) => (true, String::new(), String::new()),
        Err(e) => (false, NOT_READY_REASON.to_owned(), format!("the pod network (CNI) is not ready: {e}")),
    };
    cri::RuntimeCondition { r#type: "NetworkReady".into(), status, reason, message }
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

    #[tokio::test]
    async fn ready_only_with_a_config_and_all_its_plugins() -> TestResult {
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

        plugin(dir.path(), "portmap")?;
        let cni = load(cfg(dir.path())).await;
        let c = condition(&cni);
        assert!(c.status && c.reason.is_empty() && c.message.is_empty(), "{c:?}");
        let info: serde_json::Value = serde_json::from_str(&describe(&cni))?;
        assert_eq!(info["name"], "pods");
        assert_eq!(info["plugins"][1], dir.path().join("bin/portmap").display().to_string());
        Ok(())
    }
}
