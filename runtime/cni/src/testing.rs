//! Test support: whether tests that run Debian's real CNI plugins (bridge, host-local, loopback) in network
//! namespaces can run on this machine.

use std::path::Path;

use crate::DEFAULT_BIN_DIRS;

/// The plugins those tests use.
pub const TEST_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

/// True when running as root with [`TEST_PLUGINS`] installed. Otherwise the test is skipped with the reason
/// on stderr, except under CI (the `CI` variable set), where ci/deps installed them and a skip would hide a
/// broken machine: there it panics with the reason.
pub fn real_plugins_or_skip() -> bool {
    let missing: Vec<_> =
        TEST_PLUGINS.iter().filter(|p| !DEFAULT_BIN_DIRS.iter().any(|d| Path::new(d).join(p).is_file())).collect();
    let why = if !nix::unistd::geteuid().is_root() {
        "needs root (network namespaces, bridges, tc)".to_owned()
    } else if !missing.is_empty() {
        format!(
            "CNI plugins {missing:?} are not installed (apt-get install containernetworking-plugins, or ci/deps build)"
        )
    } else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("this test cannot run and CI is set: {why}");
    }
    eprintln!("skipping: {why}");
    false
}
