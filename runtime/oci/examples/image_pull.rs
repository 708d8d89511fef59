//! Pulls one image into an image store directory with the image library alone (no hypervisor, no API):
//! for benchmarks (`ci/bench/image-pull.sh`) and for debugging a registry.
//!
//!     image_pull STATE_DIR REFERENCE [--insecure HOST[:PORT]]...
//!
//! Prints one line per finished layer, then the image id and the wall time.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use bulkhead_oci::pull::{PullProgress, Registries, RegistryConfig};
use bulkhead_oci::{ImageStore, ImageStoreConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(state), Some(reference)) = (args.next(), args.next()) else {
        bail!("usage: image_pull STATE_DIR REFERENCE [--insecure HOST[:PORT]]...");
    };
    let mut hosts = BTreeMap::new();
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--insecure", Some(host)) => {
                hosts.insert(host, RegistryConfig { insecure: true, ..RegistryConfig::default() });
            }
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let config = ImageStoreConfig { registries: Registries::new(hosts), ..ImageStoreConfig::new(&state) };
        let store = ImageStore::open(config).await.with_context(|| format!("opening the image store {state}"))?;
        let start = Instant::now();
        let progress = |p: PullProgress| {
            if let PullProgress::Layer { index, done, total, cached } = p
                && done == total
            {
                println!("layer {index}: {total} bytes{}", if cached { " (cached)" } else { "" });
            }
        };
        let rec = store.pull(&reference, None, &progress).await.with_context(|| format!("pulling {reference}"))?;
        println!("{} in {:.2} s", rec.id, start.elapsed().as_secs_f64());
        Ok(())
    })
}
