//! bulkhead-zone as PID 1 of a real zone: the test bed's dom0 boots PV guests with the zone kernel and the
//! initramfs from `ci/zone-initrd` (scenario `tests/scenarios/zone-boot.sh`) and this test reads their
//! consoles. Boots QEMU -> Xen -> dom0 under TCG (a minute or two); run by `ci/test testbed` as root.

use std::time::Duration;

use bulkhead_testbed::outcome::Outcome;
use bulkhead_testbed::{Scenario, repo_root};

/// One `xl create` in the scenario: its header fields and its console lines (stamped in ms since create).
#[derive(Debug, Default)]
struct Case {
    rc: i32,
    gone: bool,
    ms: u64,
    lines: Vec<(u64, String)>,
}

impl Case {
    fn line(&self, prefix: &str) -> Option<&(u64, String)> {
        self.lines.iter().find(|(_, l)| l.starts_with(prefix))
    }
    fn console(&self) -> String {
        self.lines.iter().map(|(ms, l)| format!("{ms:>6} {l}\n")).collect()
    }
}

fn field<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses the scenario's stdout (format described at the top of zone-boot.sh).
fn parse_case(out: &str, name: &str) -> Option<Case> {
    let header = out.lines().find(|l| l.split_whitespace().nth(2) == Some(name) && l.starts_with("=== case "))?;
    let words: Vec<&str> = header.split_whitespace().collect();
    let mut case = Case {
        rc: field(&words, "rc")?.parse().ok()?,
        gone: field(&words, "gone")? == "yes",
        ms: field(&words, "ms")?.parse().ok()?,
        lines: Vec::new(),
    };
    let prefix = format!("{name}| ");
    for l in out.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else { continue };
        let (ms, text) = rest.split_once(' ').unwrap_or((rest, ""));
        case.lines.push((ms.parse().ok()?, text.to_owned()));
    }
    Some(case)
}

fn case(out: &str, name: &str) -> Case {
    match parse_case(out, name) {
        Some(c) => c,
        None => panic!("no case {name} in the scenario output:\n{out}"),
    }
}

#[allow(clippy::disallowed_macros)] // test output for --nocapture, not zone code
fn report(text: &str) {
    eprintln!("{text}");
}

#[test]
#[ignore = "boots the Xen test bed (needs root; run by ci/test testbed)"]
fn zone_boots_bulkhead_zone_as_pid1_reaps_its_child_and_powers_off() {
    let script = repo_root().join("zone-init/tests/scenarios/zone-boot.sh");
    let r = match Scenario::new(script).timeout(Duration::from_secs(600)).run() {
        Ok(r) => r,
        Err(e) => panic!("the test bed could not run the scenario: {e}"),
    };
    let out = r.stdout_lossy();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "stdout:\n{out}\nstderr:\n{}", r.stderr_lossy());

    // A good command line: ready line, self-test child reaped through SIGCHLD, power-off, domain gone.
    let ok = case(&out, "ok");
    let console = ok.console();
    report(&format!("zone console (memory 64 MiB, ms since xl create):\n{console}"));
    let Some((ready_ms, ready)) = ok.line("bulkhead-zone: ready ") else {
        panic!("no ready line on the zone console:\n{console}")
    };
    let words: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(field(&words, "zone"), Some("t1"), "{ready}");
    assert_eq!(field(&words, "hostname"), Some("zone-t1"), "{ready}");
    let controllers: Vec<&str> = field(&words, "cgroup-controllers").unwrap_or_default().split(',').collect();
    for c in ["cpu", "memory", "pids"] {
        assert!(controllers.contains(&c), "{c} not delegated: {ready}");
    }
    assert_eq!(field(&words, "psi"), Some("yes"), "{ready}");
    let boot_ms: Option<u64> = field(&words, "boot_ms").and_then(|v| v.parse().ok());
    assert!(boot_ms.is_some(), "{ready}");
    assert_eq!(ready.matches("bulkhead-zone: ready").count(), 1);
    assert_eq!(ok.lines.iter().filter(|(_, l)| l.starts_with("bulkhead-zone: ready")).count(), 1, "{console}");
    assert!(ok.line("bulkhead-zone: selftest child exited 7").is_some(), "{console}");
    assert!(ok.line("bulkhead-zone: FATAL").is_none(), "{console}");
    assert_ne!(ok.rc, 124, "the zone did not power off within the limit:\n{console}");
    assert!(ok.gone, "the zone is still listed after powering off:\n{console}");
    report(&format!(
        "zone boot: xl create -> ready line {ready_ms} ms (kernel uptime at ready {} ms), create -> domain gone {} ms",
        boot_ms.unwrap_or_default(),
        ok.ms
    ));

    // An invalid host name: a FATAL line naming the stage, then power-off by itself (no hang).
    let bad = case(&out, "bad-hostname");
    let console = bad.console();
    report(&format!("zone console (invalid hostname):\n{console}"));
    let Some((_, fatal)) = bad.line("bulkhead-zone: FATAL ") else { panic!("no FATAL line:\n{console}") };
    assert!(fatal.starts_with("bulkhead-zone: FATAL cmdline: "), "{fatal}");
    assert!(fatal.contains("-bad-"), "{fatal}");
    assert!(bad.line("bulkhead-zone: ready").is_none(), "{console}");
    assert_ne!(bad.rc, 124, "the zone hung after FATAL instead of powering off:\n{console}");
    assert!(bad.gone, "the zone is still listed after FATAL:\n{console}");

    // No self-test: init waits; `xl shutdown` reaches it through the kernel's poweroff_cmd (SIGPWR).
    let shut = case(&out, "shutdown");
    let console = shut.console();
    report(&format!("zone console (xl shutdown):\n{console}"));
    assert!(shut.line("bulkhead-zone: ready zone=t1 hostname=zone-t2 ").is_some(), "{console}");
    assert!(
        shut.line("bulkhead-zone: warning: unknown kernel parameter bulkhead.later ignored").is_some(),
        "{console}"
    );
    assert!(shut.lines.iter().any(|(_, l)| l.contains("xl shutdown") && l.ends_with("sent")), "{console}");
    assert!(shut.line("bulkhead-zone: SIGPWR received: powering off").is_some(), "{console}");
    assert_ne!(shut.rc, 124, "the zone did not power off after xl shutdown:\n{console}");
    assert!(shut.gone, "the zone is still listed after xl shutdown:\n{console}");

    // 32 MiB zones work (the kernel loads at 2 MiB, leaving room for the initramfs; see kernel-configs/).
    let small = case(&out, "ok-32mib");
    report(&format!("zone with 32 MiB: xl create rc={}\n{}", small.rc, small.console()));
    assert!(small.line("bulkhead-zone: selftest child exited 7").is_some(), "32 MiB zone:\n{}", small.console());
    assert!(small.gone && small.rc != 124, "32 MiB zone did not power off:\n{}", small.console());

    assert!(out.contains("=== xl list"), "{out}");
    let leftover: Vec<&str> = out.lines().filter(|l| l.starts_with("bulkhead-zone-")).collect();
    assert!(leftover.is_empty(), "zones left running: {leftover:?}");
}
