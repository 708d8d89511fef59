//! Workloads in real zones (see `tests/scenarios/workloads.sh` and `tests/scenarios/concurrent-zones.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::{tar_directory, write_busybox_layout};

mod common;

/// A busybox OCI image as a tar in `dir`, the way the scenarios import it.
fn busybox_oci_tar(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let tar = dir.join("busybox-oci.tar");
    let built = std::fs::create_dir_all(&layout)
        .and_then(|()| write_busybox_layout(&layout, Path::new("/bin/busybox"), Compression::Gzip))
        .and_then(|_| tar_directory(&layout, &tar));
    if let Err(e) = built {
        panic!("building the busybox OCI layout (is busybox-static installed?): {e}");
    }
    tar
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    }
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn workloads_run_from_an_imported_image_with_exec_logs_and_exit_codes() {
    let dir = tempdir();
    let tar = busybox_oci_tar(dir.path());
    common::run_scenario("workloads.sh", &[(&tar, "/root/busybox-oci.tar")], Duration::from_secs(900));
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn five_zones_launched_at_once_all_run_and_leave_nothing_behind() {
    let dir = tempdir();
    let tar = busybox_oci_tar(dir.path());
    common::run_scenario("concurrent-zones.sh", &[(&tar, "/root/busybox-oci.tar")], Duration::from_secs(600));
}
