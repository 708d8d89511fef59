//! Workloads in real zones (see `tests/scenarios/workloads.sh`).

use std::path::Path;
use std::time::Duration;

use bulkheadd::images::layout::Compression;
use bulkheadd::images::testing::{tar_directory, write_busybox_layout};

mod common;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn workloads_run_from_an_imported_image_with_exec_logs_and_exit_codes() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    };
    let layout = dir.path().join("layout");
    let tar = dir.path().join("busybox-oci.tar");
    let built = std::fs::create_dir_all(&layout)
        .and_then(|()| write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip))
        .and_then(|_| tar_directory(&layout, &tar));
    if let Err(e) = built {
        panic!("building the busybox OCI layout (is busybox-static installed?): {e}");
    }
    common::run_scenario("workloads.sh", &[(&tar, "/root/busybox-oci.tar")], Duration::from_secs(900));
}
