//! `bulkhead-cri security-check`: runs containers with kubelet's security settings in one real pod and checks,
//! from inside each container and from an exec into it (an exec inherits its container's settings), that the
//! zone applied them: capabilities, no_new_privs, RuntimeDefault and Localhost seccomp, masked and read-only
//! paths, and privileged mode. Exits non-zero at the first check that fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use crate::smoke::connect;
use tonic::transport::Channel;

/// What the check is given.
#[derive(Debug, Clone)]
pub struct SecurityCheck {
    /// The CRI socket.
    pub socket: PathBuf,
    /// An image with /bin/sh and /bin/busybox (applets run as `busybox APPLET`).
    pub image: String,
    /// A directory on the node for the pod's logs and the Localhost profile.
    pub work_dir: PathBuf,
}

/// One container and the script that must exit 0 in an exec into it (`$T` is `1`, the container's own
/// process, then `self`, the exec).
struct Case {
    name: &'static str,
    security: cri::LinuxContainerSecurityContext,
    script: String,
}

fn caps(add: &[&str], drop: &[&str]) -> Option<cri::Capability> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
    Some(cri::Capability { add_capabilities: s(add), drop_capabilities: s(drop), ..Default::default() })
}

fn profile(kind: cri::security_profile::ProfileType, localhost_ref: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile { profile_type: kind.into(), localhost_ref: localhost_ref.into() })
}

/// A script line that checks `field` of /proc/$T/status for the container and for the exec.
fn status_is(field: &str, value: &str) -> String {
    format!(
        "for T in 1 self; do busybox grep -Eq '^{field}:[[:space:]]+{value}$' /proc/$T/status || \
         {{ echo \"/proc/$T: $(busybox grep -E '^{field}:' /proc/$T/status), want {value}\"; exit 1; }}; done\n"
    )
}

fn cases(localhost: &Path) -> Vec<Case> {
    use cri::security_profile::ProfileType;
    let unconfined = profile(ProfileType::Unconfined, "");
    vec![
        Case {
            name: "caps",
            security: cri::LinuxContainerSecurityContext {
                capabilities: caps(&["NET_BIND_SERVICE"], &["ALL"]),
                seccomp: unconfined.clone(),
                ..Default::default()
            },
            script: status_is("CapEff", "0000000000000400") + &status_is("CapBnd", "0000000000000400"),
        },
        Case {
            // A non-root program holds only its ambient capabilities after execve.
            name: "ambient",
            security: cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    drop_capabilities: vec!["ALL".into()],
                    add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                    ..Default::default()
                }),
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                seccomp: unconfined.clone(),
                ..Default::default()
            },
            script: status_is("CapAmb", "0000000000000400")
                + &status_is("CapEff", "0000000000000400")
                + &status_is("Uid", "1000[[:space:]]+1000[[:space:]]+1000[[:space:]]+1000"),
        },
        Case {
            name: "nnp",
            security: cri::LinuxContainerSecurityContext {
                no_new_privs: true,
                seccomp: unconfined.clone(),
                ..Default::default()
            },
            script: status_is("NoNewPrivs", "1") + &status_is("Seccomp", "0"),
        },
        Case {
            name: "runtime-default",
            security: cri::LinuxContainerSecurityContext {
                seccomp: profile(ProfileType::RuntimeDefault, ""),
                ..Default::default()
            },
            // A new user namespace is denied; mkdir is not.
            script: status_is("Seccomp", "2")
                + "if busybox unshare -U /bin/busybox true 2>/dev/null; then echo 'unshare -U succeeded'; exit 1; fi\n"
                + "busybox mkdir /allowed || exit 1\n",
        },
        Case {
            name: "localhost",
            security: cri::LinuxContainerSecurityContext {
                no_new_privs: true,
                seccomp: profile(ProfileType::Localhost, &localhost.display().to_string()),
                ..Default::default()
            },
            script: status_is("Seccomp", "2")
                + "if busybox mkdir /denied 2>/dev/null; then echo 'mkdir succeeded'; exit 1; fi\n"
                + "busybox unshare -U /bin/busybox true || { echo 'unshare -U failed under a profile that allows it'; exit 1; }\n",
        },
        Case {
            name: "paths",
            security: cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/proc/kcore".into(), "/proc/kallsyms".into(), "/sys/kernel".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: unconfined.clone(),
                ..Default::default()
            },
            script: "n=$(busybox cat /proc/kallsyms | busybox wc -c); [ \"$n\" = 0 ] || { echo \"kallsyms has $n bytes\"; exit 1; }\n\
                     n=$(busybox ls /sys/kernel | busybox wc -l); [ \"$n\" = 0 ] || { echo \"/sys/kernel has $n entries\"; exit 1; }\n\
                     busybox grep -q ' /proc/sys proc ro,' /proc/self/mounts || { busybox grep /proc /proc/self/mounts; exit 1; }\n\
                     if echo x 2>/dev/null >/proc/sys/kernel/domainname; then echo '/proc/sys is writable'; exit 1; fi\n"
                .into(),
        },
        Case {
            name: "privileged",
            security: cri::LinuxContainerSecurityContext {
                privileged: true,
                capabilities: caps(&[], &["ALL"]),
                masked_paths: vec!["/proc/kallsyms".into()],
                readonly_paths: vec!["/proc/sys".into()],
                seccomp: profile(ProfileType::RuntimeDefault, ""),
                ..Default::default()
            },
            script: status_is("CapEff", "000001ffffffffff")
                + &status_is("Seccomp", "0")
                + "n=$(busybox cat /proc/kallsyms | busybox wc -c); [ \"$n\" != 0 ] || { echo 'kallsyms is masked'; exit 1; }\n\
                   busybox grep -q ' /sys sysfs rw,' /proc/self/mounts || { busybox grep sysfs /proc/self/mounts; exit 1; }\n\
                   echo zone > /proc/sys/kernel/domainname || exit 1\n",
        },
    ]
}

/// The Localhost profile: Docker's format, everything allowed but mkdir, which fails with EPERM.
const LOCALHOST_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "comment": "busybox mkdir"}
  ]
}"#;

/// Runs every case; the first failure is the error. The pod is removed at the end, also after a failure.
pub async fn run(t: &SecurityCheck) -> anyhow::Result<()> {
    let mut rt = RuntimeServiceClient::new(connect(&t.socket).await?);
    std::fs::create_dir_all(&t.work_dir).with_context(|| format!("creating {}", t.work_dir.display()))?;
    let localhost = t.work_dir.join("deny-mkdir.json");
    std::fs::write(&localhost, LOCALHOST_PROFILE).with_context(|| format!("writing {}", localhost.display()))?;
    let config = crate::smoke::pod_config("security", &t.work_dir);
    let run = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "bulkhead".into() };
    let pod = rt.run_pod_sandbox(run).await.context("RunPodSandbox")?.into_inner().pod_sandbox_id;
    let result = run_cases(&mut rt, &config, &pod, &t.image, &localhost).await;
    let stop = rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
    let remove = rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await;
    result?;
    stop.context("StopPodSandbox")?;
    remove.context("RemovePodSandbox")?;
    Ok(())
}

async fn run_cases(
    rt: &mut RuntimeServiceClient<Channel>,
    config: &cri::PodSandboxConfig,
    pod: &str,
    image: &str,
    localhost: &Path,
) -> anyhow::Result<()> {
    for case in cases(localhost) {
        // As root unless the case says otherwise: the test image runs as 1000, and execve gives a non-root
        // program no capabilities but its ambient ones.
        let run_as_user = case.security.run_as_user.or(Some(cri::Int64Value { value: 0 }));
        let security = cri::LinuxContainerSecurityContext { run_as_user, ..case.security };
        let c = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: case.name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            command: vec!["/bin/busybox".into(), "sleep".into(), "600".into()],
            log_path: format!("{}/0.log", case.name),
            linux: Some(cri::LinuxContainerConfig { resources: None, security_context: Some(security) }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        };
        let id = rt
            .create_container(req)
            .await
            .with_context(|| format!("CreateContainer {}", case.name))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
            .await
            .with_context(|| format!("StartContainer {}", case.name))?;
        let exec = cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), case.script.clone()],
            timeout: 60,
        };
        let out = rt.exec_sync(exec).await.with_context(|| format!("ExecSync in {}", case.name))?.into_inner();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.exit_code == 0, "{}: the check exited {}: {}", case.name, out.exit_code, text.trim());
        println!("security check {}: ok", case.name);
        let stop = cri::StopContainerRequest { container_id: id.clone(), timeout: 0 };
        rt.stop_container(stop).await.with_context(|| format!("StopContainer {}", case.name))?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .with_context(|| format!("RemoveContainer {}", case.name))?;
    }
    // A Localhost profile the zone cannot apply is refused at create, with the reason.
    let bad = localhost.with_file_name("notify.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#)?;
    let c = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "notify".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: vec!["/bin/busybox".into(), "true".into()],
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: profile(cri::security_profile::ProfileType::Localhost, &bad.display().to_string()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let req = cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(c), sandbox_config: None };
    match rt.create_container(req).await {
        Err(s) if s.code() == tonic::Code::InvalidArgument && s.message().contains("SCMP_ACT_NOTIFY") => {
            println!("security check notify: refused ({})", s.message());
            Ok(())
        }
        other => anyhow::bail!("a SCMP_ACT_NOTIFY profile was not refused with INVALID_ARGUMENT: {other:?}"),
    }
}
