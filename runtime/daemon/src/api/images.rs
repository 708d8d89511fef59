//! `bulkhead.control.v1.ImageService`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::pull_image_response::Event;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::message_chain;
use bulkhead_oci::erofs::ErofsError;
use bulkhead_oci::pull::{Credentials, PullProgress, RegistryFailure};
use bulkhead_oci::reference;
use bulkhead_oci::{ImageError, ImageRecord, ImageStore};

/// Tells whether a workload uses an image; [`ImageService::remove_image`] refuses while it does.
pub type InUseCheck = Arc<dyn Fn(&ImageRecord) -> bool + Send + Sync>;

/// The service, over a shared store.
pub struct ImageApi {
    store: Arc<ImageStore>,
    in_use: InUseCheck,
}

impl std::fmt::Debug for ImageApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageApi").field("store", &self.store).finish_non_exhaustive()
    }
}

impl ImageApi {
    /// Serves `store`. Until the workload layer passes its check with [`ImageApi::with_in_use`], no image
    /// counts as in use.
    pub fn new(store: Arc<ImageStore>) -> Self {
        ImageApi { store, in_use: Arc::new(|_| false) }
    }

    /// Serves `store`, refusing to remove images for which `in_use` is true.
    pub fn with_in_use(store: Arc<ImageStore>, in_use: InUseCheck) -> Self {
        ImageApi { store, in_use }
    }
}

/// The status an image failure means for the client (a function: neither type is this crate's).
pub fn image_status(e: ImageError) -> Status {
    let msg = message_chain(&e);
    match &e {
        ImageError::NotFound(_) => Status::not_found(msg),
        ImageError::Ambiguous { .. }
        | ImageError::Reference(_)
        | ImageError::RelativePath(_)
        | ImageError::Invalid { .. } => Status::invalid_argument(msg),
        ImageError::OpenInput { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => Status::not_found(msg),
            std::io::ErrorKind::PermissionDenied => Status::permission_denied(msg),
            _ => Status::invalid_argument(msg),
        },
        ImageError::Unpack { source, .. } if source.is_bad_input() => Status::invalid_argument(msg),
        ImageError::Pull { source, .. } => match source.registry_failure() {
            Some(RegistryFailure::NotFound) => Status::not_found(msg),
            Some(RegistryFailure::Unauthorized) => Status::permission_denied(msg),
            Some(RegistryFailure::Unavailable) => Status::unavailable(msg),
            // The registry's content is malformed, inconsistent, or for another platform.
            None => Status::invalid_argument(msg),
        },
        ImageError::InUse { .. } | ImageError::Build { source: ErofsError::Missing { .. }, .. } => {
            Status::failed_precondition(msg)
        }
        ImageError::Unpack { .. }
        | ImageError::Build { .. }
        | ImageError::Io { .. }
        | ImageError::Store(_)
        | ImageError::Task(_) => {
            tracing::error!(error = %msg, "image operation failed");
            Status::internal(msg)
        }
    }
}

/// The protobuf form of a record.
pub fn image_to_pb(r: &ImageRecord) -> pb::Image {
    let c = &r.config;
    pb::Image {
        id: r.id.clone(),
        references: r.references.clone(),
        size_bytes: r.size_bytes,
        created_at: r.created_at,
        config: Some(pb::ImageConfig {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.iter().map(|(name, value)| pb::EnvVar { name: name.clone(), value: value.clone() }).collect(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            stop_signal: c.stop_signal.clone(),
            exposed_ports: c.exposed_ports.clone(),
            labels: c.labels.clone().into_iter().collect(),
        }),
    }
}

/// Progress messages queued for one pull's client. When a slow client lets the queue fill, layer progress is
/// dropped (the next message supersedes it); the first message finds the queue empty, and the last one waits
/// for room.
const PULL_QUEUE: usize = 64;

fn progress_to_pb(p: PullProgress) -> pb::PullImageResponse {
    let event = match p {
        PullProgress::Resolved { id, layers } => Event::Resolved(pb::PullResolved {
            id,
            layers: layers.into_iter().map(|(digest, size_bytes)| pb::PullLayer { digest, size_bytes }).collect(),
        }),
        PullProgress::Layer { index, done, total, cached } => Event::Layer(pb::PullLayerProgress {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            done_bytes: done,
            total_bytes: total,
            cached,
        }),
        PullProgress::Building => Event::Building(pb::PullBuilding {}),
    };
    pb::PullImageResponse { event: Some(event) }
}

fn credentials(c: Option<pb::RegistryCredentials>) -> Result<Option<Credentials>, Status> {
    match c {
        None => Ok(None),
        Some(c) if c.username.is_empty() => {
            Err(Status::invalid_argument("credentials.username is required when credentials are given"))
        }
        Some(c) => Ok(Some(Credentials { username: c.username, password: c.password })),
    }
}

fn required(field: &str, value: String) -> Result<String, Status> {
    if value.is_empty() { Err(Status::invalid_argument(format!("{field} is required"))) } else { Ok(value) }
}

#[tonic::async_trait]
impl pb::image_service_server::ImageService for ImageApi {
    type PullImageStream = Pin<Box<dyn Stream<Item = Result<pb::PullImageResponse, Status>> + Send>>;

    async fn pull_image(&self, req: Request<pb::PullImageRequest>) -> Result<Response<Self::PullImageStream>, Status> {
        let req = req.into_inner();
        let image = required("reference", req.reference)?;
        let credentials = credentials(req.credentials)?;
        // A malformed reference is the request's error, not the stream's.
        reference::parse(&image).map_err(|e| image_status(e.into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(PULL_QUEUE);
        let store = self.store.clone();
        // The pull runs to its end even when the client goes away: what it fetched stays useful.
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: PullProgress| {
                let _ = progress_tx.try_send(Ok(progress_to_pb(p)));
            };
            let last = match store.pull(&image, credentials.as_ref(), &progress).await {
                Ok(rec) => Ok(pb::PullImageResponse { event: Some(Event::Image(image_to_pb(&rec))) }),
                Err(e) => {
                    let chain = message_chain(&e);
                    let status = image_status(e);
                    // Internal failures were logged by the conversion.
                    if status.code() != tonic::Code::Internal {
                        tracing::warn!(image = %image, error = %chain, "an image pull failed");
                    }
                    Err(status)
                }
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import_image(
        &self,
        req: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        let req = req.into_inner();
        let path = PathBuf::from(required("path", req.path)?);
        let reference = (!req.reference.is_empty()).then_some(req.reference);
        let rec = self.store.import(&path, reference.as_deref()).await.map_err(image_status)?;
        Ok(Response::new(pb::ImportImageResponse { image: Some(image_to_pb(&rec)) }))
    }

    async fn prune_images(
        &self,
        _req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        let in_use = self.in_use.clone();
        let r = self.store.prune(move |rec| in_use(rec)).await.map_err(image_status)?;
        Ok(Response::new(pb::PruneImagesResponse {
            removed_images: r.images,
            removed_blobs: r.blobs,
            reclaimed_bytes: r.bytes,
        }))
    }

    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.store.list().iter().map(image_to_pb).collect();
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    async fn get_image(&self, req: Request<pb::GetImageRequest>) -> Result<Response<pb::GetImageResponse>, Status> {
        let image = required("image", req.into_inner().image)?;
        let rec = self.store.get(&image).map_err(image_status)?;
        Ok(Response::new(pb::GetImageResponse { image: Some(image_to_pb(&rec)) }))
    }

    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let image = required("image", req.into_inner().image)?;
        let in_use = self.in_use.clone();
        self.store.remove(&image, move |r| in_use(r)).await.map_err(image_status)?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_oci::layout::LayoutError;
    use bulkhead_oci::unpack::UnpackError;

    #[test]
    fn errors_map_to_codes_a_client_can_act_on() {
        let code = |e: ImageError| image_status(e).code();
        assert_eq!(code(ImageError::NotFound("x".into())), tonic::Code::NotFound);
        assert_eq!(code(ImageError::InUse { id: "sha256:x".into() }), tonic::Code::FailedPrecondition);
        let invalid = ImageError::Invalid { path: "/p".into(), source: LayoutError::UnknownFormat };
        assert_eq!(code(invalid), tonic::Code::InvalidArgument);
        let escape = ImageError::Unpack {
            path: "/p".into(),
            what: "layer 1".into(),
            source: UnpackError::PathEscape { path: "../x".into() },
        };
        assert_eq!(code(escape), tonic::Code::InvalidArgument);
        let local = ImageError::Unpack {
            path: "/p".into(),
            what: "layer 1".into(),
            source: UnpackError::Local {
                op: "creating",
                path: "a".into(),
                root: "/r".into(),
                source: std::io::Error::other("disk full"),
            },
        };
        assert_eq!(code(local), tonic::Code::Internal);
        let missing = ImageError::OpenInput { path: "/p".into(), source: std::io::ErrorKind::NotFound.into() };
        let s = image_status(missing);
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().starts_with("opening /p: "), "{}", s.message());
    }
}
