//! `bulkhead`, the command-line client of bulkheadd. The binary parses arguments and calls [`run`]; each
//! command group lives in `commands/`, output formatting in `format`, pull progress in `progress`.

pub mod commands;
pub mod format;
pub mod progress;
pub mod systemd;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
use clap::{Parser, Subcommand};
use tonic::transport::Channel;

/// The daemon's control socket unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bulkhead/control.sock";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "bulkhead", version, about = "Run and inspect Bulkhead zones (each a Xen VM) on this node")]
pub struct Cli {
    /// bulkheadd's control socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET, env = "BULKHEAD_SOCKET")]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Zones: the VMs workloads run in.
    #[command(subcommand)]
    Zone(commands::zone::ZoneCommand),
    /// Images: the read-only root filesystems workloads run from.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Readiness: can this machine be a node (preinstall), is it a working one (postinstall)?
    #[command(subcommand)]
    Check(commands::check::CheckCommand),
    /// This node's own OS: A/B image upgrades with rollback (needs no bulkheadd).
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
}

/// Connects to bulkheadd over its unix socket.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    bulkhead_api::client::connect_unix(socket).await.with_context(|| {
        format!(
            "cannot reach bulkheadd at {}: is it running (systemctl status bulkheadd), and are you root?",
            socket.display()
        )
    })
}

/// Runs one command, writing results to `out`; returns the process exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<i32> {
    match cli.command {
        Command::Zone(cmd) => commands::zone::run(cmd, connect(&cli.socket).await?, out).await,
        Command::Image(cmd) => {
            commands::image::run(cmd, ImageServiceClient::new(connect(&cli.socket).await?), out).await
        }
        // Needs no daemon: reporting one that does not answer is part of its job.
        Command::Check(cmd) => commands::check::run(cmd, &cli.socket, out).await,
        Command::Node(cmd) => commands::node::run(cmd, out).await,
    }
}
