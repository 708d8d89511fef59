//! The test bed's own contract, booted for real: exit codes pass through, output streams are separate and
//! clean, `--add` delivers files, timeouts and boot failures have their documented codes, a PV guest boots,
//! and no QEMU is left behind. Each test boots QEMU -> Xen -> dom0 under TCG (about a minute); run them with
//! `ci/test testbed` (as root).

use std::time::Duration;

use bulkhead_testbed::outcome::Outcome;
use bulkhead_testbed::{RunResult, Scenario, processes_tagged, repo_root};

fn run(s: Scenario) -> RunResult {
    match s.run() {
        Ok(r) => r,
        Err(e) => panic!("the test bed could not run the scenario: {e}"),
    }
}

fn text_scenario(text: &str) -> Scenario {
    match Scenario::from_script_text(text) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Nothing of this run — ci/testbed, the runner or QEMU — is still alive (other runs on the machine may be).
fn assert_nothing_left(r: &RunResult) {
    let left = processes_tagged(&r.tag);
    assert!(left.is_empty(), "processes of this run left behind: {left:?}");
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn pv_guests_with_debian_and_zone_kernels_boot_and_print_their_marker() {
    let r = run(Scenario::new(repo_root().join("ci/scenarios/xen-pv-guest.sh")).timeout(Duration::from_secs(300)));
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "stdout:\n{}\nstderr:\n{}", r.stdout_lossy(), r.stderr_lossy());
    let out = r.stdout_lossy();
    assert!(out.contains("xen_version"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("pv guest ok: debian kernel")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("pv guest ok: zone kernel")), "{out}");
    assert_nothing_left(&r);
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn exit_code_streams_and_adds_pass_through() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let file = dir.path().join("payload.txt");
    let folder = dir.path().join("tree");
    let written = std::fs::write(&file, "payload-7c1\n")
        .and_then(|_| std::fs::create_dir_all(folder.join("sub")))
        .and_then(|_| std::fs::write(folder.join("sub/leaf"), "leaf-19a\n"));
    if let Err(e) = written {
        panic!("{e}");
    }
    let s = text_scenario(
        "#!/bin/sh\ncat /opt/payload.txt\ncat /srv/tree/sub/leaf\necho to-stderr >&2\n[ \"$(id -u)\" = 0 ] || exit 9\nexit 3\n",
    )
    .add(&file, "/opt/payload.txt")
    .add(&folder, "/srv/tree");
    let r = run(s);
    assert_eq!(r.outcome, Outcome::Exited { code: 3 }, "stderr:\n{}", r.stderr_lossy());
    // Byte-exact: nothing of the console or the kernel leaks into the scenario's stdout.
    assert_eq!(r.stdout_lossy(), "payload-7c1\nleaf-19a\n");
    assert!(r.stderr_lossy().contains("to-stderr\n"), "{}", r.stderr_lossy());
    assert!(!r.stdout_lossy().contains("to-stderr"));
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn a_scenario_past_its_timeout_is_killed_with_code_124() {
    // The child sleeps too: the whole process tree must go, or the run would hang on it.
    let s = text_scenario("#!/bin/sh\necho started\nsleep 1000 &\nsleep 1000\n").timeout(Duration::from_secs(15));
    let r = run(s);
    assert_eq!(r.outcome, Outcome::TimedOut { after_secs: 15 }, "stderr:\n{}", r.stderr_lossy());
    assert_eq!(r.outcome.exit_code(), 124);
    assert_eq!(r.stdout_lossy(), "started\n");
    assert_nothing_left(&r);
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn a_bed_that_does_not_come_up_in_time_fails_with_code_125() {
    let s = text_scenario("#!/bin/sh\nexit 0\n").boot_timeout(Duration::from_secs(3));
    let r = run(s);
    match &r.outcome {
        Outcome::BedFailure { reason } => assert!(reason.contains("boot timeout"), "{reason}"),
        o => panic!("expected a bed failure, got {o:?}"),
    }
    assert_eq!(r.outcome.exit_code(), 125);
    assert!(r.stderr_lossy().contains("TEST BED FAILURE"), "{}", r.stderr_lossy());
    assert_nothing_left(&r);
}
