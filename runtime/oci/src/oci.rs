//! OCI image layouts (image-spec `image-layout.md`): `oci-layout`, `index.json`, `blobs/sha256/*`.
//!
//! Every document is read whole (bounded), checked against its descriptor's size and digest, and only then
//! parsed. Layers are checked as they are applied (see [`super::ImageStore`]): their blob digest and size
//! against the manifest, and their uncompressed digest against the config's diff ids.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType, OciLayout};

use super::layout::{
    Compression, ImagePlan, InputDir, LayerPlan, LayoutError, MAX_JSON_BYTES, Sha256Hex, host_arch, parse_config,
};

/// The annotation naming a manifest in an index (image-spec `annotations.md`).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Docker's schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list (an image index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 2;

/// True when `dir` looks like an OCI layout.
pub fn is_layout(dir: &InputDir) -> bool {
    dir.has_file("oci-layout") && dir.has_file("index.json")
}

fn json<T>(what: &str, r: Result<T, oci_spec::OciSpecError>) -> Result<T, LayoutError> {
    r.map_err(|e| LayoutError::Json { what: what.to_owned(), message: e.to_string() })
}

/// The sha256 digest of a descriptor (`what` names it in errors).
pub fn descriptor_digest(what: &str, d: &Descriptor) -> Result<Sha256Hex, LayoutError> {
    Sha256Hex::parse(d.digest().as_ref(), what)
}

/// A manifest the index offers, with the names it is known by.
struct Candidate {
    descriptor: Descriptor,
    names: Vec<String>,
}

/// True for an OCI or Docker image manifest.
pub fn is_manifest(t: &MediaType) -> bool {
    matches!(t, MediaType::ImageManifest) || t.to_string() == DOCKER_MANIFEST
}

/// True for an OCI image index or a Docker manifest list.
pub fn is_index(t: &MediaType) -> bool {
    matches!(t, MediaType::ImageIndex) || t.to_string() == DOCKER_LIST
}

/// True when the descriptor names no platform, or this node's (linux and [`host_arch`]).
pub fn platform_matches(d: &Descriptor) -> bool {
    d.platform().as_ref().is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == host_arch())
}

fn collect(dir: &InputDir, index: &ImageIndex, depth: usize, out: &mut Vec<Candidate>) -> Result<(), LayoutError> {
    for d in index.manifests() {
        let names: Vec<String> = d
            .annotations()
            .as_ref()
            .map(|a| [CONTAINERD_NAME, REF_NAME].iter().filter_map(|k| a.get(*k).cloned()).collect())
            .unwrap_or_default();
        match d.media_type() {
            // Manifests for other platforms are not candidates.
            t if is_manifest(t) && platform_matches(d) => out.push(Candidate { descriptor: d.clone(), names }),
            t if is_manifest(t) => {}
            t if is_index(t) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(LayoutError::Unusable(format!("image indexes nest more than {MAX_INDEX_DEPTH} deep")));
                }
                let digest = descriptor_digest("a nested index", d)?;
                let bytes = dir.read_blob("a nested index", &digest, d.size())?;
                let nested = json("a nested index", ImageIndex::from_reader(&bytes[..]))?;
                let before = out.len();
                collect(dir, &nested, depth + 1, out)?;
                // The names of the outer descriptor apply to what the nested index offers.
                for c in &mut out[before..] {
                    c.names.extend(names.iter().cloned());
                }
            }
            // Attestations, signatures and other artifacts are not images.
            _ => {}
        }
    }
    Ok(())
}

/// True when `name` (an annotation value) names `wanted` (a reference or just its tag).
fn name_matches(name: &str, wanted: &str) -> bool {
    if name == wanted {
        return true;
    }
    let tag = |s: &str| s.rsplit_once(':').map(|(_, t)| t.to_owned()).filter(|t| !t.contains('/'));
    match (super::reference::normalize(name), super::reference::normalize(wanted)) {
        (Ok(a), Ok(b)) if a == b => true,
        _ => tag(wanted).is_some_and(|t| t == name),
    }
}

/// Reads the layout in `dir`. `wanted` (the reference the user asked for) picks among several images.
pub fn read(dir: &InputDir, wanted: Option<&str>) -> Result<ImagePlan, LayoutError> {
    let layout = json("oci-layout", OciLayout::from_reader(&dir.read_small("oci-layout", MAX_JSON_BYTES)?[..]))?;
    if !layout.image_layout_version().starts_with("1.") {
        return Err(LayoutError::Unusable(format!(
            "oci-layout version {:?} is not supported (1.x is)",
            layout.image_layout_version()
        )));
    }
    let index = json("index.json", ImageIndex::from_reader(&dir.read_small("index.json", MAX_JSON_BYTES)?[..]))?;
    let mut candidates = Vec::new();
    collect(dir, &index, 0, &mut candidates)?;
    if candidates.len() > 1
        && let Some(w) = wanted
    {
        candidates.retain(|c| c.names.iter().any(|n| name_matches(n, w)));
    }
    let chosen = match candidates.len() {
        1 => candidates.remove(0),
        0 => {
            return Err(LayoutError::Unusable(format!(
                "index.json lists no image for linux/{}{}",
                host_arch(),
                wanted.map(|w| format!(" named {w:?}")).unwrap_or_default()
            )));
        }
        n => {
            let names: Vec<String> = candidates.iter().flat_map(|c| c.names.clone()).collect();
            return Err(LayoutError::Unusable(format!(
                "index.json lists {n} images for this platform (names: {names:?}): pass --reference to choose one"
            )));
        }
    };

    let id = descriptor_digest("the manifest", &chosen.descriptor)?;
    let bytes = dir.read_blob("the manifest", &id, chosen.descriptor.size())?;
    let manifest = json("the manifest", ImageManifest::from_reader(&bytes[..]))?;
    let (config_digest, config_size) = config_descriptor(&manifest)?;
    let config_bytes = dir.read_blob("the image config", &config_digest, config_size)?;
    let (config, diff_ids) = parse_config(&config_bytes, manifest.layers().len())?;
    let layers = layer_plans(&manifest, diff_ids)?;

    // A bare tag ("latest") in ref.name is not a reference; a full name is.
    let references = chosen.names.into_iter().filter(|n| n.contains('/') || n.contains(':')).collect();
    Ok(ImagePlan { id, config, layers, references })
}

/// Parses an image manifest (OCI or Docker schema 2).
pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, LayoutError> {
    json("the manifest", ImageManifest::from_reader(bytes))
}

/// The digest and size of a manifest's config, after checking its media type.
pub fn config_descriptor(manifest: &ImageManifest) -> Result<(Sha256Hex, u64), LayoutError> {
    let config_desc = manifest.config();
    match config_desc.media_type() {
        MediaType::ImageConfig => {}
        MediaType::Other(t) if t == DOCKER_CONFIG => {}
        other => {
            return Err(LayoutError::MediaType { what: "the image config".into(), media_type: other.to_string() });
        }
    }
    Ok((descriptor_digest("the image config", config_desc)?, config_desc.size()))
}

/// The layers of `manifest`, bottom first, as blobs of an OCI layout (`blobs/sha256/<hex>`), each with its
/// compression from the media type and its diff id from the config.
pub fn layer_plans(manifest: &ImageManifest, diff_ids: Vec<Sha256Hex>) -> Result<Vec<LayerPlan>, LayoutError> {
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (d, diff_id))| {
            let what = format!("layer {}", i + 1);
            let compression = match d.media_type() {
                MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
                MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
                MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
                MediaType::Other(t) if t == DOCKER_LAYER_GZIP => Compression::Gzip,
                other => return Err(LayoutError::MediaType { what, media_type: other.to_string() }),
            };
            let digest = descriptor_digest(&what, d)?;
            Ok(LayerPlan {
                path: super::layout::blob_path(&digest),
                compression,
                blob: Some((digest, d.size())),
                diff_id,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_busybox_layout;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn several_images_in_an_index_need_a_reference_to_choose() -> TestResult {
        let dir = tempfile::tempdir()?;
        let f = write_busybox_layout(dir.path(), std::path::Path::new("/bin/busybox"), Compression::None)?;
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("index.json"))?)?;
        let mut second = index["manifests"][0].clone();
        second["annotations"][REF_NAME] = "docker.io/library/busybox:other".into();
        second["platform"] = serde_json::json!({ "os": "linux", "architecture": host_arch() });
        let mut foreign = second.clone();
        foreign["platform"]["architecture"] = "s390x".into();
        let mut index = index.clone();
        index["manifests"] = serde_json::json!([index["manifests"][0], second, foreign]);
        std::fs::write(dir.path().join("index.json"), serde_json::to_vec(&index)?)?;
        let input = InputDir::open(dir.path())?;

        let e = read(&input, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("lists 2 images for this platform") && e.contains("--reference"), "{e}");
        let plan = read(&input, Some("busybox:other"))?;
        assert_eq!(plan.id.digest(), f.manifest_digest);
        assert_eq!(plan.references, ["docker.io/library/busybox:other"]);
        assert_eq!(read(&input, Some("test"))?.references, Vec::<String>::new(), "a bare tag picks, names nothing");
        let e = read(&input, Some("busybox:absent")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no image for linux/"), "{e}");
        Ok(())
    }

    #[test]
    fn a_manifest_that_does_not_match_its_digest_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let f = write_busybox_layout(dir.path(), std::path::Path::new("/bin/busybox"), Compression::Gzip)?;
        let path = dir.path().join("blobs/sha256").join(&f.manifest_digest["sha256:".len()..]);
        let text = std::fs::read_to_string(&path)?.replace("\"schemaVersion\":2", "\"schemaVersion\":2 ");
        std::fs::write(&path, text)?;
        let r = read(&InputDir::open(dir.path())?, None);
        assert!(matches!(r, Err(LayoutError::SizeMismatch { .. })), "{r:?}");
        let text = std::fs::read_to_string(&path)?.replace("\"schemaVersion\":2 ", "\"schemaVersion\":3");
        std::fs::write(&path, text)?;
        let r = read(&InputDir::open(dir.path())?, None);
        assert!(matches!(r, Err(LayoutError::DigestMismatch { .. })), "{r:?}");
        Ok(())
    }
}
