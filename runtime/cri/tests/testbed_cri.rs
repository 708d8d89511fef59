//! bulkhead-cri with real zones: `tests/scenarios/cri.sh` runs `bulkhead-cri smoke-test` (kubelet's sequence
//! over the CRI socket, starting with the image's pull from a registry in dom0) in the test bed's dom0.

use std::path::Path;
use std::time::Duration;

use bulkhead_oci::testing::registry::{busybox_storage, registry_available};
use bulkhead_testbed::Scenario;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn kubelets_sequence_runs_a_pod_in_a_real_zone() {
    assert!(registry_available(), "docker-registry is needed to build the registry storage");
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    };
    let storage = dir.path().join("storage");
    if let Err(e) = busybox_storage(Path::new("/bin/busybox"), &storage) {
        panic!("pushing the busybox images to a registry on the host (is busybox-static installed?): {e}");
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Scenario::new(here.join("tests/scenarios/cri.sh"))
        .add(here.join("../daemon/tests/scenarios/lib.sh"), "/root/scenario-lib.sh")
        .add(&storage, "/root/registry-storage")
        .add(here.join("runtimeclass.yaml"), "/root/runtimeclass.yaml")
        .timeout(Duration::from_secs(600))
        .run_ok();
}
