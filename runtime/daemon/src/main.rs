//! `bulkheadd`, the node daemon. See the library's docs; this file wires configuration, logging, libxl, the
//! reconciler and the API server together.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bulkhead_oci::{ImageStore, ImageStoreConfig};
use bulkhead_store::RecordStore;
use bulkheadd::api::{bind_control_socket, services};
use bulkheadd::config::{Config, DEFAULT_CONFIG_PATH};
use bulkheadd::manager::ZoneManager;
use bulkheadd::workloads::WorkloadManager;
use bulkheadd::xen::{LibxlHypervisor, release_events};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A safety net behind the event-driven reconcile (a lost watch event must not leave a zone wrong forever).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(name = "bulkheadd", version, about = "Bulkhead's node daemon: runs each zone as a Xen VM")]
struct Args {
    /// Configuration file (absent = defaults).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
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
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("bulkheadd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    // libxl installs its SIGCHLD handler when the context is created and asserts that it was the first one:
    // open it before the async runtime (or anything else) exists.
    let hv = LibxlHypervisor::open().context("opening libxl: is this dom0 of a Xen host with xenstored running?")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(cfg, hv))
}

async fn serve(cfg: Config, hv: LibxlHypervisor) -> anyhow::Result<()> {
    let store = RecordStore::open(cfg.state_dir.join("zones"))
        .with_context(|| format!("opening the state directory {}", cfg.state_dir.display()))?;
    let manager = Arc::new(ZoneManager::open(hv, store, cfg.manager()).await.context("loading zones")?);
    let images_dir = cfg.state_dir.join("images");
    let images = Arc::new(
        ImageStore::open(ImageStoreConfig { registries: cfg.registries(), ..ImageStoreConfig::new(&images_dir) })
            .await
            .with_context(|| format!("opening the image store {}", images_dir.display()))?,
    );
    let workloads = WorkloadManager::open(manager.clone(), images.clone(), &cfg.state_dir)
        .with_context(|| format!("loading workloads from {}", cfg.state_dir.display()))?;
    // Zones that ran through a daemon restart reconnect now; their workloads are routed before they do.
    manager.resume().await;
    let incoming = bind_control_socket(&cfg.control_socket)
        .with_context(|| format!("binding the control socket {}", cfg.control_socket.display()))?;

    let stop = CancellationToken::new();
    let reconciler = tokio::spawn(reconcile_loop(manager.clone(), stop.clone()));
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            stop.cancel();
        }
    };
    tracing::info!(socket = %cfg.control_socket.display(), "serving the control API");
    // The socket listens and clients' connections queue from here on: tell systemd (Type=notify) that the
    // daemon is ready, so units ordered after it (and `systemctl start`) wait until the CLI can connect.
    // Outside systemd ($NOTIFY_SOCKET unset) this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd that the daemon is ready failed");
    }
    let served = tonic::transport::Server::builder()
        .add_routes(services(manager.clone(), images, workloads))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    stop.cancel();
    let _ = reconciler.await;
    // Zones keep running: they are VMs, not children of the daemon. A restarted daemon finds them again.
    served.context("serving the control API")
}

/// Reconciles whenever a domain shuts down or goes away, and every [`RECONCILE_INTERVAL`] regardless.
async fn reconcile_loop(manager: Arc<ZoneManager<LibxlHypervisor>>, stop: CancellationToken) {
    let (mut released, watch) = release_events();
    let mut watching = true;
    loop {
        match manager.reconcile().await {
            Ok(r) if r != Default::default() => tracing::info!(report = ?r, "reconciled"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconcile failed; retrying at the next event or interval"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            ev = released.recv(), if watching => {
                if ev.is_none() {
                    watching = false;
                    tracing::error!("the xenstore watch on domain releases ended; reconciling on the interval only");
                }
            }
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
    drop(released);
    let _ = watch.await;
}
