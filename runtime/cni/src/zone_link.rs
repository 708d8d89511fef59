//! Joining a zone to its pod network. CNI plugins set up an interface (`eth0`) in the pod's netns; the zone's
//! NIC is a Xen PV vif whose dom0 end (netback's `vifD.N`) is a plain interface in dom0. The vif is moved into
//! the pod's netns and every frame arriving on either interface is redirected out of the other by a tc
//! ingress filter (Kata Containers' "tcfilter" model): the zone sees the pod network as if it were `eth0`,
//! with `eth0`'s MAC and addresses, and CNI's plugins (bridge, ptp, macvlan, Cilium's veths...) work as
//! they are. `eth0` keeps its addresses in the netns, so CNI's CHECK still finds what ADD made; nothing in the
//! netns uses them, since every frame that reaches `eth0` goes to the zone.
//!
//! The plumbing runs iproute2 (`ip`, `tc`), which dom0 has; each command's failure names the command and
//! what it said.

use std::process::Command;

use ipnet::IpNet;

use crate::{CniResult, Error};

/// How much of a failing command's stderr is kept.
const MAX_STDERR: usize = 2048;

/// What the zone needs to configure its own interface the way CNI configured `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneNetConfig {
    /// `eth0`'s MAC, so the bridge's (or peer's) ARP and forwarding entries match the zone.
    pub mac: [u8; 6],
    /// The addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
    /// Routes as (destination, gateway); a `None` gateway is the address's subnet gateway.
    pub routes: Vec<(IpNet, Option<std::net::IpAddr>)>,
    /// The gateway of the first address, if any.
    pub gateway: Option<std::net::IpAddr>,
}

impl ZoneNetConfig {
    /// The config of the sandbox interface `ifname` in an ADD result: its MAC, its addresses, the routes.
    pub fn from_result(result: &CniResult, ifname: &str) -> Result<ZoneNetConfig, Error> {
        let bad = |reason: String| Error::BadResult { plugin: "(the chain)".into(), reason };
        let (index, itf) = result
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && !i.sandbox.is_empty())
            .ok_or_else(|| bad(format!("no interface {ifname:?} in the sandbox")))?;
        let mac = parse_mac(&itf.mac).ok_or_else(|| bad(format!("{ifname}'s MAC {:?} is not a MAC", itf.mac)))?;
        // Addresses on this interface; results that name no interface (some IPAM-only chains) mean it.
        let ips: Vec<_> = result.ips.iter().filter(|ip| ip.interface.is_none_or(|i| i == index)).collect();
        if ips.is_empty() {
            return Err(bad(format!("no address for {ifname}")));
        }
        Ok(ZoneNetConfig {
            mac,
            addresses: ips.iter().map(|ip| ip.address).collect(),
            routes: result.routes.iter().map(|r| (r.dst, r.gw)).collect(),
            gateway: ips.iter().find_map(|ip| ip.gateway),
        })
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Runs one iproute2 command; its failure names the command and carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<Vec<u8>, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Link { command: command.clone(), stderr: format!("could not run it: {e}") })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(MAX_STDERR)]).trim().to_owned();
        return Err(Error::Link { command, stderr: format!("{} ({})", text, out.status) });
    }
    Ok(out.stdout)
}

/// Moves the dom0 interface `vif` (netback's end of a zone's NIC) into the named netns `netns`.
pub fn move_into(vif: &str, netns: &str) -> Result<(), Error> {
    crate::netns::check_name(netns).map_err(|reason| Error::InvalidArgument {
        what: "network namespace name",
        value: netns.into(),
        reason,
    })?;
    run("ip", &["link", "set", "dev", vif, "netns", netns])?;
    Ok(())
}

/// The MTU of `ifname` in `netns`.
pub fn mtu(netns: &str, ifname: &str) -> Result<u32, Error> {
    let out = run("ip", &["-n", netns, "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| Error::Link {
        command: format!("ip -n {netns} -j link show dev {ifname}"),
        stderr: e.to_string(),
    })?;
    v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).ok_or_else(|| Error::Link {
        command: format!("ip -n {netns} -j link show dev {ifname}"),
        stderr: "no mtu in its output".into(),
    })
}

/// Joins `vif` (already in `netns`) to CNI's `cni_if` there: same MTU, both up, and an ingress filter on
/// each that redirects every frame out of the other. Idempotent only as a whole: run it once per vif.
pub fn redirect(netns: &str, cni_if: &str, vif: &str) -> Result<(), Error> {
    let mtu = mtu(netns, cni_if)?.to_string();
    run("ip", &["-n", netns, "link", "set", "dev", vif, "mtu", &mtu, "up"])?;
    run("ip", &["-n", netns, "link", "set", "dev", cni_if, "up"])?;
    for (from, to) in [(cni_if, vif), (vif, cni_if)] {
        run("tc", &["-n", netns, "qdisc", "add", "dev", from, "ingress"])?;
        // u32 matching everything (the classifier every kernel has), then mirred: out of the other interface.
        run(
            "tc",
            &[
                "-n", netns, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
                "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    tracing::debug!(netns, cni_if, vif, "zone interface joined to the pod network");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn the_zone_gets_eth0_s_mac_addresses_and_routes() -> TestResult {
        let r = CniResult::parse(
            br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"6a:1b:8e:2b:2c:4c"},
            {"name":"eth0","mac":"3a:5a:2b:77:1e:DF","sandbox":"/run/netns/p"}],
            "ips":[{"interface":0,"address":"10.88.0.1/16"},{"interface":1,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],
            "routes":[{"dst":"0.0.0.0/0"}]}"#,
        )?;
        let z = ZoneNetConfig::from_result(&r, "eth0")?;
        assert_eq!(z.mac, [0x3a, 0x5a, 0x2b, 0x77, 0x1e, 0xdf]);
        assert_eq!(z.addresses, ["10.88.0.5/16".parse::<IpNet>()?]);
        assert_eq!(z.gateway, Some("10.88.0.1".parse()?));
        assert_eq!(z.routes, [("0.0.0.0/0".parse()?, None)]);
        Ok(())
    }

    #[test]
    fn results_the_zone_cannot_use_are_refused() -> TestResult {
        for bad in [
            // No sandbox interface of that name.
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"3a:5a:2b:77:1e:df"}],"ips":[{"address":"10.1.0.2/24"}]}"#,
            // A MAC that is not one.
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"3a:5a:2b:77:1e","sandbox":"/x"}],"ips":[{"address":"10.1.0.2/24"}]}"#,
            // No address.
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"3a:5a:2b:77:1e:df","sandbox":"/x"}]}"#,
        ] {
            assert!(ZoneNetConfig::from_result(&CniResult::parse(bad.as_bytes())?, "eth0").is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("00:11:22:aa:BB:ff"), Some([0, 0x11, 0x22, 0xaa, 0xbb, 0xff]));
        for bad in ["", "00:11:22:aa:bb", "00:11:22:aa:bb:ff:00", "0:11:22:aa:bb:ff", "zz:11:22:aa:bb:ff"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_failing_command_is_named_with_what_it_said() {
        let e = move_into("bhcni-no-such-if", "bhcni-no-such-ns").err();
        let s = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(s.starts_with("ip link set dev bhcni-no-such-if netns bhcni-no-such-ns failed: "), "{s}");
        assert!(move_into("x", "../etc").is_err());
    }
}
