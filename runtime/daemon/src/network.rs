//! A zone's pod network: the interface a CNI plugin chain made in a dom0 network namespace, which the
//! zone's PV NIC stands in for. The daemon gives the NIC that interface's MAC, joins the two in the netns
//! (bulkhead-cni's zone_link: tc redirects both ways) and tells the zone init its address and routes on the
//! kernel command line, so the interface is configured before any workload runs, and again after nothing:
//! a zone's address never changes while it lives.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Most routes a zone takes (they travel on the kernel command line, which Xen caps at 1 KiB).
pub const MAX_ROUTES: usize = 8;
/// Most bytes the network's kernel arguments may take.
pub const MAX_KERNEL_ARGS_LEN: usize = 400;

/// One route of the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRoute {
    /// Where it leads.
    pub destination: Ipv4Net,
    /// Through what; `None` = the network's gateway.
    pub gateway: Option<Ipv4Addr>,
}

/// A validated pod network for one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneNetwork {
    /// The network namespace's name under `/run/netns`.
    pub netns: String,
    /// The CNI interface in it that the zone stands in for.
    pub interface: String,
    /// That interface's MAC, which the zone's NIC takes.
    pub mac: [u8; 6],
    /// The pod's address.
    pub address: Ipv4Net,
    /// The subnet's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Routes.
    pub routes: Vec<ZoneRoute>,
}

/// A network the daemon cannot give a zone; the message says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network.{field} {value:?}: {reason}")]
pub struct NetworkError {
    /// The field.
    pub field: &'static str,
    /// What was given.
    pub value: String,
    /// The rule it breaks.
    pub reason: String,
}

fn bad(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> NetworkError {
    NetworkError { field, value: value.into(), reason: reason.into() }
}

/// Parses "aa:bb:cc:dd:ee:ff" strictly.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The usual text form of a MAC.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl ZoneNetwork {
    /// Validates what a client sent: names the kernel takes, one unicast MAC, one IPv4 address, at most
    /// [`MAX_ROUTES`] IPv4 routes.
    pub fn new(
        netns: &str,
        interface: &str,
        mac: &str,
        addresses: &[String],
        gateway: &str,
        routes: &[(String, String)],
    ) -> Result<ZoneNetwork, NetworkError> {
        bulkhead_cni::netns::check_name(netns).map_err(|reason| bad("netns", netns, reason))?;
        let ifname_ok = !interface.is_empty()
            && interface.len() <= 15
            && interface.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ifname_ok {
            return Err(bad("interface", interface, "give an interface name: 1-15 of a-z, A-Z, 0-9, '-', '_', '.'"));
        }
        let mac_bytes = parse_mac(mac).ok_or_else(|| bad("mac", mac, "give a MAC as aa:bb:cc:dd:ee:ff"))?;
        if mac_bytes[0] & 1 == 1 || mac_bytes == [0; 6] {
            return Err(bad("mac", mac, "a NIC needs a unicast, non-zero MAC"));
        }
        let address = match addresses {
            [one] => one
                .parse::<Ipv4Net>()
                .map_err(|_| bad("addresses", one, "give an IPv4 address with its prefix length, e.g. 10.88.0.5/16"))?,
            _ => {
                return Err(bad(
                    "addresses",
                    addresses.join(","),
                    "a zone takes exactly one IPv4 address (IPv6 pod networks are not supported yet)",
                ));
            }
        };
        let ipv4 = |field: &'static str, s: &str| -> Result<Option<Ipv4Addr>, NetworkError> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse().map(Some).map_err(|_| bad(field, s, "give an IPv4 address"))
        };
        let gateway = ipv4("gateway", gateway)?;
        if routes.len() > MAX_ROUTES {
            return Err(bad("routes", format!("{} routes", routes.len()), format!("at most {MAX_ROUTES} are taken")));
        }
        let routes = routes
            .iter()
            .map(|(dst, gw)| {
                let destination = dst
                    .parse::<Ipv4Net>()
                    .map_err(|_| bad("routes.destination", dst, "give an IPv4 network, e.g. 0.0.0.0/0"))?;
                Ok(ZoneRoute { destination, gateway: ipv4("routes.gateway", gw)? })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let net =
            ZoneNetwork { netns: netns.into(), interface: interface.into(), mac: mac_bytes, address, gateway, routes };
        let len = net.kernel_args().iter().map(|a| a.len() + 1).sum::<usize>();
        if len > MAX_KERNEL_ARGS_LEN {
            return Err(bad(
                "routes",
                format!("{len} bytes"),
                format!("the network takes at most {MAX_KERNEL_ARGS_LEN}"),
            ));
        }
        Ok(net)
    }

    /// The kernel arguments that tell the zone init its interface (see zone-init's cmdline module):
    /// `bulkhead.ip=ADDR/LEN`, `bulkhead.gw=GW`, `bulkhead.routes=DST/LEN[@GW],...`.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = vec![format!("bulkhead.ip={}", self.address)];
        if let Some(gw) = self.gateway {
            args.push(format!("bulkhead.gw={gw}"));
        }
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|r| match r.gateway {
                    Some(gw) => format!("{}@{gw}", r.destination),
                    None => r.destination.to_string(),
                })
                .collect();
            args.push(format!("bulkhead.routes={}", routes.join(",")));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn routes(r: &[(&str, &str)]) -> Vec<(String, String)> {
        r.iter().map(|(d, g)| (d.to_string(), g.to_string())).collect()
    }

    #[test]
    fn a_cni_result_becomes_kernel_arguments() -> TestResult {
        let n = ZoneNetwork::new(
            "pod-1",
            "eth0",
            "3a:5a:2b:77:1e:DF",
            &["10.88.0.5/16".into()],
            "10.88.0.1",
            &routes(&[("0.0.0.0/0", ""), ("10.96.0.0/12", "10.88.0.254")]),
        )?;
        assert_eq!(n.mac, [0x3a, 0x5a, 0x2b, 0x77, 0x1e, 0xdf]);
        assert_eq!(format_mac(n.mac), "3a:5a:2b:77:1e:df");
        assert_eq!(
            n.kernel_args(),
            ["bulkhead.ip=10.88.0.5/16", "bulkhead.gw=10.88.0.1", "bulkhead.routes=0.0.0.0/0,10.96.0.0/12@10.88.0.254"]
        );
        let bare = ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &["192.168.1.2/24".into()], "", &[])?;
        assert_eq!(bare.kernel_args(), ["bulkhead.ip=192.168.1.2/24"]);
        Ok(())
    }

    #[test]
    fn each_field_is_checked_and_named() {
        let ok_addr = vec!["10.0.0.2/24".to_string()];
        let cases: Vec<(&str, Result<ZoneNetwork, NetworkError>)> = vec![
            ("netns", ZoneNetwork::new("../etc", "eth0", "02:00:00:00:00:01", &ok_addr, "", &[])),
            ("interface", ZoneNetwork::new("p", "eth0/x", "02:00:00:00:00:01", &ok_addr, "", &[])),
            ("interface", ZoneNetwork::new("p", "a-very-long-ifname", "02:00:00:00:00:01", &ok_addr, "", &[])),
            ("mac", ZoneNetwork::new("p", "eth0", "02:00:00:00:01", &ok_addr, "", &[])),
            ("mac", ZoneNetwork::new("p", "eth0", "01:00:5e:00:00:01", &ok_addr, "", &[])),
            ("addresses", ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &[], "", &[])),
            ("addresses", ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &["fd00::2/64".into()], "", &[])),
            ("gateway", ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &ok_addr, "gw", &[])),
            (
                "routes.destination",
                ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &ok_addr, "", &routes(&[("default", "")])),
            ),
            (
                "routes",
                ZoneNetwork::new("p", "eth0", "02:00:00:00:00:01", &ok_addr, "", &routes(&[("0.0.0.0/0", ""); 9])),
            ),
        ];
        for (field, r) in cases {
            match r {
                Err(e) => assert_eq!(e.field, field, "{e}"),
                Ok(n) => panic!("{field}: accepted {n:?}"),
            }
        }
    }
}
