//! bulkheadd and the CLI in the test bed's dom0, against a real Xen: see scenarios/daemon-zones.sh.

use std::time::Duration;

mod common;

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn daemon_runs_zones_survives_kill_9_stops_and_reports_crashes() {
    common::run_scenario("daemon-zones.sh", &[], Duration::from_secs(600));
}
