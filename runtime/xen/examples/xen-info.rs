//! Print Xen version, host physinfo and the domain list, like a small
//! `xl info` + `xl list`. Run as root in dom0:
//!
//! ```sh
//! cargo run -p bulkhead-xen --example xen-info
//! RUST_LOG=bulkhead_xen=debug xen-info   # also show libxl's own log lines
//! ```
//!
//! Goes through `LibxlWorker`, the same path the daemon uses, and reads the
//! dom0 xenstore name entry as a xenstore smoke check.

use anyhow::Context as _;
use bulkhead_xen::xenstore::Xenstore;
use bulkhead_xen::{DomainInfo, LibxlWorker};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();

    let xl = LibxlWorker::spawn().context("starting libxl (is this dom0 of a running Xen, and are we root?)")?;

    let v = xl.call_blocking(|ctx| ctx.version_info())??;
    println!("xen_version      : {}", v.version());
    println!("xen_caps         : {}", v.capabilities);
    println!("xen_changeset    : {}", v.changeset);
    println!("xen_commandline  : {}", v.commandline);
    println!("cc_compiler      : {}", v.compiler);
    println!("build_id         : {}", v.build_id);

    let p = xl.call_blocking(|ctx| ctx.physinfo())??;
    println!("nr_cpus          : {}", p.nr_cpus);
    println!("nr_nodes         : {}", p.nr_nodes);
    println!("cores_per_socket : {}", p.cores_per_socket);
    println!("threads_per_core : {}", p.threads_per_core);
    println!("cpu_mhz          : {}", p.cpu_khz / 1000);
    println!("total_memory     : {} MiB", p.total_memory_kib() / 1024);
    println!("free_memory      : {} MiB", p.free_memory_kib() / 1024);
    println!("virt_caps        : {}", p.caps.names().join(" "));

    let domains = xl.call_blocking(|ctx| ctx.list_domains())??;
    println!();
    print_table(&domains);

    let xs = Xenstore::open_readonly().context("opening xenstore")?;
    let dom0_name = xs.read_string("/local/domain/0/name")?;
    println!();
    println!("xenstore /local/domain/0/name = {dom0_name:?}");
    Ok(())
}

fn print_table(domains: &[DomainInfo]) {
    let name_w = domains.iter().filter_map(|d| d.name.as_deref()).map(str::len).max().unwrap_or(4).max(4);
    println!(
        "{:<name_w$} {:>5} {:>8} {:>8} {:>5} {:<6} {:<4} {:>10}  UUID",
        "Name", "ID", "Mem(MiB)", "Max(MiB)", "VCPUs", "State", "Type", "Time(s)"
    );
    for d in domains {
        let ty = match d.domain_type {
            bulkhead_xen::DomainType::Pv => "pv".to_owned(),
            bulkhead_xen::DomainType::Hvm => "hvm".to_owned(),
            bulkhead_xen::DomainType::Pvh => "pvh".to_owned(),
            bulkhead_xen::DomainType::Other(n) => format!("?{n}"),
        };
        let reason = d.state.shutdown_reason.map(|r| format!(" ({r:?})")).unwrap_or_default();
        println!(
            "{:<name_w$} {:>5} {:>8} {:>8} {:>5} {:<6} {:<4} {:>10.1}  {}{}",
            d.name.as_deref().unwrap_or("-"),
            d.domid,
            d.current_memkb / 1024,
            d.max_memkb / 1024,
            d.vcpus_online,
            d.state.xl_flags(),
            ty,
            d.cpu_time_ns as f64 / 1e9,
            d.uuid,
            reason,
        );
    }
}
