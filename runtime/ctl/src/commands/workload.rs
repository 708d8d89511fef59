//! Running things in zones: `zone launch`, `zone logs`, `zone exec`.
//!
//! A zone launched from the CLI runs one workload named after the zone; `logs` and `exec` act on that
//! workload unless `--workload` names another.

use std::io::Write;

use anyhow::{Context, bail};
use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::workload_service_client::WorkloadServiceClient;
use bulkhead_api::control::v1::zone_service_client::ZoneServiceClient;
use clap::Args;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use super::rpc_error;
use super::zone::{Virt, parse_key_value};

/// `zone launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Image reference or id (see `bulkhead image list`).
    #[arg(long)]
    pub image: String,
    /// Zone name; default: generated.
    #[arg(long)]
    pub name: Option<String>,
    /// Memory, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Virtualization mode.
    #[arg(long, value_enum, default_value_t = Virt::Auto)]
    pub virt: Virt,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Allocate a terminal for the workload.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Run as USER[:GID]: a uid or a name from the image's /etc/passwd, and optionally a numeric group
    /// (default: the image's USER; without GID, the user's groups from the image).
    #[arg(long, short = 'u', value_parser = parse_user)]
    pub user: Option<pb::User>,
    /// Wait for the workload to exit and exit with its code.
    #[arg(long, conflicts_with = "attach")]
    pub wait: bool,
    /// Print the workload's output as it runs, then exit with its code.
    #[arg(long)]
    pub attach: bool,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// A zone's workload on the command line.
#[derive(Debug, Args)]
pub struct WorkloadRef {
    /// Zone name or id.
    pub zone: String,
    /// Workload name (default: the zone's own).
    #[arg(long)]
    pub workload: Option<String>,
}

/// `zone logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The workload.
    #[command(flatten)]
    pub target: WorkloadRef,
    /// Keep printing new output until the workload exits.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, default_value_t = 0)]
    pub tail: u32,
}

/// `zone wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The workload.
    #[command(flatten)]
    pub target: WorkloadRef,
}

/// `zone kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The workload.
    #[command(flatten)]
    pub target: WorkloadRef,
    /// Signal name (TERM, KILL, INT, HUP, ...) or number.
    #[arg(long, short = 's', default_value = "TERM", value_parser = parse_signal)]
    pub signal: i32,
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(format!("signal {n} is not 1 to 64")) };
    }
    let name = s.strip_prefix("SIG").unwrap_or(s).to_ascii_uppercase();
    let known = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("CONT", 18),
        ("STOP", 19),
        ("WINCH", 28),
    ];
    known.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| format!("unknown signal {s:?}"))
}

/// `zone exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The workload.
    #[command(flatten)]
    pub target: WorkloadRef,
    /// Pass stdin to the process.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Run as USER[:GID], resolved in the workload's image as for `zone launch --user` (default: the
    /// workload's user).
    #[arg(long, short = 'u', value_parser = parse_user)]
    pub user: Option<pb::User>,
    /// Command and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `USER[:GID]`: a numeric USER is a uid, any other a name the daemon resolves in the image. The API
/// takes groups by number only.
fn parse_user(s: &str) -> Result<pb::User, String> {
    let (user, gid) = match s.split_once(':') {
        Some((u, g)) => {
            let gid = g.parse::<u32>().map_err(|_| format!("group {g:?} in {s:?} must be a numeric gid"))?;
            (u, Some(gid))
        }
        None => (s, None),
    };
    if user.is_empty() || user.contains(':') {
        return Err(format!("{s:?} is not USER[:GID] (USER a uid or a name)"));
    }
    Ok(match user.parse::<u32>() {
        Ok(uid) => pb::User { uid: Some(uid), gid, ..Default::default() },
        Err(_) => pb::User { name: user.to_owned(), gid, ..Default::default() },
    })
}

fn env_pb(env: Vec<(String, String)>) -> Vec<pb::EnvVar> {
    env.into_iter().map(|(name, value)| pb::EnvVar { name, value }).collect()
}

/// A generated zone name: `z-` and six hex digits from the clock.
fn generated_name() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("z-{:06x}", (t / 1000) & 0xff_ffff)
}

/// Writes output to our stdout or stderr.
fn emit(out: &mut dyn Write, fd: i32, data: &[u8]) -> std::io::Result<()> {
    if fd == pb::OutputFd::Stderr as i32 {
        let mut err = std::io::stderr().lock();
        err.write_all(data)?;
        err.flush()
    } else {
        out.write_all(data)?;
        out.flush()
    }
}

/// Prints the workload's output (history, and live with `follow`).
async fn stream_logs(
    workloads: &mut WorkloadServiceClient<Channel>,
    workload_id: &str,
    follow: bool,
    tail: u32,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let req = pb::LogsRequest { workload_id: workload_id.to_owned(), follow, tail_lines: tail, since: 0 };
    let mut stream = workloads
        .logs(req)
        .await
        .map_err(|s| rpc_error(&format!("reading the logs of {workload_id}"), s))?
        .into_inner();
    while let Some(entry) = stream.message().await.map_err(|s| rpc_error("reading logs", s))? {
        emit(out, entry.fd, &entry.data)?;
    }
    Ok(())
}

/// The workload `target` names, and a workload client for what comes next.
async fn find_workload(
    channel: Channel,
    target: &WorkloadRef,
) -> anyhow::Result<(WorkloadServiceClient<Channel>, pb::WorkloadStatus)> {
    let zone = &target.zone;
    let z = ZoneServiceClient::new(channel.clone())
        .get_zone(pb::GetZoneRequest { zone: zone.to_owned() })
        .await
        .map_err(|s| rpc_error(&format!("getting zone {zone}"), s))?
        .into_inner()
        .zone
        .unwrap_or_default();
    let zone_name = z.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    let want = target.workload.as_deref().unwrap_or(&zone_name);
    let mut workloads = WorkloadServiceClient::new(channel);
    let list = workloads
        .list_workloads(pb::ListWorkloadsRequest { zone: z.id.clone(), ..Default::default() })
        .await
        .map_err(|s| rpc_error(&format!("listing the workloads of zone {zone}"), s))?
        .into_inner()
        .workloads;
    let found = list
        .into_iter()
        .find(|w| w.spec.as_ref().is_some_and(|s| s.name == want))
        .with_context(|| format!("zone {zone} has no workload named {want}: see `bulkhead zone get {zone}`"))?;
    Ok((workloads, found))
}

/// `zone launch`: a zone with one workload. Returns the exit code to exit with.
pub async fn launch(a: LaunchArgs, channel: Channel, out: &mut dyn Write) -> anyhow::Result<i32> {
    let mut zones = ZoneServiceClient::new(channel.clone());
    let mut workloads = WorkloadServiceClient::new(channel);
    let name = a.name.unwrap_or_else(generated_name);
    let spec = pb::ZoneSpec {
        name: name.clone(),
        memory_mib: a.memory,
        vcpus: a.cpus,
        virt_mode: a.virt.to_pb().into(),
        ..Default::default()
    };
    zones
        .create_zone(pb::CreateZoneRequest { spec: Some(spec) })
        .await
        .map_err(|s| rpc_error(&format!("creating zone {name}"), s))?;
    zones
        .start_zone(pb::StartZoneRequest { zone: name.clone(), network: None })
        .await
        .map_err(|s| rpc_error(&format!("starting zone {name}"), s))?;
    // The daemon attaches the image while the zone boots and creates the workload once the zone is ready.
    let spec = pb::WorkloadSpec {
        name: name.clone(),
        image: a.image.clone(),
        command: a.command,
        env: env_pb(a.env),
        tty: a.tty,
        user: a.user,
        ..Default::default()
    };
    let w = workloads
        .create_workload(pb::CreateWorkloadRequest { zone: name.clone(), spec: Some(spec) })
        .await
        .map_err(|s| rpc_error(&format!("creating the workload of zone {name} from image {}", a.image), s))?
        .into_inner()
        .workload
        .unwrap_or_default();
    workloads
        .start_workload(pb::StartWorkloadRequest { workload_id: w.id.clone() })
        .await
        .map_err(|s| rpc_error(&format!("starting the workload of zone {name}"), s))?;
    if a.attach {
        stream_logs(&mut workloads, &w.id, true, 0, out).await?;
    }
    if a.wait || a.attach {
        let done = workloads
            .wait_workload(pb::WaitWorkloadRequest { workload_id: w.id })
            .await
            .map_err(|s| rpc_error(&format!("waiting for the workload of zone {name}"), s))?
            .into_inner()
            .workload
            .unwrap_or_default();
        return Ok(done.exit.map_or(0, |e| e.code));
    }
    writeln!(out, "{name}")?;
    Ok(0)
}

/// `zone logs`.
pub async fn logs(a: LogsArgs, channel: Channel, out: &mut dyn Write) -> anyhow::Result<i32> {
    let (mut workloads, w) = find_workload(channel, &a.target).await?;
    stream_logs(&mut workloads, &w.id, a.follow, a.tail, out).await?;
    Ok(0)
}

/// `zone wait`: exits with the workload's exit code.
pub async fn wait(a: WaitArgs, channel: Channel) -> anyhow::Result<i32> {
    let (mut workloads, w) = find_workload(channel, &a.target).await?;
    let done = workloads
        .wait_workload(pb::WaitWorkloadRequest { workload_id: w.id })
        .await
        .map_err(|s| rpc_error(&format!("waiting for the workload of zone {}", a.target.zone), s))?
        .into_inner()
        .workload
        .unwrap_or_default();
    Ok(done.exit.map_or(0, |e| e.code))
}

/// `zone kill`.
pub async fn kill(a: KillArgs, channel: Channel) -> anyhow::Result<i32> {
    let (mut workloads, w) = find_workload(channel, &a.target).await?;
    workloads
        .signal_workload(pb::SignalWorkloadRequest { workload_id: w.id, signal: a.signal })
        .await
        .map_err(|s| rpc_error(&format!("signalling the workload of zone {}", a.target.zone), s))?;
    Ok(0)
}

/// `zone exec`: returns the process's exit code.
pub async fn exec(a: ExecArgs, channel: Channel, out: &mut dyn Write) -> anyhow::Result<i32> {
    let (mut workloads, w) = find_workload(channel, &a.target).await?;
    let start = pb::ExecStart {
        workload_id: w.id,
        command: a.command,
        env: env_pb(a.env),
        tty: a.tty,
        stdin: a.interactive,
        size: a.tty.then_some(pb::TerminalSize { rows: 24, cols: 80 }),
        user: a.user,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ExecRequest>(16);
    tx.send(pb::ExecRequest { kind: Some(pb::exec_request::Kind::Start(start)) }).await?;
    if a.interactive {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = pb::ExecRequest { kind: Some(pb::exec_request::Kind::Stdin(buf[..n].to_vec())) };
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(pb::ExecRequest { kind: Some(pb::exec_request::Kind::CloseStdin(true)) }).await;
        });
    }
    // Keep the request stream open until the exec ends (closing it early is not end of input).
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = workloads.exec(requests).await.map_err(|s| rpc_error("starting the exec", s))?.into_inner();
    while let Some(r) = responses.message().await.map_err(|s| rpc_error("exec", s))? {
        match r.kind {
            Some(pb::exec_response::Kind::Output(o)) => emit(out, o.fd, &o.data)?,
            Some(pb::exec_response::Kind::Exited(e)) => {
                drop(tx);
                return Ok(e.code);
            }
            _ => {}
        }
    }
    bail!("the exec stream ended without an exit status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_a_uid_or_a_name_and_a_numeric_group() {
        let user = |uid: Option<u32>, gid: Option<u32>, name: &str| pb::User {
            uid,
            gid,
            name: name.into(),
            additional_gids: vec![],
        };
        assert_eq!(parse_user("1000"), Ok(user(Some(1000), None, "")));
        assert_eq!(parse_user("1000:50"), Ok(user(Some(1000), Some(50), "")));
        assert_eq!(parse_user("nginx"), Ok(user(None, None, "nginx")));
        assert_eq!(parse_user("nginx:101"), Ok(user(None, Some(101), "nginx")));
        for bad in ["", ":5", "nginx:staff", "a:b:c", "1:2:3"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }
}
