//! Writes the busybox test image (a real OCI image layout around the host's static busybox, see
//! `bulkhead_oci::testing`) as a tar that `bulkhead image import` takes. The node image build
//! (`ci/image build`) bakes it into the image, so a node can launch a zone with no registry and no network.
//!
//!     busybox_oci OUT.tar [BUSYBOX]      (BUSYBOX default: /bin/busybox, from Debian's busybox-static)
//!
//! Prints the image id (the manifest digest).

use std::path::PathBuf;

use anyhow::{Context, bail};
use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::{tar_directory, write_busybox_layout};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        bail!("usage: busybox_oci OUT.tar [BUSYBOX]");
    };
    let busybox = args.next().map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    if args.next().is_some() {
        bail!("usage: busybox_oci OUT.tar [BUSYBOX]");
    }
    let dir = tempfile::tempdir().context("creating a work directory")?;
    let fixture = write_busybox_layout(dir.path(), &busybox, Compression::Gzip)
        .with_context(|| format!("writing an OCI layout around {}", busybox.display()))?;
    tar_directory(dir.path(), &out).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", fixture.manifest_digest);
    Ok(())
}
