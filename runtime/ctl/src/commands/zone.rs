//! `bulkhead zone ...`.

use std::collections::BTreeMap;
use std::io::Write;

use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::zone_service_client::ZoneServiceClient;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use super::rpc_error;
use crate::format::{OutputFormat, write_json, write_table};

/// Zone commands.
#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// Record a zone without booting it.
    Create(CreateArgs),
    /// Boot a recorded zone.
    Start(ZoneRef),
    /// Power a zone off (graceful, then forced after --timeout).
    Stop(StopArgs),
    /// Destroy a zone at once and forget it (succeeds if it is already gone).
    Destroy(ZoneRef),
    /// Show one zone.
    Get(GetArgs),
    /// List zones.
    List(ListArgs),
    /// Create and start a zone running one workload from an image.
    Launch(super::workload::LaunchArgs),
    /// Print a zone's workload output.
    Logs(super::workload::LogsArgs),
    /// Run a command in a zone's workload.
    Exec(super::workload::ExecArgs),
    /// Send a signal to a zone's workload.
    Kill(super::workload::KillArgs),
    /// Wait for a zone's workload to exit, and exit with its code.
    Wait(super::workload::WaitArgs),
}

/// Virtualization mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Virt {
    /// PVH where the node can, else PV.
    Auto,
    /// Paravirtualized.
    Pv,
    /// PVH (needs VT-x/AMD-V with HAP).
    Pvh,
}

/// `zone create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Zone name (a DNS label).
    pub name: String,
    /// Memory, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Virtualization mode.
    #[arg(long, value_enum, default_value_t = Virt::Auto)]
    pub virt: Virt,
    /// Extra guest kernel argument (repeatable).
    #[arg(long = "kernel-arg")]
    pub kernel_args: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Boot it right away.
    #[arg(long)]
    pub start: bool,
}

/// A zone named by id or name.
#[derive(Debug, Args)]
pub struct ZoneRef {
    /// Zone name or id.
    pub zone: String,
}

/// `zone stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Zone name or id.
    pub zone: String,
    /// Seconds to wait for a graceful power-off before destroying.
    #[arg(long, default_value_t = 30)]
    pub timeout: u32,
}

/// `zone get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Zone name or id.
    pub zone: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `zone list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only zones with label KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "selector", value_parser = parse_key_value)]
    pub selector: Vec<(String, String)>,
}

impl Virt {
    /// The API's value.
    pub fn to_pb(self) -> pb::VirtMode {
        match self {
            Virt::Auto => pb::VirtMode::Auto,
            Virt::Pv => pb::VirtMode::Pv,
            Virt::Pvh => pb::VirtMode::Pvh,
        }
    }
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// A zone as the CLI prints it (also the JSON shape of `-o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// State, lowercase.
    pub state: String,
    /// Xen domain id, if any.
    pub domid: Option<u32>,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Mode the domain runs in (once started).
    pub virt_mode: Option<String>,
    /// Why that mode.
    pub virt_mode_reason: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// The zone init's version, once it connected.
    pub init_version: Option<String>,
    /// The zone kernel's release, once its init connected.
    pub kernel_release: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_ascii_lowercase()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::ZoneStatus> for ZoneView {
    fn from(z: pb::ZoneStatus) -> Self {
        let state = enum_name(z.state().as_str_name(), "ZONE_STATE_");
        let virt =
            (z.virt_mode() != pb::VirtMode::Unspecified).then(|| enum_name(z.virt_mode().as_str_name(), "VIRT_MODE_"));
        let spec = z.spec.unwrap_or_default();
        ZoneView {
            id: z.id,
            name: spec.name,
            state,
            domid: (z.domid != 0).then_some(z.domid),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            virt_mode: virt,
            virt_mode_reason: non_empty(z.virt_mode_reason),
            failure_reason: non_empty(z.failure_reason),
            init_version: non_empty(z.init_version),
            kernel_release: non_empty(z.kernel_release),
            labels: spec.labels.into_iter().collect(),
        }
    }
}

fn print_zones(out: &mut dyn Write, zones: Vec<ZoneView>, format: OutputFormat) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => write_json(out, &zones),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = zones
                .into_iter()
                .map(|z| {
                    let domid = z.domid.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
                    let note = z.failure_reason.or(z.virt_mode_reason).unwrap_or_default();
                    let virt = z.virt_mode.unwrap_or_else(|| "-".into());
                    vec![z.name, z.state, domid, z.memory_mib.to_string(), z.vcpus.to_string(), virt, note]
                })
                .collect();
            write_table(out, &["NAME", "STATE", "DOMID", "MEM(MiB)", "VCPUS", "VIRT", "NOTE"], &rows)
        }
    }
}

/// Runs a zone command.
pub async fn run(cmd: ZoneCommand, channel: Channel, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mut c = ZoneServiceClient::new(channel.clone());
    match cmd {
        ZoneCommand::Launch(a) => return super::workload::launch(a, channel, out).await,
        ZoneCommand::Logs(a) => return super::workload::logs(a, channel, out).await,
        ZoneCommand::Exec(a) => return super::workload::exec(a, channel, out).await,
        ZoneCommand::Kill(a) => return super::workload::kill(a, channel).await,
        ZoneCommand::Wait(a) => return super::workload::wait(a, channel).await,
        ZoneCommand::Create(a) => {
            let spec = pb::ZoneSpec {
                name: a.name.clone(),
                memory_mib: a.memory,
                vcpus: a.cpus,
                virt_mode: a.virt.to_pb().into(),
                kernel_args: a.kernel_args,
                labels: a.labels.into_iter().collect(),
                ..Default::default()
            };
            let what = format!("creating zone {}", a.name);
            let mut z = c
                .create_zone(pb::CreateZoneRequest { spec: Some(spec) })
                .await
                .map_err(|s| rpc_error(&what, s))?
                .into_inner()
                .zone
                .unwrap_or_default();
            if a.start {
                let what = format!("starting zone {}", a.name);
                z = c
                    .start_zone(pb::StartZoneRequest { zone: z.id.clone(), network: None })
                    .await
                    .map_err(|s| rpc_error(&what, s))?
                    .into_inner()
                    .zone
                    .unwrap_or_default();
            }
            writeln!(out, "{}", z.id)?;
        }
        ZoneCommand::Start(r) => {
            let what = format!("starting zone {}", r.zone);
            let z = c
                .start_zone(pb::StartZoneRequest { zone: r.zone, network: None })
                .await
                .map_err(|s| rpc_error(&what, s))?;
            print_zones(out, vec![z.into_inner().zone.unwrap_or_default().into()], OutputFormat::Table)?;
        }
        ZoneCommand::Stop(a) => {
            let what = format!("stopping zone {}", a.zone);
            let req = pb::StopZoneRequest { zone: a.zone, timeout_seconds: a.timeout };
            let z = c.stop_zone(req).await.map_err(|s| rpc_error(&what, s))?;
            print_zones(out, vec![z.into_inner().zone.unwrap_or_default().into()], OutputFormat::Table)?;
        }
        ZoneCommand::Destroy(r) => {
            let what = format!("destroying zone {}", r.zone);
            c.destroy_zone(pb::DestroyZoneRequest { zone: r.zone }).await.map_err(|s| rpc_error(&what, s))?;
        }
        ZoneCommand::Get(a) => {
            let what = format!("getting zone {}", a.zone);
            let z = c.get_zone(pb::GetZoneRequest { zone: a.zone }).await.map_err(|s| rpc_error(&what, s))?;
            let view: ZoneView = z.into_inner().zone.unwrap_or_default().into();
            match a.output {
                OutputFormat::Json => write_json(out, &view)?,
                OutputFormat::Table => print_zones(out, vec![view], OutputFormat::Table)?,
            }
        }
        ZoneCommand::List(a) => {
            let req = pb::ListZonesRequest { label_selector: a.selector.into_iter().collect() };
            let zones = c.list_zones(req).await.map_err(|s| rpc_error("listing zones", s))?.into_inner().zones;
            print_zones(out, zones.into_iter().map(ZoneView::from).collect(), a.output)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_parse_and_bad_ones_say_why() {
        assert_eq!(parse_key_value("app=web"), Ok(("app".into(), "web".into())));
        assert_eq!(parse_key_value("k="), Ok(("k".into(), String::new())));
        assert!(parse_key_value("=v").is_err());
        assert_eq!(parse_key_value("novalue"), Err("\"novalue\" is not KEY=VALUE".into()));
    }

    #[test]
    fn views_use_lowercase_names_and_omit_what_is_unset() {
        let z = pb::ZoneStatus {
            id: "i".into(),
            state: pb::ZoneState::Failed.into(),
            failure_reason: "crashed".into(),
            spec: Some(pb::ZoneSpec { name: "n".into(), memory_mib: 64, vcpus: 1, ..Default::default() }),
            ..Default::default()
        };
        let v = ZoneView::from(z);
        assert_eq!((v.state.as_str(), v.domid, v.virt_mode.as_deref()), ("failed", None, None));
        assert_eq!(v.failure_reason.as_deref(), Some("crashed"));
    }
}
