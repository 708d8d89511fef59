//! Domain lifecycle against a live Xen (run inside the test bed's dom0 with
//! `--ignored`). Each test prints its timings; every test destroys the
//! domains it created by name, even when it fails.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::*;
use crate::info::{DomainInfo, DomainType, ShutdownReason};

/// Print past the test harness's output capture (the dom0 runner does not
/// pass `--nocapture`, and the timings are wanted from passing tests too).
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use report;

pub(crate) const ZONE_KERNEL: &str = "/usr/lib/bulkhead/zone/kernel";
const ZONE_INITRD: &str = "/usr/lib/bulkhead/zone/initrd";

/// Forward libxl's log (and this crate's) to stderr, past the capture, at
/// `info` and above (`RUST_LOG` overrides).
pub(crate) fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,bulkhead_xen=info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    });
}

/// Run `body`, then destroy any domain still called `name`.
pub(crate) fn with_cleanup(
    xl: &mut Libxl,
    name: &str,
    body: impl FnOnce(&mut Libxl) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    init_logging();
    let r = catch_unwind(AssertUnwindSafe(|| body(xl)));
    if r.as_ref().map_or(true, |r| r.is_err()) {
        print_console(name);
    }
    for d in xl.list_domains().unwrap_or_default() {
        if d.name.as_deref() == Some(name) {
            report!("cleanup: destroying leftover domain {} ({name})", d.domid);
            let _ = xl.domain_destroy(d.domid);
        }
    }
    match r {
        Ok(r) => r,
        Err(panic) => resume_unwind(panic),
    }
}
/// Poll `pred` every 50 ms for up to `timeout`; returns how long it took.
pub(crate) fn wait_until(
    timeout: std::time::Duration,
    mut pred: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Option<std::time::Duration>> {
    let t = std::time::Instant::now();
    while t.elapsed() < timeout {
        if pred()? {
            return Ok(Some(t.elapsed()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(None)
}

pub(crate) fn console_log(name: &str) -> String {
    std::fs::read_to_string(format!("/var/log/xen/console/guest-{name}.log")).unwrap_or_default()
}

pub(crate) fn print_console(name: &str) {
    let log = console_log(name);
    let lines: Vec<&str> = log.lines().collect();
    report!("--- last console lines of {name} ({} total) ---", lines.len());
    for l in &lines[lines.len().saturating_sub(15)..] {
        report!("    {l}");
    }
    let hotplug = std::fs::read_to_string("/var/log/xen/xen-hotplug.log").unwrap_or_default();
    let lines: Vec<&str> = hotplug.lines().collect();
    report!("--- last xen-hotplug.log lines ({} total) ---", lines.len());
    for l in &lines[lines.len().saturating_sub(30)..] {
        report!("    {l}");
    }
}

/// Poll `domain_info` every 50 ms until `pred` holds or `timeout` passes.
fn wait_for(
    xl: &mut Libxl,
    domid: u32,
    timeout: Duration,
    pred: impl Fn(&DomainInfo) -> bool,
) -> anyhow::Result<(DomainInfo, Duration)> {
    let start = Instant::now();
    loop {
        let info = xl.domain_info(domid)?;
        if pred(&info) {
            return Ok((info, start.elapsed()));
        }
        if start.elapsed() > timeout {
            anyhow::bail!("domain {domid} still {} after {timeout:?}", info.state);
        }
        sleep(Duration::from_millis(50));
    }
}

pub(crate) fn create_timed(xl: &mut Libxl, spec: &DomainSpec) -> anyhow::Result<u32> {
    let t = Instant::now();
    let domid = xl.domain_create(spec)?;
    report!("{}: domain_create -> domid {domid} in {:?}", spec.name, t.elapsed());
    Ok(domid)
}

pub(crate) fn destroy_and_check_gone(xl: &mut Libxl, domid: u32) -> anyhow::Result<()> {
    let t = Instant::now();
    xl.domain_destroy(domid)?;
    report!("domain_destroy({domid}) in {:?}", t.elapsed());
    anyhow::ensure!(xl.list_domains()?.iter().all(|d| d.domid != domid), "domain {domid} still listed");
    match xl.domain_info(domid) {
        Err(Error::DomainInfo { code, .. }) if code.0 == sys::ERROR_DOMAIN_NOTFOUND => Ok(()),
        other => anyhow::bail!("domain_info after destroy: {other:?}"),
    }
}

/// Unpause and wait for the domain to shut down; returns the reason.
fn run_until_shutdown(xl: &mut Libxl, domid: u32, timeout: Duration) -> anyhow::Result<Option<ShutdownReason>> {
    xl.domain_unpause(domid)?;
    let (info, dt) = wait_for(xl, domid, timeout, |i| i.state.shutdown)?;
    report!(
        "domain {domid}: unpause -> shutdown ({:?}) in {dt:?}, cpu time {:.2}s",
        info.state.shutdown_reason,
        info.cpu_time_ns as f64 / 1e9
    );
    Ok(info.state.shutdown_reason)
}

#[test]
#[ignore = "needs xen"]
fn pv_without_rootfs_is_created_paused_and_crashes() -> anyhow::Result<()> {
    let name = "bh-test-pv-crash";
    let mut xl = Libxl::new()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        let info = xl.domain_info(domid)?;
        report!(
            "{name}: after create: state {} type {:?} mem {} KiB max {} KiB vcpus {}",
            info.state,
            info.domain_type,
            info.current_memkb,
            info.max_memkb,
            info.vcpu_max_id + 1
        );
        assert!(info.state.paused, "created paused: {}", info.state);
        assert!(!info.state.shutdown && !info.state.running);
        assert_eq!(info.domain_type, DomainType::Pv);
        assert_eq!(info.name.as_deref(), Some(name));
        assert_ne!(info.uuid, crate::Uuid::default());
        assert_eq!(info.vcpu_max_id, 0);
        // Stays paused: nothing in libxl unpauses it behind our back.
        sleep(Duration::from_millis(500));
        let info = xl.domain_info(domid)?;
        assert!(
            info.state.paused && info.cpu_time_ns == 0,
            "still paused, never ran: {} {}ns",
            info.state,
            info.cpu_time_ns
        );

        let reason = run_until_shutdown(xl, domid, Duration::from_secs(60))?;
        assert_eq!(reason, Some(ShutdownReason::Crash));
        let log = console_log(name);
        report!("{name}: console mentions panic: {}", log.contains("Kernel panic"));
        // libxl does not act on on_crash: the crashed domain stays until destroyed.
        sleep(Duration::from_millis(500));
        assert!(xl.domain_info(domid)?.state.shutdown);
        destroy_and_check_gone(xl, domid)
    })
}

#[test]
#[ignore = "needs xen"]
fn pv_with_zone_initrd_powers_off() -> anyhow::Result<()> {
    if !Path::new(ZONE_INITRD).exists() {
        report!("SKIP: {ZONE_INITRD} is absent; the poweroff self-test cannot run");
        return Ok(());
    }
    let name = "bh-test-pv-initrd";
    let mut xl = Libxl::new()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 128,
            ramdisk: Some(ZONE_INITRD.into()),
            cmdline: "console=hvc0 bulkhead.selftest=poweroff bulkhead.zone=t bulkhead.hostname=t".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        assert!(xl.domain_info(domid)?.state.paused);
        let reason = run_until_shutdown(xl, domid, Duration::from_secs(60))?;
        if reason != Some(ShutdownReason::Poweroff) {
            print_console(name);
        }
        assert_eq!(reason, Some(ShutdownReason::Poweroff));
        destroy_and_check_gone(xl, domid)
    })
}

#[test]
#[ignore = "needs xen"]
fn pvh_domain_is_created() -> anyhow::Result<()> {
    let name = "bh-test-pvh";
    let uuid =
        crate::Uuid([0x5a, 0x0e, 0x11, 0x22, 0x33, 0x44, 0x45, 0x66, 0x87, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    let mut xl = Libxl::new()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 64,
            vcpus: 2,
            uuid: Some(uuid),
            cmdline: "console=hvc0".into(),
            ..DomainSpec::new(name, DomainKind::Pvh, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        let listed = xl.list_domains()?.into_iter().find(|d| d.domid == domid);
        let Some(d) = listed else { anyhow::bail!("domain {domid} not listed") };
        report!(
            "{name}: listed as {:?}, state {}, uuid {}, vcpus {}",
            d.domain_type,
            d.state,
            d.uuid,
            d.vcpu_max_id + 1
        );
        assert_eq!(d.domain_type, DomainType::Pvh);
        assert_eq!(d.uuid, uuid);
        assert_eq!(d.vcpu_max_id, 1);
        assert!(d.state.paused);

        // A second domain with the same name is refused by libxl, and
        // nothing is left behind.
        let before = xl.list_domains()?.len();
        match xl.domain_create(&spec) {
            Err(Error::DomainCreate { name: n, code }) => report!("duplicate name refused: {code} ({n})"),
            other => anyhow::bail!("duplicate create: {other:?}"),
        }
        assert_eq!(xl.list_domains()?.len(), before);
        destroy_and_check_gone(xl, domid)
    })
}

#[test]
#[ignore = "needs xen"]
fn graceful_shutdown_of_a_running_domain() -> anyhow::Result<()> {
    // No userspace is needed: with rootdelay the kernel sits in
    // prepare_namespace() (system_state SCHEDULING), where Linux's Xen
    // shutdown handler forces the power-off once /sbin/poweroff cannot run.
    let name = "bh-test-pv-shutdown";
    let mut xl = Libxl::new()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0 rootdelay=600".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        xl.domain_unpause(domid)?;
        let t = Instant::now();
        while !console_log(name).contains("before mounting root") && t.elapsed() < Duration::from_secs(40) {
            sleep(Duration::from_millis(100));
        }
        report!(
            "{name}: kernel waiting for root after {:?} (seen in console: {})",
            t.elapsed(),
            console_log(name).contains("before mounting root")
        );
        let info = xl.domain_info(domid)?;
        assert!(!info.state.shutdown && !info.state.paused, "running: {}", info.state);

        let t = Instant::now();
        xl.domain_shutdown(domid)?;
        report!("{name}: domain_shutdown acknowledged in {:?}", t.elapsed());
        let (info, dt) = wait_for(xl, domid, Duration::from_secs(60), |i| i.state.shutdown)?;
        report!("{name}: shut down ({:?}) {dt:?} after the acknowledgement", info.state.shutdown_reason);
        assert_eq!(info.state.shutdown_reason, Some(ShutdownReason::Poweroff));
        destroy_and_check_gone(xl, domid)
    })
}

#[test]
#[ignore = "needs xen"]
fn operations_on_unknown_or_forbidden_domains_fail_typed() -> anyhow::Result<()> {
    let mut xl = Libxl::new()?;
    let unknown = 31_999;
    match xl.domain_destroy(unknown) {
        Err(Error::DomainDestroy { domid, code }) => {
            assert_eq!(domid, unknown);
            report!("destroy of unknown domid: {code}");
        }
        other => anyhow::bail!("destroy of unknown domid: {other:?}"),
    }
    match xl.domain_unpause(unknown) {
        Err(Error::DomainUnpause { code, .. }) => report!("unpause of unknown domid: {code}"),
        other => anyhow::bail!("unpause of unknown domid: {other:?}"),
    }
    match xl.domain_shutdown(unknown) {
        Err(Error::DomainShutdown { code, .. }) => report!("shutdown of unknown domid: {code}"),
        other => anyhow::bail!("shutdown of unknown domid: {other:?}"),
    }
    assert!(matches!(xl.domain_destroy(0), Err(Error::NotAGuestDomain { domid: 0, .. })));
    assert!(xl.domain_info(0).is_ok(), "dom0 untouched");
    // A kernel that does not exist fails the create and leaves nothing.
    let before = xl.list_domains()?.len();
    let spec =
        DomainSpec { memory_mib: 64, ..DomainSpec::new("bh-test-nokernel", DomainKind::Pv, "/nonexistent/kernel") };
    match xl.domain_create(&spec) {
        Err(Error::DomainCreate { code, .. }) => report!("create with missing kernel: {code}"),
        other => anyhow::bail!("create with missing kernel: {other:?}"),
    }
    assert_eq!(xl.list_domains()?.len(), before);
    Ok(())
}

#[test]
#[ignore = "needs xen"]
fn worker_lifecycle() -> anyhow::Result<()> {
    let name = "bh-test-worker";
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let xl = LibxlWorker::spawn()?;
    let r = rt.block_on(async {
        let spec = DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let t = Instant::now();
        let domid = xl.domain_create(spec).await?;
        report!("{name}: worker domain_create -> {domid} in {:?}", t.elapsed());
        anyhow::ensure!(xl.domain_info(domid).await?.state.paused);
        xl.domain_unpause(domid).await?;
        xl.domain_pause(domid).await?;
        anyhow::ensure!(xl.domain_info(domid).await?.state.paused);
        xl.domain_destroy(domid).await?;
        anyhow::ensure!(xl.list_domains().await?.iter().all(|d| d.domid != domid));
        Ok(())
    });
    if r.is_err() {
        let _ = xl.call_blocking(move |ctx| {
            for d in ctx.list_domains().unwrap_or_default() {
                if d.name.as_deref() == Some(name) {
                    let _ = ctx.domain_destroy(d.domid);
                }
            }
        });
    }
    r
}

/// A loop device over a sparse file in dom0, detached and removed on drop.
pub(crate) struct LoopDevice {
    pub(crate) dev: String,
    file: std::path::PathBuf,
}

impl LoopDevice {
    pub(crate) fn new(tag: &str, size_mib: u64) -> anyhow::Result<Self> {
        let file = std::env::temp_dir().join(format!("bulkhead-{tag}.img"));
        std::fs::File::create(&file)?.set_len(size_mib << 20)?;
        let out = std::process::Command::new("losetup").arg("-f").arg("--show").arg(&file).output()?;
        anyhow::ensure!(out.status.success(), "losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(LoopDevice { dev, file })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
#[ignore = "needs xen"]
fn pv_disk_is_attached_and_connected() -> anyhow::Result<()> {
    let name = "bh-test-pv-disk";
    let lo = LoopDevice::new(name, 16)?;
    let mut xl = Libxl::new()?;
    let xs = crate::Xenstore::open()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 64,
            cmdline: "console=hvc0 rootdelay=600".into(),
            disks: vec![DiskSpec { backend_path: lo.dev.clone().into(), vdev: "xvda".into(), read_only: true }],
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        // Creation runs the block hotplug script (a libxl child process,
        // reaped under the selective-reap SIGCHLD mode).
        let domid = create_timed(xl, &spec)?;
        // xvda = major 202, minor 0 -> devid 51712.
        let be = format!("/local/domain/0/backend/vbd/{domid}/51712");
        let params = xs.read_string(&format!("{be}/params"))?;
        let mode = xs.read_string(&format!("{be}/mode"))?;
        report!("{name}: backend {be}: params {params} mode {mode}");
        assert_eq!(params, lo.dev);
        assert_eq!(mode, "r");
        xl.domain_unpause(domid)?;
        let t = Instant::now();
        let mut state = String::new();
        while t.elapsed() < Duration::from_secs(60) {
            state = xs
                .try_read(&format!("{be}/state"))?
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if state == "4" {
                break;
            }
            sleep(Duration::from_millis(100));
        }
        report!("{name}: backend state {state} (4 = connected) {:?} after unpause", t.elapsed());
        assert_eq!(state, "4", "blkfront connected");
        destroy_and_check_gone(xl, domid)?;
        assert_eq!(xs.try_read(&be)?, None, "backend removed on destroy");
        Ok(())
    })
}

/// Report-only probe (asserts nothing about the guest): does a running zone
/// init honour `libxl_domain_shutdown`? Linux turns the request into a
/// `/sbin/poweroff` usermode-helper call once userspace runs.
#[test]
#[ignore = "needs xen"]
fn probe_shutdown_request_to_running_zone_init() -> anyhow::Result<()> {
    if !Path::new(ZONE_INITRD).exists() {
        report!("SKIP: {ZONE_INITRD} is absent");
        return Ok(());
    }
    let name = "bh-test-probe-init";
    let mut xl = Libxl::new()?;
    with_cleanup(&mut xl, name, |xl| {
        let spec = DomainSpec {
            memory_mib: 128,
            ramdisk: Some(ZONE_INITRD.into()),
            cmdline: "console=hvc0 bulkhead.zone=t bulkhead.hostname=t".into(),
            ..DomainSpec::new(name, DomainKind::Pv, ZONE_KERNEL)
        };
        let domid = create_timed(xl, &spec)?;
        xl.domain_unpause(domid)?;
        sleep(Duration::from_secs(6));
        let info = xl.domain_info(domid)?;
        report!("{name}: 6 s after unpause: {}", info.state);
        if info.state.shutdown {
            report!("{name}: zone init without selftest shut down by itself ({:?})", info.state.shutdown_reason);
            print_console(name);
            return destroy_and_check_gone(xl, domid);
        }
        let t = Instant::now();
        let ack = xl.domain_shutdown(domid);
        report!("{name}: domain_shutdown -> {:?} after {:?}", ack.as_ref().map_err(ToString::to_string), t.elapsed());
        match wait_for(xl, domid, Duration::from_secs(20), |i| i.state.shutdown) {
            Ok((info, dt)) => report!("{name}: shut down ({:?}) {dt:?} after the request", info.state.shutdown_reason),
            Err(e) => {
                report!("{name}: did NOT shut down within 20 s of the request: {e}");
                print_console(name);
            }
        }
        destroy_and_check_gone(xl, domid)
    })
}
