//! Seccomp profiles compiled on the node into classic BPF programs the zone installs as given.
//!
//! Compiler: `seccompiler` (rust-vmm, Firecracker's), pure Rust with its own x86_64 syscall table, so the node
//! needs no libseccomp and the test bed's dom0 no extra package. Its filters have one action on a match and
//! one otherwise, so a profile with several actions becomes several programs: one per action `A` other than
//! allow (matching syscalls get `A`, others are allowed), and one for the default action (the syscalls any
//! rule names are allowed, the rest get the default). The kernel runs every installed program and takes the
//! most restrictive verdict, which gives each syscall its rule's action and every other one the default, as
//! long as no syscall is named by rules of two different actions with overlapping arguments (then the more
//! restrictive action wins, where libseccomp would take the first).
//!
//! Localhost profiles are OCI / Docker JSON files on the node (`defaultAction`, `defaultErrnoRet`,
//! `architectures`, `syscalls` with `names`, `action`, `errnoRet`, `args`, and Docker's `includes` /
//! `excludes` by capability or architecture). Syscall names the table does not know are skipped, as runc does.
//! `SCMP_ACT_NOTIFY`, listener paths and filter flags need a supervisor or kernel flags the zone does not
//! offer: refused with the reason.
//!
//! RuntimeDefault is Bulkhead's own profile, written below: a zone is a VM, so the profile does not guard the
//! node; it keeps containers of one pod out of each other and keeps the zone's kernel small to attack. It
//! allows by default and denies (EPERM) the kernel interfaces containers have no business with and that have a
//! record of exploitable bugs or reach across containers: kernel keyrings, modules and kexec, BPF and perf
//! events, userfaultfd, io_uring, file handles, accounting, swap, the clock, raw I/O ports, and new user
//! namespaces (the gateway to most unprivileged kernel exploits). Calls that a capability grants on purpose
//! (mounts and namespaces with CAP_SYS_ADMIN, the clock with CAP_SYS_TIME, ...) stay allowed when the
//! container holds that capability, so adding one works as users expect. `clone3` answers ENOSYS, because its
//! flags sit in memory a filter cannot read; libc then falls back to `clone`, whose flags are checked.

use std::collections::BTreeMap;
use std::path::Path;

use bulkhead_wire::{BpfInstruction, SeccompProgram};
use seccompiler::{TargetArch, sock_filter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::cap_bit;

/// The largest Localhost profile file read.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;
/// The most instructions of all programs of a profile together (the wire protocol's bound, which is also the
/// kernel's `BPF_MAXINSNS` for one program).
pub const MAX_INSTRUCTIONS: usize = bulkhead_wire::limits::MAX_SECCOMP_INSTRUCTIONS;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Reading the profile file.
    #[error("reading profile {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PROFILE_BYTES`].
    #[error("profile {path} is larger than {MAX_PROFILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The JSON is not an OCI seccomp profile.
    #[error("profile {path} is not an OCI seccomp profile: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A feature the zone does not support.
    #[error("{0} is not supported by the bulkhead runtime")]
    Unsupported(String),
    /// A value that makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// The profile compiles to too large a program.
    #[error("the profile compiles to {count} BPF instructions, more than the {MAX_INSTRUCTIONS} allowed")]
    TooManyInstructions {
        /// How many.
        count: usize,
    },
    /// seccompiler refused the filter.
    #[error("compiling the filter: {0}")]
    Compile(String),
}

/// What a filter does with a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Run it.
    Allow,
    /// Fail it with this errno.
    Errno(u32),
    /// Kill the thread.
    KillThread,
    /// Kill the process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Notify a tracer with this value.
    Trace(u32),
    /// Run it and log it.
    Log,
}

impl Action {
    fn json(self) -> Value {
        match self {
            Action::Allow => json!("allow"),
            Action::Errno(e) => json!({ "errno": e }),
            Action::KillThread => json!("kill_thread"),
            Action::KillProcess => json!("kill_process"),
            Action::Trap => json!("trap"),
            Action::Trace(v) => json!({ "trace": v }),
            Action::Log => json!("log"),
        }
    }
}

/// An argument comparison (all 64 bits of the argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// Argument number, 0 to 5.
    pub index: u8,
    /// The comparison.
    pub op: Op,
    /// The value compared with (the mask, for [`Op::MaskedEq`]).
    pub value: u64,
    /// The value the masked argument must equal ([`Op::MaskedEq`] only).
    pub value_two: u64,
}

/// A comparison operator of OCI profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `==`.
    Eq,
    /// `>=`.
    Ge,
    /// `>`.
    Gt,
    /// `arg & value == value_two`.
    MaskedEq,
}

/// One rule: these syscalls, when all `args` comparisons hold, get `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Syscall names.
    pub names: Vec<String>,
    /// The action.
    pub action: Action,
    /// Comparisons, all of which must hold; none = always.
    pub args: Vec<Arg>,
}

/// A profile: its rules, and the action for syscalls no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// For unmatched syscalls.
    pub default: Action,
    /// The rules.
    pub rules: Vec<Rule>,
}

fn condition(a: &Arg) -> Value {
    let (op, val) = match a.op {
        Op::Ne => (json!("ne"), a.value),
        Op::Lt => (json!("lt"), a.value),
        Op::Le => (json!("le"), a.value),
        Op::Eq => (json!("eq"), a.value),
        Op::Ge => (json!("ge"), a.value),
        Op::Gt => (json!("gt"), a.value),
        Op::MaskedEq => (json!({ "masked_eq": a.value }), a.value_two),
    };
    json!({ "index": a.index, "type": "qword", "op": op, "val": val })
}

/// Whether seccompiler's x86_64 table knows syscall `name`.
fn known(name: &str) -> bool {
    let probe = json!({ "p": { "mismatch_action": "allow", "match_action": "trap", "filter": [{ "syscall": name }] } });
    seccompiler::compile_from_json(probe.to_string().as_bytes(), TargetArch::x86_64).is_ok()
}

/// The conditions per syscall of one filter: `None` matches unconditionally.
type Matches = BTreeMap<String, Option<Vec<Vec<Arg>>>>;

fn add_match(m: &mut Matches, name: &str, args: &[Arg]) {
    let entry = m.entry(name.to_owned()).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), args.is_empty()) {
        (None, _) => {}
        (Some(_), true) => *entry = None,
        (Some(list), false) => list.push(args.to_vec()),
    }
}

fn filter_json(mismatch: Action, matched: Action, m: &Matches) -> Value {
    let rules: Vec<Value> = m
        .iter()
        .flat_map(|(name, conds)| match conds {
            None => vec![json!({ "syscall": name })],
            Some(list) => list
                .iter()
                .map(|c| json!({ "syscall": name, "args": c.iter().map(condition).collect::<Vec<_>>() }))
                .collect(),
        })
        .collect();
    json!({ "mismatch_action": mismatch.json(), "match_action": matched.json(), "filter": rules })
}

/// Compiles `profile` into programs (see the module docs); an unconfined profile (allow, no rules that do
/// anything else) gives none.
pub fn compile(profile: &Profile) -> Result<Vec<Vec<sock_filter>>, SeccompError> {
    let mut known_names = BTreeMap::new();
    let mut is_known = |n: &str| *known_names.entry(n.to_owned()).or_insert_with(|| known(n));
    let mut by_action: BTreeMap<Action, Matches> = BTreeMap::new();
    let mut named_by_rules = Matches::new();
    for rule in &profile.rules {
        if rule.args.iter().any(|a| a.index > 5) {
            return Err(SeccompError::Invalid(format!("{:?}: syscalls have arguments 0 to 5", rule.names)));
        }
        if rule.action == profile.default {
            continue;
        }
        for name in rule.names.iter().filter(|n| is_known(n)) {
            add_match(&mut named_by_rules, name, &rule.args);
            if rule.action != Action::Allow {
                add_match(by_action.entry(rule.action).or_default(), name, &rule.args);
            }
        }
    }
    let mut filters = serde_json::Map::new();
    for (i, (action, m)) in by_action.iter().enumerate() {
        filters.insert(format!("a{i:02}"), filter_json(Action::Allow, *action, m));
    }
    if profile.default != Action::Allow {
        filters.insert("default".into(), filter_json(profile.default, Action::Allow, &named_by_rules));
    }
    if filters.is_empty() {
        return Ok(Vec::new());
    }
    let compiled = seccompiler::compile_from_json(Value::Object(filters).to_string().as_bytes(), TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    // The kernel runs the most recently installed program first; the order does not change the verdict.
    let programs: Vec<Vec<sock_filter>> = compiled.into_iter().collect::<BTreeMap<_, _>>().into_values().collect();
    let count = programs.iter().map(Vec::len).sum();
    if count > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooManyInstructions { count });
    }
    Ok(programs)
}

/// A program as the control API carries it (the wire crate's encoding of `struct sock_filter`).
pub fn to_bytes(program: &[sock_filter]) -> Vec<u8> {
    let insns = program.iter().map(|i| BpfInstruction { code: i.code, jt: i.jt, jf: i.jf, k: i.k });
    SeccompProgram(insns.collect()).to_bytes()
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// Bulkhead's RuntimeDefault profile for a container holding capabilities `caps` (see the module docs).
pub fn runtime_default_profile(caps: u64) -> Profile {
    let holds = |cap: &str| cap_bit(cap).is_some_and(|b| caps & b != 0);
    let deny = |names: &[&str]| Rule {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: Action::Errno(EPERM),
        args: Vec::new(),
    };
    let mut rules = vec![
        // Keyrings are not namespaced: they are shared by every container of the zone.
        deny(&["keyctl", "add_key", "request_key"]),
        // Large, rarely needed kernel surfaces with a history of privilege escalations.
        deny(&["userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"]),
        deny(&["uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "lookup_dcookie", "vhangup"]),
        deny(&["create_module", "get_kernel_syms", "query_module"]),
        // A new user namespace gives an unprivileged process every capability over new kernel code paths.
        Rule {
            names: vec!["clone".into(), "unshare".into()],
            action: Action::Errno(EPERM),
            args: vec![Arg { index: 0, op: Op::MaskedEq, value: CLONE_NEWUSER, value_two: CLONE_NEWUSER }],
        },
        // clone3's flags are in memory a filter cannot read; ENOSYS makes libc use clone.
        Rule { names: vec!["clone3".into()], action: Action::Errno(ENOSYS), args: Vec::new() },
    ];
    // What a capability grants on purpose stays allowed with that capability.
    let gated: [(&str, &[&str]); 10] = [
        (
            "SYS_ADMIN",
            &[
                "mount",
                "umount2",
                "pivot_root",
                "setns",
                "swapon",
                "swapoff",
                "quotactl",
                "quotactl_fd",
                "fanotify_init",
                "move_mount",
                "open_tree",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "mount_setattr",
                "name_to_handle_at",
            ],
        ),
        ("SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
        ("SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
        ("SYS_TIME", &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"]),
        ("SYS_PACCT", &["acct"]),
        ("SYSLOG", &["syslog"]),
        ("SYS_RAWIO", &["iopl", "ioperm"]),
        ("DAC_READ_SEARCH", &["open_by_handle_at"]),
        ("BPF", &["bpf"]),
        ("PERFMON", &["perf_event_open"]),
    ];
    for (cap, names) in gated {
        // CAP_SYS_ADMIN was the capability for BPF and perf events before their own existed.
        if !(holds(cap) || (matches!(cap, "BPF" | "PERFMON") && holds("SYS_ADMIN"))) {
            rules.push(deny(names));
        }
    }
    if holds("SYS_ADMIN") {
        // New user namespaces are what CAP_SYS_ADMIN asks for too.
        rules.retain(|r| !r.names.iter().any(|n| n == "unshare"));
    }
    Profile { default: Action::Allow, rules }
}

/// The RuntimeDefault programs for a container holding capabilities `caps`.
pub fn runtime_default(caps: u64) -> Result<Vec<Vec<sock_filter>>, SeccompError> {
    compile(&runtime_default_profile(caps))
}

/// An OCI / Docker seccomp profile file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Option<Vec<Value>>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    listener_path: String,
    #[serde(default)]
    listener_metadata: String,
    #[serde(default)]
    syscalls: Vec<OciSyscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<OciArg>,
    /// Documentation only.
    #[serde(default, rename = "comment")]
    _comment: serde::de::IgnoredAny,
    #[serde(default)]
    includes: OciFilter,
    #[serde(default)]
    excludes: OciFilter,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciArg {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// Docker's conditions on a rule.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OciFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    /// The zone's kernel is newer than any minimum a profile names (6.12).
    #[serde(default, rename = "minKernel")]
    _min_kernel: serde::de::IgnoredAny,
}

fn is_x86_64(arch: &str) -> bool {
    matches!(arch, "SCMP_ARCH_X86_64" | "amd64" | "x86_64")
}

fn action(name: &str, errno: Option<u32>, default_errno: Option<u32>) -> Result<Action, SeccompError> {
    let errno = errno.or(default_errno).unwrap_or(EPERM);
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(errno),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::Unsupported("SCMP_ACT_NOTIFY (it needs a seccomp agent in the zone)".into()));
        }
        other => return Err(SeccompError::Invalid(format!("unknown seccomp action {other:?}"))),
    })
}

fn op(name: &str) -> Result<Op, SeccompError> {
    Ok(match name {
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
        other => return Err(SeccompError::Invalid(format!("unknown argument comparison {other:?}"))),
    })
}

fn cap_names_held(names: &[String], caps: u64) -> Result<bool, SeccompError> {
    names.iter().try_fold(true, |all, n| {
        let bit = cap_bit(n).ok_or_else(|| SeccompError::Invalid(format!("unknown capability {n:?} in includes")))?;
        Ok(all && caps & bit != 0)
    })
}

/// Parses an OCI / Docker profile for a container holding capabilities `caps` (for `includes`/`excludes`).
pub fn parse_oci(text: &str, path: &str, caps: u64) -> Result<Profile, SeccompError> {
    let p: OciProfile =
        serde_json::from_str(text).map_err(|source| SeccompError::Parse { path: path.to_owned(), source })?;
    if !p.flags.is_empty() {
        return Err(SeccompError::Unsupported(format!("seccomp filter flags {:?}", p.flags)));
    }
    if !p.listener_path.is_empty() || !p.listener_metadata.is_empty() {
        return Err(SeccompError::Unsupported("a seccomp listener (listenerPath)".into()));
    }
    let arch_listed = p.architectures.is_empty()
        || p.architectures.iter().any(|a| is_x86_64(a))
        || p.arch_map.as_ref().is_some_and(|m| !m.is_empty());
    if !arch_listed {
        return Err(SeccompError::Invalid(format!(
            "the profile is for {:?}, not x86_64 (SCMP_ARCH_X86_64)",
            p.architectures
        )));
    }
    let default = action(&p.default_action, None, p.default_errno_ret)?;
    let mut rules = Vec::new();
    for s in p.syscalls {
        let mut names = s.names;
        names.extend(s.name);
        if names.is_empty() {
            return Err(SeccompError::Invalid("a syscalls entry names no syscall".into()));
        }
        let action = action(&s.action, s.errno_ret, p.default_errno_ret)?;
        let arches_ok = s.includes.arches.is_empty() || s.includes.arches.iter().any(|a| is_x86_64(a));
        let excluded_arch = s.excludes.arches.iter().any(|a| is_x86_64(a));
        let excluded_cap =
            !s.excludes.caps.is_empty() && s.excludes.caps.iter().any(|n| cap_bit(n).is_some_and(|b| caps & b != 0));
        if !arches_ok || excluded_arch || excluded_cap || !cap_names_held(&s.includes.caps, caps)? {
            continue;
        }
        let args = s
            .args
            .iter()
            .map(|a| {
                let index = u8::try_from(a.index)
                    .ok()
                    .filter(|i| *i <= 5)
                    .ok_or_else(|| SeccompError::Invalid(format!("argument index {} is not 0 to 5", a.index)))?;
                Ok(Arg { index, op: op(&a.op)?, value: a.value, value_two: a.value_two })
            })
            .collect::<Result<Vec<_>, SeccompError>>()?;
        rules.push(Rule { names, action, args });
    }
    Ok(Profile { default, rules })
}

/// Reads, parses and compiles the Localhost profile at `path` (an absolute path on the node).
pub fn localhost(path: &Path, caps: u64) -> Result<Vec<Vec<sock_filter>>, SeccompError> {
    let shown = path.display().to_string();
    if !path.is_absolute() {
        return Err(SeccompError::Invalid(format!("the Localhost profile path {shown:?} must be absolute")));
    }
    let read = |source| SeccompError::Read { path: shown.clone(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    use std::io::Read;
    file.take(MAX_PROFILE_BYTES + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(SeccompError::TooLarge { path: shown });
    }
    compile(&parse_oci(&text, &shown, caps)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn allow_but(names: &[&str], action: Action) -> Profile {
        Profile {
            default: Action::Allow,
            rules: vec![Rule { names: names.iter().map(|n| n.to_string()).collect(), action, args: vec![] }],
        }
    }

    #[test]
    fn unconfined_profiles_compile_to_nothing() -> Result<(), SeccompError> {
        assert!(compile(&Profile { default: Action::Allow, rules: vec![] })?.is_empty());
        assert!(compile(&allow_but(&["mkdir"], Action::Allow))?.is_empty());
        Ok(())
    }

    #[test]
    fn one_program_per_action_and_one_for_the_default() -> Result<(), SeccompError> {
        assert_eq!(compile(&allow_but(&["mkdir"], Action::Errno(1)))?.len(), 1);
        let p = Profile {
            default: Action::Errno(1),
            rules: vec![
                Rule { names: vec!["read".into(), "write".into()], action: Action::Allow, args: vec![] },
                Rule { names: vec!["clone3".into()], action: Action::Errno(38), args: vec![] },
            ],
        };
        let programs = compile(&p)?;
        assert_eq!(programs.len(), 2);
        // Every program ends in a return.
        assert!(programs.iter().all(|p| p.last().is_some_and(|i| i.code == 0x06)));
        Ok(())
    }

    #[test]
    fn unknown_syscall_names_are_skipped() -> Result<(), SeccompError> {
        assert!(compile(&allow_but(&["no_such_call"], Action::Errno(1)))?.is_empty());
        assert_eq!(compile(&allow_but(&["no_such_call", "mkdir"], Action::Errno(1)))?.len(), 1);
        Ok(())
    }

    #[test]
    fn runtime_default_compiles_within_bounds_and_follows_capabilities() -> Result<(), SeccompError> {
        let defaults = super::super::DEFAULT_CAPS.iter().filter_map(|c| cap_bit(c)).fold(0, |a, b| a | b);
        let programs = runtime_default(defaults)?;
        assert_eq!(programs.len(), 2, "EPERM and ENOSYS programs");
        assert!(programs.iter().map(Vec::len).sum::<usize>() <= MAX_INSTRUCTIONS);
        let names =
            |caps| runtime_default_profile(caps).rules.into_iter().flat_map(|r| r.names).collect::<BTreeSet<String>>();
        let none = names(0);
        assert!(none.contains("mount") && none.contains("keyctl") && none.contains("bpf"));
        let admin = names(cap_bit("SYS_ADMIN").unwrap_or(0));
        assert!(!admin.contains("mount") && !admin.contains("bpf") && !admin.contains("unshare"));
        assert!(admin.contains("keyctl"), "keyrings stay denied whatever the capabilities");
        Ok(())
    }

    #[test]
    fn oci_profiles_parse_and_compile() -> Result<(), SeccompError> {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "comment": "libc falls back"}
            ]
        }"#;
        let p = parse_oci(text, "p.json", 0)?;
        assert_eq!(p.default, Action::Errno(1));
        assert_eq!(p.rules.len(), 3, "the ptrace rule needs CAP_SYS_PTRACE");
        assert_eq!(p.rules[1].args, [Arg { index: 0, op: Op::Eq, value: 8, value_two: 0 }]);
        assert_eq!(parse_oci(text, "p.json", cap_bit("SYS_PTRACE").unwrap_or(0))?.rules.len(), 4);
        assert_eq!(compile(&p)?.len(), 2);
        Ok(())
    }

    #[test]
    fn unsupported_and_broken_profiles_say_why() {
        let err = |text: &str| parse_oci(text, "p.json", 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).contains("SCMP_ACT_NOTIFY"));
        assert!(err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#).contains("listener"));
        assert!(err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#).contains("flags"));
        assert!(err(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).contains("unknown seccomp action"));
        assert!(
            err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]}"#).contains("x86_64")
        );
        assert!(err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "bogus": 1}"#).contains("not an OCI seccomp profile"));
        assert!(
            err(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#)
            .contains("0 to 5")
        );
        assert!(err("not json").contains("not an OCI seccomp profile"));
    }

    #[test]
    fn localhost_profiles_are_read_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("deny-mkdir.json");
        std::fs::write(
            &good,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )?;
        assert_eq!(localhost(&good, 0)?.len(), 1);
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; usize::try_from(MAX_PROFILE_BYTES)? + 1])?;
        assert!(matches!(localhost(&big, 0), Err(SeccompError::TooLarge { .. })));
        assert!(matches!(localhost(&dir.path().join("missing.json"), 0), Err(SeccompError::Read { .. })));
        assert!(matches!(localhost(Path::new("relative.json"), 0), Err(SeccompError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn programs_serialise_as_8_byte_little_endian_instructions() {
        let p = [sock_filter { code: 0x06, jt: 1, jf: 2, k: 0x7fff_0000 }];
        assert_eq!(to_bytes(&p), [0x06, 0x00, 0x01, 0x02, 0x00, 0x00, 0xff, 0x7f]);
    }
}
