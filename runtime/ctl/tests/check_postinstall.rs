//! `bulkhead check postinstall` against a whole bulkheadd (in process, on the in-memory hypervisor) on a unix
//! socket: what the daemon answers reaches the report, and a socket nobody serves is a Required failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkhead_store::RecordStore;
use bulkheadd::api::bind_control_socket;
use bulkheadd::hypervisor::fake::FakeHypervisor;
use bulkheadd::manager::{ManagerConfig, ZoneManager};
use bulkheadd::workloads::WorkloadManager;
use bulkheadd::zone::HostVirtCaps;

mod common;
use common::bulkhead;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// bulkheadd's services, as the daemon serves them, over a host that cannot run PVH.
async fn serve(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let hv = FakeHypervisor::new(HostVirtCaps { hvm: true, hap: false });
    let zones =
        Arc::new(ZoneManager::open(hv, RecordStore::open(dir.join("zones"))?, ManagerConfig::new("/k", "/i")).await?);
    let images = Arc::new(ImageStore::open(ImageStoreConfig::new(dir.join("images"))).await?);
    let workloads = WorkloadManager::open(zones.clone(), images.clone(), dir)?;
    let socket = dir.join("control.sock");
    let incoming = bind_control_socket(&socket)?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(bulkheadd::api::services(zones, images, workloads))
            .serve_with_incoming(incoming),
    );
    Ok(socket)
}

fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    match report["checks"].as_array().and_then(|cs| cs.iter().find(|c| c["id"] == id)) {
        Some(c) => c,
        None => panic!("no check {id} in {report:#}"),
    }
}

async fn postinstall(socket: &Path, root: &Path) -> Result<(i32, serde_json::Value), Box<dyn std::error::Error>> {
    let root = root.to_str().ok_or("temp path is not UTF-8")?;
    let cri = format!("{root}/no-cri.sock");
    let (code, out) =
        bulkhead(socket, &["check", "postinstall", "--root", root, "--cri-socket", &cri, "-o", "json"]).await;
    Ok((code?, serde_json::from_str(&out)?))
}

#[tokio::test]
async fn what_the_daemon_answers_reaches_the_report() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = serve(dir.path()).await?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/share/bulkhead/images"))?;
    std::fs::write(root.join("usr/share/bulkhead/images/images.list"), "busybox.tar busybox:baked\n")?;

    let (code, report) = postinstall(&socket, &root).await?;
    // This host has no Xen, no systemd on D-Bus and no CRI server: Required failures, exit 1.
    assert_eq!(code, 1);
    assert_eq!(check(&report, "bulkheadd")["status"], "pass", "{report:#}");
    // GetHostInfo: the mode `auto` resolves to on this host, with the daemon's reason.
    let mode = check(&report, "virt-mode");
    assert_eq!(mode["status"], "pass", "{report:#}");
    assert!(
        mode["detail"].as_str().is_some_and(|d| d.starts_with("zones run PV (auto: the host has no HAP")),
        "{mode}"
    );
    let baked = check(&report, "baked-images");
    assert_eq!(baked["status"], "fail");
    assert_eq!(baked["detail"], "missing: busybox:baked (not imported)");
    let cri = check(&report, "cri");
    assert_eq!(cri["status"], "fail");
    assert!(cri["detail"].as_str().is_some_and(|d| d.contains("no-cri.sock")), "{cri}");
    Ok(())
}

#[tokio::test]
async fn a_socket_nobody_serves_fails_the_daemon_check() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (code, report) = postinstall(&dir.path().join("nobody.sock"), dir.path()).await?;
    assert_eq!(code, 1);
    let d = check(&report, "bulkheadd");
    assert_eq!((d["group"].as_str(), d["status"].as_str()), (Some("required"), Some("fail")));
    assert!(d["detail"].as_str().is_some_and(|s| s.contains("nobody.sock")), "{d}");
    assert_eq!(check(&report, "baked-images")["status"], "skip");
    Ok(())
}
