//! The daemon's view of the hypervisor: a trait with the few operations zone orchestration needs, so the core
//! is tested without Xen (the fake below) and runs on libxl in production.

use std::future::Future;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::zone::HostVirtCaps;

/// Where, relative to a zone's xenstore directory, bulkheadd serves the zone's host channel. The zone's init
/// gets it as `bulkhead.channel=` on its kernel command line.
pub const ZONE_CHANNEL_PATH: &str = "bulkhead/channel";

/// A byte stream to one zone's init.
pub trait ChannelIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ChannelIo for T {}

/// The daemon's end of a zone's host channel.
pub type ChannelStream = Box<dyn ChannelIo>;

/// The two modes a domain is actually built with (`auto` is resolved before this point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainKind {
    /// Paravirtualized.
    Pv,
    /// PVH.
    Pvh,
}

/// Everything needed to build one zone's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRequest {
    /// Xen domain name (unique on the host).
    pub name: String,
    /// Domain UUID: the zone id, so a restarted daemon finds its domains again.
    pub uuid: String,
    /// PV or PVH.
    pub kind: DomainKind,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: Option<PathBuf>,
    /// Guest kernel command line.
    pub cmdline: String,
}

/// Why a domain shut down, as Xen reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Powered off by the guest.
    Poweroff,
    /// The guest asked to reboot.
    Reboot,
    /// The guest crashed (e.g. kernel panic).
    Crash,
    /// The guest's watchdog fired.
    Watchdog,
    /// Suspended.
    Suspend,
    /// A reason this daemon does not know.
    Other(u32),
}

/// What a domain is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainRunState {
    /// Running, blocked or paused: alive.
    Alive,
    /// Shut down (still listed until destroyed).
    Shutdown(ShutdownKind),
    /// Being torn down.
    Dying,
}

/// One domain as the hypervisor lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainObservation {
    /// Domain id.
    pub domid: u32,
    /// Domain UUID, lowercase hyphenated.
    pub uuid: String,
    /// Domain name.
    pub name: String,
    /// Run state.
    pub state: DomainRunState,
    /// CPU time the domain has used, all vCPUs, nanoseconds.
    pub cpu_time_ns: u64,
    /// Memory the domain holds now, KiB (what Xen gave it, whatever the guest does with it).
    pub memory_kib: u64,
}

/// How a wait for a domain's shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// It shut down, for this reason.
    ShutDown(ShutdownKind),
    /// It no longer exists.
    Gone,
    /// The timeout passed and it still runs.
    StillRunning,
}

/// Hypervisor failures, each naming the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    /// Reading host capabilities failed.
    #[error("reading the host's virtualization capabilities: {0}")]
    HostCaps(String),
    /// Building the domain failed.
    #[error("building domain {name}: {reason}")]
    Create {
        /// Domain name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Unpausing failed.
    #[error("unpausing domain {domid}: {reason}")]
    Unpause {
        /// Domain id.
        domid: u32,
        /// Why.
        reason: String,
    },
    /// Asking the guest to shut down failed.
    #[error("asking domain {domid} to shut down: {reason}")]
    Shutdown {
        /// Domain id.
        domid: u32,
        /// Why.
        reason: String,
    },
    /// Destroying failed.
    #[error("destroying domain {domid}: {reason}")]
    Destroy {
        /// Domain id.
        domid: u32,
        /// Why.
        reason: String,
    },
    /// Listing domains failed.
    #[error("listing domains: {0}")]
    List(String),
    /// Attaching or detaching a disk failed.
    #[error("{op} disk {vdev} of domain {domid}: {reason}")]
    Disk {
        /// "attaching" or "detaching".
        op: &'static str,
        /// Domain id.
        domid: u32,
        /// Guest device name.
        vdev: String,
        /// Why.
        reason: String,
    },
    /// Giving the domain its pod network NIC failed.
    #[error("joining domain {domid} to its pod network: {reason}")]
    Nic {
        /// Domain id.
        domid: u32,
        /// Why.
        reason: String,
    },
    /// Serving the host channel failed.
    #[error("serving the host channel of domain {domid}: {reason}")]
    Channel {
        /// Domain id.
        domid: u32,
        /// Why.
        reason: String,
    },
}

/// The host as the hypervisor describes it (`bulkhead check`, `GetHostInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The hypervisor's name.
    pub hypervisor: String,
    /// Its version, e.g. "4.17.5".
    pub version: String,
    /// PV guests can run.
    pub pv: bool,
    /// What decides PVH.
    pub caps: HostVirtCaps,
    /// All of the host's memory.
    pub total_memory_bytes: u64,
    /// Memory no domain holds: what new zones can get.
    pub free_memory_bytes: u64,
    /// Online physical CPUs.
    pub cpus: u32,
}

/// The operations zone orchestration needs. Implementations must be safe to call concurrently.
pub trait Hypervisor: Send + Sync + 'static {
    /// What the host can run.
    fn host_caps(&self) -> impl Future<Output = Result<HostVirtCaps, HypervisorError>> + Send;
    /// The host's hypervisor, capabilities, memory and CPUs.
    fn host_info(&self) -> impl Future<Output = Result<HostInfo, HypervisorError>> + Send;
    /// Builds a domain and leaves it paused (the daemon sets up the zone's channel before it runs).
    fn create_paused(&self, req: &DomainRequest) -> impl Future<Output = Result<u32, HypervisorError>> + Send;
    /// Lets a paused domain run.
    fn unpause(&self, domid: u32) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Asks the guest to power off (it may ignore this).
    fn request_shutdown(&self, domid: u32) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Waits, at most `timeout`, until the domain has shut down or is gone.
    fn wait_shutdown(
        &self,
        domid: u32,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<WaitOutcome, HypervisorError>> + Send;
    /// Destroys the domain at once. A domain that is already gone is not an error.
    fn destroy(&self, domid: u32) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Every domain on the host, dom0 included.
    fn list(&self) -> impl Future<Output = Result<Vec<DomainObservation>, HypervisorError>> + Send;
    /// Serves the host channel of a (paused) domain at [`ZONE_CHANNEL_PATH`], so the zone's init finds it when
    /// it boots. Serving again replaces the previous channel (a restarted daemon).
    fn serve_channel(&self, domid: u32) -> impl Future<Output = Result<ChannelStream, HypervisorError>> + Send;
    /// Attaches the image file `image` to the running domain as read-only PV disk `vdev` (`xvdb`, ...).
    /// Nothing of the attachment outlives the domain (e.g. a loop device is released when it goes away).
    fn attach_disk(
        &self,
        domid: u32,
        image: &std::path::Path,
        vdev: &str,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Detaches PV disk `vdev` from the domain (the zone must no longer use it).
    fn detach_disk(&self, domid: u32, vdev: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Gives the (paused) domain a PV NIC with the pod network's MAC and joins its dom0 end to the network's
    /// interface in the network's netns. Nothing of it outlives the domain: its dom0 end goes with it.
    fn attach_pod_nic(
        &self,
        domid: u32,
        network: &crate::network::ZoneNetwork,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
}

/// An in-memory hypervisor for tests: domains are records; tests steer failures and guest behaviour.
#[cfg(any(test, feature = "fake-hypervisor"))]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Bytes in flight per direction on a fake channel (a vchan ring is 64 KiB).
    const FAKE_CHANNEL_BUFFER: usize = 64 * 1024;

    /// One fake domain.
    #[derive(Debug, Clone)]
    pub struct FakeDomain {
        /// What was asked for.
        pub request: DomainRequest,
        /// Paused (created, not yet unpaused).
        pub paused: bool,
        /// Run state.
        pub state: DomainRunState,
        /// The guest ignores shutdown requests (a hung init).
        pub ignores_shutdown: bool,
        /// Attached disks: guest device name to image path.
        pub disks: BTreeMap<String, PathBuf>,
        /// Pod networks joined.
        pub nics: Vec<crate::network::ZoneNetwork>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        next_domid: u32,
        domains: BTreeMap<u32, FakeDomain>,
        fail_next_create: Option<String>,
        fail_next_destroy: Option<String>,
        fail_next_nic: Option<String>,
        /// The zone ends of served channels, until a test takes them.
        zone_ends: BTreeMap<u32, tokio::io::DuplexStream>,
        /// Every served channel gets a [`scripted_zone`] at its zone end instead.
        scripted_zones: bool,
    }

    /// Holds `wait_shutdown` at its start until the test says go: lets a test act while a wait is pending.
    #[derive(Debug, Default)]
    pub struct WaitGate {
        /// Notified when a wait has started.
        pub entered: tokio::sync::Notify,
        /// Notify to let the wait go on.
        pub resume: tokio::sync::Notify,
    }

    /// The fake.
    #[derive(Debug)]
    pub struct FakeHypervisor {
        caps: HostVirtCaps,
        inner: Mutex<Inner>,
        wait_gate: Mutex<Option<std::sync::Arc<WaitGate>>>,
    }

    impl FakeHypervisor {
        /// A host with these capabilities and no guests.
        pub fn new(caps: HostVirtCaps) -> Self {
            FakeHypervisor {
                caps,
                inner: Mutex::new(Inner { next_domid: 1, ..Inner::default() }),
                wait_gate: Mutex::new(None),
            }
        }

        /// From now on every zone boots a [`scripted_zone`] init: for tests of the layers above the daemon.
        pub fn run_scripted_zones(&self) {
            self.with(|i| i.scripted_zones = true);
        }

        /// The next `wait_shutdown` stops at the returned gate until resumed.
        pub fn gate_next_wait(&self) -> std::sync::Arc<WaitGate> {
            let gate = std::sync::Arc::new(WaitGate::default());
            *self.wait_gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(gate.clone());
            gate
        }

        fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
            // A poisoned lock only means another test thread panicked; the data is still usable.
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g)
        }

        /// The next create fails with `reason`.
        pub fn fail_next_create(&self, reason: &str) {
            self.with(|i| i.fail_next_create = Some(reason.to_owned()));
        }

        /// The next destroy fails with `reason`.
        pub fn fail_next_destroy(&self, reason: &str) {
            self.with(|i| i.fail_next_destroy = Some(reason.to_owned()));
        }

        /// The next pod NIC attachment fails with `reason`.
        pub fn fail_next_nic(&self, reason: &str) {
            self.with(|i| i.fail_next_nic = Some(reason.to_owned()));
        }

        /// The guest in `domid` shuts down with `kind` (as a crash or poweroff would).
        pub fn guest_shuts_down(&self, domid: u32, kind: ShutdownKind) {
            self.with(|i| {
                if let Some(d) = i.domains.get_mut(&domid) {
                    d.state = DomainRunState::Shutdown(kind);
                }
            });
        }

        /// The guest in `domid` ignores shutdown requests from now on.
        pub fn guest_ignores_shutdown(&self, domid: u32) {
            self.with(|i| {
                if let Some(d) = i.domains.get_mut(&domid) {
                    d.ignores_shutdown = true;
                }
            });
        }

        /// The domain disappears behind the daemon's back (e.g. `xl destroy` by an operator).
        pub fn vanish(&self, domid: u32) {
            self.with(|i| i.domains.remove(&domid));
        }

        /// Adds a domain the daemon did not create.
        pub fn add_foreign(&self, request: DomainRequest) -> u32 {
            self.with(|i| {
                let domid = i.next_domid;
                i.next_domid += 1;
                i.domains.insert(
                    domid,
                    FakeDomain {
                        request,
                        paused: false,
                        state: DomainRunState::Alive,
                        ignores_shutdown: false,
                        disks: BTreeMap::new(),
                        nics: Vec::new(),
                    },
                );
                domid
            })
        }

        /// A copy of one domain.
        pub fn domain(&self, domid: u32) -> Option<FakeDomain> {
            self.with(|i| i.domains.get(&domid).cloned())
        }

        /// The zone's end of the channel last served for `domid`: the test plays the zone's init on it.
        pub fn take_zone_end(&self, domid: u32) -> Option<tokio::io::DuplexStream> {
            self.with(|i| i.zone_ends.remove(&domid))
        }

        /// How many domains exist.
        pub fn count(&self) -> usize {
            self.with(|i| i.domains.len())
        }
    }

    impl Hypervisor for FakeHypervisor {
        async fn host_caps(&self) -> Result<HostVirtCaps, HypervisorError> {
            Ok(self.caps)
        }

        async fn host_info(&self) -> Result<HostInfo, HypervisorError> {
            // An in-memory host: its own name, so nobody mistakes it for Xen.
            Ok(HostInfo {
                hypervisor: "fake".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                pv: true,
                caps: self.caps,
                total_memory_bytes: 8 << 30,
                free_memory_bytes: 4 << 30,
                cpus: 2,
            })
        }

        async fn create_paused(&self, req: &DomainRequest) -> Result<u32, HypervisorError> {
            self.with(|i| {
                if let Some(reason) = i.fail_next_create.take() {
                    return Err(HypervisorError::Create { name: req.name.clone(), reason });
                }
                if i.domains.values().any(|d| d.request.name == req.name) {
                    return Err(HypervisorError::Create {
                        name: req.name.clone(),
                        reason: "a domain with this name exists".into(),
                    });
                }
                let domid = i.next_domid;
                i.next_domid += 1;
                i.domains.insert(
                    domid,
                    FakeDomain {
                        request: req.clone(),
                        paused: true,
                        state: DomainRunState::Alive,
                        ignores_shutdown: false,
                        disks: BTreeMap::new(),
                        nics: Vec::new(),
                    },
                );
                Ok(domid)
            })
        }

        async fn unpause(&self, domid: u32) -> Result<(), HypervisorError> {
            self.with(|i| match i.domains.get_mut(&domid) {
                Some(d) => {
                    d.paused = false;
                    Ok(())
                }
                None => Err(HypervisorError::Unpause { domid, reason: "no such domain".into() }),
            })
        }

        async fn request_shutdown(&self, domid: u32) -> Result<(), HypervisorError> {
            self.with(|i| match i.domains.get_mut(&domid) {
                Some(d) => {
                    if !d.ignores_shutdown {
                        d.state = DomainRunState::Shutdown(ShutdownKind::Poweroff);
                    }
                    Ok(())
                }
                None => Err(HypervisorError::Shutdown { domid, reason: "no such domain".into() }),
            })
        }

        async fn wait_shutdown(
            &self,
            domid: u32,
            _timeout: std::time::Duration,
        ) -> Result<WaitOutcome, HypervisorError> {
            let gate = self.wait_gate.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(gate) = gate {
                gate.entered.notify_one();
                gate.resume.notified().await;
            }
            // Fake guests react at once: whatever state they are in now is the answer.
            Ok(self.with(|i| match i.domains.get(&domid).map(|d| (d.state, d.ignores_shutdown)) {
                None => WaitOutcome::Gone,
                Some((DomainRunState::Shutdown(k), _)) => WaitOutcome::ShutDown(k),
                Some(_) => WaitOutcome::StillRunning,
            }))
        }

        async fn destroy(&self, domid: u32) -> Result<(), HypervisorError> {
            self.with(|i| {
                if let Some(reason) = i.fail_next_destroy.take() {
                    return Err(HypervisorError::Destroy { domid, reason });
                }
                i.domains.remove(&domid);
                Ok(())
            })
        }

        async fn list(&self) -> Result<Vec<DomainObservation>, HypervisorError> {
            Ok(self.with(|i| {
                i.domains
                    .iter()
                    .map(|(domid, d)| DomainObservation {
                        domid: *domid,
                        uuid: d.request.uuid.clone(),
                        name: d.request.name.clone(),
                        state: d.state,
                        // A fake domain has used one millisecond of CPU per domain id, and all its memory.
                        cpu_time_ns: u64::from(*domid) * 1_000_000,
                        memory_kib: u64::from(d.request.memory_mib) * 1024,
                    })
                    .collect()
            }))
        }

        async fn attach_disk(&self, domid: u32, image: &std::path::Path, vdev: &str) -> Result<(), HypervisorError> {
            let fail = |reason: &str| HypervisorError::Disk {
                op: "attaching",
                domid,
                vdev: vdev.to_owned(),
                reason: reason.to_owned(),
            };
            self.with(|i| {
                let d = i.domains.get_mut(&domid).ok_or_else(|| fail("no such domain"))?;
                if d.disks.contains_key(vdev) {
                    return Err(fail("the device name is in use"));
                }
                d.disks.insert(vdev.to_owned(), image.to_owned());
                Ok(())
            })
        }

        async fn detach_disk(&self, domid: u32, vdev: &str) -> Result<(), HypervisorError> {
            self.with(|i| {
                let d = i.domains.get_mut(&domid);
                match d.and_then(|d| d.disks.remove(vdev)) {
                    Some(_) => Ok(()),
                    None => Err(HypervisorError::Disk {
                        op: "detaching",
                        domid,
                        vdev: vdev.to_owned(),
                        reason: "no such disk".into(),
                    }),
                }
            })
        }

        async fn attach_pod_nic(
            &self,
            domid: u32,
            network: &crate::network::ZoneNetwork,
        ) -> Result<(), HypervisorError> {
            self.with(|i| {
                let fail = |reason: String| HypervisorError::Nic { domid, reason };
                if let Some(reason) = i.fail_next_nic.take() {
                    return Err(fail(reason));
                }
                let d = i.domains.get_mut(&domid).ok_or_else(|| fail("no such domain".into()))?;
                if !d.paused {
                    return Err(fail("the domain already runs: its init would miss the NIC".into()));
                }
                d.nics.push(network.clone());
                Ok(())
            })
        }

        async fn serve_channel(&self, domid: u32) -> Result<ChannelStream, HypervisorError> {
            let (daemon_end, zone_end) = tokio::io::duplex(FAKE_CHANNEL_BUFFER);
            self.with(|i| {
                if !i.domains.contains_key(&domid) {
                    return Err(HypervisorError::Channel { domid, reason: "no such domain".into() });
                }
                if i.scripted_zones {
                    tokio::spawn(scripted_zone::run(zone_end));
                } else {
                    i.zone_ends.insert(domid, zone_end);
                }
                Ok(())
            })?;
            Ok(Box::new(daemon_end))
        }
    }

    /// A zone init in a few lines, for tests of everything above the channel: it says hello and runs every
    /// workload as: print "out:<argv[0]>\n" on stdout and "err\n" on stderr, then exit with the code in the
    /// last argument (or stay running if it is "run"); execs print their argv and exit 3; a workload's stats
    /// are 5 ms of CPU and 1 MiB of memory; every port-forward
    /// reaches an echo server that closes when the host half-closes. Volumes: a workload mounting a snapshot
    /// that was not sent is refused, as the real zone does, and a started workload prints
    /// "mount:<destination>:<bytes of file data in the volume, or emptydir>\n" per mount after its first line.
    pub mod scripted_zone {
        use std::collections::BTreeMap;

        use bulkhead_wire::{
            ErrorCode, ExitStatus, HostToZone, MountSource, OutputFd, PROTOCOL_VERSION, ResourceUsage, VolumeEntryKind,
            ZoneCodec, ZoneToHost,
        };
        use futures_util::{SinkExt, StreamExt};
        use tokio_util::codec::Framed;

        /// What a zone init says first.
        pub fn hello() -> ZoneToHost {
            ZoneToHost::Hello {
                protocol_version: PROTOCOL_VERSION,
                init_version: "test".into(),
                kernel_release: "test".into(),
                boot_time_ms: 1,
            }
        }

        /// A zone init that says hello and runs every workload as: print "out:<argv[0]>\n" on stdout and
        /// "err\n" on stderr, then exit with the code in the last argument (or stay running if it is "run").
        /// A running workload echoes its stdin on stdout and reports the end of its stdin as "stdin closed\n"
        /// on stderr.
        pub async fn run(io: tokio::io::DuplexStream) {
            let mut zone = Framed::new(io, ZoneCodec::new());
            if zone.send(hello()).await.is_err() {
                return;
            }
            let mut specs = BTreeMap::new();
            let mut forwards = std::collections::BTreeSet::new();
            let mut running = std::collections::BTreeSet::new();
            let mut volumes: BTreeMap<String, usize> = BTreeMap::new();
            while let Some(Ok(msg)) = zone.next().await {
                let replies = match msg {
                    HostToZone::VolumeData { volume, entries } => {
                        let bytes = volumes.entry(volume).or_default();
                        for e in entries {
                            match e.kind {
                                VolumeEntryKind::File { data, .. } => *bytes += data.len(),
                                VolumeEntryKind::Dir { .. } | VolumeEntryKind::Symlink { .. } => {}
                            }
                        }
                        vec![]
                    }
                    HostToZone::CreateWorkload { id, spec } => {
                        let missing = spec.mounts.iter().find_map(|m| match &m.source {
                            MountSource::Snapshot { volume } if !volumes.contains_key(volume) => Some(volume.clone()),
                            _ => None,
                        });
                        if let Some(volume) = missing {
                            vec![ZoneToHost::Error {
                                request: Some(id),
                                code: ErrorCode::FailedPrecondition,
                                message: format!("volume {volume} was not sent before the workload"),
                            }]
                        } else {
                            specs.insert(id, spec);
                            vec![ZoneToHost::WorkloadCreated { id }]
                        }
                    }
                    HostToZone::StartWorkload { id } => {
                        let Some(spec) = specs.get(&id) else { continue };
                        let mut r = vec![
                            ZoneToHost::WorkloadStarted { id, pid: 1 },
                            ZoneToHost::Output {
                                stream_id: id,
                                fd: OutputFd::Stdout,
                                data: format!("out:{}\n", spec.argv[0]).into(),
                            },
                            ZoneToHost::Output { stream_id: id, fd: OutputFd::Stderr, data: "err\n".into() },
                        ];
                        for m in &spec.mounts {
                            let what = match &m.source {
                                MountSource::Snapshot { volume } => {
                                    volumes.get(volume).copied().unwrap_or(0).to_string()
                                }
                                MountSource::EmptyDir { .. } => "emptydir".to_owned(),
                            };
                            let data = format!("mount:{}:{what}\n", m.destination).into();
                            r.push(ZoneToHost::Output { stream_id: id, fd: OutputFd::Stdout, data });
                        }
                        match spec.argv.last().map(String::as_str) {
                            Some("run") => {
                                running.insert(id);
                            }
                            last => {
                                let code = last.and_then(|c| c.parse().ok()).unwrap_or(0);
                                r.push(ZoneToHost::Exited { stream_id: id, status: ExitStatus::Code(code) });
                            }
                        }
                        r
                    }
                    HostToZone::Signal { id, signal } => {
                        running.remove(&id);
                        vec![ZoneToHost::Exited {
                            stream_id: id,
                            status: ExitStatus::Signaled { signal, core_dumped: false },
                        }]
                    }
                    HostToZone::Exec { exec_id, argv, .. } => vec![
                        ZoneToHost::ExecStarted { exec_id, pid: 2 },
                        ZoneToHost::Output { stream_id: exec_id, fd: OutputFd::Stdout, data: argv.join(" ").into() },
                        ZoneToHost::Exited { stream_id: exec_id, status: ExitStatus::Code(3) },
                    ],
                    HostToZone::RemoveWorkload { id } => vec![ZoneToHost::WorkloadRemoved { id }],
                    // Every port has an echo server; closing the write side closes the connection.
                    HostToZone::GetStats { id } => {
                        vec![ZoneToHost::Stats {
                            id,
                            usage: ResourceUsage { cpu_usage_ns: 5_000_000, memory_bytes: 1 << 20 },
                        }]
                    }
                    HostToZone::UpdateLimits { id, .. } => vec![ZoneToHost::LimitsUpdated { id }],
                    HostToZone::PortForward { stream_id, .. } => {
                        forwards.insert(stream_id);
                        vec![ZoneToHost::PortForwardConnected { stream_id }]
                    }
                    HostToZone::Stdin { stream_id, data } if forwards.contains(&stream_id) => {
                        vec![ZoneToHost::Output { stream_id, fd: OutputFd::Stdout, data }]
                    }
                    HostToZone::CloseStdin { stream_id } if forwards.remove(&stream_id) => {
                        vec![ZoneToHost::Exited { stream_id, status: ExitStatus::Code(0) }]
                    }
                    HostToZone::Stdin { stream_id, data } if running.contains(&stream_id) => {
                        vec![ZoneToHost::Output { stream_id, fd: OutputFd::Stdout, data }]
                    }
                    HostToZone::CloseStdin { stream_id } if running.contains(&stream_id) => {
                        vec![ZoneToHost::Output { stream_id, fd: OutputFd::Stderr, data: "stdin closed\n".into() }]
                    }
                    _ => vec![],
                };
                for r in replies {
                    if zone.send(r).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
