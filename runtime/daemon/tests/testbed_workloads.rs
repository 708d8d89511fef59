//! Workloads in real zones (see `tests/scenarios/workloads.sh`).

use std::path::Path;
use std::time::Duration;

use bulkhead_testbed::Scenario;
use bulkhead_testbed::outcome::Outcome;
use bulkheadd::images::layout::Compression;
use bulkheadd::images::testing::{tar_directory, write_busybox_layout};

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
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let r = match Scenario::new(scenarios.join("workloads.sh"))
        .add(scenarios.join("lib.sh"), "/root/scenario-lib.sh")
        .add(&tar, "/root/busybox-oci.tar")
        .timeout(Duration::from_secs(900))
        .run()
    {
        Ok(r) => r,
        Err(e) => panic!("the test bed could not run the scenario: {e}"),
    };
    let out = r.stdout_lossy();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "stdout:\n{out}\nstderr:\n{}", r.stderr_lossy());
    assert!(out.lines().any(|l| l == "scenario ok"), "{out}");
    for line in out.lines().filter(|l| l.starts_with("figure: ")) {
        println!("{line}");
    }
}
