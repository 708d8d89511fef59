//! Status's NetworkReady over kubelet's transport: false with NetworkPluginNotReady and what is missing
//! until the node's CNI conf dir holds a config whose plugins exist, picked up without a restart; then true.

use std::os::unix::fs::PermissionsExt as _;

use bulkhead_oci::testing::root_or_skip;
use k8s_cri::v1 as cri;

// The shared in-process node; this test uses only its runtime service.
#[allow(dead_code)]
mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn network_ready(node: &mut support::Node) -> Result<cri::RuntimeCondition, Box<dyn std::error::Error>> {
    let st = node.runtime.status(cri::StatusRequest { verbose: false }).await?.into_inner();
    let conditions = st.status.ok_or("no status")?.conditions;
    Ok(conditions.into_iter().find(|c| c.r#type == "NetworkReady").ok_or("no NetworkReady condition")?)
}

#[tokio::test]
async fn network_ready_follows_the_cni_config_and_its_plugins() -> TestResult {
    if !root_or_skip("the image import chowns") {
        return Ok(());
    }
    let mut node = support::node_without_network().await?;
    let (conf_dir, bin_dir) = (node.dir.path().join("cni/net.d"), node.dir.path().join("cni/bin"));

    let c = network_ready(&mut node).await?;
    assert!(!c.status && c.reason == "NetworkPluginNotReady", "{c:?}");
    assert!(c.message.contains(&conf_dir.display().to_string()), "the message names the conf dir: {c:?}");

    std::fs::create_dir_all(&conf_dir)?;
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::write(
        conf_dir.join("10-pods.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","ipam":{"type":"host-local"}},{"type":"loopback"}]}"#,
    )?;
    for p in ["bridge", "loopback"] {
        std::fs::write(bin_dir.join(p), "#!/bin/sh\n")?;
    }
    std::fs::set_permissions(bin_dir.join("bridge"), std::fs::Permissions::from_mode(0o755))?;
    // loopback is there but not executable: not found, by name.
    let c = network_ready(&mut node).await?;
    assert!(!c.status && c.message.contains("\"loopback\""), "{c:?}");

    std::fs::set_permissions(bin_dir.join("loopback"), std::fs::Permissions::from_mode(0o755))?;
    let c = network_ready(&mut node).await?;
    assert!(c.status && c.reason.is_empty(), "{c:?}");
    let st = node.runtime.status(cri::StatusRequest { verbose: true }).await?.into_inner();
    let cni: serde_json::Value = serde_json::from_str(st.info.get("cni").ok_or("no cni in the verbose info")?)?;
    assert_eq!(cni["config"], conf_dir.join("10-pods.conflist").display().to_string());
    Ok(())
}
