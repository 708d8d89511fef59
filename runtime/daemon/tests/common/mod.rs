//! Shared by the daemon's test-bed tests: running one of `tests/scenarios/*.sh` with the scenario library.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_testbed::Scenario;
use bulkhead_testbed::outcome::Outcome;

/// `tests/scenarios/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios").join(name)
}

/// Runs scenario `name` in the bed with `lib.sh` as /root/scenario-lib.sh and the `extra` files added, and
/// asserts it exited 0 and printed "scenario ok". Its "figure: " and "failure reason: " lines are printed
/// (shown with --nocapture, kept in the test output for the record). Returns its stdout.
pub fn run_scenario(name: &str, extra: &[(&Path, &str)], timeout: Duration) -> String {
    let mut s = Scenario::new(scenario(name)).add(scenario("lib.sh"), "/root/scenario-lib.sh").timeout(timeout);
    for (src, dest) in extra {
        s = s.add(*src, *dest);
    }
    let r = match s.run() {
        Ok(r) => r,
        Err(e) => panic!("the test bed could not run the scenario: {e}"),
    };
    let out = r.stdout_lossy();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "stdout:\n{out}\nstderr:\n{}", r.stderr_lossy());
    assert!(out.lines().any(|l| l == "scenario ok"), "{out}");
    for line in out.lines().filter(|l| l.starts_with("figure: ") || l.starts_with("failure reason: ")) {
        println!("{line}");
    }
    out
}
