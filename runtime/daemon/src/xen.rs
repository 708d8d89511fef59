//! The production [`Hypervisor`]: libxl through bulkhead-xen's worker thread (the one owner of the libxl
//! context), and a xenstore watch on `@releaseDomain` to learn when a domain shuts down, instead of polling.

use std::time::Duration;

use bulkhead_xen::domain::{DomainKind as XenKind, DomainSpec};
use bulkhead_xen::{AsyncVchan, DomainInfo, LibxlWorker, ShutdownReason, Uuid, Vchan, Xenstore};

use crate::api::message_chain;
use crate::hypervisor::{
    ChannelStream, DomainKind, DomainObservation, DomainRequest, DomainRunState, Hypervisor, HypervisorError,
    ShutdownKind, WaitOutcome, ZONE_CHANNEL_PATH,
};
use crate::zone::HostVirtCaps;

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
            })
            .collect())
    }

    async fn attach_disk(&self, domid: u32, image: &std::path::Path, vdev: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Disk {
            op: "attaching",
            domid,
            vdev: vdev.to_owned(),
            reason: format!("disk hot-plug of {} is not implemented yet", image.display()),
        })
    }

    async fn detach_disk(&self, domid: u32, vdev: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Disk {
            op: "detaching",
            domid,
            vdev: vdev.to_owned(),
            reason: "disk hot-plug is not implemented yet".into(),
        })
    }

    async fn serve_channel(&self, domid: u32) -> Result<ChannelStream, HypervisorError> {
        let fail = |reason: String| HypervisorError::Channel { domid, reason };
        let path = format!("/local/domain/{domid}/{ZONE_CHANNEL_PATH}");
        // Grant allocation and xenstore writes block: keep them off the async workers.
        let vchan = tokio::task::spawn_blocking(move || Vchan::server(domid, &path, CHANNEL_RING, CHANNEL_RING))
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
        use crate::store::RecordStore;
        use crate::zone::{VirtMode, ZoneName, ZoneSpec, ZoneState};

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
            })
        }

        async fn manager(
            dir: &std::path::Path,
        ) -> Result<std::sync::Arc<ZoneManager<LibxlHypervisor>>, Box<dyn std::error::Error>> {
            let cfg = ManagerConfig {
                default_kernel: "/usr/lib/bulkhead/zone/kernel".into(),
                default_initrd: "/usr/lib/bulkhead/zone/initrd".into(),
                hello_timeout: crate::manager::DEFAULT_HELLO_TIMEOUT,
                // Emulated Xen reports HVM + HAP but cannot boot PVH guests.
                auto_virt_mode: Some(VirtMode::Pv),
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

    #[test]
    fn zone_ids_that_are_not_uuids_are_caught() {
        assert!(parse_uuid("not-a-uuid").is_none());
        assert!(parse_uuid("0f8fad5b-d9cb-469f-a165-70867728950e").is_some());
    }
}
