//! `bulkhead image ...` against a real bulkheadd image API (in process) on a unix socket, importing a real
//! OCI layout. Needs root and mkfs.erofs like the daemon's image tests (BULKHEAD_SKIP_ROOT_TESTS=1 skips).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::control::v1::image_service_server::ImageServiceServer;
use bulkheadd::api::bind_control_socket;
use bulkheadd::api::images::ImageApi;
use bulkheadd::images::layout::Compression;
use bulkheadd::images::testing::write_busybox_layout;
use bulkheadd::images::{ImageStore, ImageStoreConfig};

mod common;
use common::bulkhead;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn privileged() -> bool {
    bulkheadd::images::testing::root_or_skip("chown while unpacking")
}

async fn serve(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let store = Arc::new(ImageStore::open(ImageStoreConfig::new(dir.join("images"))).await?);
    let socket = dir.join("control.sock");
    let incoming = bind_control_socket(&socket)?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ImageServiceServer::new(ImageApi::new(store)))
            .serve_with_incoming(incoming),
    );
    Ok(socket)
}

/// `target` relative to the current directory, so the CLI has to make it absolute.
fn relative_to_cwd(target: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cwd = std::env::current_dir()?;
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    Ok(rel.join(target.strip_prefix("/")?))
}

#[tokio::test(flavor = "multi_thread")]
async fn image_commands_drive_the_daemon() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let fixture = write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip)?;
    let socket = serve(dir.path()).await?;

    let rel = relative_to_cwd(&layout)?;
    assert!(rel.is_relative());
    let rel = rel.to_str().ok_or("path")?;
    let (r, out) = bulkhead(&socket, &["image", "import", rel, "--reference", "busybox:cli"]).await;
    assert_eq!(r, Ok(0), "{out}");
    assert_eq!(out.trim(), fixture.manifest_digest, "prints the image id");
    let short = &fixture.manifest_digest["sha256:".len()..][..12];

    let (r, table) = bulkhead(&socket, &["image", "list"]).await;
    assert_eq!(r, Ok(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REFERENCE") && lines[0].contains("ID") && lines[0].contains("SIZE"), "{table}");
    assert!(lines[1].starts_with("docker.io/library/busybox:cli ") && lines[1].contains(short), "{table}");
    assert!(lines[1].contains("MiB") && lines[1].contains("just now"), "{table}");

    let (r, json) = bulkhead(&socket, &["image", "list", "-o", "json"]).await;
    assert_eq!(r, Ok(0));
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v[0]["id"], fixture.manifest_digest.as_str());
    assert_eq!(v[0]["references"][0], "docker.io/library/busybox:cli");
    assert_eq!(v[0]["config"]["env"][1], "GREETING=hello=world");
    assert_eq!(v[0]["config"]["stop_signal"], "SIGQUIT");

    let (r, json) = bulkhead(&socket, &["image", "inspect", short, "-o", "json"]).await;
    assert_eq!(r, Ok(0));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json)?["config"]["cmd"][0], "echo ok");
    let (r, text) = bulkhead(&socket, &["image", "get", "busybox:cli"]).await;
    assert_eq!(r, Ok(0));
    assert!(text.contains(&format!("ID:          {}", fixture.manifest_digest)), "{text}");
    assert!(text.contains("Entrypoint:  /bin/sh -c") && text.contains("  PATH=/bin"), "{text}");

    assert_eq!(bulkhead(&socket, &["image", "rm", "busybox:cli"]).await.0, Ok(0));
    assert_eq!(bulkhead(&socket, &["image", "rm", "busybox:cli"]).await.0, Ok(0), "rm is idempotent");
    let (_, table) = bulkhead(&socket, &["image", "list"]).await;
    assert_eq!(table.lines().count(), 1, "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_errors_say_what_failed_and_what_to_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = serve(dir.path()).await?;
    let (r, _) = bulkhead(&socket, &["image", "inspect", "nope"]).await;
    assert_eq!(r, Err("inspecting image nope: no image \"nope\" (see `bulkhead image list`)".into()));
    let absent = dir.path().join("absent.tar");
    let (r, _) = bulkhead(&socket, &["image", "import", absent.to_str().ok_or("path")?]).await;
    let e = r.err().unwrap_or_default();
    assert!(e.starts_with(&format!("importing {}: opening {}", absent.display(), absent.display())), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty)?;
    let (r, _) = bulkhead(&socket, &["image", "import", empty.to_str().ok_or("path")?]).await;
    let e = r.err().unwrap_or_default();
    assert!(e.contains("not an OCI image layout (oci-layout + index.json) nor a docker save archive"), "{e}");
    let (r, _) = bulkhead(&socket, &["image", "import", "/x", "--reference", "Bad Ref"]).await;
    let e = r.err().unwrap_or_default();
    assert!(e.contains("invalid image reference \"Bad Ref\""), "{e}");
    Ok(())
}
