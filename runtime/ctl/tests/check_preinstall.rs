//! `bulkhead check preinstall` as a process: against this build host's real root (which never runs Xen, so
//! the hypervisor check must fail and the command exit 1), and against a fake dom0 tree (exit 0).

use std::path::Path;
use std::process::{Command, Output};

fn bulkhead(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_bulkhead")).args(args).output()
}

fn json_of(out: &Output) -> serde_json::Result<serde_json::Value> {
    serde_json::from_slice(&out.stdout)
}

fn check<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    match report["checks"].as_array().and_then(|cs| cs.iter().find(|c| c["id"] == id)) {
        Some(c) => c,
        None => panic!("no check {id} in {report:#}"),
    }
}

#[test]
fn this_host_without_xen_fails_the_hypervisor_check_and_exits_1() -> anyhow::Result<()> {
    let out = bulkhead(&["check", "preinstall"])?;
    let table = String::from_utf8(out.stdout.clone())?;
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("Required  hypervisor") && l.contains("FAIL")),
        "no failed hypervisor row:\n{table}"
    );
    assert!(table.contains("hypervisor (FAIL): boot this machine through Xen 4.17"), "no advice:\n{table}");
    assert!(table.contains("preinstall: NOT READY"), "{table}");

    let out = bulkhead(&["check", "preinstall", "-o", "json"])?;
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out)?;
    assert_eq!(report["ok"], false);
    let h = check(&report, "hypervisor");
    assert_eq!((h["group"].as_str(), h["status"].as_str()), (Some("required"), Some("fail")));
    assert_eq!(check(&report, "dom0")["status"], "skip");
    Ok(())
}

#[test]
fn a_usage_error_exits_2() -> std::io::Result<()> {
    let out = bulkhead(&["check", "preinstall", "--output", "yaml"])?;
    assert_eq!(out.status.code(), Some(2));
    let out = bulkhead(&["check"])?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

fn write(root: &Path, path: &str, text: &str) -> std::io::Result<()> {
    let p = root.join(path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, text)
}

/// The files a Xen 4.17 dom0 with every needed driver shows.
fn fake_dom0(root: &Path) -> std::io::Result<()> {
    write(root, "sys/hypervisor/type", "xen\n")?;
    write(root, "sys/hypervisor/version/major", "4\n")?;
    write(root, "sys/hypervisor/version/minor", "17\n")?;
    write(root, "sys/hypervisor/version/extra", ".3\n")?;
    write(root, "sys/hypervisor/properties/capabilities", "xen-3.0-x86_64 hvm-3.0-x86_64\n")?;
    write(root, "proc/xen/capabilities", "control_d\n")?;
    write(root, "proc/meminfo", "MemTotal:  960000 kB\n")?;
    write(root, "proc/sys/kernel/osrelease", "6.1.0-40-amd64\n")?;
    write(root, "proc/filesystems", "nodev\txenfs\n\terofs\nnodev\toverlay\n")?;
    let modules = ["xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xen-blkback", "xen-netback", "loop"];
    let modules = [&modules[..], &["dm-mod", "dm-verity", "tun", "bridge"]].concat();
    let dep: String = modules.iter().map(|m| format!("kernel/drivers/{m}.ko.xz:\n")).collect();
    write(root, "lib/modules/6.1.0-40-amd64/modules.dep", &dep)?;
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")?;
    write(root, "sys/devices/system/cpu/online", "0\n")?;
    write(root, "etc/xen/scripts/block", "")?;
    write(root, "usr/bin/mkfs.erofs", "")?;
    std::fs::create_dir_all(root.join("var/lib"))
}

#[test]
fn a_dom0_tree_passes_and_a_missing_backend_fails_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    fake_dom0(dir.path())?;
    let root = dir.path().to_str().ok_or_else(|| anyhow::anyhow!("temp path is not UTF-8"))?;
    // Free space is measured on the temp dir's file system: it needs the Required 1 GiB.
    let out = bulkhead(&["check", "preinstall", "--root", root, "-o", "json"])?;
    let report = json_of(&out)?;
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["summary"]["required_failed"], 0);
    assert_eq!(check(&report, "hypervisor")["detail"], "xen 4.17.3");
    assert_eq!(check(&report, "kernel:xen-netback")["status"], "pass");

    write(dir.path(), "lib/modules/6.1.0-40-amd64/modules.dep", "kernel/drivers/loop.ko:\n")?;
    let out = bulkhead(&["check", "preinstall", "--root", root, "-o", "json"])?;
    let report = json_of(&out)?;
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(check(&report, "kernel:xen-netback")["status"], "fail");
    Ok(())
}
