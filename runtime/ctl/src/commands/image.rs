//! `bulkhead image ...`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bulkhead_api::control::v1 as pb;
use bulkhead_api::control::v1::image_service_client::ImageServiceClient;
use bulkhead_api::control::v1::pull_image_response::Event;
use clap::{Args, Subcommand};
use serde::Serialize;
use tonic::transport::Channel;

use super::rpc_error;
use crate::format::{OutputFormat, write_json, write_table};
use crate::progress::{Bars, Plain, PullView};

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` tar from this node.
    Import(ImportArgs),
    /// Pull an image from its registry (the daemon pulls; this shows its progress and prints the id).
    Pull(PullArgs),
    /// List images.
    #[command(alias = "ls")]
    List(ListArgs),
    /// Show one image with its run configuration.
    #[command(alias = "get")]
    Inspect(InspectArgs),
    /// Remove an image (succeeds if it is already gone; refused while a workload uses it).
    #[command(alias = "remove")]
    Rm(ImageRef),
    /// Remove images without references that no workload uses, and blobs no image needs.
    Prune,
}

/// `image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The layout directory, or the tar file, on this node.
    pub path: PathBuf,
    /// Also tag the image with this reference (e.g. busybox:demo).
    #[arg(long)]
    pub reference: Option<String>,
}

/// `image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: busybox, ghcr.io/org/app:v1, registry.example:5000/app@sha256:...
    pub reference: String,
    /// Registry user for this pull, instead of the daemon's configured credentials (needs --password-stdin).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the password (or token) for --username from the first line of stdin.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Progress display on stderr: bars on a terminal and lines otherwise (auto), always lines, or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `image pull --progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, else lines.
    Auto,
    /// One line per step.
    Plain,
    /// Nothing but the image id (and errors).
    None,
}

/// `image list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `image inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Reference, id, or id prefix (12 or more hex digits).
    pub image: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// An image named by reference, id or id prefix.
#[derive(Debug, Args)]
pub struct ImageRef {
    /// Reference, id, or id prefix (12 or more hex digits).
    pub image: String,
}

/// An image's run configuration as the CLI prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigView {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV as NAME=VALUE.
    pub env: Vec<String>,
    /// WORKDIR.
    pub working_dir: Option<String>,
    /// USER.
    pub user: Option<String>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// EXPOSE.
    pub exposed_ports: Vec<String>,
    /// LABEL.
    pub labels: BTreeMap<String, String>,
}

/// An image as the CLI prints it (also the JSON shape of `-o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageView {
    /// "sha256:...".
    pub id: String,
    /// Normalised references.
    pub references: Vec<String>,
    /// Bytes of file content.
    pub size_bytes: u64,
    /// Import time, ns since the epoch.
    pub created_at: i64,
    /// Run configuration.
    pub config: ConfigView,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Image> for ImageView {
    fn from(i: pb::Image) -> Self {
        let c = i.config.unwrap_or_default();
        ImageView {
            id: i.id,
            references: i.references,
            size_bytes: i.size_bytes,
            created_at: i.created_at,
            config: ConfigView {
                entrypoint: c.entrypoint,
                cmd: c.cmd,
                env: c.env.into_iter().map(|e| format!("{}={}", e.name, e.value)).collect(),
                working_dir: non_empty(c.working_dir),
                user: non_empty(c.user),
                stop_signal: non_empty(c.stop_signal),
                exposed_ports: c.exposed_ports,
                labels: c.labels.into_iter().collect(),
            },
        }
    }
}

/// "sha256:0123456789abcdef..." → "0123456789ab", as `docker images` shows ids.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// 1536 → "1.5 KiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// How long ago `nanos` (since the epoch) was, roughly: "3 minutes ago".
pub fn age(nanos: i64, now_nanos: i64) -> String {
    let secs = (now_nanos.saturating_sub(nanos) / 1_000_000_000).max(0);
    let (n, unit) = match secs {
        s if s < 60 => return "just now".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn print_list(out: &mut dyn Write, images: Vec<ImageView>, format: OutputFormat) -> std::io::Result<()> {
    if format == OutputFormat::Json {
        return write_json(out, &images);
    }
    let now = now_nanos();
    let mut rows = Vec::new();
    for i in images {
        let refs = if i.references.is_empty() { vec!["<none>".to_owned()] } else { i.references.clone() };
        for r in refs {
            rows.push(vec![r, short_id(&i.id).to_owned(), human_size(i.size_bytes), age(i.created_at, now)]);
        }
    }
    write_table(out, &["REFERENCE", "ID", "SIZE", "IMPORTED"], &rows)
}

fn print_inspect(out: &mut dyn Write, i: &ImageView) -> std::io::Result<()> {
    let c = &i.config;
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(" ") };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "ID:          {}", i.id)?;
    writeln!(out, "References:  {}", list(&i.references))?;
    writeln!(out, "Size:        {} ({} bytes)", human_size(i.size_bytes), i.size_bytes)?;
    writeln!(out, "Imported:    {}", age(i.created_at, now_nanos()))?;
    writeln!(out, "Entrypoint:  {}", list(&c.entrypoint))?;
    writeln!(out, "Cmd:         {}", list(&c.cmd))?;
    writeln!(out, "WorkingDir:  {}", opt(&c.working_dir))?;
    writeln!(out, "User:        {}", opt(&c.user))?;
    writeln!(out, "StopSignal:  {}", opt(&c.stop_signal))?;
    writeln!(out, "Ports:       {}", list(&c.exposed_ports))?;
    writeln!(out, "Env:")?;
    for e in &c.env {
        writeln!(out, "  {e}")?;
    }
    writeln!(out, "Labels:")?;
    for (k, v) in &c.labels {
        writeln!(out, "  {k}={v}")?;
    }
    Ok(())
}

/// Shows nothing.
struct Quiet;

impl PullView for Quiet {
    fn event(&mut self, _: &Event) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) {}
}

/// Reads the password for `--password-stdin`: the first line, without its line end.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        anyhow::bail!(
            "--password-stdin: stdin gave no password (pipe it in: echo \"$TOKEN\" | bulkhead image pull ...)"
        );
    }
    Ok(password)
}

/// Runs a pull, showing its progress on `view`; returns the image.
pub async fn pull(
    c: &mut ImageServiceClient<Channel>,
    a: PullArgs,
    view: &mut dyn PullView,
) -> anyhow::Result<pb::Image> {
    let credentials = match a.username {
        Some(username) => Some(pb::RegistryCredentials { username, password: password_from_stdin()? }),
        None => None,
    };
    let what = format!("pulling {}", a.reference);
    // The daemon's message names the (normalised) reference itself when the pull got that far.
    let err = |s: tonic::Status| {
        if s.message().starts_with("pulling ") { anyhow::anyhow!("{}", s.message()) } else { rpc_error(&what, s) }
    };
    let req = pb::PullImageRequest { reference: a.reference.clone(), credentials };
    let mut stream = c.pull_image(req).await.map_err(err)?.into_inner();
    while let Some(m) = stream.message().await.map_err(err)? {
        match m.event {
            Some(Event::Image(image)) => return Ok(image),
            Some(e) => view.event(&e).context("showing progress")?,
            None => {}
        }
    }
    anyhow::bail!("{what}: the daemon ended the pull without a result (see its log: journalctl -u bulkheadd)")
}

/// Runs an image command.
pub async fn run(cmd: ImageCommand, mut c: ImageServiceClient<Channel>, out: &mut dyn Write) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Import(a) => {
            // The daemon has its own working directory: send it the path as this shell means it.
            let path = std::path::absolute(&a.path)
                .with_context(|| format!("making {} an absolute path", a.path.display()))?;
            let what = format!("importing {}", path.display());
            let req =
                pb::ImportImageRequest { path: path.display().to_string(), reference: a.reference.unwrap_or_default() };
            let image = c.import_image(req).await.map_err(|s| rpc_error(&what, s))?.into_inner().image;
            writeln!(out, "{}", image.unwrap_or_default().id)?;
        }
        ImageCommand::Pull(a) => {
            let mut view: Box<dyn PullView> = match a.progress {
                ProgressMode::Auto if std::io::stderr().is_terminal() => Box::new(Bars::default()),
                ProgressMode::Auto | ProgressMode::Plain => Box::new(Plain::new(std::io::stderr())),
                ProgressMode::None => Box::new(Quiet),
            };
            let image = pull(&mut c, a, view.as_mut()).await;
            view.finish();
            writeln!(out, "{}", image?.id)?;
        }
        ImageCommand::List(a) => {
            let images = c.list_images(pb::ListImagesRequest {}).await.map_err(|s| rpc_error("listing images", s))?;
            print_list(out, images.into_inner().images.into_iter().map(ImageView::from).collect(), a.output)?;
        }
        ImageCommand::Inspect(a) => {
            let what = format!("inspecting image {}", a.image);
            let i = c.get_image(pb::GetImageRequest { image: a.image }).await.map_err(|s| rpc_error(&what, s))?;
            let view = ImageView::from(i.into_inner().image.unwrap_or_default());
            match a.output {
                OutputFormat::Json => write_json(out, &view)?,
                OutputFormat::Table => print_inspect(out, &view)?,
            }
        }
        ImageCommand::Prune => {
            let r = c.prune_images(pb::PruneImagesRequest {}).await.map_err(|s| rpc_error("pruning images", s))?;
            let r = r.into_inner();
            for id in &r.removed_images {
                writeln!(out, "removed {id}")?;
            }
            writeln!(
                out,
                "reclaimed {} ({} image{}, {} blob{})",
                human_size(r.reclaimed_bytes),
                r.removed_images.len(),
                if r.removed_images.len() == 1 { "" } else { "s" },
                r.removed_blobs,
                if r.removed_blobs == 1 { "" } else { "s" },
            )?;
        }
        ImageCommand::Rm(r) => {
            let what = format!("removing image {}", r.image);
            c.remove_image(pb::RemoveImageRequest { image: r.image }).await.map_err(|s| rpc_error(&what, s))?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_docker_s() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        let s = 1_000_000_000;
        assert_eq!(age(0, 5 * s), "just now");
        assert_eq!(age(0, 60 * s), "1 minute ago");
        assert_eq!(age(0, 7200 * s), "2 hours ago");
        assert_eq!(age(10 * s, 0), "just now", "clock skew is not negative time");
    }

    #[test]
    fn views_print_env_as_name_value_and_omit_what_is_unset() {
        let i = pb::Image {
            id: format!("sha256:{}", "ab".repeat(32)),
            config: Some(pb::ImageConfig {
                env: vec![pb::EnvVar { name: "A".into(), value: "b=c".into() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = ImageView::from(i);
        assert_eq!(v.config.env, ["A=b=c"]);
        assert_eq!((v.config.user, v.config.working_dir), (None, None));
        assert_eq!(short_id(&v.id), "abababababab");
    }
}
