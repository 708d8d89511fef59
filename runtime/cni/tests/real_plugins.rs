//! ADD, CHECK and DEL with the real plugins from Debian's containernetworking-plugins (bridge, host-local,
//! loopback) in real network namespaces. Needs root; skips with a note otherwise, except under CI=1, where a
//! skip is a failure (ci/test runs as root with the plugins installed by ci/deps).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulkhead_cni::{CniConfig, Error, Network, RuntimeConf, netns};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A bridge network on its own bridge and subnet, with host-local keeping its leases in a temp dir; the
/// namespaces it made and the bridge are removed on drop, also when the test fails.
struct Fixture {
    _dir: tempfile::TempDir,
    cfg: CniConfig,
    bridge: String,
    netns: Vec<PathBuf>,
}

impl Fixture {
    fn new(tag: &str, plugins_json: &str) -> TestResult<Fixture> {
        let dir = tempfile::tempdir()?;
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir)?;
        // Interface names are at most 15 bytes.
        let bridge = format!("bhc{tag}{}", std::process::id() % 100_000);
        let text = plugins_json
            .replace("@BRIDGE@", &bridge)
            .replace("@IPAM_DIR@", &dir.path().join("ipam").display().to_string());
        std::fs::write(conf_dir.join("10-test.conflist"), text)?;
        let cfg = CniConfig { conf_dir, ..CniConfig::default() };
        Ok(Fixture { _dir: dir, cfg, bridge, netns: Vec::new() })
    }

    fn netns(&mut self, name: &str) -> TestResult<(String, PathBuf)> {
        let name = format!("bhcni-{}-{name}", std::process::id());
        let path = netns::create(&name)?;
        self.netns.push(path.clone());
        Ok((name, path))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for p in &self.netns {
            let _ = netns::delete(p);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

fn bridge_list(subnet: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bulkhead-test","plugins":[
        {{"type":"bridge","bridge":"@BRIDGE@","isGateway":true,"ipMasq":false,
          "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}],
                  "dataDir":"@IPAM_DIR@"}}}},
        {{"type":"loopback"}}]}}"#
    )
}

fn rt(id: &str, netns: &Path) -> RuntimeConf {
    RuntimeConf {
        container_id: id.into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into()), ("K8S_POD_NAME".into(), "test".into())],
    }
}

/// `ip [-n NETNS] -j addr show dev IFNAME`: the assigned addresses of an interface, or None if it does not
/// exist.
fn addresses(netns: Option<&str>, ifname: &str) -> TestResult<Option<Vec<String>>> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(["-j", "addr", "show", "dev", ifname]).output()?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let list = v[0]["addr_info"].as_array().ok_or("ip printed no addr_info")?;
    // Link-local IPv6 addresses come and go with the link: only the assigned (global and host) ones count.
    let assigned = list.iter().filter(|a| a["scope"] != "link");
    Ok(Some(assigned.map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"])).collect()))
}

/// A TCP listener inside `netns` on `ip` (a thread enters the namespace to make the socket, which stays in
/// it), and a connection to it from the host's namespace: the pod is reachable.
fn host_reaches(netns_path: &Path, ip: IpAddr) -> TestResult {
    let ns = netns::open(netns_path)?;
    let listener = std::thread::spawn(move || -> TestResult<TcpListener> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(TcpListener::bind(SocketAddr::new(ip, 0))?)
    })
    .join()
    .map_err(|_| "the netns thread panicked")??;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> TestResult<SocketAddr> {
        let (mut s, peer) = listener.accept()?;
        s.write_all(b"pong")?;
        Ok(peer)
    });
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf)?;
    assert_eq!(&buf, b"pong");
    let peer = server.join().map_err(|_| "the server thread panicked")??;
    // The host comes in through the bridge, whose address is the subnet's gateway.
    assert_ne!(peer.ip(), ip);
    Ok(())
}

#[tokio::test]
async fn bridge_add_gives_a_reachable_ip_and_del_cleans_up() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let mut fx = Fixture::new("a", &bridge_list("10.231.7.0/24"))?;
    let net = Network::load(&fx.cfg)?;
    let (name, ns) = fx.netns("a")?;
    let id = format!("bhtest{}a", std::process::id());
    let r = net.add(&rt(&id, &ns)).await?;

    let ip = r.pod_ip("eth0").ok_or("no pod ip")?.clone();
    assert!(ip.address.to_string().starts_with("10.231.7."), "{ip:?}");
    assert_eq!(ip.gateway.map(|g| g.to_string()).as_deref(), Some("10.231.7.1"));
    let eth0 = r.sandbox_interface("eth0").ok_or("no eth0 in the result")?;
    assert_eq!(eth0.sandbox, ns.display().to_string());
    assert_eq!(eth0.mac.len(), 17, "{eth0:?}");
    assert_eq!(addresses(Some(&name), "eth0")?, Some(vec![ip.address.to_string()]));
    // loopback is up in the pod too, and passed bridge's result on.
    assert_eq!(addresses(Some(&name), "lo")?, Some(vec!["127.0.0.1/8".to_owned(), "::1/128".to_owned()]));
    host_reaches(&ns, ip.address.addr())?;
    net.check(&rt(&id, &ns), &r).await?;

    // The host end of the veth, as bridge reports it.
    let host_veth = r
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != fx.bridge)
        .ok_or("no host veth in the result")?
        .name
        .clone();
    assert!(addresses(None, &host_veth)?.is_some());
    net.del(&rt(&id, &ns), Some(&r)).await?;
    assert!(addresses(None, &host_veth)?.is_none(), "{host_veth} survived DEL");
    assert!(addresses(Some(&name), "eth0")?.is_none(), "eth0 survived DEL");
    netns::delete(&ns)?;
    assert!(!ns.exists());
    // DEL is idempotent, also once the netns is gone.
    net.del(&rt(&id, &ns), Some(&r)).await?;
    net.del(&rt(&id, &ns), None).await?;

    // A second pod after DEL gets an address again (host-local released the first one) and works.
    let (_, ns2) = fx.netns("b")?;
    let id2 = format!("bhtest{}b", std::process::id());
    let r2 = net.add(&rt(&id2, &ns2)).await?;
    let ip2 = r2.pod_ip("eth0").ok_or("no pod ip")?.address;
    assert!(ip2.to_string().starts_with("10.231.7."), "{ip2}");
    host_reaches(&ns2, ip2.addr())?;
    net.del(&rt(&id2, &ns2), Some(&r2)).await?;
    netns::delete(&ns2)?;
    Ok(())
}

#[tokio::test]
async fn a_broken_config_names_the_plugin_and_its_message() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let mut fx = Fixture::new("b", &bridge_list("10.231.300.0/24"))?;
    let net = Network::load(&fx.cfg)?;
    let (_, ns) = fx.netns("broken")?;
    let id = format!("bhtest{}c", std::process::id());
    let e = net.add(&rt(&id, &ns)).await.err().ok_or("ADD with a bad subnet succeeded")?;
    let Error::Plugin { plugin, msg, .. } = &e else { return Err(format!("not a plugin error: {e}").into()) };
    assert_eq!(plugin, "bridge");
    assert!(msg.contains("10.231.300.0/24"), "{e}");
    assert!(e.to_string().starts_with("CNI plugin bridge (ADD) failed: "), "{e}");
    // DEL reads the same config and fails the same way (the runtime keeps the sandbox to retry).
    let e = net.del(&rt(&id, &ns), None).await.err().ok_or("DEL with a bad subnet succeeded")?;
    assert!(
        e.to_string().starts_with("CNI plugin bridge (DEL) failed: ") && e.to_string().contains("10.231.300"),
        "{e}"
    );
    Ok(())
}

#[test]
fn netns_create_and_delete() -> TestResult {
    if !bulkhead_cni::testing::real_plugins_or_skip() {
        return Ok(());
    }
    let name = format!("bhcni-{}-ns", std::process::id());
    let path = netns::create(&name)?;
    let f = netns::open(&path)?;
    // A fresh namespace, not ours, with only lo.
    let (here, there) = (std::fs::metadata("/proc/self/ns/net")?, f.metadata()?);
    assert_ne!((here.dev(), here.ino()), (there.dev(), there.ino()));
    let out = Command::new("ip").args(["-n", &name, "-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(matches!(netns::create(&name), Err(Error::Netns { .. })), "a second create of one name must fail");
    netns::delete(&path)?;
    assert!(!path.exists());
    assert!(netns::open(&path).is_err());
    netns::delete(&path)?;
    Ok(())
}
