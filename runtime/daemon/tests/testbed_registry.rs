//! An image pulled from a registry inside dom0 runs in a zone (see `tests/scenarios/registry-pull.sh`).
//!
//! dom0 has docker-registry but no tool to push with: the test adds the storage of a registry on the host
//! that the busybox images were pushed to (`busybox_storage`), which the scenario serves on dom0's
//! 127.0.0.1:5000.

use std::path::Path;
use std::time::Duration;

use bulkhead_oci::testing::registry::{busybox_storage, registry_available};

mod common;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn an_image_pulled_from_a_registry_in_dom0_runs_in_a_zone() {
    // The scenario needs the registry's storage; without the registry there is nothing to test (in CI that
    // is a failure, see registry_available).
    assert!(registry_available(), "docker-registry is needed to build the registry storage");
    let storage = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temporary directory: {e}"),
    };
    if let Err(e) = busybox_storage(Path::new("/bin/busybox"), &storage.path().join("storage")) {
        panic!("pushing the busybox images to a registry on the host: {e}");
    }
    common::run_scenario(
        "registry-pull.sh",
        &[(&storage.path().join("storage"), "/root/registry-storage")],
        Duration::from_secs(900),
    );
}
