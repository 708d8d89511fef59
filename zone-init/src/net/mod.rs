//! The zone's side of the pod network. The host joins the zone's PV NIC (netfront here, `eth0`) to the
//! interface CNI made in the pod's network namespace, so the zone must look like that interface: the same
//! MAC (the bridge's forwarding and its peers' ARP entries name it), the same address and routes. This
//! module applies such a config with the kernel's interface and route ioctls (no netlink library in a
//! static PID 1). (The pod's resolv.conf is bulkhead-cri's: a snapshot volume like /etc/hosts.)

mod sys;

use std::net::{IpAddr, Ipv4Addr};

use nix::errno::Errno;

/// What the zone's interface gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// The interface (netfront's first NIC is `eth0`).
    pub name: String,
    /// The MAC to take, if not the NIC's own.
    pub mac: Option<[u8; 6]>,
    /// Its address and prefix length.
    pub address: (IpAddr, u8),
    /// The subnet's gateway, for routes that name none.
    pub gateway: Option<IpAddr>,
    /// Routes as (destination, prefix length, gateway).
    pub routes: Vec<(IpAddr, u8, Option<IpAddr>)>,
}

/// Why the interface could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The config asks for what this zone init does not do yet.
    #[error("{0} is not supported by the zone init yet")]
    Unsupported(&'static str),
    /// The config is inconsistent.
    #[error("invalid network config: {0}")]
    Invalid(String),
    /// A kernel call failed.
    #[error("{what} on {ifname}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The interface.
        ifname: String,
        /// The kernel's error.
        source: Errno,
    },
}

fn v4(ip: IpAddr, what: &'static str) -> Result<Ipv4Addr, NetError> {
    match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(NetError::Unsupported(what)),
    }
}

/// Configures the interface: MAC (while it is down), address, up, then the routes (after the address, so
/// the gateway is on a connected subnet).
pub fn configure(cfg: &InterfaceConfig) -> Result<(), NetError> {
    let kernel = |what: String| {
        let ifname = cfg.name.clone();
        move |source| NetError::Kernel { what, ifname, source }
    };
    let (addr, prefix) = (v4(cfg.address.0, "an IPv6 pod address")?, cfg.address.1);
    if prefix > 32 {
        return Err(NetError::Invalid(format!("prefix length {prefix} of {addr}")));
    }
    let gateway = cfg.gateway.map(|g| v4(g, "an IPv6 gateway")).transpose()?;
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for &(dst, len, gw) in &cfg.routes {
        let dst = v4(dst, "an IPv6 route")?;
        if len > 32 {
            return Err(NetError::Invalid(format!("route {dst}/{len}")));
        }
        let gw = gw.map(|g| v4(g, "an IPv6 route gateway")).transpose()?.or(gateway);
        routes.push((dst, len, gw));
    }
    if let Some(mac) = cfg.mac {
        sys::set_mac(&cfg.name, mac).map_err(kernel("setting the MAC".into()))?;
    }
    sys::set_ipv4(&cfg.name, addr, prefix).map_err(kernel(format!("setting the address {addr}/{prefix}")))?;
    crate::workload::sys::set_interface_up(&cfg.name).map_err(kernel("setting it up".into()))?;
    for (dst, len, gw) in routes {
        let what = match gw {
            Some(g) => format!("adding the route {dst}/{len} via {g}"),
            None => format!("adding the route {dst}/{len}"),
        };
        sys::add_route_v4(&cfg.name, dst, len, gw).map_err(kernel(what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    #[test]
    fn ipv6_and_bad_prefixes_are_refused_before_any_change() {
        let base = InterfaceConfig {
            name: "bhcni-none".into(),
            mac: None,
            address: ("10.1.2.3".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), 24),
            gateway: None,
            routes: vec![],
        };
        let v6 = InterfaceConfig { address: (IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 64), ..base.clone() };
        assert!(matches!(configure(&v6), Err(NetError::Unsupported(_))));
        let wide = InterfaceConfig { address: (base.address.0, 33), ..base.clone() };
        assert!(matches!(configure(&wide), Err(NetError::Invalid(_))));
        let route = InterfaceConfig { routes: vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 40, None)], ..base };
        assert!(matches!(configure(&route), Err(NetError::Invalid(_))));
    }

    /// Root only (network namespaces); under CI=1 not being root fails the test.
    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("this test needs root (a network namespace) and CI is set");
        }
        // A test's note for the harness's output, not the zone's console.
        #[allow(clippy::disallowed_macros)]
        {
            eprintln!("skipping: needs root (a network namespace)");
        }
        false
    }

    fn ip(args: &[&str]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let out = Command::new("ip").args(args).output()?;
        if !out.status.success() {
            return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    #[test]
    fn configures_mac_address_and_default_route_in_a_fresh_netns() -> TestResult {
        if !root() {
            return Ok(());
        }
        // A thread of its own in a new network namespace, with a veth standing in for netfront's eth0
        // (commands it runs inherit its namespace); the namespace ends with the thread.
        std::thread::spawn(|| -> TestResult {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            ip(&["link", "add", "bhz0", "type", "veth", "peer", "name", "bhz1"])?;
            ip(&["link", "set", "bhz1", "up"])?;
            let cfg = InterfaceConfig {
                name: "bhz0".into(),
                mac: Some([0x3a, 0x5a, 0x2b, 0x77, 0x1e, 0xdf]),
                address: ("10.231.11.5".parse()?, 24),
                gateway: Some("10.231.11.1".parse()?),
                routes: vec![("0.0.0.0".parse()?, 0, None), ("10.99.0.0".parse()?, 16, Some("10.231.11.254".parse()?))],
            };
            configure(&cfg)?;
            let link = ip(&["-o", "link", "show", "dev", "bhz0"])?;
            assert!(link.contains("link/ether 3a:5a:2b:77:1e:df") && link.contains(",UP"), "{link}");
            let addr = ip(&["-o", "-4", "addr", "show", "dev", "bhz0"])?;
            assert!(addr.contains("inet 10.231.11.5/24 brd 10.231.11.255"), "{addr}");
            let routes = ip(&["-4", "route"])?;
            assert!(routes.contains("default via 10.231.11.1 dev bhz0"), "{routes}");
            assert!(routes.contains("10.99.0.0/16 via 10.231.11.254 dev bhz0"), "{routes}");
            assert!(routes.contains("10.231.11.0/24 dev bhz0"), "{routes}");
            Ok(())
        })
        .join()
        .map_err(|_| "the netns thread panicked")??;
        Ok(())
    }
}
