//! `bulkhead zone ...` against a real bulkheadd API server (in process, in-memory hypervisor) on a unix socket.

use std::path::Path;
use std::sync::Arc;

use bulkhead_api::control::v1::zone_service_server::ZoneServiceServer;
use bulkhead_store::RecordStore;
use bulkheadd::api::bind_control_socket;
use bulkheadd::api::zones::ZoneApi;
use bulkheadd::hypervisor::fake::FakeHypervisor;
use bulkheadd::manager::{ManagerConfig, ZoneManager};
use bulkheadd::zone::HostVirtCaps;

mod common;
use common::bulkhead;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn serve(dir: &Path) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let cfg = ManagerConfig::new("/k", "/i");
    let hv = FakeHypervisor::new(HostVirtCaps { hvm: false, hap: false });
    let manager = Arc::new(ZoneManager::open(hv, RecordStore::open(dir.join("zones"))?, cfg).await?);
    let socket = dir.join("control.sock");
    let incoming = bind_control_socket(&socket)?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ZoneServiceServer::new(ZoneApi::new(manager)))
            .serve_with_incoming(incoming),
    );
    Ok(socket)
}

#[tokio::test]
async fn zone_commands_drive_the_daemon() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = serve(dir.path()).await?;

    let (r, out) =
        bulkhead(&socket, &["zone", "create", "web", "--memory", "64", "--label", "app=web", "--start"]).await;
    assert_eq!(r, Ok(0));
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 36, "prints the zone id: {out}");
    assert_eq!(bulkhead(&socket, &["zone", "create", "db", "--memory", "64"]).await.0, Ok(0));

    let (r, table) = bulkhead(&socket, &["zone", "list"]).await;
    assert_eq!(r, Ok(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("STATE"), "{table}");
    assert!(lines[1].starts_with("db ") && lines[1].contains("created"), "{table}");
    assert!(lines[2].starts_with("web ") && lines[2].contains("starting") && lines[2].contains(" pv "), "{table}");

    let (r, json) = bulkhead(&socket, &["zone", "list", "-o", "json", "-l", "app=web"]).await;
    assert_eq!(r, Ok(0));
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v.as_array().map(|a| a.len()), Some(1));
    assert_eq!(v[0]["name"], "web");
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["state"], "starting");
    assert_eq!(v[0]["virt_mode"], "pv");
    assert_eq!(v[0]["virt_mode_reason"], "auto: the host has no HVM, using PV");

    let (r, _) = bulkhead(&socket, &["zone", "stop", "web", "--timeout", "1"]).await;
    assert_eq!(r, Ok(0));
    let (_, json) = bulkhead(&socket, &["zone", "get", "web", "-o", "json"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json)?["state"], "stopped");

    assert_eq!(bulkhead(&socket, &["zone", "destroy", "web"]).await.0, Ok(0));
    assert_eq!(bulkhead(&socket, &["zone", "destroy", "web"]).await.0, Ok(0), "destroy is idempotent");
    Ok(())
}

#[tokio::test]
async fn errors_say_what_failed_and_what_to_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = serve(dir.path()).await?;
    let (r, _) = bulkhead(&socket, &["zone", "get", "nope"]).await;
    assert_eq!(r, Err("getting zone nope: no zone \"nope\" (see the list of zones)".into()));
    let (r, _) = bulkhead(&socket, &["zone", "create", "Bad_Name"]).await;
    let e = r.err().unwrap_or_default();
    assert!(e.starts_with("creating zone Bad_Name: invalid zone spec: name \"Bad_Name\" is not a DNS label"), "{e}");
    let (r, _) = bulkhead(&dir.path().join("absent.sock"), &["zone", "list"]).await;
    let e = r.err().unwrap_or_default();
    assert!(e.contains("cannot reach bulkheadd at") && e.contains("is it running"), "{e}");
    let (r, _) = bulkhead(&socket, &["zone", "list", "-l", "novalue"]).await;
    assert!(r.err().unwrap_or_default().contains("is not KEY=VALUE"));
    Ok(())
}
