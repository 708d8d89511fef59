//! bulkhead-cri with real zones: `tests/scenarios/cri.sh` runs `bulkhead-cri smoke-test` (kubelet's sequence
//! over the CRI socket) in the test bed's dom0.

use std::path::Path;
use std::time::Duration;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::{tar_directory, write_busybox_layout};
use bulkhead_testbed::Scenario;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn kubelets_sequence_runs_a_pod_in_a_real_zone() {
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
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Scenario::new(here.join("tests/scenarios/cri.sh"))
        .add(here.join("../daemon/tests/scenarios/lib.sh"), "/root/scenario-lib.sh")
        .add(&tar, "/root/busybox-oci.tar")
        .timeout(Duration::from_secs(600))
        .run_ok();
}
