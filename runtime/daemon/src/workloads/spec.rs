//! From what the API asks for plus the image's configuration to what the zone runs.
//!
//! The rules are Kubernetes': `command` replaces the image's ENTRYPOINT (and drops its CMD), `args` replaces
//! CMD; the request's environment adds to and overrides the image's by name; an empty working directory is
//! the image's, then `/`. The user is numeric (`uid`, `uid:gid`): names would need the image's
//! /etc/passwd, which the daemon does not read yet.

use bulkhead_wire::{CpuLimit, EnvVar, ResourceLimits, Security, User, WorkloadSpec};

use bulkhead_oci::ImageConfig;

/// What the API gives for one workload, already converted from protobuf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadRequest {
    /// Replaces the image's entrypoint.
    pub command: Vec<String>,
    /// Replaces the image's cmd.
    pub args: Vec<String>,
    /// Added to the image's environment.
    pub env: Vec<EnvVar>,
    /// Empty = the image's.
    pub working_dir: String,
    /// `None` = the image's user.
    pub user: Option<User>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Limits.
    pub limits: ResourceLimits,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Security settings, passed to the zone as given; `None` = the zone's defaults (all capabilities).
    pub security: Option<Security>,
    /// Volumes, in order (see [`super::volumes`]).
    pub mounts: Vec<super::volumes::MountRequest>,
}

/// Why a workload spec cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Neither the request nor the image names a program.
    #[error("no command: the image has no entrypoint or cmd, so give one (-- CMD...)")]
    NoCommand,
    /// The image's USER is a name.
    #[error("the image runs as user {0:?}, and user names are not resolved yet: give a numeric user (uid or uid:gid)")]
    UserName(String),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(&'static str),
}

/// The argv: Kubernetes' command/args over the image's entrypoint/cmd.
pub fn argv(req: &WorkloadRequest, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = if !req.command.is_empty() {
        req.command.iter().chain(&req.args).cloned().collect()
    } else {
        let cmd = if req.args.is_empty() { &image.cmd } else { &req.args };
        image.entrypoint.iter().chain(cmd).cloned().collect()
    };
    if argv.first().is_none_or(String::is_empty) {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The image's environment with the request's entries added or overriding by name.
pub fn env(req: &WorkloadRequest, image: &ImageConfig) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = image
        .env
        .iter()
        .filter(|(name, _)| !req.env.iter().any(|e| &e.name == name))
        .map(|(name, value)| EnvVar { name: name.clone(), value: value.clone() })
        .collect();
    env.extend(req.env.iter().cloned());
    env
}

/// An image USER value: "", "root", "uid" or "uid:gid" (numeric only).
pub fn image_user(user: &str) -> Result<User, SpecError> {
    let numeric = |s: &str| s.parse::<u32>().ok();
    if user.is_empty() || user == "root" || user == "root:root" {
        return Ok(User::root());
    }
    match user.split_once(':') {
        None => numeric(user).map(|uid| User { uid, gid: uid, additional_gids: vec![] }),
        Some((u, g)) => numeric(u).zip(numeric(g)).map(|(uid, gid)| User { uid, gid, additional_gids: vec![] }),
    }
    .ok_or_else(|| SpecError::UserName(user.to_owned()))
}

/// The whole spec the zone runs, with its root image on `root_device`.
pub fn build(req: &WorkloadRequest, image: &ImageConfig, root_device: &str) -> Result<WorkloadSpec, SpecError> {
    let cwd = [&req.working_dir, &image.working_dir].into_iter().find(|d| !d.is_empty()).cloned();
    let user = match &req.user {
        Some(u) => u.clone(),
        None => image_user(&image.user)?,
    };
    Ok(WorkloadSpec {
        argv: argv(req, image)?,
        env: env(req, image),
        cwd: cwd.unwrap_or_else(|| "/".to_owned()),
        user,
        tty: req.tty,
        limits: req.limits,
        readonly_rootfs: req.readonly_rootfs,
        hostname: None,
        root_device: root_device.to_owned(),
        security: req.security.clone().map(Box::new),
        // Filled in by the caller once the volumes are read (see [`super::volumes::prepare`]).
        mounts: Vec::new(),
    })
}

/// Limits from the API's zero-means-unlimited fields.
pub fn limits(
    memory_bytes: u64,
    cpu_quota_us: u64,
    cpu_period_us: u64,
    pids_max: u64,
) -> Result<ResourceLimits, SpecError> {
    let cpu = match (cpu_quota_us, cpu_period_us) {
        (0, _) => None,
        (q, 0) => Some(CpuLimit { quota_us: q, period_us: 100_000 }),
        (q, p) => Some(CpuLimit { quota_us: q, period_us: p }),
    };
    if cpu.is_some_and(|c| c.quota_us < 1000 || !(1000..=1_000_000).contains(&c.period_us)) {
        return Err(SpecError::Limit("cpu quota must be at least 1000 us and the period 1000 to 1000000 us"));
    }
    Ok(ResourceLimits {
        memory_bytes: (memory_bytes != 0).then_some(memory_bytes),
        cpu,
        pids_max: (pids_max != 0).then_some(pids_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into()],
            env: vec![("PATH".into(), "/usr/bin".into()), ("A".into(), "image".into())],
            working_dir: "/srv".into(),
            user: "101:102".into(),
            ..ImageConfig::default()
        }
    }

    fn req() -> WorkloadRequest {
        WorkloadRequest::default()
    }

    #[test]
    fn command_and_args_follow_kubernetes() -> Result<(), SpecError> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&req(), &image())?, s(&["/docker-entrypoint.sh", "nginx", "-g"]));
        let r = WorkloadRequest { args: s(&["echo", "hi"]), ..req() };
        assert_eq!(argv(&r, &image())?, s(&["/docker-entrypoint.sh", "echo", "hi"]));
        let r = WorkloadRequest { command: s(&["sh"]), ..req() };
        assert_eq!(argv(&r, &image())?, s(&["sh"]));
        let r = WorkloadRequest { command: s(&["sh"]), args: s(&["-c", "x"]), ..req() };
        assert_eq!(argv(&r, &image())?, s(&["sh", "-c", "x"]));
        assert_eq!(argv(&req(), &ImageConfig::default()), Err(SpecError::NoCommand));
        Ok(())
    }

    #[test]
    fn env_user_and_cwd_merge_with_the_image() -> Result<(), SpecError> {
        let r = WorkloadRequest { env: vec![EnvVar { name: "A".into(), value: "req".into() }], ..req() };
        let spec = build(&r, &image(), "xvdb")?;
        let env: Vec<String> = spec.env.iter().map(ToString::to_string).collect();
        assert_eq!(env, ["PATH=/usr/bin", "A=req"]);
        assert_eq!((spec.user.uid, spec.user.gid), (101, 102));
        assert_eq!(spec.cwd, "/srv");
        assert_eq!(spec.root_device, "xvdb");
        assert_eq!(build(&req(), &ImageConfig { cmd: vec!["x".into()], ..ImageConfig::default() }, "xvdc")?.cwd, "/");
        assert_eq!(image_user("nginx"), Err(SpecError::UserName("nginx".into())));
        assert_eq!(image_user("")?.uid, 0);
        assert_eq!(image_user("7")?.gid, 7);
        Ok(())
    }

    #[test]
    fn zero_limits_are_unlimited() -> Result<(), SpecError> {
        assert_eq!(limits(0, 0, 0, 0)?, ResourceLimits::default());
        let l = limits(64 << 20, 50_000, 0, 10)?;
        assert_eq!(l.memory_bytes, Some(64 << 20));
        assert_eq!(l.cpu, Some(CpuLimit { quota_us: 50_000, period_us: 100_000 }));
        assert!(limits(0, 10, 0, 0).is_err());
        Ok(())
    }
}
