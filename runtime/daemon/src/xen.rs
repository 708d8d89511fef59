//! The production [`Hypervisor`]: libxl through bulkhead-xen's worker thread (the one owner of the libxl
//! context), and a xenstore watch on `@releaseDomain` to learn when a domain shuts down, instead of polling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_xen::domain::{DomainKind as XenKind, DomainSpec};
use bulkhead_xen::xenstore::{Access, Permission};
use bulkhead_xen::{AsyncVchan, DiskSpec, DomainInfo, Libxl, LibxlWorker, ShutdownReason, Uuid, Vchan, Xenstore};

use crate::api::message_chain;
use crate::hypervisor::{
    ChannelStream, DomainKind, DomainObservation, DomainRequest, DomainRunState, HostInfo, Hypervisor, HypervisorError,
    ShutdownKind, WaitOutcome, ZONE_CHANNEL_PATH,
};
use crate::loopdev;
use crate::zone::HostVirtCaps;

/// libxl's hotplug script for pod NICs (image/tree/usr/lib/bulkhead/vif-pod): it names netback's end and
/// reports it connected, and leaves the plumbing into the pod's netns to the daemon.
pub const VIF_POD_SCRIPT: &str = "/usr/lib/bulkhead/vif-pod";

/// xenstored fires this watch whenever a domain shuts down or is destroyed.
const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Each direction's ring of a zone's channel: 64 KiB moved ~26 MiB/s per direction in the test bed, and a
/// zone's channel costs dom0 two such rings plus a control page.
const CHANNEL_RING: usize = 64 * 1024;

/// libxl, owned by one worker thread.
#[derive(Debug)]
pub struct LibxlHypervisor {
    worker: LibxlWorker,
}

impl LibxlHypervisor {
    /// Opens libxl. Must be called before anything in the process installs a SIGCHLD handler: libxl installs
    /// its own (selective reaping) and asserts that it was the first.
    pub fn open() -> Result<Self, HypervisorError> {
        let worker = LibxlWorker::spawn().map_err(|e| HypervisorError::HostCaps(message_chain(&e)))?;
        Ok(LibxlHypervisor { worker })
    }
}

/// How long dom0's blkback may take to open a hot-plugged disk's block device after libxl's add returned (it
/// opens it from a xenstore watch, typically within milliseconds).
const BLKBACK_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a detach waits for the kernel to release the loop device (autoclear) before warning.
const LOOP_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Attaches `image` to `domid` as read-only `vdev` through an autoclear loop device; returns the loop device.
/// Runs on the libxl worker. On failure nothing is left: no disk, and the loop device is released.
///
/// Ordering: the loop device is held open (the only opener) until dom0's blkback has opened it too. libxl's
/// add returns when the hotplug script has run, but blkback opens the device asynchronously after that;
/// closing first would let autoclear detach the device under blkback.
fn attach_on_worker(ctx: &mut Libxl, domid: u32, image: &Path, vdev: &str) -> Result<PathBuf, String> {
    let lo = loopdev::attach_read_only(image)
        .map_err(|e| format!("{}; check the image file and that dom0 has free loop devices", message_chain(&e)))?;
    let dev = lo.path().to_owned();
    if let Err(e) = ctx.disk_add(domid, &DiskSpec::read_only(dev.clone(), vdev)) {
        // libxl removed whatever it had set up; closing our descriptor releases the loop device.
        drop(lo);
        let hint = match &e {
            bulkhead_xen::Error::DiskAdd { code, .. } if *code == bulkhead_xen::LibxlError::DEVICE_EXISTS => {
                format!("; the domain already has a disk {vdev}: detach it first or pick another name")
            }
            _ => format!(
                "; check that domain {domid} exists and that xen-blkback is loaded (the libxl log and \
                 /var/log/xen/xen-hotplug.log say more)"
            ),
        };
        return Err(format!("{}{hint}", message_chain(&e)));
    }
    let start = std::time::Instant::now();
    while !bulkhead_xen::disk::blkback_has_opened(domid, vdev) {
        if start.elapsed() > BLKBACK_OPEN_TIMEOUT {
            let removed = ctx.disk_remove(domid, vdev).map(|_| "it was removed again").unwrap_or("removing it failed");
            drop(lo);
            return Err(format!(
                "dom0's blkback did not open {} within {BLKBACK_OPEN_TIMEOUT:?} ({removed}); check that the \
                 xen-blkback module is loaded and the kernel log",
                dev.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::debug!(domid, vdev, dev = %dev.display(), waited = ?start.elapsed(), "blkback holds the loop device");
    // blkback holds the device now: from here on it lives exactly as long as the disk.
    drop(lo);
    Ok(dev)
}

fn run_state(info: &DomainInfo) -> DomainRunState {
    if info.state.dying {
        DomainRunState::Dying
    } else if info.state.shutdown {
        DomainRunState::Shutdown(match info.state.shutdown_reason {
            Some(ShutdownReason::Poweroff) => ShutdownKind::Poweroff,
            Some(ShutdownReason::Reboot) => ShutdownKind::Reboot,
            Some(ShutdownReason::Crash) => ShutdownKind::Crash,
            Some(ShutdownReason::Watchdog) => ShutdownKind::Watchdog,
            Some(ShutdownReason::Suspend) => ShutdownKind::Suspend,
            Some(ShutdownReason::SoftReset) => ShutdownKind::Other(5),
            Some(ShutdownReason::Unknown(code)) => ShutdownKind::Other(u32::try_from(code).unwrap_or(u32::MAX)),
            None => ShutdownKind::Other(u32::MAX),
        })
    } else {
        DomainRunState::Alive
    }
}

/// Domain shutdowns and destructions on the host, as a stream of wake-ups (coalesced: one pending at most).
/// The xenstore handle is not Sync, so the watch lives on a blocking thread that forwards events; it ends
/// within one poll interval of the receiver being dropped, and its result says why it ended otherwise.
pub fn release_events() -> (tokio::sync::mpsc::Receiver<()>, tokio::task::JoinHandle<Result<(), bulkhead_xen::Error>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let handle = tokio::task::spawn_blocking(move || watch_release_domain(&tx));
    (rx, handle)
}

/// How often the watch thread checks whether its listener is gone.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// Sends one message per `@releaseDomain` event (coalesced: one pending is enough) until `tx` is closed.
fn watch_release_domain(tx: &tokio::sync::mpsc::Sender<()>) -> Result<(), bulkhead_xen::Error> {
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    let xs = Xenstore::open()?;
    // The watch fires once at once, then on every domain shutdown or destruction on the host.
    xs.watch(RELEASE_DOMAIN, "bulkheadd-wait")?;
    let timeout = PollTimeout::try_from(WATCH_POLL).unwrap_or(PollTimeout::MAX);
    while !tx.is_closed() {
        let fd = xs.watch_fd()?;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // EINTR and friends: just look again.
        if poll(&mut fds, timeout).unwrap_or(0) > 0 {
            while xs.check_watch()?.is_some() {
                let _ = tx.try_send(());
            }
        }
    }
    Ok(())
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    uuid::Uuid::parse_str(s).ok().map(|u| Uuid(u.into_bytes()))
}

/// The bulkhead-xen spec for a request. Crashed domains are preserved so the reconciler sees the reason.
pub fn domain_spec(req: &DomainRequest) -> DomainSpec {
    let kind = match req.kind {
        DomainKind::Pv => XenKind::Pv,
        DomainKind::Pvh => XenKind::Pvh,
    };
    let mut spec = DomainSpec::new(req.name.clone(), kind, req.kernel.clone());
    spec.uuid = parse_uuid(&req.uuid);
    spec.memory_mib = u64::from(req.memory_mib);
    spec.vcpus = req.vcpus;
    spec.ramdisk = req.initrd.clone();
    spec.cmdline = req.cmdline.clone();
    spec
}

impl LibxlHypervisor {
    async fn info(&self, domid: u32) -> Option<DomainInfo> {
        self.worker.domain_info(domid).await.ok()
    }
}

impl Hypervisor for LibxlHypervisor {
    async fn host_caps(&self) -> Result<HostVirtCaps, HypervisorError> {
        let p = self.worker.physinfo().await.map_err(|e| HypervisorError::HostCaps(message_chain(&e)))?;
        Ok(HostVirtCaps { hvm: p.caps.hvm, hap: p.caps.hap })
    }

    async fn host_info(&self) -> Result<HostInfo, HypervisorError> {
        let err = |e: bulkhead_xen::Error| HypervisorError::HostCaps(message_chain(&e));
        let p = self.worker.physinfo().await.map_err(err)?;
        let v = self.worker.version_info().await.map_err(err)?;
        Ok(HostInfo {
            hypervisor: "xen".into(),
            version: v.version(),
            pv: p.caps.pv,
            caps: HostVirtCaps { hvm: p.caps.hvm, hap: p.caps.hap },
            total_memory_bytes: p.total_memory_kib().saturating_mul(1024),
            free_memory_bytes: p.free_memory_kib().saturating_mul(1024),
            cpus: p.nr_cpus,
        })
    }

    async fn create_paused(&self, req: &DomainRequest) -> Result<u32, HypervisorError> {
        let create_err = |reason: String| HypervisorError::Create { name: req.name.clone(), reason };
        let spec = domain_spec(req);
        if spec.uuid.is_none() {
            return Err(create_err(format!("zone id {:?} is not a UUID", req.uuid)));
        }
        // libxl_domain_create_new leaves the new domain paused; the caller unpauses it.
        self.worker.domain_create(spec).await.map_err(|e| create_err(message_chain(&e)))
    }

    async fn unpause(&self, domid: u32) -> Result<(), HypervisorError> {
        self.worker
            .domain_unpause(domid)
            .await
            .map_err(|e| HypervisorError::Unpause { domid, reason: message_chain(&e) })
    }

    async fn request_shutdown(&self, domid: u32) -> Result<(), HypervisorError> {
        self.worker
            .domain_shutdown(domid)
            .await
            .map_err(|e| HypervisorError::Shutdown { domid, reason: message_chain(&e) })
    }

    async fn wait_shutdown(&self, domid: u32, timeout: Duration) -> Result<WaitOutcome, HypervisorError> {
        let (mut released, watch) = release_events();
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            match self.info(domid).await.map(|i| run_state(&i)) {
                None | Some(DomainRunState::Dying) => break WaitOutcome::Gone,
                Some(DomainRunState::Shutdown(kind)) => break WaitOutcome::ShutDown(kind),
                Some(DomainRunState::Alive) => {}
            }
            tokio::select! {
                ev = released.recv() => {
                    if ev.is_none() {
                        // The watch thread ended: it failed. Say why.
                        let reason = match watch.await {
                            Ok(Err(e)) => message_chain(&e),
                            _ => "the xenstore watch ended".to_owned(),
                        };
                        return Err(HypervisorError::Shutdown { domid, reason });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break WaitOutcome::StillRunning,
            }
        };
        Ok(outcome)
    }

    async fn destroy(&self, domid: u32) -> Result<(), HypervisorError> {
        // Already gone (e.g. the reconciler was first): nothing to do, and no libxl error noise in the log.
        if self.info(domid).await.is_none() {
            return Ok(());
        }
        match self.worker.domain_destroy(domid).await {
            Ok(()) => Ok(()),
            // Already gone is what the caller wanted.
            Err(_) if self.info(domid).await.is_none() => Ok(()),
            Err(e) => Err(HypervisorError::Destroy { domid, reason: message_chain(&e) }),
        }
    }

    async fn list(&self) -> Result<Vec<DomainObservation>, HypervisorError> {
        let domains = self.worker.list_domains().await.map_err(|e| HypervisorError::List(message_chain(&e)))?;
        Ok(domains
            .iter()
            .map(|d| DomainObservation {
                domid: d.domid,
                uuid: d.uuid.to_string(),
                name: d.name.clone().unwrap_or_default(),
                state: run_state(d),
                cpu_time_ns: d.cpu_time_ns,
                memory_kib: d.current_memkb,
            })
            .collect())
    }

    async fn attach_disk(&self, domid: u32, image: &std::path::Path, vdev: &str) -> Result<(), HypervisorError> {
        let fail = |reason: String| HypervisorError::Disk { op: "attaching", domid, vdev: vdev.to_owned(), reason };
        if let Some(reason) = bulkhead_xen::disk::vdev_problem(vdev) {
            return Err(fail(format!("{reason} (xvda is the first disk, xvdb the second, ...)")));
        }
        loopdev::check_image(image).map_err(|e| fail(message_chain(&e)))?;
        let (image, vdev_owned) = (image.to_owned(), vdev.to_owned());
        // The whole attachment runs as one job on the libxl worker: it is not abandoned half-way when this
        // future is dropped, and the loop device's descriptor lives exactly as long as the job needs it.
        let dev = self
            .worker
            .call(move |ctx| attach_on_worker(ctx, domid, &image, &vdev_owned))
            .await
            .map_err(|e| fail(message_chain(&e)))?
            .map_err(fail)?;
        tracing::info!(domid, vdev, dev = %dev.display(), "disk image attached");
        Ok(())
    }

    async fn detach_disk(&self, domid: u32, vdev: &str) -> Result<(), HypervisorError> {
        let fail = |reason: String| HypervisorError::Disk { op: "detaching", domid, vdev: vdev.to_owned(), reason };
        let removed = self.worker.disk_remove(domid, vdev.to_owned()).await.map_err(|e| {
            let hint = match e {
                bulkhead_xen::Error::DiskNotFound { .. } => " (nothing to detach)",
                _ => " (see the libxl log; `xl block-list` shows the domain's disks)",
            };
            fail(format!("{}{hint}", message_chain(&e)))
        })?;
        // blkback has closed the device; with autoclear the kernel now detaches a loop device by itself.
        if let Some(dev) = removed.backend_path.filter(|p| loopdev::backing_file(p).is_some()) {
            let deadline = tokio::time::Instant::now() + LOOP_RELEASE_TIMEOUT;
            while loopdev::backing_file(&dev).is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(file) = loopdev::backing_file(&dev) {
                tracing::warn!(
                    domid,
                    vdev,
                    dev = %dev.display(),
                    file = %file.display(),
                    "loop device still bound after the disk was removed: something else holds it open"
                );
            }
        }
        Ok(())
    }

    async fn attach_pod_nic(&self, domid: u32, network: &crate::network::ZoneNetwork) -> Result<(), HypervisorError> {
        let fail = |reason: String| HypervisorError::Nic { domid, reason };
        // Unique in dom0 while the domain lives (domids stay below 32752), and within IFNAMSIZ.
        let vif = format!("bhvif{domid}");
        let nic = bulkhead_xen::nic::NicSpec { mac: network.mac, ifname: vif.clone(), script: VIF_POD_SCRIPT.into() };
        let devid =
            self.worker.nic_add(domid, nic).await.map_err(|e| {
                fail(format!("{} (is {VIF_POD_SCRIPT} installed? see the libxl log)", message_chain(&e)))
            })?;
        let (netns, interface) = (network.netns.clone(), network.interface.clone());
        let vif_name = vif.clone();
        // iproute2 and tc block: off the async workers. A failure leaves the vif to the domain's destroy.
        tokio::task::spawn_blocking(move || {
            bulkhead_cni::zone_link::move_into(&vif_name, &netns)?;
            bulkhead_cni::zone_link::redirect(&netns, &interface, &vif_name)
        })
        .await
        .map_err(|e| fail(format!("the plumbing task failed: {e}")))?
        .map_err(|e| fail(e.to_string()))?;
        tracing::info!(domid, devid, vif, netns = %network.netns, interface = %network.interface,
            mac = %crate::network::format_mac(network.mac), "zone NIC joined to its pod network");
        Ok(())
    }

    async fn serve_channel(&self, domid: u32) -> Result<ChannelStream, HypervisorError> {
        let fail = |reason: String| HypervisorError::Channel { domid, reason };
        let path = format!("/local/domain/{domid}/{ZONE_CHANNEL_PATH}");
        let server_id = format!("{}-{}", std::process::id(), crate::zone::now());
        // Grant allocation and xenstore writes block: keep them off the async workers.
        let vchan = tokio::task::spawn_blocking(move || {
            let vchan = Vchan::server(domid, &path, CHANNEL_RING, CHANNEL_RING)?;
            // Last, once the ring is ready: this is what tells a running zone to reconnect.
            let node = format!("{path}/{}", bulkhead_wire::CHANNEL_SERVER_ID_NODE);
            let xs = Xenstore::open()?;
            xs.write(&node, &server_id)?;
            xs.set_permissions(&node, &[Permission::new(0, Access::None), Permission::new(domid, Access::Read)])?;
            Ok::<_, bulkhead_xen::Error>(vchan)
        })
        .await
        .map_err(|e| fail(format!("the setup task failed: {e}")))?
        .map_err(|e| fail(message_chain(&e)))?;
        let io = AsyncVchan::new(vchan).map_err(|e| fail(message_chain(&e)))?;
        Ok(Box::new(io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_libxl_specs_with_the_zone_id_as_uuid() {
        let req = DomainRequest {
            name: "bulkhead-web".into(),
            uuid: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            kind: DomainKind::Pvh,
            memory_mib: 64,
            vcpus: 2,
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=hvc0".into(),
        };
        let s = domain_spec(&req);
        assert_eq!(s.uuid.map(|u| u.to_string()).as_deref(), Some("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert_eq!((s.kind, s.memory_mib, s.vcpus), (XenKind::Pvh, 64, 2));
        assert_eq!(s.ramdisk.as_deref(), Some(std::path::Path::new("/i")));
        assert_eq!(s.cmdline, "console=hvc0");
        assert_eq!(s.validate().err().map(|e| e.to_string()), None);
    }

    mod live {
        //! Against a real Xen: run inside the test bed's dom0 (ci/test testbed runs them there).
        use std::collections::BTreeMap;
        use std::time::Instant;

        use super::*;
        use crate::manager::{ManagerConfig, ZoneManager};
        use crate::zone::{VirtMode, ZoneName, ZoneSpec, ZoneState};
        use bulkhead_store::RecordStore;

        type TestResult = Result<(), Box<dyn std::error::Error>>;

        fn spec(name: &str, kernel_args: &[&str]) -> Result<ZoneSpec, Box<dyn std::error::Error>> {
            Ok(ZoneSpec {
                name: ZoneName::try_from(name.to_owned())?,
                memory_mib: 64,
                vcpus: 1,
                virt_mode: VirtMode::Auto,
                kernel: None,
                initrd: None,
                kernel_args: kernel_args.iter().map(|s| s.to_string()).collect(),
                hostname: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                client_state: String::new(),
            })
        }

        async fn manager(
            dir: &std::path::Path,
        ) -> Result<std::sync::Arc<ZoneManager<LibxlHypervisor>>, Box<dyn std::error::Error>> {
            let cfg = ManagerConfig {
                // Emulated Xen reports HVM + HAP but cannot boot PVH guests.
                auto_virt_mode: Some(VirtMode::Pv),
                ..ManagerConfig::new("/usr/lib/bulkhead/zone/kernel", "/usr/lib/bulkhead/zone/initrd")
            };
            let store = RecordStore::open(dir.join("zones"))?;
            Ok(std::sync::Arc::new(ZoneManager::open(LibxlHypervisor::open()?, store, cfg).await?))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs xen"]
        async fn a_zone_boots_and_stops_gracefully_through_libxl() -> TestResult {
            let dir = tempfile::tempdir()?;
            let m = manager(dir.path()).await?;
            m.create(spec("live-stop", &[])?).await?;
            let t0 = Instant::now();
            let z = m.start("live-stop").await?;
            let domid = z.domid.ok_or("no domid")?;
            eprintln!("live: domain {domid} built and running in {:?}", t0.elapsed());
            let listed = m.hypervisor().list().await?;
            let dom = listed.iter().find(|d| d.domid == domid).ok_or("domain not listed")?;
            assert_eq!((dom.name.as_str(), dom.uuid.as_str()), ("bulkhead-live-stop", z.id.as_str()));
            // Let the zone init come up and wait for signals, then ask it to power off.
            tokio::time::sleep(Duration::from_secs(8)).await;
            let t1 = Instant::now();
            let stopped = m.stop("live-stop", Duration::from_secs(60)).await?;
            eprintln!("live: graceful stop took {:?}", t1.elapsed());
            assert_eq!(stopped.state, ZoneState::Stopped);
            assert!(t1.elapsed() < Duration::from_secs(60), "the zone had to be destroyed: no graceful poweroff");
            assert!(m.hypervisor().list().await?.iter().all(|d| d.domid != domid), "domain left behind");
            m.destroy("live-stop").await?;
            Ok(())
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs xen"]
        async fn a_crashing_zone_is_reported_failed_with_the_reason() -> TestResult {
            let dir = tempfile::tempdir()?;
            let m = manager(dir.path()).await?;
            // No such init: the kernel finds nothing to run and panics, which Xen reports as a crash.
            m.create(spec("live-crash", &["rdinit=/nonexistent", "panic=0"])?).await?;
            let domid = m.start("live-crash").await?.domid.ok_or("no domid")?;
            let outcome = m.hypervisor().wait_shutdown(domid, Duration::from_secs(90)).await?;
            assert_eq!(outcome, WaitOutcome::ShutDown(ShutdownKind::Crash));
            let report = m.reconcile().await?;
            assert_eq!(report.failed.len(), 1, "{report:?}");
            let z = m.get("live-crash").await?;
            assert_eq!(z.state, ZoneState::Failed);
            assert!(z.failure_reason.unwrap_or_default().contains("crashed"));
            assert!(m.hypervisor().list().await?.iter().all(|d| d.domid != domid), "crashed domain not cleaned up");
            m.destroy("live-crash").await?;
            Ok(())
        }
    }

    mod live_disks {
        //! Disk image hot-plug against a real Xen (the test bed's dom0 runs these).
        use std::path::{Path, PathBuf};
        use std::time::Instant;

        use super::*;

        type TestResult = Result<(), Box<dyn std::error::Error>>;

        /// Print past the harness's capture: the dom0 runner shows the timings of passing tests too.
        macro_rules! report {
            ($($arg:tt)*) => {{
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), $($arg)*);
            }};
        }

        const NAME: &str = "bh-test-disk-image";

        /// Every loop device bound to `image`, from sysfs.
        fn loops_backed_by(image: &Path) -> Vec<PathBuf> {
            let mut out = Vec::new();
            for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("loop") {
                    let dev = PathBuf::from(format!("/dev/{name}"));
                    if loopdev::backing_file(&dev).as_deref() == Some(image) {
                        out.push(dev);
                    }
                }
            }
            out
        }

        fn read(xs: &Xenstore, path: &str) -> Result<Option<String>, Box<dyn std::error::Error>> {
            Ok(xs.try_read(path)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
        }

        /// Polls every 50 ms until `pred` holds; how long it took, or None after `timeout`.
        async fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> Option<Duration> {
            let t = Instant::now();
            while t.elapsed() < timeout {
                if pred() {
                    return Some(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }

        /// A small erofs image with one file.
        fn erofs_image(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
            let root = dir.join("root");
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("hello"), "hello from an erofs image\n")?;
            let img = dir.join("image.erofs");
            let out = std::process::Command::new("mkfs.erofs").arg(&img).arg(&root).output()?;
            if !out.status.success() {
                return Err(format!("mkfs.erofs: {}", String::from_utf8_lossy(&out.stderr)).into());
            }
            Ok(img)
        }

        async fn body(hv: &LibxlHypervisor, xs: &Xenstore, img: &Path) -> TestResult {
            let req = DomainRequest {
                name: NAME.into(),
                uuid: "5d1b7a0e-6a3c-4f7e-9b2a-0c4d5e6f7a8b".into(),
                kind: DomainKind::Pv,
                memory_mib: 64,
                vcpus: 1,
                kernel: "/usr/lib/bulkhead/zone/kernel".into(),
                initrd: None,
                // No userspace needed: the kernel waits for a root device while blkfront serves hot-plugs.
                cmdline: "console=hvc0 rootdelay=600".into(),
            };
            let domid = hv.create_paused(&req).await?;
            hv.unpause(domid).await?;
            let console = format!("/var/log/xen/console/guest-{NAME}.log");
            let up = wait_until(Duration::from_secs(60), || {
                std::fs::read_to_string(&console).unwrap_or_default().contains("before mounting root")
            })
            .await;
            report!("live-disk: domain {domid} kernel up after {up:?}");

            // Attach: a read-only loop device over the image, served by blkback, connected to blkfront.
            let t = Instant::now();
            hv.attach_disk(domid, img, "xvdb").await?;
            report!("live-disk: attach_disk(xvdb) in {:?}", t.elapsed());
            let be = bulkhead_xen::disk::backend_xenstore_path(domid, "xvdb").ok_or("no devid")?;
            let params = read(xs, &format!("{be}/params"))?.ok_or("no params")?;
            let mode = read(xs, &format!("{be}/mode"))?;
            let loops = loops_backed_by(img);
            report!("live-disk: backend {be}: params {params} mode {mode:?}; loop devices on the image: {loops:?}");
            assert_eq!(loops, vec![PathBuf::from(&params)], "exactly the backend's loop device is bound to the image");
            assert_eq!(mode.as_deref(), Some("r"));
            let lo_name = params.trim_start_matches("/dev/").to_owned();
            let sys_ro = std::fs::read_to_string(format!("/sys/block/{lo_name}/ro"))?;
            let sys_autoclear = std::fs::read_to_string(format!("/sys/block/{lo_name}/loop/autoclear"))?;
            assert_eq!((sys_ro.trim(), sys_autoclear.trim()), ("1", "1"), "read-only, autoclear");
            let connected = wait_until(Duration::from_secs(60), || {
                read(xs, &format!("{be}/state")).ok().flatten().as_deref() == Some("4")
            })
            .await;
            report!("live-disk: backend state 4 (connected) after {connected:?}");
            assert!(connected.is_some(), "blkfront never connected");
            // The daemon has let go of the device: only blkback holds it, yet it stays bound.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(loops_backed_by(img), vec![PathBuf::from(&params)], "still bound while blkback holds it");

            // A second attach under the same name fails and leaves no extra loop device.
            let e = hv.attach_disk(domid, img, "xvdb").await.err().ok_or("second attach of xvdb succeeded")?;
            report!("live-disk: second attach refused: {e}");
            assert!(matches!(e, HypervisorError::Disk { op: "attaching", .. }));
            assert!(e.to_string().contains("detach it first"), "{e}");
            assert!(
                wait_until(Duration::from_secs(5), || loops_backed_by(img).len() == 1).await.is_some(),
                "the failed attach leaked a loop device: {:?}",
                loops_backed_by(img)
            );
            // Bad arguments are refused before anything is set up.
            assert!(hv.attach_disk(domid, img, "sdb").await.is_err());
            assert!(hv.attach_disk(domid, Path::new("/nonexistent.erofs"), "xvdc").await.is_err());

            // Detach: the backend goes, and autoclear releases the loop device.
            let t = Instant::now();
            hv.detach_disk(domid, "xvdb").await?;
            let freed = wait_until(Duration::from_secs(5), || loops_backed_by(img).is_empty()).await;
            report!("live-disk: detach_disk(xvdb) in {:?}, loop device released {freed:?} later", t.elapsed());
            assert!(freed.is_some(), "loop device left after detach: {:?}", loops_backed_by(img));
            assert_eq!(xs.try_read(&be)?, None, "backend removed");
            let e = hv.detach_disk(domid, "xvdb").await.err().ok_or("second detach succeeded")?;
            report!("live-disk: second detach: {e}");

            // Destroying a domain with a disk attached releases its loop device too.
            hv.attach_disk(domid, img, "xvdc").await?;
            assert_eq!(loops_backed_by(img).len(), 1);
            let t = Instant::now();
            hv.destroy(domid).await?;
            let freed = wait_until(Duration::from_secs(10), || loops_backed_by(img).is_empty()).await;
            report!("live-disk: destroy with xvdc attached in {:?}, loop device released {freed:?} later", t.elapsed());
            assert!(freed.is_some(), "loop device left after destroy: {:?}", loops_backed_by(img));
            Ok(())
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs xen"]
        async fn an_image_file_is_attached_read_only_and_released_on_detach_and_destroy() -> TestResult {
            let dir = tempfile::tempdir()?;
            let img = erofs_image(dir.path())?;
            let hv = LibxlHypervisor::open()?;
            let xs = Xenstore::open()?;
            let r = body(&hv, &xs, &img).await;
            if r.is_err() {
                let hotplug = std::fs::read_to_string("/var/log/xen/xen-hotplug.log").unwrap_or_default();
                report!("--- xen-hotplug.log ---\n{hotplug}");
            }
            for d in hv.list().await.unwrap_or_default() {
                if d.name == NAME {
                    let _ = hv.destroy(d.domid).await;
                }
            }
            r
        }
    }

    #[test]
    fn zone_ids_that_are_not_uuids_are_caught() {
        assert!(parse_uuid("not-a-uuid").is_none());
        assert!(parse_uuid("0f8fad5b-d9cb-469f-a165-70867728950e").is_some());
    }
}
