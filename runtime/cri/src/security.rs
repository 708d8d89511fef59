//! Kubelet's container security context resolved into the policy a zone applies as given: capability sets,
//! `no_new_privs`, masked and read-only paths, compiled seccomp programs and privileged mode.
//!
//! Kubernetes' semantics are resolved here, on the node, so that the zone init stays small and makes no policy
//! decisions. The zone is a VM and the boundary to the node: none of these settings, `privileged` included,
//! reaches past the zone's kernel. What they protect is the pod's containers from each other and the zone's
//! kernel from its containers.
//!
//! Capabilities, as containerd and CRI-O resolve them: the 14 default capabilities of container runtimes,
//! `add: ["ALL"]` for every capability, `drop: ["ALL"]` for none, then the named drops, then the named adds (so
//! `drop: [ALL], add: [NET_BIND_SERVICE]` keeps exactly that one); privileged: every capability. The result is
//! the bounding, effective and permitted set. The zone sets them before `execve`, whose rules then decide what
//! the program holds: a root program keeps them, a non-root program starts with only its ambient set, as with
//! runc. `add_ambient` capabilities (kubelet's ambient capabilities) join the bounding, effective and
//! permitted sets and make up the inheritable and ambient sets, which the kernel requires of an ambient
//! capability: so a non-root program holds exactly those.

pub mod seccomp;

use std::path::Path;

use bulkhead_api::control::v1 as pb;
use k8s_cri::v1 as cri;
use tonic::Status;

/// Capability names in number order (`include/uapi/linux/capability.h`); bit n of a set is `CAPS[n]`.
pub const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability.
pub const ALL_CAPS: u64 = (1 << CAPS.len()) - 1;

/// The default capabilities of container runtimes (Docker, containerd, CRI-O), which Kubernetes users expect.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// The bit of capability `name` (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
pub fn cap_bit(name: &str) -> Option<u64> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPS.iter().position(|c| *c == bare).map(|n| 1 << n)
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

fn caps_of(names: &[String], field: &str) -> Result<u64, Status> {
    names.iter().filter(|n| !is_all(n)).try_fold(0, |set, n| {
        cap_bit(n).map(|b| set | b).ok_or_else(|| invalid(format!("{field}: unknown capability {n:?}")))
    })
}

/// The ambient capabilities of a container (`add_ambient`; `ALL` is not a name here: an ambient set is
/// asked for capability by capability).
pub fn ambient_capabilities(sc: &cri::LinuxContainerSecurityContext) -> Result<u64, Status> {
    let Some(c) = &sc.capabilities else { return Ok(0) };
    if c.add_ambient_capabilities.iter().any(|n| is_all(n)) {
        return Err(invalid("capabilities.add_ambient: name the capabilities, ALL is not accepted".to_owned()));
    }
    caps_of(&c.add_ambient_capabilities, "capabilities.add_ambient")
}

/// The capability set of a container: see the module docs.
pub fn capabilities(sc: &cri::LinuxContainerSecurityContext) -> Result<u64, Status> {
    if sc.privileged {
        return Ok(ALL_CAPS);
    }
    let defaults = DEFAULT_CAPS.iter().map(|c| cap_bit(c).unwrap_or(0)).fold(0, |a, b| a | b);
    let Some(c) = &sc.capabilities else { return Ok(defaults) };
    let add = caps_of(&c.add_capabilities, "capabilities.add")? | ambient_capabilities(sc)?;
    let drop = caps_of(&c.drop_capabilities, "capabilities.drop")?;
    let mut set = defaults;
    if c.add_capabilities.iter().any(|n| is_all(n)) {
        set = ALL_CAPS;
    }
    if c.drop_capabilities.iter().any(|n| is_all(n)) {
        set = 0;
    }
    Ok((set & !drop) | add)
}

fn paths(list: &[String], field: &str) -> Result<Vec<String>, Status> {
    if list.len() > bulkhead_wire::limits::MAX_SECURITY_PATHS {
        return Err(invalid(format!(
            "{field}: {} paths, at most {} are supported",
            list.len(),
            bulkhead_wire::limits::MAX_SECURITY_PATHS
        )));
    }
    list.iter()
        .map(|p| {
            if p.starts_with('/') && !p.contains('\0') && p.len() <= bulkhead_wire::limits::MAX_PATH_LEN {
                Ok(p.clone())
            } else {
                Err(invalid(format!("{field}: {p:?} is not an absolute path")))
            }
        })
        .collect()
}

/// The seccomp profile kubelet asked for: the `seccomp` field, or the older `seccomp_profile_path`
/// (`runtime/default`, `docker/default`, `unconfined`, `localhost/<path>`); neither set means unconfined, as
/// with containerd.
#[expect(deprecated, reason = "kubelets before 1.22 send only seccomp_profile_path")]
fn seccomp_programs(sc: &cri::LinuxContainerSecurityContext, caps: u64) -> Result<Vec<Vec<u8>>, Status> {
    use cri::security_profile::ProfileType;
    let programs = match &sc.seccomp {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => seccomp::runtime_default(caps),
            Ok(ProfileType::Unconfined) => Ok(Vec::new()),
            Ok(ProfileType::Localhost) => seccomp::localhost(Path::new(&p.localhost_ref), caps),
            Err(_) => return Err(invalid(format!("seccomp: unknown profile type {}", p.profile_type))),
        },
        None => match sc.seccomp_profile_path.as_str() {
            "" | "unconfined" => Ok(Vec::new()),
            "runtime/default" | "docker/default" => seccomp::runtime_default(caps),
            other => match other.strip_prefix("localhost/") {
                Some(path) => seccomp::localhost(Path::new(path), caps),
                None => return Err(invalid(format!("seccomp_profile_path {other:?} is not a known profile"))),
            },
        },
    };
    let programs = programs.map_err(|e| invalid(format!("seccomp: {e}")))?;
    Ok(programs.iter().map(|p| seccomp::to_bytes(p)).collect())
}

/// The security policy of a container (see the module docs); every refusal is INVALID_ARGUMENT with the
/// reason.
pub fn policy(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<pb::SecurityPolicy, Status> {
    let default = cri::LinuxContainerSecurityContext::default();
    let sc = sc.unwrap_or(&default);
    let caps = capabilities(sc)?;
    let ambient = ambient_capabilities(sc)?;
    // Privileged: everything within the zone, no filter, nothing hidden (kubelet sends no paths then anyway).
    let (masked_paths, readonly_paths, seccomp_programs) = if sc.privileged {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        (
            paths(&sc.masked_paths, "masked_paths")?,
            paths(&sc.readonly_paths, "readonly_paths")?,
            seccomp_programs(sc, caps)?,
        )
    };
    Ok(pb::SecurityPolicy {
        cap_bounding: caps,
        cap_effective: caps,
        cap_permitted: caps,
        cap_inheritable: ambient,
        cap_ambient: ambient,
        no_new_privs: sc.no_new_privs,
        masked_paths,
        readonly_paths,
        seccomp_programs,
        privileged: sc.privileged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: s(add),
                drop_capabilities: s(drop),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn bits(names: &[&str]) -> u64 {
        names.iter().map(|n| cap_bit(n).unwrap_or(u64::MAX)).fold(0, |a, b| a | b)
    }

    #[test]
    fn the_table_matches_the_kernels_numbers() {
        assert_eq!(cap_bit("CAP_CHOWN"), Some(1));
        assert_eq!(cap_bit("net_bind_service"), Some(1 << 10));
        assert_eq!(cap_bit("SYS_ADMIN"), Some(1 << 21));
        assert_eq!(cap_bit("CHECKPOINT_RESTORE"), Some(1 << 40));
        assert_eq!(cap_bit("FLY"), None);
        assert_eq!(ALL_CAPS, bulkhead_wire::Capabilities::ALL);
    }

    #[test]
    fn defaults_add_drop_and_all() -> Result<(), Status> {
        let defaults = bits(&DEFAULT_CAPS);
        assert_eq!(defaults.count_ones(), 14);
        assert_eq!(capabilities(&cri::LinuxContainerSecurityContext::default())?, defaults);
        assert_eq!(capabilities(&sc(&[], &[]))?, defaults);
        assert_eq!(capabilities(&sc(&["NET_BIND_SERVICE"], &["ALL"]))?, 1 << 10);
        assert_eq!(capabilities(&sc(&["CAP_SYS_ADMIN"], &["NET_RAW", "cap_kill"]))?, {
            (defaults | bits(&["SYS_ADMIN"])) & !bits(&["NET_RAW", "KILL"])
        });
        assert_eq!(capabilities(&sc(&["ALL"], &["SYS_ADMIN"]))?, ALL_CAPS & !bits(&["SYS_ADMIN"]));
        assert_eq!(capabilities(&sc(&["ALL"], &["ALL"]))?, 0);
        assert_eq!(capabilities(&sc(&[], &["ALL"]))?, 0);
        let err = capabilities(&sc(&["FLY"], &[])).err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(err.contains("unknown capability \"FLY\""), "{err}");
        let privileged = cri::LinuxContainerSecurityContext { privileged: true, ..sc(&[], &["ALL"]) };
        assert_eq!(capabilities(&privileged)?, ALL_CAPS);
        Ok(())
    }

    #[test]
    fn ambient_capabilities_join_every_set_and_all_is_refused() -> Result<(), Status> {
        let mut c = sc(&[], &["ALL"]);
        if let Some(caps) = c.capabilities.as_mut() {
            caps.add_ambient_capabilities = vec!["NET_BIND_SERVICE".into()];
        }
        let p = policy(Some(&c))?;
        let nbs = bits(&["NET_BIND_SERVICE"]);
        assert_eq!((p.cap_bounding, p.cap_effective, p.cap_permitted), (nbs, nbs, nbs));
        assert_eq!((p.cap_inheritable, p.cap_ambient), (nbs, nbs));
        if let Some(caps) = c.capabilities.as_mut() {
            caps.add_ambient_capabilities = vec!["ALL".into()];
        }
        let err = policy(Some(&c)).err().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(err.contains("ALL is not accepted"), "{err}");
        if let Some(caps) = c.capabilities.as_mut() {
            caps.add_ambient_capabilities = vec!["FLY".into()];
        }
        assert!(policy(Some(&c)).is_err());
        Ok(())
    }

    #[test]
    fn the_policy_carries_paths_and_privileged_clears_them() -> Result<(), Status> {
        let mut c = sc(&["NET_BIND_SERVICE"], &["ALL"]);
        c.no_new_privs = true;
        c.masked_paths = vec!["/proc/kcore".into()];
        c.readonly_paths = vec!["/proc/sys".into()];
        c.seccomp = Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault.into(),
            ..Default::default()
        });
        let p = policy(Some(&c))?;
        assert_eq!((p.cap_bounding, p.cap_effective, p.cap_permitted, p.cap_ambient), (1 << 10, 1 << 10, 1 << 10, 0));
        assert!(p.no_new_privs && !p.privileged);
        assert_eq!((p.masked_paths.len(), p.readonly_paths.len()), (1, 1));
        assert!(!p.seccomp_programs.is_empty());
        assert!(p.seccomp_programs.iter().all(|b| !b.is_empty() && b.len() % 8 == 0));
        c.privileged = true;
        let p = policy(Some(&c))?;
        assert_eq!(p.cap_bounding, ALL_CAPS);
        assert!(p.privileged && p.masked_paths.is_empty() && p.readonly_paths.is_empty());
        assert!(p.seccomp_programs.is_empty());
        // Unconfined unless asked.
        assert!(policy(None)?.seccomp_programs.is_empty());
        let mut c = sc(&[], &[]);
        c.masked_paths = vec!["proc/kcore".into()];
        assert!(policy(Some(&c)).is_err());
        c.masked_paths = vec!["/p".into(); bulkhead_wire::limits::MAX_SECURITY_PATHS + 1];
        assert!(policy(Some(&c)).is_err());
        #[expect(deprecated, reason = "the field older kubelets send")]
        let c = cri::LinuxContainerSecurityContext { seccomp_profile_path: "bogus".into(), ..Default::default() };
        assert!(policy(Some(&c)).is_err());
        Ok(())
    }
}
