//! The image API over its real transport: a tonic server on a unix socket, a tonic client, the image store
//! behind it. Checks conversions, status codes and idempotent removal. Needs root and mkfs.erofs, like
//! bulkhead-oci's tests/images.rs (BULKHEAD_SKIP_ROOT_TESTS=1 skips deliberately). The pull test needs
//! Debian's docker-registry, as bulkhead-oci's tests/registry.rs does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
use bulkhead_api::control::v1::image_service_server::ImageServiceServer;
use bulkhead_oci::layout::Compression;
use bulkhead_oci::pull::{Registries, RegistryConfig};
use bulkhead_oci::testing::registry::{Registry, RegistryAuth, push_all, registry_available};
use bulkhead_oci::testing::write_busybox_layout;
use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkheadd::api::bind_control_socket;
use bulkheadd::api::images::ImageApi;
use tonic::Code;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn privileged() -> bool {
    bulkhead_oci::testing::root_or_skip("chown while unpacking")
}

async fn serve(
    state: &Path,
    in_use: bool,
) -> Result<(PathBuf, tokio::sync::oneshot::Sender<()>), Box<dyn std::error::Error>> {
    let store = Arc::new(ImageStore::open(ImageStoreConfig::new(state.join("images"))).await?);
    let api = ImageApi::with_in_use(store, Arc::new(move |_| in_use));
    let socket = state.join("run/control.sock");
    let incoming = bind_control_socket(&socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(ImageServiceServer::new(api)).serve_with_incoming_shutdown(
            incoming,
            async {
                let _ = stopped.await;
            },
        ),
    );
    Ok((socket, stop))
}

#[tokio::test(flavor = "multi_thread")]
async fn images_over_the_control_socket() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let fixture = write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip)?;
    let (socket, stop) = serve(dir.path(), false).await?;
    let mut c = ImageServiceClient::new(bulkhead_api::client::connect_unix(&socket).await?);

    let req = pb::ImportImageRequest { path: layout.display().to_string(), reference: "busybox:api".into() };
    let image = tokio::time::timeout(Duration::from_secs(60), c.import_image(req))
        .await??
        .into_inner()
        .image
        .ok_or("no image")?;
    assert_eq!(image.id, fixture.manifest_digest);
    assert_eq!(image.references, ["docker.io/library/busybox:api"]);
    assert!(image.size_bytes > 0 && image.created_at > 0);
    let config = image.config.clone().ok_or("no config")?;
    assert_eq!(config.cmd, ["echo ok"]);
    assert_eq!(config.env[1], pb::EnvVar { name: "GREETING".into(), value: "hello=world".into() });
    assert_eq!(config.exposed_ports, ["53/udp", "8080/tcp"]);

    let listed = c.list_images(pb::ListImagesRequest {}).await?.into_inner().images;
    assert_eq!(listed, std::slice::from_ref(&image));
    let prefix = image.id["sha256:".len()..][..12].to_owned();
    for name in ["busybox:api", "docker.io/library/busybox:api", image.id.as_str(), prefix.as_str()] {
        let got = c.get_image(pb::GetImageRequest { image: name.into() }).await?.into_inner().image;
        assert_eq!(got.as_ref(), Some(&image), "{name}");
    }

    // Status codes a client can act on.
    let code = |r: Result<tonic::Response<pb::ImportImageResponse>, tonic::Status>| r.err().map(|s| s.code());
    let rel = c.import_image(pb::ImportImageRequest { path: "layout".into(), reference: String::new() }).await;
    assert_eq!(code(rel), Some(Code::InvalidArgument));
    let absent = dir.path().join("absent").display().to_string();
    let missing = c.import_image(pb::ImportImageRequest { path: absent, reference: String::new() }).await;
    assert_eq!(code(missing), Some(Code::NotFound));
    let not_image = c
        .import_image(pb::ImportImageRequest {
            path: dir.path().join("run").display().to_string(),
            reference: String::new(),
        })
        .await
        .err()
        .ok_or("imported a directory that is no image")?;
    assert_eq!(not_image.code(), Code::InvalidArgument);
    assert!(not_image.message().contains("not an OCI image layout"), "{}", not_image.message());
    let bad_ref = c
        .import_image(pb::ImportImageRequest { path: layout.display().to_string(), reference: "Bad Ref".into() })
        .await;
    assert_eq!(code(bad_ref), Some(Code::InvalidArgument));
    let gone = c.get_image(pb::GetImageRequest { image: "alpine".into() }).await.err().ok_or("found alpine")?;
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("\"alpine\""), "{}", gone.message());
    let empty = c.get_image(pb::GetImageRequest { image: String::new() }).await.err().ok_or("empty name")?;
    assert_eq!(empty.code(), Code::InvalidArgument);

    c.remove_image(pb::RemoveImageRequest { image: "busybox:api".into() }).await?;
    c.remove_image(pb::RemoveImageRequest { image: "busybox:api".into() }).await?; // idempotent
    assert!(c.list_images(pb::ListImagesRequest {}).await?.into_inner().images.is_empty());
    let _ = stop.send(());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_an_image_in_use_is_a_failed_precondition() -> TestResult {
    if !privileged() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip)?;
    let (socket, stop) = serve(dir.path(), true).await?;
    let mut c = ImageServiceClient::new(bulkhead_api::client::connect_unix(&socket).await?);
    let req = pb::ImportImageRequest { path: layout.display().to_string(), reference: "busybox:used".into() };
    c.import_image(req).await?;
    let e = c.remove_image(pb::RemoveImageRequest { image: "busybox:used".into() }).await.err().ok_or("removed")?;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("in use"), "{}", e.message());
    assert_eq!(c.list_images(pb::ListImagesRequest {}).await?.into_inner().images.len(), 1);
    let _ = stop.send(());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_over_the_control_api_streams_progress_then_the_image() -> TestResult {
    use bulkhead_api::control::v1::pull_image_response::Event;

    if !registry_available() || !privileged() {
        return Ok(());
    }
    let reg = Registry::start(Some(("puller", "s3cret")))?;
    let pushed =
        push_all(&reg.addr, RegistryAuth::Basic("puller".into(), "s3cret".into()), Path::new("/bin/busybox")).await?;
    let tmp = tempfile::tempdir()?;
    let registries =
        Registries::new([(reg.addr.clone(), RegistryConfig { insecure: true, ..RegistryConfig::default() })].into());
    let s = Arc::new(
        ImageStore::open(ImageStoreConfig { registries, ..ImageStoreConfig::new(tmp.path().join("images")) }).await?,
    );
    let socket = tmp.path().join("control.sock");
    let incoming = bind_control_socket(&socket)?;
    let api = ImageApi::new(s);
    tokio::spawn(
        tonic::transport::Server::builder().add_service(ImageServiceServer::new(api)).serve_with_incoming(incoming),
    );
    let mut c = ImageServiceClient::new(bulkhead_api::client::connect_unix(&socket).await?);

    let reference = format!("{}/test/busybox:gzip", reg.addr);
    let credentials = Some(pb::RegistryCredentials { username: "puller".into(), password: "s3cret".into() });
    let req = pb::PullImageRequest { reference: reference.clone(), credentials };
    let mut stream = c.pull_image(req).await?.into_inner();
    let mut events = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(120), stream.message()).await?? {
        events.push(m.event.ok_or("a message without an event")?);
    }
    match events.first() {
        Some(Event::Resolved(r)) => {
            assert_eq!(r.id, pushed.gzip);
            assert_eq!(r.layers.len(), 2);
        }
        other => return Err(format!("expected Resolved first, got {other:?}").into()),
    }
    assert!(events.iter().any(|e| matches!(e, Event::Layer(l) if l.index == 1 && l.done_bytes == l.total_bytes)));
    assert!(matches!(events[events.len() - 2], Event::Building(_)), "{events:?}");
    match events.last() {
        Some(Event::Image(i)) => {
            assert_eq!(i.id, pushed.gzip);
            assert_eq!(i.references, [reference.as_str()]);
        }
        other => return Err(format!("expected the image last, got {other:?}").into()),
    }

    // Failures are statuses a client can act on: no credentials, an absent tag, a malformed reference.
    let req = pb::PullImageRequest { reference: reference.replace(":gzip", ":zstd"), credentials: None };
    let status = match c.pull_image(req).await {
        Ok(r) => r.into_inner().message().await.err(),
        Err(s) => Some(s),
    };
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let credentials = Some(pb::RegistryCredentials { username: "puller".into(), password: "s3cret".into() });
    let req = pb::PullImageRequest { reference: reference.replace(":gzip", ":absent"), credentials };
    let status = match c.pull_image(req).await {
        Ok(r) => r.into_inner().message().await.err(),
        Err(s) => Some(s),
    };
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::NotFound));
    let r = c.pull_image(pb::PullImageRequest { reference: "Bad Ref".into(), credentials: None }).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    Ok(())
}
