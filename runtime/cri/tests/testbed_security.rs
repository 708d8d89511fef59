//! Container security settings with real zones: `tests/scenarios/security.sh` runs `bulkhead-cri
//! security-check` (containers with capabilities, no_new_privs, seccomp, masked and read-only paths and
//! privileged mode, each checked from inside and through an exec) in the test bed's dom0.

use std::path::Path;
use std::time::Duration;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::testing::{tar_directory, write_busybox_layout};
use bulkhead_testbed::Scenario;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn security_settings_hold_inside_a_real_zone() {
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
    Scenario::new(here.join("tests/scenarios/security.sh"))
        .add(here.join("../daemon/tests/scenarios/lib.sh"), "/root/scenario-lib.sh")
        .add(&tar, "/root/busybox-oci.tar")
        .timeout(Duration::from_secs(600))
        .run_ok();
}
