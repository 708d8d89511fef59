//! The binary outside a zone: it must not act as init (mounting over the host's /dev, powering it off).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-zone");

#[test]
fn refuses_to_run_as_init_unless_pid_1() -> std::io::Result<()> {
    let out = Command::new(BIN).output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("bulkhead-zone: refusing to run as pid "), "{err}");
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn the_selftest_child_exits_7() -> std::io::Result<()> {
    let out = Command::new(BIN).arg("--selftest-child").output()?;
    assert_eq!(out.status.code(), Some(7));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    Ok(())
}
