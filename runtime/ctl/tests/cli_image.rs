//! `bulkhead image ...` against a real bulkheadd image API (in process) on a unix socket, importing a real
//! OCI layout. Needs root and mkfs.erofs like the daemon's image tests (BULKHEAD_SKIP_ROOT_TESTS=1 skips).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::control::v1::image_service_server::ImageServiceServer;
use bulkhead_oci::layout::Compression;
use bulkhead_oci::pull::{Registries, RegistryConfig};
use bulkhead_oci::testing::registry::{Registry, push_all, registry_available};
use bulkhead_oci::testing::write_busybox_layout;
use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkheadd::api::bind_control_socket;
use bulkheadd::api::images::ImageApi;

mod common;
use common::bulkhead;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("chown while unpacking")
}

async fn serve(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    serve_with(dir, Registries::default()).await
}

async fn serve_with(dir: &Path, registries: Registries) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let config = ImageStoreConfig { registries, ..ImageStoreConfig::new(dir.join("images")) };
    let store = Arc::new(ImageStore::open(config).await?);
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

    // Prune: a referenced image stays; once imported again without a reference, it is dangling and goes.
    let (r, text) = bulkhead(&socket, &["image", "prune"]).await;
    assert_eq!((r, text.as_str()), (Ok(0), "reclaimed 0 B (0 images, 0 blobs)\n"));
    assert_eq!(bulkhead(&socket, &["image", "rm", "busybox:cli"]).await.0, Ok(0));
    assert_eq!(bulkhead(&socket, &["image", "rm", "busybox:cli"]).await.0, Ok(0), "rm is idempotent");
    let (r, _) = bulkhead(&socket, &["image", "import", rel]).await;
    assert_eq!(r, Ok(0));
    let (r, text) = bulkhead(&socket, &["image", "prune"]).await;
    assert_eq!(r, Ok(0));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("removed {}", fixture.manifest_digest), "{text}");
    assert!(lines[1].starts_with("reclaimed ") && lines[1].ends_with(" (1 image, 0 blobs)"), "{text}");
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

/// Runs the `bulkhead` binary (stdout and stderr are pipes, not a terminal) and returns (status, stdout,
/// stderr).
async fn bulkhead_binary(
    socket: &Path,
    args: &[&str],
    stdin: &str,
) -> Result<(std::process::ExitStatus, String, String), Box<dyn std::error::Error>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.arg("--socket").arg(socket).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let stdin = stdin.to_owned();
    let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        let mut child = cmd.spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await??;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status, text(&out.stdout), text(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn image_pull_shows_progress_lines_off_a_terminal_and_prints_the_id() -> TestResult {
    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(Some(("puller", "s3cret")))?;
    let auth = bulkhead_oci::testing::registry::RegistryAuth::Basic("puller".into(), "s3cret".into());
    let pushed = push_all(&reg.addr, auth, Path::new("/bin/busybox")).await?;
    let dir = tempfile::tempdir()?;
    let insecure = RegistryConfig { insecure: true, ..RegistryConfig::default() };
    let socket = serve_with(dir.path(), Registries::new([(reg.addr.clone(), insecure)].into_iter().collect())).await?;
    let reference = format!("{}/test/busybox:gzip", reg.addr);

    let pull = ["image", "pull", &reference, "--username", "puller", "--password-stdin"];
    let (st, out, err) = bulkhead_binary(&socket, &pull, "s3cret\n").await?;
    assert!(st.success(), "{st}: {err}");
    assert_eq!(out, format!("{}\n", pushed.gzip), "stdout is the id alone");
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with(&format!("resolved {} (2 layers, ", pushed.gzip)), "{err}");
    for n in 1..=2 {
        let short = &pushed.gzip_layers[n - 1]["sha256:".len()..][..12];
        let want = format!("layer {n}/2 {short}: ");
        assert!(lines.iter().any(|l| l.starts_with(&want) && l.ends_with(" downloaded")), "{want}: {err}");
    }
    assert_eq!(lines.last(), Some(&"building the root image"), "{err}");
    let (r, table) = bulkhead(&socket, &["image", "list"]).await;
    assert_eq!(r, Ok(0));
    assert!(table.lines().any(|l| l.starts_with(&reference)), "{table}");

    // Again: the registry is asked what the tag names (so credentials are needed again), and nothing else
    // is fetched; quiet output is the id alone.
    let quiet = ["image", "pull", &reference, "--progress", "none", "--username", "puller", "--password-stdin"];
    let (st, out, err) = bulkhead_binary(&socket, &quiet, "s3cret\n").await?;
    assert!(st.success() && err.is_empty(), "{st}: {err}");
    assert_eq!(out.trim(), pushed.gzip);

    // Without credentials: one line that says what failed and what to do.
    let absent = reference.replace(":gzip", ":zstd");
    let (st, _, err) = bulkhead_binary(&socket, &["image", "pull", &absent], "").await?;
    assert!(!st.success());
    assert!(err.starts_with(&format!("error: pulling {absent}: {} refused access", reg.addr)), "{err}");
    assert!(err.contains(&format!("[registries.\"{}\"]", reg.addr)), "{err}");
    Ok(())
}
