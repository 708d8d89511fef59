//! Disk hot-plug against a live Xen (run inside the test bed's dom0 with
//! `--ignored`).

use std::time::{Duration, Instant};

use super::*;
use crate::domain::live_tests::{
    LoopDevice, ZONE_KERNEL, console_log, create_timed, destroy_and_check_gone, report, wait_until, with_cleanup,
};
use crate::domain::{DomainKind, DomainSpec};
use crate::xenstore::Xenstore;

fn read(xs: &Xenstore, path: &str) -> anyhow::Result<Option<String>> {
    Ok(xs.try_read(path)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

#[test]
#[ignore = "needs xen"]
fn disk_is_hot_plugged_into_a_running_domain_and_removed() -> anyhow::Result<()> {
    let name = "bh-test-hotplug";
    let lo = LoopDevice::new(name, 16)?;
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
        anyhow::ensure!(xl.disk_list(domid)?.is_empty(), "no disks before the hot-plug");

        let disk = DiskSpec::read_only(lo.dev.clone(), "xvdb");
        let t = Instant::now();
        xl.disk_add(domid, &disk)?;
        report!("{name}: disk_add({}) as xvdb in {:?}", lo.dev, t.elapsed());
        let be = backend_xenstore_path(domid, "xvdb").ok_or_else(|| anyhow::anyhow!("no devid"))?;
        let params = read(&xs, &format!("{be}/params"))?;
        let mode = read(&xs, &format!("{be}/mode"))?;
        let kind = read(&xs, &format!("{be}/type"))?;
        report!("{name}: backend {be}: params {params:?} mode {mode:?} type {kind:?}");
        assert_eq!(params.as_deref(), Some(lo.dev.as_str()));
        assert_eq!(mode.as_deref(), Some("r"));
        assert_eq!(kind.as_deref(), Some("phy"));
        let at_return = blkback_has_opened(domid, "xvdb");
        let opened = wait_until(Duration::from_secs(10), || Ok(blkback_has_opened(domid, "xvdb")))?;
        report!("{name}: blkback had opened the device when disk_add returned: {at_return}; opened after {opened:?}");
        assert!(opened.is_some(), "blkback never opened {}", lo.dev);
        let connected =
            wait_until(Duration::from_secs(60), || Ok(read(&xs, &format!("{be}/state"))?.as_deref() == Some("4")))?;
        report!("{name}: backend state 4 (connected) {connected:?} after that");
        assert!(connected.is_some(), "blkfront never connected");
        let listed = xl.disk_list(domid)?;
        assert_eq!(
            listed,
            vec![AttachedDisk {
                vdev: "xvdb".into(),
                backend_path: Some(lo.dev.clone().into()),
                read_only: true,
                backend_domid: 0,
                phy: true,
            }]
        );

        // The same name again is refused and the attached disk is untouched.
        match xl.disk_add(domid, &disk) {
            Err(Error::DiskAdd { code, .. }) if code.0 == sys::ERROR_DEVICE_EXISTS => {
                report!("{name}: second add of xvdb refused: {code}")
            }
            other => anyhow::bail!("second add of xvdb: {other:?}"),
        }
        assert_eq!(read(&xs, &format!("{be}/state"))?.as_deref(), Some("4"));

        // A backend that does not exist is refused and leaves nothing behind.
        // (A regular file would be accepted: libxl takes it for the phy
        // backend and Xen's block hotplug script binds its own loop device.)
        let bad = DiskSpec::read_only("/dev/bulkhead-no-such-device", "xvdc");
        match xl.disk_add(domid, &bad) {
            Err(e) => report!("{name}: add of a missing device refused: {e}"),
            Ok(()) => anyhow::bail!("a missing device was accepted"),
        }
        let be_c = backend_xenstore_path(domid, "xvdc").ok_or_else(|| anyhow::anyhow!("no devid"))?;
        assert_eq!(xs.try_read(&be_c)?, None, "nothing left of xvdc in xenstore");
        assert!(xl.disk_list(domid)?.iter().all(|d| d.vdev != "xvdc"), "xvdc not recorded");

        let t = Instant::now();
        let removed = xl.disk_remove(domid, "xvdb")?;
        report!("{name}: disk_remove(xvdb) in {:?}", t.elapsed());
        assert_eq!(removed.backend_path.as_deref(), Some(std::path::Path::new(&lo.dev)));
        assert_eq!(xs.try_read(&be)?, None, "backend removed");
        assert!(!blkback_has_opened(domid, "xvdb"));
        assert!(xl.disk_list(domid)?.is_empty());
        match xl.disk_remove(domid, "xvdb") {
            Err(Error::DiskNotFound { .. }) => {}
            other => anyhow::bail!("second remove: {other:?}"),
        }
        let info = xl.domain_info(domid)?;
        assert!(!info.state.shutdown, "the guest survived: {}", info.state);
        destroy_and_check_gone(xl, domid)
    })
}
