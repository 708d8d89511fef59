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

/// A test's pod network of the real plugins: a bridge named `bridge` (the host its gateway) giving addresses
/// of `subnet` from host-local (leases under `dir/ipam`), with a default route, then loopback. Writes
/// `dir/net.d/10-pods.conflist` and returns `dir/net.d`, the conf dir.
pub fn write_bridge_network(dir: &Path, bridge: &str, subnet: &str) -> std::io::Result<std::path::PathBuf> {
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": dir.join("ipam"),
                },
            },
            { "type": "loopback" },
        ],
    });
    std::fs::write(conf_dir.join("10-pods.conflist"), config.to_string())?;
    Ok(conf_dir)
}

/// A test's bridge, deleted however the test ends (the bridge plugin makes it and never deletes it).
#[derive(Debug)]
pub struct Bridge(pub String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
    }
}
