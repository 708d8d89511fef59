//! CRI's ImageService over the daemon's image store.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1 as cri;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::daemon_error;

/// The service.
#[derive(Debug, Clone)]
pub struct CriImages {
    images: ImageServiceClient<Channel>,
    /// The daemon's image store, whose disk use ImageFsInfo reports.
    store_dir: PathBuf,
}

impl CriImages {
    /// Serves the images of the daemon behind `channel`, whose store is at `store_dir`.
    pub fn new(channel: Channel, store_dir: PathBuf) -> Self {
        CriImages { images: ImageServiceClient::new(channel), store_dir }
    }
}

/// CRI's view of an image: tags and digests as kubelet and crictl show them.
pub fn image_to_cri(image: &pb::Image) -> cri::Image {
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for r in &image.references {
        match r.split_once('@') {
            Some(_) => repo_digests.push(r.clone()),
            None => {
                repo_tags.push(r.clone());
                // The repository part: drop a ":tag" that follows the last '/' (a registry port comes before).
                let repo = match r.rfind(':') {
                    Some(i) if !r[i..].contains('/') => &r[..i],
                    _ => r.as_str(),
                };
                repo_digests.push(format!("{repo}@{}", image.id));
            }
        }
    }
    repo_digests.sort();
    repo_digests.dedup();
    let user = image.config.as_ref().map(|c| c.user.as_str()).unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_owned()),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags,
        repo_digests,
        size: image.size_bytes,
        uid,
        username,
        spec: Some(cri::ImageSpec { image: image.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

fn spec_image(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    match spec.map(|s| s.image) {
        Some(i) if !i.is_empty() => Ok(i),
        _ => Err(Status::invalid_argument("no image given (ImageSpec.image is empty)")),
    }
}

/// The credentials of a CRI AuthConfig: username and password, given apart or as `auth` (base64 of
/// `user:password`, as in a docker config).
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<pb::RegistryCredentials>, Status> {
    let Some(a) = auth else { return Ok(None) };
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        return Err(Status::invalid_argument(
            "AuthConfig: identity and registry tokens are not supported; give a username and password",
        ));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(pb::RegistryCredentials { username: a.username, password: a.password }));
    }
    if a.auth.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("AuthConfig.auth must be base64 of \"username:password\"");
    let decoded = base64::engine::general_purpose::STANDARD.decode(a.auth.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(pb::RegistryCredentials { username: user.to_owned(), password: password.to_owned() }))
}

/// Bytes and inodes used under `dir` (not following links).
fn disk_usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0, 0);
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for CriImages {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let wanted = req.into_inner().filter.and_then(|f| f.image).map(|s| s.image).filter(|i| !i.is_empty());
        let mut client = self.images.clone();
        let images = match wanted {
            // The store resolves the reference (short names, tags, ids) as a pull would.
            Some(image) => match client.get_image(pb::GetImageRequest { image }).await {
                Ok(r) => r.into_inner().image.into_iter().collect(),
                Err(e) if e.code() == Code::NotFound => vec![],
                Err(e) => return Err(daemon_error("listing images", e)),
            },
            None => {
                client
                    .list_images(pb::ListImagesRequest {})
                    .await
                    .map_err(|e| daemon_error("listing images", e))?
                    .into_inner()
                    .images
            }
        };
        Ok(Response::new(cri::ListImagesResponse { images: images.iter().map(image_to_cri).collect() }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let image = spec_image(req.image)?;
        // An image that is not here is no error in CRI: the answer has no image.
        let found = match self.images.clone().get_image(pb::GetImageRequest { image: image.clone() }).await {
            Ok(r) => r.into_inner().image,
            Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => None,
            Err(e) => return Err(daemon_error(&format!("image {image}"), e)),
        };
        let info = match (&found, req.verbose) {
            (Some(i), true) => [("config".to_owned(), format!("{:?}", i.config))].into_iter().collect(),
            _ => Default::default(),
        };
        Ok(Response::new(cri::ImageStatusResponse { image: found.as_ref().map(image_to_cri), info }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let reference = spec_image(req.image)?;
        let credentials = credentials(req.auth)?;
        let what = format!("pulling {reference}");
        let mut progress = self
            .images
            .clone()
            .pull_image(pb::PullImageRequest { reference: reference.clone(), credentials })
            .await
            .map_err(|e| daemon_error(&what, e))?
            .into_inner();
        while let Some(msg) = progress.message().await.map_err(|e| daemon_error(&what, e))? {
            if let Some(pb::pull_image_response::Event::Image(image)) = msg.event {
                tracing::info!(reference, id = %image.id, "image pulled");
                return Ok(Response::new(cri::PullImageResponse { image_ref: image.id }));
            }
        }
        Err(Status::unavailable(format!("{what}: the daemon ended the pull without an image; retry")))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let image = spec_image(req.into_inner().image)?;
        match self.images.clone().remove_image(pb::RemoveImageRequest { image: image.clone() }).await {
            Ok(_) => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) if e.code() == Code::NotFound => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) => Err(daemon_error(&format!("removing image {image}"), e)),
        }
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let dir = self.store_dir.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .map_err(|e| Status::internal(format!("measuring the image store: {e}")))?
            .map_err(|e| Status::unavailable(format!("measuring the image store {}: {e}", self.store_dir.display())))?;
        let usage = cri::FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.store_dir.display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_digests_are_split_as_kubelet_expects() {
        let image = pb::Image {
            id: "sha256:aa".into(),
            references: vec![
                "docker.io/library/busybox:latest".into(),
                "registry.local:5000/app:v1".into(),
                "registry.local:5000/app@sha256:aa".into(),
            ],
            config: Some(pb::ImageConfig { user: "1000:1000".into(), ..Default::default() }),
            ..Default::default()
        };
        let c = image_to_cri(&image);
        assert_eq!(c.repo_tags, ["docker.io/library/busybox:latest", "registry.local:5000/app:v1"]);
        assert_eq!(c.repo_digests, ["docker.io/library/busybox@sha256:aa", "registry.local:5000/app@sha256:aa"]);
        assert_eq!(c.uid, Some(cri::Int64Value { value: 1000 }));
    }

    #[test]
    fn auth_config_gives_username_and_password() -> Result<(), Status> {
        let auth = |a: cri::AuthConfig| credentials(Some(a));
        let both = auth(cri::AuthConfig { auth: "dXNlcjpwYTpzcw==".into(), ..Default::default() })?;
        assert_eq!(both.map(|c| (c.username, c.password)), Some(("user".into(), "pa:ss".into())));
        let apart = auth(cri::AuthConfig { username: "u".into(), password: "p".into(), ..Default::default() })?;
        assert_eq!(apart.map(|c| c.username), Some("u".into()));
        assert!(auth(cri::AuthConfig { auth: "%%%".into(), ..Default::default() }).is_err());
        assert!(auth(cri::AuthConfig { registry_token: "t".into(), ..Default::default() }).is_err());
        assert_eq!(credentials(None)?, None);
        Ok(())
    }
}
