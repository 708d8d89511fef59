//! Shared by the daemon's test-bed tests: running one of `tests/scenarios/*.sh` with the scenario library.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_testbed::Scenario;

/// `tests/scenarios/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios").join(name)
}

/// Runs scenario `name` in the bed with `lib.sh` as /root/scenario-lib.sh and the `extra` files added, and
/// asserts it exited 0 and printed "scenario ok" (see [`Scenario::run_ok`]). Returns its stdout.
pub fn run_scenario(name: &str, extra: &[(&Path, &str)], timeout: Duration) -> String {
    let mut s = Scenario::new(scenario(name)).add(scenario("lib.sh"), "/root/scenario-lib.sh").timeout(timeout);
    for (src, dest) in extra {
        s = s.add(*src, *dest);
    }
    s.run_ok()
}
