//! The zone plumbing on the host, with a veth pair standing in for a zone's PV vif: one end (the "vif",
//! netback's end in dom0) is joined to CNI's eth0 in the pod's netns by zone_link's tc redirects, the other
//! end lives in a netns standing in for the zone's kernel and is configured from ZoneNetConfig as the zone
//! init would. The real bridge + host-local plugins give the addresses. Checks that the host reaches a TCP
//! server in the "zone" by the pod IP, that two pods reach each other, and that DEL plus the netns delete
//! leave no netns or interface behind. Needs root; under CI=1 a skip is a failure.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulkhead_cni::zone_link::{self, ZoneNetConfig};
use bulkhead_cni::{CniConfig, CniResult, Network, RuntimeConf, netns};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn ip(args: &[&str]) -> TestResult<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A pod: its CNI netns and a "zone" netns linked by a veth standing in for the vif.
struct Pod {
    id: String,
    pod_ns: PathBuf,
    zone_ns: PathBuf,
    result: CniResult,
    zone: ZoneNetConfig,
}

struct Fixture {
    _dir: tempfile::TempDir,
    net: Network,
    bridge: String,
    netns: Vec<PathBuf>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for p in &self.netns {
            let _ = netns::delete(p);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

fn name_of(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

impl Fixture {
    fn new() -> TestResult<Fixture> {
        let dir = tempfile::tempdir()?;
        let bridge = format!("bhz{}", std::process::id() % 100_000);
        let conf_dir = bulkhead_cni::testing::write_bridge_network(dir.path(), &bridge, "10.231.9.0/24")?;
        let net = Network::load(&CniConfig { conf_dir, ..CniConfig::default() })?;
        Ok(Fixture { _dir: dir, net, bridge, netns: Vec::new() })
    }

    /// What RunPodSandbox does for a zone, with the veth pair in the zone's place.
    async fn pod(&mut self, tag: &str) -> TestResult<Pod> {
        let pid = std::process::id();
        let id = format!("bhzone{pid}{tag}");
        let pod_ns = netns::create(&format!("bhz-{pid}-{tag}-pod"))?;
        self.netns.push(pod_ns.clone());
        let zone_ns = netns::create(&format!("bhz-{pid}-{tag}-zone"))?;
        self.netns.push(zone_ns.clone());
        let rt = RuntimeConf { container_id: id.clone(), netns: pod_ns.clone(), ifname: "eth0".into(), args: vec![] };
        let result = self.net.add(&rt).await?;
        let zone = ZoneNetConfig::from_result(&result, "eth0")?;

        // netback's end ("vif") and netfront's ("eth0" in the zone), made on the host as a vif is.
        let (vif, front) = (format!("bhv{}{tag}", pid % 100_000), format!("bhf{}{tag}", pid % 100_000));
        ip(&["link", "add", &vif, "type", "veth", "peer", "name", &front])?;
        ip(&["link", "set", "dev", &front, "netns", name_of(&zone_ns), "name", "eth0"])?;
        zone_link::move_into(&vif, name_of(&pod_ns))?;
        zone_link::redirect(name_of(&pod_ns), "eth0", &vif)?;

        // What the zone init does with ZoneNetConfig.
        let z = name_of(&zone_ns);
        let mac = zone.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ip(&["-n", z, "link", "set", "dev", "eth0", "address", &mac, "up"])?;
        ip(&["-n", z, "link", "set", "dev", "lo", "up"])?;
        for a in &zone.addresses {
            ip(&["-n", z, "addr", "add", &a.to_string(), "dev", "eth0"])?;
        }
        for (dst, gw) in &zone.routes {
            let gw = gw.or(zone.gateway).ok_or("a route without a gateway")?.to_string();
            ip(&["-n", z, "route", "add", &dst.to_string(), "via", &gw, "dev", "eth0"])?;
        }
        Ok(Pod { id, pod_ns, zone_ns, result, zone })
    }
}

fn pod_ip(p: &Pod) -> IpAddr {
    p.zone.addresses[0].addr()
}

/// Runs `f` on a thread inside the netns at `path` (sockets made there stay there).
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> TestResult<T> + Send + 'static) -> TestResult<T> {
    let ns = netns::open(path)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| "the netns thread panicked")?
}

/// A TCP server in `server`'s zone on its pod IP answers a client in `client`'s zone (None: the host), and
/// sees it come from the client's pod IP (or the host through the bridge, the subnet's gateway): no NAT.
fn reaches(client: Option<&Pod>, server: &Pod) -> TestResult {
    let ip = pod_ip(server);
    let listener = in_netns(&server.zone_ns, move || Ok(TcpListener::bind(SocketAddr::new(ip, 0))?))?;
    let addr = listener.local_addr()?;
    let accept = std::thread::spawn(move || -> TestResult<SocketAddr> {
        let (mut s, peer) = listener.accept()?;
        s.write_all(b"hello from the zone")?;
        Ok(peer)
    });
    let talk = move || -> TestResult<Vec<u8>> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)?;
        Ok(got)
    };
    let got = match client {
        Some(c) => in_netns(&c.zone_ns, talk)?,
        None => talk()?,
    };
    assert_eq!(got, b"hello from the zone");
    let peer = accept.join().map_err(|_| "the server thread panicked")??;
    let want = match client {
        Some(c) => Some(pod_ip(c)),
        None => server.zone.gateway,
    };
    assert_eq!(Some(peer.ip()), want);
    Ok(())
}

#[tokio::test]
async fn zones_behind_tc_redirects_are_reachable_and_leave_nothing_behind() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let mut fx = Fixture::new()?;
    let a = fx.pod("a").await?;
    let b = fx.pod("b").await?;
    assert_ne!(pod_ip(&a), pod_ip(&b));

    // The zone's interface carries CNI's eth0 MAC and address; the pod netns's eth0 keeps them too (CHECK).
    let eth0 = a.result.sandbox_interface("eth0").ok_or("no eth0")?;
    assert!(ip(&["-n", name_of(&a.zone_ns), "link", "show", "dev", "eth0"])?.contains(&eth0.mac.to_lowercase()));
    let rt = |p: &Pod| RuntimeConf {
        container_id: p.id.clone(),
        netns: p.pod_ns.clone(),
        ifname: "eth0".into(),
        args: vec![],
    };
    fx.net.check(&rt(&a), &a.result).await?;

    reaches(None, &a)?;
    reaches(None, &b)?;
    reaches(Some(&a), &b)?;
    reaches(Some(&b), &a)?;

    // StopPodSandbox's order: DEL, then the netns; the zone's end goes with the zone (here: its netns).
    for p in [&a, &b] {
        fx.net.del(&rt(p), Some(&p.result)).await?;
        netns::delete(&p.pod_ns)?;
        netns::delete(&p.zone_ns)?;
    }
    // The namespaces are gone as soon as nothing holds them: poll briefly for the kernel's cleanup.
    let pid = std::process::id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let links = ip(&["-o", "link"])?;
        let left: Vec<_> =
            links.lines().filter(|l| l.contains(&format!("bhv{}", pid % 100_000)) || l.contains("bhf")).collect();
        let netns_left = ip(&["netns", "list"])?.lines().filter(|l| l.contains(&format!("bhz-{pid}-"))).count();
        if left.is_empty() && netns_left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}, {netns_left} netns");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
