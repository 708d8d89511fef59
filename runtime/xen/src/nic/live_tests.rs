//! PV network interfaces against a live Xen (run inside the test bed's dom0 with `--ignored`): a vif with a
//! chosen dom0 name and MAC reaches Connected with the zone kernel's netfront, and its removal takes netback's
//! interface away.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::domain::live_tests::{
    ZONE_KERNEL, console_log, create_timed, destroy_and_check_gone, report, wait_until, with_cleanup,
};
use crate::domain::{DomainKind, DomainSpec};
use crate::xenstore::Xenstore;

/// The node image's vif hotplug script, as libxl runs it for a zone's pod NIC.
const SCRIPT: &str = include_str!("../../../../image/tree/usr/lib/bulkhead/vif-pod");

#[test]
#[ignore = "needs xen"]
fn a_vif_connects_to_netfront_under_its_dom0_name_and_goes_on_removal() -> anyhow::Result<()> {
    let name = "bh-test-nic";
    let script = Path::new("/run/bh-test-vif-script");
    std::fs::write(script, SCRIPT)?;
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
    let mut xl = Libxl::new()?;
    let xs = Xenstore::open()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0 rootdelay=600".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        xl.domain_unpause(domid)?;
        let up = wait_until(Duration::from_secs(60), || Ok(console_log(name).contains("before mounting root")))?;
        report!("{name}: kernel up (waiting for root) after {up:?}");
        anyhow::ensure!(xl.nic_list(domid)?.is_empty(), "no nics before the add");

        let nic =
            NicSpec { mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x07], ifname: "bhvif-test".into(), script: script.into() };
        let t = Instant::now();
        let devid = xl.nic_add(domid, &nic)?;
        report!("{name}: nic_add as devid {devid} in {:?}", t.elapsed());
        assert!(Path::new("/sys/class/net/bhvif-test").exists(), "netback's interface has the name we gave");
        let be = format!("/local/domain/0/backend/vif/{domid}/{devid}");
        let connected = wait_until(Duration::from_secs(60), || {
            Ok(xs.try_read(&format!("{be}/state"))?.as_deref() == Some(&b"4"[..]))
        })?;
        report!("{name}: backend state 4 (connected) after {connected:?}");
        assert!(connected.is_some(), "netfront never connected");
        let fe_mac = xs.try_read(&format!("{be}/mac"))?.map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(fe_mac.as_deref(), Some("02:42:ac:11:00:07"));
        assert_eq!(xl.nic_list(domid)?, vec![AttachedNic { devid, mac: nic.mac }]);

        let t = Instant::now();
        xl.nic_remove(domid, devid)?;
        report!("{name}: nic_remove in {:?}", t.elapsed());
        assert!(!Path::new("/sys/class/net/bhvif-test").exists(), "netback's interface is gone");
        assert_eq!(xs.try_read(&be)?, None, "backend removed");
        assert!(xl.nic_list(domid)?.is_empty());
        // A bad spec never reaches libxl.
        let bad = NicSpec { ifname: "a/b".into(), ..nic };
        assert!(matches!(xl.nic_add(domid, &bad), Err(Error::InvalidNic { .. })));
        destroy_and_check_gone(xl, domid)
    })
}
