//! bulkhead-zone: the PID 1 of every Bulkhead zone (a Xen PV VM running one pod).
//!
//! This step is the foundation the host channel and the workloads plug into later: [`init::run`] mounts the
//! zone's filesystems ([`mounts`]), reads its configuration from the kernel command line ([`cmdline`]), sets
//! the hostname, delegates cgroup v2 controllers ([`cgroup`]), announces itself on the console
//! ([`console`]) and then serves signals from a signalfd ([`signals`]): it reaps every child ([`reap`]) and
//! powers off ([`power`]) on SIGTERM, SIGINT or SIGPWR. Single-threaded, no async runtime.
//!
//! Process model: one thread. Init owns SIGCHLD (blocked, read from the signalfd) and reaps every child,
//! its own and re-parented orphans alike; children are started only by fork+exec (`std::process::Command`,
//! which resets the signal mask in the child). The kernel's `poweroff_cmd` is pointed at
//! `/init --request-poweroff`, so a toolstack shutdown (`xl shutdown`) arrives as SIGPWR.
//!
//! Everything init prints goes through [`console`]; `println!` and friends are banned by `clippy.toml`.
//!
//! Workloads (containers): [`workload`] mounts their images and roots, creates their cgroups and starts their
//! processes through a setup helper (this binary again, with `--workload-setup` or `--exec-setup`).
#![warn(missing_docs)]

pub mod agent;
pub mod cgroup;
pub mod channel;
pub mod cmdline;
pub mod console;
pub mod error;
pub mod init;
pub mod mounts;
pub mod net;
pub mod power;
pub mod reap;
pub mod root;
pub mod signals;
pub mod uptime;
pub mod workload;
