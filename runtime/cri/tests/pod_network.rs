//! RunPodSandbox's and StopPodSandbox's network steps with Debian's real bridge, host-local and loopback
//! plugins: setup gives the pod an IP on eth0 in /run/netns/<sandbox id>, teardown removes it and is
//! idempotent, and a failing ADD leaves no netns behind. Needs root; under CI=1 a skip is a failure.

use std::path::Path;
use std::process::Command;

use bulkhead_cni::{CniConfig, Network};
use bulkhead_cri::network::{setup, teardown};
use k8s_cri::v1 as cri;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn network(dir: &Path, bridge: &str, subnet: &str) -> Result<Network, Box<dyn std::error::Error>> {
    let conf_dir = bulkhead_cni::testing::write_bridge_network(dir, bridge, subnet)?;
    Ok(Network::load(&CniConfig { conf_dir, ..CniConfig::default() })?)
}

fn meta() -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata { name: "web".into(), uid: "uid-1".into(), namespace: "default".into(), attempt: 0 }
}

#[tokio::test]
async fn setup_gives_an_ip_and_teardown_removes_it_idempotently() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let _bridge = bulkhead_cni::testing::Bridge(format!("bhp{}", std::process::id() % 100_000));
    let net = network(dir.path(), &_bridge.0, "10.231.13.0/24")?;
    let id = format!("bhpod{}", std::process::id());
    let pod = setup(&net, &id, &meta()).await?;
    assert_eq!(pod.netns, Path::new("/run/netns").join(&id));
    let ip = pod.result.pod_ip("eth0").ok_or("no pod ip")?.address;
    assert!(ip.to_string().starts_with("10.231.13."), "{ip}");
    let out = Command::new("ip").args(["-n", &id, "-o", "-4", "addr", "show", "dev", "eth0"]).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ip.to_string()), "{out:?}");

    teardown(&net, &id, &meta(), Some(&pod.result)).await?;
    assert!(!pod.netns.exists());
    // Again, and as a restarted bulkhead-cri would (no ADD result): still fine.
    teardown(&net, &id, &meta(), Some(&pod.result)).await?;
    teardown(&net, &id, &meta(), None).await?;
    // The address went back to the pool: host-local keeps a file per lease.
    let leases = std::fs::read_dir(dir.path().join("ipam/pods"))?.count();
    assert_eq!(leases, 2, "only last_reserved_ip and the lock stay");
    Ok(())
}

#[tokio::test]
async fn a_failed_add_leaves_no_netns() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let _bridge = bulkhead_cni::testing::Bridge(format!("bhq{}", std::process::id() % 100_000));
    let net = network(dir.path(), &_bridge.0, "10.231.300.0/24")?;
    let id = format!("bhpodf{}", std::process::id());
    let e = setup(&net, &id, &meta()).await.err().ok_or("ADD with a bad subnet succeeded")?;
    assert!(e.message().contains("CNI plugin bridge (ADD) failed") && e.message().contains("10.231.300"), "{e}");
    assert!(!Path::new("/run/netns").join(&id).exists(), "the netns was left behind");
    Ok(())
}
