//! `bulkhead-cri`: serves CRI v1 on a unix socket for kubelet, backed by bulkheadd.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bulkhead_cri::{DEFAULT_DAEMON_SOCKET, DEFAULT_IMAGE_STORE, DEFAULT_SOCKET, Settings};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

mod overhead_check;
mod security_check;
mod smoke;

#[derive(Debug, Parser)]
#[command(name = "bulkhead-cri", version, about = "Bulkhead's CRI v1 server: runs each pod in its own Xen zone")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The socket kubelet connects to (--container-runtime-endpoint=unix://...).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// bulkheadd's control socket.
    #[arg(long, default_value = DEFAULT_DAEMON_SOCKET)]
    daemon_socket: PathBuf,
    /// bulkheadd's image store, whose disk use ImageFsInfo reports.
    #[arg(long, default_value = DEFAULT_IMAGE_STORE)]
    image_store: PathBuf,
    /// Memory of a zone whose pod sets no memory limit, MiB (the RuntimeClass overhead is added).
    #[arg(long, default_value_t = 256)]
    default_memory_mib: u32,
    /// The part of a pod's RuntimeClass overhead the node spends outside the zone (Xen's per-domain memory,
    /// dom0's per-zone memory), MiB: the zone gets the rest. Measured by ci/bench/zone-overhead.sh.
    #[arg(long, default_value_t = bulkhead_cri::sandbox::HOST_OVERHEAD_MIB)]
    zone_host_overhead_mib: u32,
    /// Where the streaming server (Exec, Attach, PortForward) listens; kubelet connects to it (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_address: std::net::SocketAddr,
    /// How long RunPodSandbox waits for a zone to boot, seconds.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// The CNI conf dir: its lowest-sorted *.conflist, *.conf or *.json is the pod network.
    #[arg(long, default_value = bulkhead_cni::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// A dir of CNI plugin binaries; repeat for several, searched in order.
    #[arg(long = "cni-bin-dir", default_values = bulkhead_cni::DEFAULT_BIN_DIRS)]
    cni_bin_dirs: Vec<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs kubelet's sequence of CRI calls with a real pod of two containers against --socket, checks every
    /// answer, removes what it made, and prints the pod start latency. Exits non-zero at the first failure.
    SmokeTest {
        /// An image with /bin/busybox (sh, nc, cat; run as /bin/busybox APPLET where no link exists): a reference
        /// or id; pulled if not present.
        #[arg(long)]
        image: String,
        /// Where the pod's container logs go.
        #[arg(long, default_value = "/var/log/pods")]
        log_dir: PathBuf,
    },
    /// Runs containers with kubelet's security settings (capabilities, no_new_privs, seccomp, masked and
    /// read-only paths, privileged) in a real pod against --socket and checks from inside each container and
    /// an exec into it that they hold. Exits non-zero at the first failure.
    SecurityCheck {
        /// An image with /bin/sh and /bin/busybox (applets run as `busybox APPLET`).
        #[arg(long)]
        image: String,
        /// Where the pod's logs and the Localhost seccomp profile go.
        #[arg(long, default_value = "/var/lib/bulkhead-cri/security-check")]
        work_dir: PathBuf,
    },
    /// Checks that a RuntimeClass's pod overhead is honest on this node (run in dom0): a real pod with a
    /// memory limit and that overhead must let its containers use the whole limit, and cost the node no more
    /// than limit + overhead. Prints the figures; exits non-zero when either side fails.
    OverheadCheck {
        /// An image with /bin/busybox.
        #[arg(long)]
        image: String,
        /// The RuntimeClass's overhead.podFixed.memory, MiB.
        #[arg(long)]
        overhead_mib: u32,
        /// The pod's memory limit, MiB.
        #[arg(long, default_value_t = 64)]
        limit_mib: u32,
        /// Where the pod's logs go.
        #[arg(long, default_value = "/var/log/pods")]
        log_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulkhead-cri: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        Some(Command::SmokeTest { ref image, ref log_dir }) => {
            let t = smoke::SmokeTest { socket: args.socket.clone(), image: image.clone(), log_dir: log_dir.clone() };
            rt.block_on(smoke::run(&t)).map(|f| {
                println!("smoke test passed");
                println!("figure: RunPodSandbox {:.2} s", f.run_sandbox.as_secs_f64());
                println!("figure: pod start to first output {:.2} s", f.pod_to_first_output.as_secs_f64());
                println!(
                    "figure: CreateContainer with a 1 MiB configMap {:.2} s, with etc-hosts and an emptyDir {:.2} s",
                    f.create_with_1mib_volume.as_secs_f64(),
                    f.create_with_small_volumes.as_secs_f64()
                );
            })
        }
        Some(Command::SecurityCheck { ref image, ref work_dir }) => {
            let t = security_check::SecurityCheck {
                socket: args.socket.clone(),
                image: image.clone(),
                work_dir: work_dir.clone(),
            };
            rt.block_on(security_check::run(&t)).map(|()| println!("security check passed"))
        }
        Some(Command::OverheadCheck { ref image, overhead_mib, limit_mib, ref log_dir }) => {
            let c = overhead_check::OverheadCheck {
                socket: args.socket.clone(),
                daemon_socket: args.daemon_socket.clone(),
                image: image.clone(),
                overhead_mib,
                limit_mib,
                log_dir: log_dir.clone(),
            };
            rt.block_on(overhead_check::run(&c)).map(|f| {
                println!(
                    "figure: pod of {limit_mib} MiB + {overhead_mib} MiB overhead: Xen {} KiB, dom0 {} KiB, \
                     zone MemAvailable {} KiB",
                    f.xen_kib, f.dom0_kib, f.zone_available_kib
                );
                println!("overhead check passed");
            })
        }
        None => rt.block_on(run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bulkhead-cri: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds kubelet's socket (root only: CRI can run anything on the node), replacing a stale one.
fn bind(path: &std::path::Path) -> anyhow::Result<UnixListenerStream> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale socket {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(UnixListenerStream::new(listener))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = Settings { image_store: args.image_store, ..Settings::default() };
    settings.runtime.defaults.memory_mib = args.default_memory_mib;
    settings.runtime.defaults.host_overhead_mib = args.zone_host_overhead_mib;
    settings.runtime.boot_timeout = Duration::from_secs(args.boot_timeout);
    settings.runtime.cni.conf_dir = args.cni_conf_dir;
    settings.runtime.cni.bin_dirs = args.cni_bin_dirs;
    let daemon = bulkhead_cri::daemon_channel(&args.daemon_socket);
    let stop = tokio_util::sync::CancellationToken::new();
    let config = bulkhead_streaming::Config { listen: args.streaming_address, ..Default::default() };
    let streams = bulkhead_cri::start_streaming(daemon.clone(), config, stop.clone())
        .await
        .with_context(|| format!("starting the streaming server on {}", args.streaming_address))?;
    let incoming = bind(&args.socket)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    };
    tracing::info!(socket = %args.socket.display(), daemon = %args.daemon_socket.display(), "serving CRI v1");
    // The socket listens (kubelet's connections queue from here on): tell systemd (Type=notify), so kubelet,
    // ordered after this unit, starts against a live socket. Outside systemd ($NOTIFY_SOCKET unset) a no-op.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd that the CRI server is ready failed");
    }
    tonic::transport::Server::builder()
        .add_routes(bulkhead_cri::services(daemon, settings, streams))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving CRI")?;
    stop.cancel();
    Ok(())
}
