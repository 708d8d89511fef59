//! From what the API asks for plus the image's configuration to what the zone runs.
//!
//! The rules are Kubernetes': `command` replaces the image's ENTRYPOINT (and drops its CMD), `args` replaces
//! CMD; the request's environment adds to and overrides the image's by name; an empty working directory is
//! the image's, then `/`. The user is resolved as runc resolves it, against the image's /etc/passwd and
//! /etc/group as read when the image was built (see [`bulkhead_oci::accounts`]), so the zone gets numeric
//! ids only.

use bulkhead_wire::{CpuLimit, EnvVar, ResourceLimits, Security, User, WorkloadSpec};

use bulkhead_oci::ImageConfig;
use bulkhead_oci::accounts::{AccountError, Accounts};

/// Who a workload or an exec runs as, as the API asks for it. All empty = the image's user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    /// A uid or a user name; `None` = the image's user.
    pub user: Option<String>,
    /// A gid or a group name, replacing the user's primary group (and its supplementary groups from
    /// /etc/group); `None` = the user's.
    pub group: Option<String>,
    /// Added to the supplementary groups.
    pub additional_gids: Vec<u32>,
}

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
    /// Empty = the image's user.
    pub user: UserRequest,
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
    /// The user (the request's or the image's) does not resolve in the image.
    #[error(transparent)]
    User(#[from] AccountError),
    /// More supplementary groups than the zone takes.
    #[error("the user has {0} supplementary groups; a zone takes at most {max}", max = bulkhead_wire::limits::MAX_ADDITIONAL_GIDS)]
    TooManyGroups(usize),
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

/// The ids `req` resolves to in an image configured with `image` whose users and groups are `accounts`.
/// No user = the image's USER (`""`, `uid`, `name`, `uid:gid`, `name:group`...); a group without a user
/// = the user part of the image's USER with that group.
pub fn user(req: &UserRequest, image: &ImageConfig, accounts: &Accounts) -> Result<User, SpecError> {
    let extra = &req.additional_gids;
    let ids = match (&req.user, &req.group) {
        (None, None) => accounts.resolve(&image.user, extra)?,
        (None, Some(group)) => {
            let image_user = image.user.split_once(':').map_or(image.user.as_str(), |(u, _)| u);
            let image_user = (!image.user.is_empty()).then_some(image_user);
            accounts.resolve_parts(image_user, Some(group), extra)?
        }
        (Some(user), group) => accounts.resolve_parts(Some(user), group.as_deref(), extra)?,
    };
    // Refused here with the reason, rather than by the wire codec's bound on the message.
    if ids.additional_gids.len() > bulkhead_wire::limits::MAX_ADDITIONAL_GIDS {
        return Err(SpecError::TooManyGroups(ids.additional_gids.len()));
    }
    Ok(User { uid: ids.uid, gid: ids.gid, additional_gids: ids.additional_gids })
}

/// The whole spec the zone runs, with its root image on `root_device`; `accounts` are the image's.
pub fn build(
    req: &WorkloadRequest,
    image: &ImageConfig,
    accounts: &Accounts,
    root_device: &str,
) -> Result<WorkloadSpec, SpecError> {
    let cwd = [&req.working_dir, &image.working_dir].into_iter().find(|d| !d.is_empty()).cloned();
    let user = user(&req.user, image, accounts)?;
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
        let spec = build(&r, &image(), &Accounts::default(), "xvdb")?;
        let env: Vec<String> = spec.env.iter().map(ToString::to_string).collect();
        assert_eq!(env, ["PATH=/usr/bin", "A=req"]);
        assert_eq!((spec.user.uid, spec.user.gid), (101, 102));
        assert_eq!(spec.cwd, "/srv");
        assert_eq!(spec.root_device, "xvdb");
        let bare = ImageConfig { cmd: vec!["x".into()], ..ImageConfig::default() };
        let spec = build(&req(), &bare, &Accounts::default(), "xvdc")?;
        assert_eq!((spec.cwd.as_str(), spec.user), ("/", User::root()));
        Ok(())
    }

    fn accounts() -> Result<Accounts, Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        std::fs::create_dir(t.path().join("etc"))?;
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\napp:x:1000:1000::/app:/bin/sh\n",
        )?;
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\nnginx:x:101:\nwww-data:x:33:nginx,app\nwheel:x:10:app\n",
        )?;
        Ok(Accounts::read(t.path())?)
    }

    fn ids(u: &User) -> (u32, u32, &[u32]) {
        (u.uid, u.gid, &u.additional_gids)
    }

    #[test]
    fn image_user_names_resolve_in_the_image() -> Result<(), Box<dyn std::error::Error>> {
        let accounts = accounts()?;
        let nginx = ImageConfig { user: "nginx".into(), ..image() };
        // The image's USER, with its primary and membership groups.
        let spec = build(&req(), &nginx, &accounts, "xvdb")?;
        assert_eq!(ids(&spec.user), (101, 101, &[33][..]));
        // A name the image does not have.
        let www = ImageConfig { user: "www".into(), ..image() };
        let err = build(&req(), &www, &accounts, "xvdb").err();
        assert_eq!(err, Some(SpecError::User(AccountError::NoSuchUser("www".into()))));
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("\"www\" is not in the image's /etc/passwd"), "{msg}");
        // A uid without an entry: gid 0, runc's default.
        let numeric = ImageConfig { user: "4242".into(), ..image() };
        assert_eq!(ids(&user(&UserRequest::default(), &numeric, &accounts)?), (4242, 0, &[][..]));
        // "uid:gid" needs no entries.
        assert_eq!(ids(&user(&UserRequest::default(), &image(), &Accounts::default())?), (101, 102, &[][..]));
        Ok(())
    }

    #[test]
    fn the_request_user_group_and_gids_combine_with_the_image() -> Result<(), Box<dyn std::error::Error>> {
        let accounts = accounts()?;
        let nginx = ImageConfig { user: "nginx".into(), ..image() };
        let ask = |user: Option<&str>, group: Option<&str>, gids: &[u32]| UserRequest {
            user: user.map(str::to_owned),
            group: group.map(str::to_owned),
            additional_gids: gids.to_vec(),
        };
        // A user by name: its membership groups, then the request's gids, without repeats.
        assert_eq!(ids(&user(&ask(Some("app"), None, &[7, 33]), &nginx, &accounts)?), (1000, 1000, &[33, 10, 7][..]));
        // By uid, with a group: no membership groups.
        assert_eq!(ids(&user(&ask(Some("1000"), Some("nginx"), &[]), &nginx, &accounts)?), (1000, 101, &[][..]));
        // A group alone: the image's user with that group ("uid:gid" images keep their uid).
        assert_eq!(ids(&user(&ask(None, Some("www-data"), &[]), &nginx, &accounts)?), (101, 33, &[][..]));
        assert_eq!(ids(&user(&ask(None, Some("5"), &[]), &image(), &accounts)?), (101, 5, &[][..]));
        let root_image = ImageConfig { user: String::new(), ..image() };
        assert_eq!(ids(&user(&ask(None, Some("wheel"), &[]), &root_image, &accounts)?), (0, 10, &[][..]));
        // Gids alone: the image's user, plus them.
        assert_eq!(ids(&user(&ask(None, None, &[9]), &nginx, &accounts)?), (101, 101, &[33, 9][..]));
        // Unknown or malformed.
        let err = user(&ask(None, Some("staff"), &[]), &nginx, &accounts);
        assert_eq!(err, Err(SpecError::User(AccountError::NoSuchGroup("staff".into()))));
        assert!(matches!(
            user(&ask(Some("a:b"), None, &[]), &nginx, &accounts),
            Err(SpecError::User(AccountError::Malformed { .. }))
        ));
        let crowded: Vec<u32> = (0..300).collect();
        assert_eq!(user(&ask(None, None, &crowded), &nginx, &accounts), Err(SpecError::TooManyGroups(300)));
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
