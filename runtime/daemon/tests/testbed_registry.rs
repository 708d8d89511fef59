//! An image pulled from a registry inside dom0 runs in a zone (see `tests/scenarios/registry-pull.sh`).
//!
//! dom0 has docker-registry but no tool to push with: the test pushes the busybox fixture to a registry on
//! the host with the test-support push code, and adds that registry's storage to the bed, where the
//! scenario serves it on dom0's 127.0.0.1:5000.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bulkhead_oci::testing::registry::{Registry, RegistryAuth, push_all, registry_available};

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
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    {
        let reg = match Registry::start(None) {
            Ok(r) => r,
            Err(e) => panic!("starting docker-registry on the host: {e}"),
        };
        if let Err(e) = rt.block_on(push_all(&reg.addr, RegistryAuth::Anonymous, Path::new("/bin/busybox"))) {
            panic!("pushing the busybox images: {e}");
        }
        // The registry is done writing once the pushes returned; copy what it stored before it goes.
        let st = Command::new("cp").arg("-a").arg(reg.storage()).arg(storage.path().join("storage")).status();
        assert!(st.as_ref().is_ok_and(|s| s.success()), "copying the registry storage: {st:?}");
    }
    common::run_scenario(
        "registry-pull.sh",
        &[(&storage.path().join("storage"), "/root/registry-storage")],
        Duration::from_secs(900),
    );
}
