//! `bulkhead check preinstall|postinstall`: can this machine be a Bulkhead node, and is it one that works?
//!
//! `preinstall` reads only files (under `--root`, `/` by default) and needs no daemon: Xen as hypervisor and
//! this kernel as dom0, PV/PVH capability, dom0's memory, the kernel drivers and features, tools, disk space.
//! `postinstall` adds the services: systemd units over D-Bus, bulkheadd answering on its socket (and the
//! virtualization mode zones will use, from it), bulkhead-cri answering CRI's Version, the baked images.
//!
//! Each check has a group: a failed **Required** check makes the command exit 1; **Optional** checks cover
//! features some nodes do without; **Advisory** ones are about sizing. Probes are in `check_host` (files)
//! and `check_node` (services); this module runs them and prints the report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_api::control::v1 as pb;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::format::{OutputFormat, write_json, write_table};

use super::check_host::{self, HostRoot};
use super::check_node::{self, NodeFacts};

/// The CRI socket unless `--cri-socket` says otherwise.
pub const DEFAULT_CRI_SOCKET: &str = "/run/bulkhead/cri.sock";

/// How long each service probe (D-Bus, gRPC, `xl info`) may take: a hung service is a finding, not a hang.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `bulkhead check ...`
#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Can this machine become a Bulkhead node? Reads files only; needs no daemon.
    Preinstall(CheckArgs),
    /// Everything `preinstall` checks, plus Xen's and Bulkhead's services on this node.
    Postinstall(CheckArgs),
}

/// Options of both phases.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// The file system root the probes read /sys, /proc, /lib/modules and the state directory under.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// bulkheadd's state directory (free space is measured there, or on its nearest existing parent).
    #[arg(long, default_value = "/var/lib/bulkhead")]
    pub state_dir: PathBuf,
    /// bulkhead-cri's socket (postinstall).
    #[arg(long, default_value = DEFAULT_CRI_SOCKET, env = "BULKHEAD_CRI_SOCKET")]
    pub cri_socket: PathBuf,
}

/// How much a check matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Without it the node cannot run zones: a failure makes the command exit 1.
    Required,
    /// A feature some nodes do without.
    Optional,
    /// Sizing and tuning.
    Advisory,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As needed.
    Pass,
    /// Works, but not as recommended (or could not be fully determined).
    Warn,
    /// Not as needed.
    Fail,
    /// Not applicable here (e.g. what depends on a failed check, or on a component that is not installed).
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable name, e.g. `hypervisor` or `kernel:xen-gntdev`.
    pub id: String,
    /// How much it matters.
    pub group: Group,
    /// The verdict.
    pub status: Status,
    /// One line with what was measured.
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(id: impl Into<String>, group: Group, detail: impl Into<String>) -> Self {
        Self { id: id.into(), group, status: Status::Pass, detail: detail.into(), advice: None }
    }

    /// A failed check, with what to do.
    pub fn fail(id: impl Into<String>, group: Group, detail: impl Into<String>, advice: impl Into<String>) -> Self {
        Self { id: id.into(), group, status: Status::Fail, detail: detail.into(), advice: Some(advice.into()) }
    }

    /// A warning, with what to do.
    pub fn warn(id: impl Into<String>, group: Group, detail: impl Into<String>, advice: impl Into<String>) -> Self {
        Self { id: id.into(), group, status: Status::Warn, detail: detail.into(), advice: Some(advice.into()) }
    }

    /// A check that does not apply, and why.
    pub fn skip(id: impl Into<String>, group: Group, detail: impl Into<String>) -> Self {
        Self { id: id.into(), group, status: Status::Skip, detail: detail.into(), advice: None }
    }
}

/// Counts per status.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Passed checks.
    pub passed: usize,
    /// Warnings.
    pub warnings: usize,
    /// Failed checks, of any group.
    pub failed: usize,
    /// Failed Required checks (the node is not usable when this is not 0).
    pub required_failed: usize,
    /// Skipped checks.
    pub skipped: usize,
}

/// The whole result, as `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `preinstall` or `postinstall`.
    pub phase: &'static str,
    /// No Required check failed.
    pub ok: bool,
    /// Counts.
    pub summary: Summary,
    /// Every check, Required first.
    pub checks: Vec<Check>,
}

impl Report {
    /// Orders the checks by group (keeping each group's order) and counts them.
    pub fn new(phase: &'static str, mut checks: Vec<Check>) -> Self {
        checks.sort_by_key(|c| c.group);
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Pass => summary.passed += 1,
                Status::Warn => summary.warnings += 1,
                Status::Skip => summary.skipped += 1,
                Status::Fail => {
                    summary.failed += 1;
                    if c.group == Group::Required {
                        summary.required_failed += 1;
                    }
                }
            }
        }
        Self { phase, ok: summary.required_failed == 0, summary, checks }
    }

    /// 1 when a Required check failed, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.ok { 0 } else { 1 }
    }

    /// The table, then what to do about each failure and warning, then the counts.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .checks
            .iter()
            .map(|c| vec![group_name(c.group).into(), c.id.clone(), status_name(c.status).into(), c.detail.clone()])
            .collect();
        write_table(out, &["GROUP", "CHECK", "STATUS", "DETAIL"], &rows)?;
        let advised: Vec<&Check> = self.checks.iter().filter(|c| c.advice.is_some()).collect();
        if !advised.is_empty() {
            writeln!(out, "\nTo do:")?;
            for c in advised {
                if let Some(a) = &c.advice {
                    writeln!(out, "  {} ({}): {a}", c.id, status_name(c.status))?;
                }
            }
        }
        let s = &self.summary;
        writeln!(
            out,
            "\n{}: {}; {} passed, {} warnings, {} failed ({} required), {} skipped",
            self.phase,
            if self.ok { "ready" } else { "NOT READY" },
            s.passed,
            s.warnings,
            s.failed,
            s.required_failed,
            s.skipped
        )
    }
}

fn group_name(g: Group) -> &'static str {
    match g {
        Group::Required => "Required",
        Group::Optional => "Optional",
        Group::Advisory => "Advisory",
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pass => "pass",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    }
}

/// Runs a check phase and prints its report; returns the exit code (1 when a Required check failed).
pub async fn run(cmd: CheckCommand, daemon_socket: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    let (phase, args) = match &cmd {
        CheckCommand::Preinstall(a) => ("preinstall", a),
        CheckCommand::Postinstall(a) => ("postinstall", a),
    };
    let root = HostRoot::new(&args.root);
    // Xen's command line is not in /sys: only `xl info` (a hypercall) has it, and only on the real root.
    let xen_commandline = if args.root == Path::new("/") { xen_commandline().await } else { None };
    let mut checks = check_host::preinstall(&root, &args.state_dir, xen_commandline.as_deref());
    if let CheckCommand::Postinstall(_) = cmd {
        let facts = gather_node_facts(&root, daemon_socket, &args.cri_socket).await;
        checks.extend(check_node::postinstall(&facts));
    }
    let report = Report::new(phase, checks);
    match args.output {
        OutputFormat::Json => write_json(out, &report)?,
        OutputFormat::Table => report.write_table(out)?,
    }
    Ok(report.exit_code())
}

/// `xen_commandline` from `xl info`, when xl is installed and answers in time.
async fn xen_commandline() -> Option<String> {
    let xl = ["/usr/sbin/xl", "/usr/bin/xl", "/sbin/xl"].into_iter().find(|p| Path::new(p).exists())?;
    let run = tokio::process::Command::new(xl).arg("info").kill_on_drop(true).output();
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(o)) if o.status.success() => check_host::parse_xl_info_commandline(&String::from_utf8_lossy(&o.stdout)),
        Ok(Ok(o)) => {
            tracing::debug!(status = %o.status, "xl info failed");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot run xl info");
            None
        }
        Err(_) => {
            tracing::debug!("xl info timed out");
            None
        }
    }
}

/// Asks systemd, bulkheadd and bulkhead-cri what postinstall needs, each bounded by [`PROBE_TIMEOUT`]; every
/// failure is kept as text for the verdicts.
async fn gather_node_facts(root: &HostRoot, daemon_socket: &Path, cri_socket: &Path) -> NodeFacts {
    let systemd = crate::systemd::Systemd::connect();
    let units = match bounded("systemd", async { systemd.await.map_err(|e| error_chain(&e)) }).await {
        Ok(systemd) => {
            let mut states = Vec::new();
            for unit in check_node::UNITS {
                let state = systemd.unit_state(unit.name);
                states.push((unit.name, bounded("systemd", async { state.await.map_err(|e| error_chain(&e)) }).await));
            }
            Ok(states)
        }
        Err(e) => Err(e),
    };
    let daemon = bounded("bulkheadd", async {
        bulkhead_api::client::connect_unix(daemon_socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {}", daemon_socket.display(), error_chain(&e)))
    })
    .await;
    let (host_info, baked_images) = match daemon {
        Ok(channel) => {
            let mut host = pb::host_service_client::HostServiceClient::new(channel.clone());
            let mut images = pb::image_service_client::ImageServiceClient::new(channel);
            let host_info = bounded("bulkheadd", async {
                match host.get_host_info(pb::GetHostInfoRequest {}).await {
                    Ok(r) => Ok(Some(r.into_inner())),
                    // A daemon without HostService still answers: prove it with a call every bulkheadd serves.
                    Err(s) if s.code() == tonic::Code::Unimplemented => images
                        .list_images(pb::ListImagesRequest::default())
                        .await
                        .map(|_| None)
                        .map_err(|s| format!("ListImages failed: {}", s.message())),
                    Err(s) => Err(format!("GetHostInfo failed: {}", s.message())),
                }
            })
            .await;
            let mut baked = Vec::new();
            for reference in check_node::baked_image_references(root) {
                let found = bounded("bulkheadd", async {
                    match images.get_image(pb::GetImageRequest { image: reference.clone() }).await {
                        Ok(r) => Ok(Some(r.into_inner().image.map(|i| i.id).unwrap_or_default())),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(format!("GetImage failed: {}", s.message())),
                    }
                })
                .await;
                baked.push((reference, found));
            }
            (host_info, Ok(baked))
        }
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let cri = bounded("bulkhead-cri", async {
        let channel = bulkhead_api::client::connect_unix(cri_socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {}", cri_socket.display(), error_chain(&e)))?;
        let mut c = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
        c.version(k8s_cri::v1::VersionRequest { version: "v1".into() })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("Version failed: {}", s.message()))
    })
    .await;
    NodeFacts { units, host_info, cri, baked_images }
}

/// Runs `fut` with [`PROBE_TIMEOUT`]; a timeout becomes a line naming `what`.
async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(format!("{what} did not answer within {} s", PROBE_TIMEOUT.as_secs())))
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(group: Group, status: Status) -> Check {
        Check { id: format!("{group:?}-{status:?}"), group, status, detail: String::new(), advice: None }
    }

    #[test]
    fn a_failed_required_check_exits_1() {
        let r = Report::new("preinstall", vec![c(Group::Advisory, Status::Pass), c(Group::Required, Status::Fail)]);
        assert!(!r.ok);
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.summary.required_failed, 1);
    }

    #[test]
    fn failed_optional_and_advisory_checks_and_required_warnings_exit_0() {
        let r = Report::new(
            "postinstall",
            vec![
                c(Group::Optional, Status::Fail),
                c(Group::Advisory, Status::Fail),
                c(Group::Required, Status::Warn),
                c(Group::Required, Status::Skip),
                c(Group::Required, Status::Pass),
            ],
        );
        assert!(r.ok);
        assert_eq!(r.exit_code(), 0);
        assert_eq!(r.summary, Summary { passed: 1, warnings: 1, failed: 2, required_failed: 0, skipped: 1 });
    }

    #[test]
    fn checks_are_ordered_by_group_keeping_their_order_within_it() {
        let mut a = c(Group::Required, Status::Pass);
        a.id = "a".into();
        let mut b = c(Group::Required, Status::Pass);
        b.id = "b".into();
        let r =
            Report::new("preinstall", vec![c(Group::Advisory, Status::Pass), a, c(Group::Optional, Status::Pass), b]);
        let ids: Vec<&str> = r.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "Optional-Pass", "Advisory-Pass"]);
    }

    #[test]
    fn the_table_lists_advice_and_the_verdict() -> std::io::Result<()> {
        let r = Report::new(
            "preinstall",
            vec![Check::fail("hypervisor", Group::Required, "not under Xen", "boot through Xen")],
        );
        let mut out = Vec::new();
        r.write_table(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("GROUP     CHECK       STATUS  DETAIL\nRequired  hypervisor  FAIL    not under Xen\n"),
            "{text}"
        );
        assert!(text.contains("  hypervisor (FAIL): boot through Xen\n"), "{text}");
        assert!(
            text.ends_with("preinstall: NOT READY; 0 passed, 0 warnings, 1 failed (1 required), 0 skipped\n"),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn json_names_groups_and_statuses_in_lowercase() -> anyhow::Result<()> {
        let r = Report::new("postinstall", vec![Check::warn("cri", Group::Required, "not installed", "install it")]);
        let v: serde_json::Value = serde_json::to_value(&r)?;
        assert_eq!(v["ok"], true);
        assert_eq!(v["checks"][0]["group"], "required");
        assert_eq!(v["checks"][0]["status"], "warn");
        assert_eq!(v["checks"][0]["advice"], "install it");
        assert_eq!(v["summary"]["warnings"], 1);
        Ok(())
    }
}
