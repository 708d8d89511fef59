//! `docker save` archives (also what `skopeo copy ... docker-archive:` writes): a `manifest.json` listing,
//! per image, its config file, its `RepoTags` and its layer files.
//!
//! The format has no descriptors, so the chain of trust is: the image id is the sha256 of the config file
//! (Docker's own "image ID"; when the config's file name carries a digest, it must match), the config lists
//! the diff id of every layer, and each layer's uncompressed tar must hash to its diff id. The same image
//! imported from an OCI layout gets a different id (its manifest digest): the two formats name images
//! differently, and a docker archive has no manifest to take a digest of.

use serde::Deserialize;

use super::layout::{
    Compression, ImagePlan, InputDir, LayerPlan, LayoutError, MAX_JSON_BYTES, Sha256Hex, parse_config,
};
use super::reference;

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// True when `dir` looks like a `docker save` archive.
pub fn is_archive(dir: &InputDir) -> bool {
    dir.has_file("manifest.json")
}

/// The digest a config file's name carries: `<hex>.json` (docker save < 25) or `blobs/sha256/<hex>`.
fn digest_in_name(path: &str) -> Option<Sha256Hex> {
    let base = path.rsplit('/').next()?;
    Sha256Hex::from_hex(base.strip_suffix(".json").unwrap_or(base))
}

/// Reads the archive in `dir`. `wanted` picks among several images by their `RepoTags`.
pub fn read(dir: &InputDir, wanted: Option<&str>) -> Result<ImagePlan, LayoutError> {
    let bytes = dir.read_small("manifest.json", MAX_JSON_BYTES)?;
    let mut entries: Vec<Entry> = serde_json::from_slice(&bytes)
        .map_err(|e| LayoutError::Json { what: "manifest.json".into(), message: e.to_string() })?;
    if entries.len() > 1
        && let Some(w) = wanted.and_then(|w| reference::normalize(w).ok())
    {
        entries.retain(|e| {
            e.repo_tags.iter().flatten().any(|t| reference::normalize(t).ok().as_deref() == Some(w.as_str()))
        });
    }
    let entry = match entries.len() {
        1 => entries.remove(0),
        0 => return Err(LayoutError::Unusable("manifest.json lists no matching image".into())),
        n => {
            let tags: Vec<String> = entries.iter().flat_map(|e| e.repo_tags.clone().unwrap_or_default()).collect();
            return Err(LayoutError::Unusable(format!(
                "manifest.json lists {n} images (tags: {tags:?}): pass --reference to choose one"
            )));
        }
    };
    let config_bytes = dir.read_small(&entry.config, MAX_JSON_BYTES)?;
    let id = Sha256Hex::of(&config_bytes);
    if let Some(named) = digest_in_name(&entry.config) {
        super::layout::verify(&format!("config {}", entry.config), &named, &id)?;
    }
    let (config, diff_ids) = parse_config(&config_bytes, entry.layers.len())?;
    let layers = entry
        .layers
        .into_iter()
        .zip(diff_ids)
        .map(|(path, diff_id)| LayerPlan { path, compression: Compression::Detect, blob: None, diff_id })
        .collect();
    Ok(ImagePlan { id, config, layers, references: entry.repo_tags.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_carry_digests_in_both_layouts() {
        let h = "0123456789abcdef".repeat(4);
        assert_eq!(digest_in_name(&format!("{h}.json")).map(|d| d.hex().to_owned()), Some(h.clone()));
        assert_eq!(digest_in_name(&format!("blobs/sha256/{h}")).map(|d| d.hex().to_owned()), Some(h));
        assert_eq!(digest_in_name("config.json"), None);
    }

    #[test]
    fn a_config_whose_name_lies_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let named = "ab".repeat(32);
        std::fs::write(dir.path().join(format!("{named}.json")), br#"{"architecture":"amd64","os":"linux"}"#)?;
        std::fs::write(
            dir.path().join("manifest.json"),
            format!(r#"[{{"Config":"{named}.json","RepoTags":["x:1"],"Layers":[]}}]"#),
        )?;
        let r = read(&InputDir::open(dir.path())?, None);
        assert!(matches!(r, Err(LayoutError::DigestMismatch { .. })), "{r:?}");
        Ok(())
    }
}
