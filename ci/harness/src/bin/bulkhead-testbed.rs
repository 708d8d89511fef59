//! The QEMU runner behind `ci/testbed run`: boots one prepared run directory and exits with the scenario's
//! exit code, 124 when it timed out, 125 when the test bed failed. `ci/testbed` prepares its inputs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bulkhead_testbed::outcome::{EXIT_BED_FAILURE, Outcome};
use bulkhead_testbed::qemu::{self, BootConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Boot QEMU -> Xen -> dom0 and follow one scenario (use ci/testbed run, which prepares the inputs)")]
struct Args {
    /// Xen as an uncompressed multiboot ELF.
    #[arg(long)]
    xen: PathBuf,
    /// dom0's kernel.
    #[arg(long)]
    dom0_kernel: PathBuf,
    /// dom0's initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// Memory of the emulated machine, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Memory for dom0, MiB.
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
    /// An extra Xen command-line option (repeatable), appended after the defaults.
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
    let min = a.dom0_memory + 128;
    anyhow::ensure!(
        a.memory >= min,
        "--memory {} is too small: dom0 alone takes {} MiB; give at least {min}",
        a.memory,
        a.dom0_memory
    );
    let cfg = BootConfig {
        qemu: a.qemu,
        xen: a.xen,
        dom0_kernel: a.dom0_kernel,
        initrd: a.initrd,
        memory_mib: a.memory,
        dom0_memory_mib: a.dom0_memory,
        timeout: Duration::from_secs(a.timeout),
        boot_timeout: Duration::from_secs(a.boot_timeout),
        run_dir: a.run_dir.clone(),
        echo_serial: a.echo_serial,
        xen_extra_args: a.xen_args,
    };
    let result = qemu::run(&cfg).context("booting the test bed");
    if a.consume_initrd {
        let _ = std::fs::remove_file(&cfg.initrd);
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
