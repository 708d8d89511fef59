//! `bulkhead node`: A/B image upgrades of the node itself (image/README.md, "Upgrades").
//!
//! The disk has two OS slots (`bulkhead-root-{a,b}` with their `-verity` hash trees) and per slot a directory
//! of boot files on the ESP (`/bulkhead/{a,b}/`). `upgrade` verifies a signed artefact, writes the slot that is
//! not running, arms a trial boot of it in GRUB's environment block and reboots through systemd;
//! `mark-good`, run at boot, makes a trial slot the good one once its services are up, and fails (the unit
//! then reboots the node, and GRUB returns to the good slot) when they do not come up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;

use super::node_artefact::{self, BOOT_FILES, Limits, ROOT, ROOT_VERITY, Verified};
use super::node_bootenv::{BootState, GrubEnv, MarkOutcome, Slot};
use crate::systemd::Systemd;

/// The public key update artefacts must be signed with (written by `ci/image build`).
pub const DEFAULT_KEY: &str = "/usr/lib/bulkhead/update-key.pub";
/// Where an artefact is unpacked and checked before anything is written (on the state partition).
pub const DEFAULT_STAGING: &str = "/var/lib/bulkhead-upgrade";
/// Units that must be active before a trial slot is made the good one.
pub const DEFAULT_UNITS: [&str; 5] = [
    "xenstored.service",
    "xen-init-dom0.service",
    "xenconsoled.service",
    "bulkheadd.service",
    "bulkhead-baked-images.service",
];

/// What a tar adds to its files: a 512-byte header and up to 511 bytes of padding per entry, and the
/// end-of-archive records (GNU tar pads to 10 KiB).
const TAR_OVERHEAD: u64 = 64 << 10;

/// `bulkhead node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Install a node image update into the slot that is not running, and reboot into it on trial.
    Upgrade {
        /// The update artefact (`bulkhead-node_<version>.update` from `ci/image build`): a file or an
        /// http(s):// URL.
        source: String,
        /// Write and arm the trial, but do not reboot.
        #[arg(long)]
        no_reboot: bool,
        /// Boots the new slot gets to become good before GRUB returns to the current one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
        tries: u8,
        /// The ed25519 public key (hex) the artefact must be signed with.
        #[arg(long, default_value = DEFAULT_KEY)]
        key: PathBuf,
        /// Where the artefact is unpacked and verified (needs its size in free space).
        #[arg(long, default_value = DEFAULT_STAGING)]
        staging: PathBuf,
    },
    /// Make the running slot the good one once its services are active; on the good slot, record a trial
    /// that never became good. Run at boot by bulkhead-mark-good.service.
    MarkGood {
        /// A unit that must be active (repeat; default: Xen's daemons, bulkheadd, the baked images).
        #[arg(long = "unit")]
        units: Vec<String>,
        /// How long a trial slot's units may take to become active.
        #[arg(long, default_value_t = 240)]
        timeout_secs: u64,
    },
    /// The running, good, trial and failed slots and each slot's version.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Where the node's pieces are; [`NodePaths::system`] on a node, temporary files in tests.
#[derive(Debug, Clone)]
pub struct NodePaths {
    /// The kernel command line (`bulkhead.slot=`).
    pub cmdline: PathBuf,
    /// Partitions by GPT label.
    pub partitions: PathBuf,
    /// The ESP's mount point.
    pub esp: PathBuf,
    /// The running OS's os-release.
    pub os_release: PathBuf,
}

impl NodePaths {
    /// A node's paths.
    pub fn system() -> Self {
        NodePaths {
            cmdline: "/proc/cmdline".into(),
            partitions: "/dev/disk/by-partlabel".into(),
            esp: "/run/bulkhead/esp".into(),
            os_release: "/usr/lib/os-release".into(),
        }
    }

    fn data(&self, slot: Slot) -> PathBuf {
        self.partitions.join(format!("bulkhead-root-{slot}"))
    }

    fn hash(&self, slot: Slot) -> PathBuf {
        self.partitions.join(format!("bulkhead-root-{slot}-verity"))
    }

    fn grubenv(&self) -> PathBuf {
        self.esp.join("grub/grubenv")
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.esp.join("bulkhead").join(slot.name())
    }
}

/// Runs a node command.
pub async fn run(cmd: NodeCommand, out: &mut dyn Write) -> anyhow::Result<i32> {
    let paths = NodePaths::system();
    match cmd {
        NodeCommand::Upgrade { source, no_reboot, tries, key, staging } => {
            let esp = EspMount::mount(&paths)?;
            let key_text =
                fs::read_to_string(&key).with_context(|| format!("reading the update key {}", key.display()))?;
            let key = node_artefact::parse_public_key(&key_text).with_context(|| key.display().to_string())?;
            // Refuse early what install() would refuse after the download: the slot it would write.
            let running = running_slot(&paths)?;
            read_state(&paths)?.1.check_target(running, running.other())?;
            let t0 = Instant::now();
            let verified = fetch_and_verify(&source, &key, &staging, Limits::default()).await?;
            writeln!(
                out,
                "verified update {} ({}) in {:.1}s",
                verified.manifest.version,
                source,
                t0.elapsed().as_secs_f64()
            )?;
            let t1 = Instant::now();
            let p = paths.clone();
            let v = verified.clone();
            let target = tokio::task::spawn_blocking(move || install(&p, &v, tries))
                .await
                .context("the install task panicked")??;
            writeln!(
                out,
                "wrote version {} to slot {target} in {:.1}s; GRUB boots it on trial ({tries} {})",
                verified.manifest.version,
                t1.elapsed().as_secs_f64(),
                if tries == 1 { "try" } else { "tries" }
            )?;
            let _ = fs::remove_dir_all(&staging);
            if no_reboot {
                writeln!(out, "not rebooting (--no-reboot): the trial starts at the next boot")?;
            } else {
                writeln!(out, "rebooting into slot {target}")?;
                out.flush()?;
                drop(esp);
                Systemd::connect().await?.reboot().await.context("asking systemd to reboot")?;
            }
            Ok(0)
        }
        NodeCommand::MarkGood { units, timeout_secs } => {
            let units = if units.is_empty() { DEFAULT_UNITS.iter().map(|u| u.to_string()).collect() } else { units };
            let _esp = EspMount::mount(&paths)?;
            mark_good(&paths, &units, Duration::from_secs(timeout_secs), out).await
        }
        NodeCommand::Status { json } => {
            let _esp = EspMount::mount(&paths)?;
            status(&paths, json, out)
        }
    }
}

/// The slot the node booted, from `bulkhead.slot=` on the kernel command line (GRUB's entry sets it).
pub fn running_slot(paths: &NodePaths) -> anyhow::Result<Slot> {
    let cmdline = fs::read_to_string(&paths.cmdline).with_context(|| format!("reading {}", paths.cmdline.display()))?;
    let slot = cmdline.split_whitespace().find_map(|a| a.strip_prefix("bulkhead.slot="));
    match slot {
        Some(s) => {
            s.parse().map_err(|()| anyhow::anyhow!("bulkhead.slot={s} on the kernel command line is not a or b"))
        }
        None => bail!("this node was not booted from an A/B slot (no bulkhead.slot= on the kernel command line)"),
    }
}

fn read_state(paths: &NodePaths) -> anyhow::Result<(GrubEnv, BootState)> {
    let path = paths.grubenv();
    let block = fs::read(&path).with_context(|| format!("reading GRUB's environment block {}", path.display()))?;
    let env = GrubEnv::parse(&block).with_context(|| path.display().to_string())?;
    let state = BootState::from_env(&env).with_context(|| path.display().to_string())?;
    Ok((env, state))
}

/// Rewrites the environment block in place: GRUB's save_env writes to the file's blocks, so the file must
/// keep its size and its clusters.
fn write_state(paths: &NodePaths, env: &mut GrubEnv, state: &BootState) -> anyhow::Result<()> {
    state.to_env(env);
    let block = env.to_block()?;
    let path = paths.grubenv();
    let mut f = OpenOptions::new().write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&block).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(?state, "boot state written");
    Ok(())
}

/// Downloads (http/https) or opens (a path) the artefact and unpacks it into `staging/files`, verified.
async fn fetch_and_verify(
    source: &str,
    key: &ed25519_dalek::VerifyingKey,
    staging: &Path,
    limits: Limits,
) -> anyhow::Result<Verified> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("clearing {}", staging.display()))?;
    }
    let files = staging.join("files");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&files)
        .with_context(|| format!("creating {}", files.display()))?;
    let artefact = if source.starts_with("http://") || source.starts_with("https://") {
        let path = staging.join("artefact.tar");
        download(source, &path, limits.artefact).await?;
        path
    } else {
        PathBuf::from(source)
    };
    let file = File::open(&artefact).with_context(|| format!("opening the update artefact {}", artefact.display()))?;
    let size = file.metadata().with_context(|| artefact.display().to_string())?.len();
    let bound = limits.artefact + TAR_OVERHEAD;
    if size > bound {
        bail!("the update artefact {} is {size} bytes, more than the {bound} allowed", artefact.display());
    }
    let key = *key;
    let verified =
        tokio::task::spawn_blocking(move || node_artefact::unpack(io::BufReader::new(file), &key, &files, limits))
            .await
            .context("the verify task panicked")?
            .with_context(|| format!("refusing the update {source}"))?;
    Ok(verified)
}

/// Streams `url` into `path`, at most `limit` bytes (plus tar overhead).
async fn download(url: &str, path: &Path, limit: u64) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let bound = limit + TAR_OVERHEAD;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("making an HTTP client")?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("downloading {url}"))?;
    if let Some(len) = resp.content_length().filter(|l| *l > bound) {
        bail!("{url} is {len} bytes, more than the {bound} an update may be");
    }
    let mut f = tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("downloading {url}"))? {
        got += chunk.len() as u64;
        if got > bound {
            bail!("{url} sent more than the {bound} bytes an update may be");
        }
        f.write_all(&chunk).await.with_context(|| format!("writing {}", path.display()))?;
    }
    f.sync_all().await.with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(url, bytes = got, "update downloaded");
    Ok(())
}

/// Writes a verified artefact into the slot that is not running and arms its trial. Returns that slot.
pub fn install(paths: &NodePaths, v: &Verified, tries: u8) -> anyhow::Result<Slot> {
    let running = running_slot(paths)?;
    let target = running.other();
    let (mut env, mut state) = read_state(paths)?;
    state.check_target(running, target)?;
    for dev in [paths.data(target), paths.hash(target)] {
        ensure_unused(&dev)?;
    }
    // From here the slot is half-written: GRUB must not boot it until it is whole.
    state.disarm(target);
    write_state(paths, &mut env, &state)?;

    let data = write_partition(&v.path(ROOT), &paths.data(target))?;
    let hash = write_partition(&v.path(ROOT_VERITY), &paths.hash(target))?;
    tracing::info!(slot = %target, data, hash, "slot partitions written");
    verify_slot(paths, target, &v.manifest.roothash)?;

    let dir = paths.slot_dir(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in BOOT_FILES {
        replace_file(&dir.join(name), &fs::read(v.path(name)).with_context(|| format!("reading {name}"))?)?;
    }
    replace_file(&dir.join("version"), format!("{}\n", v.manifest.version).as_bytes())?;

    state.arm_trial(target, tries)?;
    write_state(paths, &mut env, &state)?;
    Ok(target)
}

/// Refuses a block device something holds open through device-mapper (the running OS's verity device).
fn ensure_unused(dev: &Path) -> anyhow::Result<()> {
    let real = fs::canonicalize(dev)
        .with_context(|| format!("{} does not exist: is this a Bulkhead A/B node image?", dev.display()))?;
    if let Some(name) = real.strip_prefix("/dev").ok().and_then(|p| p.file_name()) {
        let holders = Path::new("/sys/class/block").join(name).join("holders");
        if fs::read_dir(&holders).map(|mut d| d.next().is_some()).unwrap_or(false) {
            bail!(
                "{} ({}) is in use (it has holders in {}): refusing to write it",
                dev.display(),
                real.display(),
                holders.display()
            );
        }
    }
    Ok(())
}

/// Decompresses `zst` onto the partition `dev`, refusing more than the partition holds. Returns the bytes written.
fn write_partition(zst: &Path, dev: &Path) -> anyhow::Result<u64> {
    let mut out =
        OpenOptions::new().write(true).open(dev).with_context(|| format!("opening {} for writing", dev.display()))?;
    let capacity = out
        .seek(SeekFrom::End(0))
        .and_then(|n| out.seek(SeekFrom::Start(0)).map(|_| n))
        .with_context(|| format!("sizing {}", dev.display()))?;
    let input = File::open(zst).with_context(|| format!("opening {}", zst.display()))?;
    let mut dec = zstd::stream::read::Decoder::new(input)
        .with_context(|| format!("reading {}", zst.display()))?
        .take(capacity + 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = dec.read(&mut buf).with_context(|| format!("decompressing {}", zst.display()))?;
        if n == 0 {
            break;
        }
        if written + n as u64 > capacity {
            bail!(
                "{} does not fit into {} ({capacity} bytes): the update is for another disk layout",
                zst.display(),
                dev.display()
            );
        }
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", dev.display()))?;
        written += n as u64;
    }
    out.sync_all().with_context(|| format!("flushing {}", dev.display()))?;
    Ok(written)
}

/// Checks the written slot against the signed root hash (reads it all back), so a bad write is caught
/// before GRUB is told to boot it. Skipped where the partitions are plain files (tests).
fn verify_slot(paths: &NodePaths, slot: Slot, roothash: &str) -> anyhow::Result<()> {
    if !paths.partitions.starts_with("/dev") {
        return Ok(());
    }
    let st = Command::new("veritysetup")
        .arg("verify")
        .arg(paths.data(slot))
        .arg(paths.hash(slot))
        .arg(roothash)
        .status()
        .context("running veritysetup verify")?;
    if !st.success() {
        bail!(
            "slot {slot} does not verify under the update's root hash after writing ({st}): the disk or the write is bad; the slot stays disarmed"
        );
    }
    Ok(())
}

/// Writes `path` whole or not at all: a new file, flushed, renamed over the old one.
fn replace_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

async fn mark_good(paths: &NodePaths, units: &[String], timeout: Duration, out: &mut dyn Write) -> anyhow::Result<i32> {
    let running = running_slot(paths)?;
    let (mut env, mut state) = read_state(paths)?;
    let on_trial = state.trial.is_some_and(|(s, _)| s == running);
    if on_trial {
        writeln!(out, "slot {running} is on trial: waiting up to {}s for {}", timeout.as_secs(), units.join(", "))?;
        if let Err(e) = wait_healthy(units, timeout).await {
            // Nothing marks this slot good now, and GRUB has no tries left for it: a reboot returns the node
            // to the good slot.
            writeln!(out, "slot {running} is not healthy ({e:#}): giving it up; rebooting into slot {}", state.good)?;
            out.flush()?;
            tracing::error!(slot = %running, good = %state.good, error = %format!("{e:#}"), "trial slot unhealthy");
            Systemd::connect().await?.reboot().await.context("asking systemd to reboot off the unhealthy slot")?;
            bail!("slot {running} stays on trial and is given up; the node reboots into slot {}", state.good);
        }
    }
    let before = state;
    let outcome = state.mark_good(running);
    if state != before {
        write_state(paths, &mut env, &state)?;
    }
    match outcome {
        MarkOutcome::Promoted(s) => writeln!(out, "slot {s} is healthy and now the good slot")?,
        MarkOutcome::TrialFailed(s) => {
            tracing::warn!(failed = %s, running = %running, "an upgraded slot never became good");
            writeln!(
                out,
                "the trial of slot {s} failed (it never marked itself good); running the good slot {running}"
            )?
        }
        MarkOutcome::AlreadyGood => writeln!(out, "slot {running} is the good slot")?,
        MarkOutcome::NotTracked => {
            writeln!(out, "slot {running} was chosen by hand; the good slot stays {}", state.good)?
        }
    }
    Ok(0)
}

/// Waits until every unit is active, asking systemd over D-Bus every two seconds.
async fn wait_healthy(units: &[String], timeout: Duration) -> anyhow::Result<()> {
    let systemd = Systemd::connect().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for u in units {
            let st = systemd.unit_state(u).await?;
            if !st.is_active() {
                waiting.push(format!("{u} is {st}"));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("after {}s: {}", timeout.as_secs(), waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[derive(Debug, serde::Serialize)]
struct Status {
    running: Slot,
    running_version: Option<String>,
    #[serde(flatten)]
    state: BootState,
    version_a: Option<String>,
    version_b: Option<String>,
}

fn status(paths: &NodePaths, json: bool, out: &mut dyn Write) -> anyhow::Result<i32> {
    let running = running_slot(paths)?;
    let (_, state) = read_state(paths)?;
    let version = |s: Slot| fs::read_to_string(paths.slot_dir(s).join("version")).ok().map(|v| v.trim().to_owned());
    let running_version = fs::read_to_string(&paths.os_release)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("IMAGE_VERSION=").map(|v| v.trim_matches('"').to_owned())));
    let st = Status { running, running_version, state, version_a: version(Slot::A), version_b: version(Slot::B) };
    if json {
        writeln!(out, "{}", serde_json::to_string(&st)?)?;
    } else {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(out, "running slot: {} (version {})", st.running, opt(&st.running_version))?;
        writeln!(out, "good slot:    {}", st.state.good)?;
        match st.state.trial {
            Some((s, n)) => writeln!(out, "trial slot:   {s} ({n} boots left)")?,
            None => writeln!(out, "trial slot:   -")?,
        }
        writeln!(out, "failed slot:  {}", st.state.failed.map_or("-".into(), |s| s.to_string()))?;
        writeln!(out, "slot a:       version {}", opt(&st.version_a))?;
        writeln!(out, "slot b:       version {}", opt(&st.version_b))?;
    }
    Ok(0)
}

/// The ESP mounted at `paths.esp` for the command's duration (unless something else mounted it already).
#[derive(Debug)]
struct EspMount {
    mounted_here: Option<PathBuf>,
}

impl EspMount {
    fn mount(paths: &NodePaths) -> anyhow::Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let target = paths.esp.to_string_lossy();
        if mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(&*target)) {
            return Ok(EspMount { mounted_here: None });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.esp)
            .with_context(|| format!("creating {}", paths.esp.display()))?;
        let dev = paths.partitions.join("bulkhead-esp");
        let st = Command::new("mount")
            .args(["-t", "vfat", "-o", "nodev,nosuid,noexec,umask=0077"])
            .arg(&dev)
            .arg(&paths.esp)
            .status()
            .context("running mount")?;
        if !st.success() {
            bail!(
                "mounting the ESP {} on {} failed ({st}): is this a Bulkhead node image?",
                dev.display(),
                paths.esp.display()
            );
        }
        Ok(EspMount { mounted_here: Some(paths.esp.clone()) })
    }
}

impl Drop for EspMount {
    fn drop(&mut self) {
        if let Some(p) = self.mounted_here.take() {
            // umount flushes the FAT; a failure leaves it mounted, which the next command reuses.
            if let Err(e) = Command::new("umount").arg(&p).status() {
                tracing::warn!(error = %e, path = %p.display(), "unmounting the ESP failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::node_artefact::tests::{artefact, files, manifest_for, signing_key};

    type R = Result<(), Box<dyn std::error::Error>>;

    /// A node in a temporary directory: partitions as files of 16 KiB, an ESP with slot A's files.
    fn node(running: Slot, grubenv: &str) -> Result<(tempfile::TempDir, NodePaths), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let paths = NodePaths {
            cmdline: d.path().join("cmdline"),
            partitions: d.path().join("by-partlabel"),
            esp: d.path().join("esp"),
            os_release: d.path().join("os-release"),
        };
        fs::write(&paths.cmdline, format!("root=/dev/mapper/root bulkhead.slot={running} ro\n"))?;
        fs::create_dir_all(&paths.partitions)?;
        for s in [Slot::A, Slot::B] {
            fs::write(paths.data(s), vec![s.name().as_bytes()[0]; 16384])?;
            fs::write(paths.hash(s), vec![s.name().as_bytes()[0]; 16384])?;
        }
        fs::create_dir_all(paths.esp.join("grub"))?;
        fs::create_dir_all(paths.slot_dir(Slot::A))?;
        fs::write(paths.slot_dir(Slot::A).join("version"), "1.0-a\n")?;
        let mut env = GrubEnv::default();
        for kv in grubenv.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.set(k, v);
        }
        fs::write(paths.grubenv(), env.to_block()?)?;
        Ok((d, paths))
    }

    fn verified(dir: &Path) -> Result<Verified, Box<dyn std::error::Error>> {
        let f = files();
        let art = artefact(&manifest_for(&f), &signing_key(), &f);
        Ok(node_artefact::unpack(&art[..], &signing_key().verifying_key(), dir, Limits::default())?)
    }

    #[test]
    fn install_writes_the_other_slot_and_arms_a_trial() -> R {
        let (d, paths) = node(Slot::A, "good_slot=a trial_slot= trial_tries=0")?;
        let staged = d.path().join("staged");
        fs::create_dir(&staged)?;
        let v = verified(&staged)?;
        assert_eq!(install(&paths, &v, 1)?, Slot::B);
        // Slot B holds the decompressed images (the rest of each partition is left as it was); A is untouched.
        let data = fs::read(paths.data(Slot::B))?;
        assert_eq!(data.len(), 16384);
        assert!(data[..8192].iter().all(|b| *b == 0xe5) && data[8192..].iter().all(|b| *b == b'b'));
        assert!(fs::read(paths.hash(Slot::B))?[..4096].iter().all(|b| *b == 0x5a));
        assert!(fs::read(paths.data(Slot::A))?.iter().all(|b| *b == b'a'));
        assert_eq!(fs::read(paths.slot_dir(Slot::B).join("vmlinuz"))?, b"kernel");
        assert_eq!(fs::read_to_string(paths.slot_dir(Slot::B).join("version"))?, "1.2.3-b\n");
        let block = fs::read(paths.grubenv())?;
        assert_eq!(block.len(), 1024, "GRUB's block keeps its size");
        let (_, st) = read_state(&paths)?;
        assert_eq!(st, BootState { good: Slot::A, trial: Some((Slot::B, 1)), failed: None });
        assert_eq!(status(&paths, true, &mut Vec::new())?, 0);
        Ok(())
    }

    #[test]
    fn install_refuses_the_only_good_slot_while_on_trial() -> R {
        // Running B on trial (GRUB counted its try down): A is the only good slot.
        let (d, paths) = node(Slot::B, "good_slot=a trial_slot=b trial_tries=0")?;
        let staged = d.path().join("staged");
        fs::create_dir(&staged)?;
        let v = verified(&staged)?;
        let err = install(&paths, &v, 1).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("slot a is the last known good slot"), "{err}");
        assert!(fs::read(paths.data(Slot::A))?.iter().all(|b| *b == b'a'), "slot A was not touched");
        Ok(())
    }

    #[test]
    fn an_update_larger_than_the_slot_is_refused() -> R {
        let (d, paths) = node(Slot::A, "good_slot=a")?;
        fs::write(paths.data(Slot::B), vec![0u8; 4096])?; // smaller than the 8 KiB image
        let staged = d.path().join("staged");
        fs::create_dir(&staged)?;
        let v = verified(&staged)?;
        let err = install(&paths, &v, 1).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("does not fit"), "{err}");
        let (_, st) = read_state(&paths)?;
        assert_eq!(st.trial, None, "a failed write leaves no trial armed");
        Ok(())
    }

    #[test]
    fn the_running_slot_comes_from_the_kernel_command_line() -> R {
        let (_d, paths) = node(Slot::B, "")?;
        assert_eq!(running_slot(&paths)?, Slot::B);
        fs::write(&paths.cmdline, "root=/dev/sda1 ro")?;
        assert!(running_slot(&paths).is_err());
        fs::write(&paths.cmdline, "bulkhead.slot=c")?;
        assert!(running_slot(&paths).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn an_artefact_is_fetched_over_http_and_verified() -> R {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let f = files();
        let art = artefact(&manifest_for(&f), &signing_key(), &f);
        let copy = art.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", art.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&art).await;
            }
        });
        let d = tempfile::tempdir()?;
        let staging = d.path().join("staging");
        let url = format!("http://{addr}/node.update");
        let v = fetch_and_verify(&url, &signing_key().verifying_key(), &staging, Limits::default()).await?;
        assert_eq!(v.manifest.version, "1.2.3-b");
        assert_eq!(fs::read(v.path("entry.cfg"))?, b"menuentry \"test\" {}\n");
        server.await?;
        // The same artefact from a file, where it is over the bound.
        let file = d.path().join("node.update");
        fs::write(&file, &copy)?;
        let small = Limits { artefact: 20, ..Limits::default() };
        let r = fetch_and_verify(&file.to_string_lossy(), &signing_key().verifying_key(), &staging, small).await;
        let err = r.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("more than the"), "{err}");
        let v = fetch_and_verify(&file.to_string_lossy(), &signing_key().verifying_key(), &staging, Limits::default())
            .await?;
        assert_eq!(v.manifest.version, "1.2.3-b");
        Ok(())
    }
}
