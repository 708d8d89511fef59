//! A plugin's result (CNI spec "Success"), the 0.3.0 - 1.x shape.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

/// The result of ADD: the interfaces the chain made, their addresses, routes and DNS. Keeps the JSON as the
/// plugin wrote it too, since DEL and CHECK hand it back to the plugins as `prevResult` unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The result's `cniVersion`.
    pub cni_version: String,
    /// `interfaces`.
    pub interfaces: Vec<Interface>,
    /// `ips`.
    pub ips: Vec<IpConfig>,
    /// `routes`.
    pub routes: Vec<Route>,
    /// `dns`.
    pub dns: Dns,
    raw: Value,
}

/// An interface a plugin made or configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    /// Its name (e.g. `eth0`, or the host end of a veth).
    pub name: String,
    /// Its MAC address, as the plugin wrote it.
    #[serde(default)]
    pub mac: String,
    /// The netns path it lives in; empty for the host's.
    #[serde(default)]
    pub sandbox: String,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length (`10.1.0.2/24`).
    pub address: IpNet,
    /// The gateway of its subnet, if any.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface it is on.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route to add in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; none means the interface's default gateway.
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// DNS settings a plugin suggests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Dns {
    /// `nameservers`.
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// `domain`.
    #[serde(default)]
    pub domain: String,
    /// `search`.
    #[serde(default)]
    pub search: Vec<String>,
    /// `options`.
    #[serde(default)]
    pub options: Vec<String>,
}

/// Unknown fields are kept in `raw` only: plugins may add their own.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Parses a result as a plugin printed it (or as [`CniResult::to_json`] stored it).
    pub fn parse(bytes: &[u8]) -> Result<CniResult, String> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        CniResult::from_value(raw)
    }

    /// Parses a result from its JSON value.
    pub fn from_value(raw: Value) -> Result<CniResult, String> {
        let wire = Wire::deserialize(&raw).map_err(|e| e.to_string())?;
        if !crate::SUPPORTED_VERSIONS.contains(&wire.cni_version.as_str()) {
            return Err(format!("result cniVersion {:?} is not supported", wire.cni_version));
        }
        if let Some(i) = wire.ips.iter().filter_map(|ip| ip.interface).find(|&i| i >= wire.interfaces.len()) {
            return Err(format!("an address names interface {i}, but the result has {}", wire.interfaces.len()));
        }
        Ok(CniResult {
            cni_version: wire.cni_version,
            interfaces: wire.interfaces,
            ips: wire.ips,
            routes: wire.routes,
            dns: wire.dns,
            raw,
        })
    }

    /// The result as the plugin wrote it, which `prevResult` carries.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The result as JSON, for keeping it until DEL (parse it back with [`CniResult::parse`]).
    pub fn to_json(&self) -> String {
        self.raw.to_string()
    }

    /// The first address on the interface named `ifname` inside a sandbox (the pod's IP), else the first
    /// address at all.
    pub fn pod_ip(&self, ifname: &str) -> Option<&IpConfig> {
        let in_sandbox = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| self.interfaces.get(i))
                .is_some_and(|itf| itf.name == ifname && !itf.sandbox.is_empty())
        };
        self.ips.iter().find(in_sandbox).or_else(|| self.ips.first())
    }

    /// The interface named `ifname` in a sandbox.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == ifname && !i.sandbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    // What Debian's bridge plugin (1.1.1) prints for a 1.0.0 conflist, plus a field of its own.
    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","interfaces":[
        {"name":"cni0","mac":"6a:1b:8e:2b:2c:4c"},
        {"name":"veth1234","mac":"ae:57:36:e1:ea:c0"},
        {"name":"eth0","mac":"3a:5a:2b:77:1e:df","sandbox":"/run/netns/pod"}],
        "ips":[{"interface":2,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],
        "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"10.88.0.254"}],
        "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},"x-extra":1}"#;

    #[test]
    fn parses_a_bridge_result_and_keeps_it_verbatim() -> TestResult {
        let r = CniResult::parse(BRIDGE.as_bytes())?;
        assert_eq!(r.interfaces.len(), 3);
        let ip = r.pod_ip("eth0").ok_or("no pod ip")?;
        assert_eq!(ip.address.to_string(), "10.88.0.5/16");
        assert_eq!(ip.address.addr().to_string(), "10.88.0.5");
        assert_eq!(ip.gateway.ok_or("no gateway")?.to_string(), "10.88.0.1");
        assert_eq!(r.sandbox_interface("eth0").ok_or("no eth0")?.mac, "3a:5a:2b:77:1e:df");
        assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.routes[1].gw.ok_or("no gw")?.to_string(), "10.88.0.254");
        assert_eq!(r.dns.nameservers[0].to_string(), "10.96.0.10");
        assert_eq!(r.raw()["x-extra"], 1);
        assert_eq!(CniResult::parse(r.to_json().as_bytes())?, r);
        Ok(())
    }

    #[test]
    fn parses_a_0_4_0_result_with_ip_versions() -> TestResult {
        let r = CniResult::parse(
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1"}]}"#,
        )?;
        assert_eq!(r.pod_ip("eth0").ok_or("no pod ip")?.address.to_string(), "10.1.0.2/24");
        assert_eq!(r.dns, Dns::default());
        Ok(())
    }

    #[test]
    fn refuses_what_it_cannot_use() -> TestResult {
        for bad in [
            &b"nope"[..],
            br#"{"ips":[]}"#,
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/24"}}"#,
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.300/24"}]}"#,
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.3/24","interface":0}]}"#,
        ] {
            assert!(CniResult::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        Ok(())
    }
}
