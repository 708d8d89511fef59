//! The QEMU runner behind `ci/testbed run` and `ci/image boot`: boots one prepared run directory (the test
//! bed's Xen and dom0, or a node image's disk) and exits with the scenario's exit code, 124 when it timed
//! out, 125 when the test machine failed. The scripts prepare its inputs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bulkhead_testbed::outcome::{EXIT_BED_FAILURE, Outcome};
use bulkhead_testbed::qemu::{self, BootConfig, Firmware, Machine};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    about = "Boot QEMU -> Xen -> dom0 and follow one scenario (use ci/testbed run or ci/image boot, which prepare the inputs)"
)]
struct Args {
    /// Xen as an uncompressed multiboot ELF (test bed).
    #[arg(long, required_unless_present = "disk", requires_all = ["dom0_kernel", "initrd"])]
    xen: Option<PathBuf>,
    /// dom0's kernel (test bed).
    #[arg(long, conflicts_with = "disk")]
    dom0_kernel: Option<PathBuf>,
    /// dom0's initramfs (test bed).
    #[arg(long, conflicts_with = "disk")]
    initrd: Option<PathBuf>,
    /// A raw disk image to boot through its own firmware boot loader (the node image), instead of --xen.
    #[arg(long, conflicts_with = "xen", requires = "run_disk")]
    disk: Option<PathBuf>,
    /// With --disk or --bundle-xen-cmdline: the disk carrying the scenario (ci/image boot makes it),
    /// attached read-only.
    #[arg(long)]
    run_disk: Option<PathBuf>,
    /// With --xen: boot a PXE bundle with exactly this Xen command line (its boot script's), instead of
    /// the test bed's; needs --bundle-dom0-cmdline and --run-disk.
    #[arg(long, requires_all = ["xen", "bundle_dom0_cmdline", "run_disk"])]
    bundle_xen_cmdline: Option<String>,
    /// With --bundle-xen-cmdline: dom0's command line (no commas).
    #[arg(long, requires = "bundle_xen_cmdline")]
    bundle_dom0_cmdline: Option<String>,
    /// A further raw disk to attach read-only (repeatable), e.g. a NoCloud CIDATA disk.
    #[arg(long = "extra-disk")]
    extra_disks: Vec<PathBuf>,
    /// With --disk: boot with UEFI, from this OVMF code image (default: BIOS).
    #[arg(long, requires_all = ["disk", "uefi_vars"])]
    uefi_code: Option<PathBuf>,
    /// With --uefi-code: this run's copy of OVMF's variable store (written by the firmware).
    #[arg(long, requires = "uefi_code")]
    uefi_vars: Option<PathBuf>,
    /// Memory of the emulated machine, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Memory for dom0, MiB (test bed; a disk image sets its own).
    #[arg(long, default_value_t = 1024)]
    dom0_memory: u32,
    /// Seconds the scenario may run.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds QEMU, Xen and dom0 may take to come up.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Directory for sockets and the serial log.
    #[arg(long)]
    run_dir: PathBuf,
    /// Also write the outcome as JSON here (it always goes to RUN_DIR/outcome.json).
    #[arg(long)]
    outcome_file: Option<PathBuf>,
    /// Delete the initrd when the run is over (ci/testbed makes a fresh one per run).
    #[arg(long)]
    consume_initrd: bool,
    /// Copy the serial console to stderr.
    #[arg(long)]
    echo_serial: bool,
    /// Let the guest reboot: the scenario runs again on each boot until one reports its exit; --timeout
    /// bounds the whole sequence (ci/image upgrade-check).
    #[arg(long)]
    allow_reboots: bool,
    /// An extra Xen command-line option (repeatable), appended after the defaults (test bed).
    #[arg(long = "xen-arg")]
    xen_args: Vec<String>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(e) => {
            eprintln!("testbed: TEST BED FAILURE (exit {EXIT_BED_FAILURE}): {e:#}");
            ExitCode::from(EXIT_BED_FAILURE as u8)
        }
    }
}

fn real_main() -> anyhow::Result<i32> {
    let a = Args::parse();
    let machine = match (a.xen, a.dom0_kernel, a.initrd, a.disk, a.run_disk) {
        (Some(xen), Some(dom0_kernel), Some(initrd), None, Some(run_disk)) => {
            let (Some(xen_cmdline), Some(dom0_cmdline)) = (a.bundle_xen_cmdline, a.bundle_dom0_cmdline) else {
                anyhow::bail!(
                    "--run-disk with --xen boots a PXE bundle: give --bundle-xen-cmdline and --bundle-dom0-cmdline"
                );
            };
            Machine::Bundle { xen, dom0_kernel, initrd, xen_cmdline, dom0_cmdline, run_disk }
        }
        (Some(xen), Some(dom0_kernel), Some(initrd), None, None) => {
            let min = a.dom0_memory + 128;
            anyhow::ensure!(
                a.memory >= min,
                "--memory {} is too small: dom0 alone takes {} MiB; give at least {min}",
                a.memory,
                a.dom0_memory
            );
            Machine::Multiboot { xen, dom0_kernel, initrd, dom0_memory_mib: a.dom0_memory, xen_extra_args: a.xen_args }
        }
        (None, None, None, Some(image), Some(run_disk)) => {
            let firmware = match (a.uefi_code, a.uefi_vars) {
                (Some(code), Some(vars)) => Firmware::Uefi { code, vars },
                _ => Firmware::Bios,
            };
            Machine::Disk { image, run_disk, firmware }
        }
        _ => anyhow::bail!(
            "give either --xen, --dom0-kernel and --initrd (with --run-disk and --bundle-*-cmdline for a PXE bundle), or --disk and --run-disk"
        ),
    };
    let cfg = BootConfig {
        qemu: a.qemu,
        machine,
        memory_mib: a.memory,
        timeout: Duration::from_secs(a.timeout),
        boot_timeout: Duration::from_secs(a.boot_timeout),
        run_dir: a.run_dir.clone(),
        echo_serial: a.echo_serial,
        extra_disks: a.extra_disks,
        allow_reboots: a.allow_reboots,
    };
    let result = qemu::run(&cfg).context("booting the test machine");
    if let (true, Machine::Multiboot { initrd, .. }) = (a.consume_initrd, &cfg.machine) {
        let _ = std::fs::remove_file(initrd);
    }
    let outcome = result?;
    write_outcome(&a.run_dir.join("outcome.json"), &outcome)?;
    if let Some(f) = &a.outcome_file {
        write_outcome(f, &outcome)?;
    }
    Ok(outcome.exit_code())
}

fn write_outcome(path: &std::path::Path, outcome: &Outcome) -> anyhow::Result<()> {
    let text = serde_json::to_string(outcome).context("encoding the outcome")?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}
