//! proptest strategies producing valid messages (within every limit, but kept small so tests run fast).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::limits;
use crate::{
    BpfInstruction, Capabilities, CpuLimit, EnvVar, ErrorCode, ExitStatus, HostToZone, InitStage, Mount, MountSource,
    OutputFd, PROTOCOL_VERSION, ResourceLimits, ResourceUsage, SeccompProgram, Security, StreamId, User, VolumeEntry,
    VolumeEntryKind, WorkloadPhase, WorkloadSpec, ZoneToHost,
};

/// Printable text without NUL, including non-ASCII.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("\\PC{{0,{max}}}")).expect("valid regex")
}

fn id() -> impl Strategy<Value = StreamId> {
    prop_oneof![Just(StreamId(0)), Just(StreamId(u64::MAX)), any::<u64>().prop_map(StreamId)]
}

fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..512).prop_map(Bytes::from),
        1 => Just(Bytes::from(vec![0xa5; limits::MAX_DATA_CHUNK])),
    ]
}

fn argv() -> impl Strategy<Value = Vec<String>> {
    ("[a-zA-Z0-9/._-]{1,24}", vec(text(24), 0..5)).prop_map(|(program, mut args)| {
        args.insert(0, program);
        args
    })
}

fn env() -> impl Strategy<Value = Vec<EnvVar>> {
    vec(("[A-Za-z_][A-Za-z0-9_]{0,12}", text(24)).prop_map(|(name, value)| EnvVar { name, value }), 0..6)
}

fn path() -> impl Strategy<Value = String> {
    "/[a-zA-Z0-9/._ -]{0,40}"
}

fn hostname() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,2}"
}

fn signal() -> impl Strategy<Value = i32> {
    1..=limits::MAX_SIGNAL
}

fn user() -> impl Strategy<Value = User> {
    (any::<u32>(), any::<u32>(), vec(any::<u32>(), 0..8)).prop_map(|(uid, gid, additional_gids)| User {
        uid,
        gid,
        additional_gids,
    })
}

fn resource_limits() -> impl Strategy<Value = ResourceLimits> {
    let cpu =
        (1_000..=u64::MAX, 1_000..=1_000_000u64).prop_map(|(quota_us, period_us)| CpuLimit { quota_us, period_us });
    (option::of(1..=u64::MAX), option::of(cpu), option::of(1..=u64::MAX))
        .prop_map(|(memory_bytes, cpu, pids_max)| ResourceLimits { memory_bytes, cpu, pids_max })
}

fn workload_spec() -> impl Strategy<Value = WorkloadSpec> {
    (
        argv(),
        env(),
        path(),
        user(),
        any::<bool>(),
        resource_limits(),
        any::<bool>(),
        option::of(hostname()),
        "[a-z0-9]{1,15}",
        option::of(security().prop_map(Box::new)),
        vec(mount(), 0..4),
    )
        .prop_map(
            |(argv, env, cwd, user, tty, limits, readonly_rootfs, hostname, root_device, security, mounts)| {
                WorkloadSpec {
                    argv,
                    env,
                    cwd,
                    user,
                    tty,
                    limits,
                    readonly_rootfs,
                    hostname,
                    root_device,
                    security,
                    mounts,
                }
            },
        )
}

fn volume_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,20}"
}

fn mount() -> impl Strategy<Value = Mount> {
    let source = prop_oneof![
        volume_name().prop_map(|volume| MountSource::Snapshot { volume }),
        volume_name().prop_map(|volume| MountSource::EmptyDir { volume }),
    ];
    (source, "/[a-zA-Z0-9_ -]{0,12}(/[a-zA-Z0-9_ .-]{1,12}){0,3}", any::<bool>())
        .prop_map(|(source, destination, readonly)| Mount { source, destination, readonly })
        .prop_filter("no '..' component", |m| !m.destination.split('/').any(|c| c == ".."))
}

fn volume_entry() -> impl Strategy<Value = VolumeEntry> {
    let name = "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,12}".prop_filter("not '.' or '..'", |n| n != "." && n != "..");
    let path = prop_oneof![1 => Just(String::new()), 6 => vec(name.clone(), 1..4).prop_map(|v| v.join("/"))];
    let kind =
        prop_oneof![
            (0..=0o777u32).prop_map(|mode| VolumeEntryKind::Dir { mode }),
            (0..=0o777u32, any::<u64>(), vec(any::<u8>(), 0..256))
                .prop_map(|(mode, offset, data)| VolumeEntryKind::File { mode, offset, data: Bytes::from(data) }),
            vec(name, 1..4).prop_map(|v| VolumeEntryKind::Symlink { target: v.join("/") }),
        ];
    (path, kind).prop_map(|(path, kind)| VolumeEntry { path, kind }).prop_filter("the root is no symlink", |e| {
        !(e.path.is_empty() && matches!(e.kind, VolumeEntryKind::Symlink { .. }))
    })
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    // Each set within the one the kernel derives it from, as validation requires.
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(b, p, e, i, a)| {
        let bounding = b & Capabilities::ALL;
        let permitted = p & bounding;
        let inheritable = i & Capabilities::ALL;
        Capabilities {
            bounding,
            effective: e & permitted,
            permitted,
            inheritable,
            ambient: a & permitted & inheritable,
        }
    })
}

fn seccomp_program() -> impl Strategy<Value = SeccompProgram> {
    let insn = (any::<u16>(), any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(code, jt, jf, k)| BpfInstruction {
        code,
        jt,
        jf,
        k,
    });
    vec(insn, 1..16).prop_map(SeccompProgram)
}

fn security() -> impl Strategy<Value = Security> {
    (capabilities(), any::<bool>(), vec(path(), 0..4), vec(path(), 0..4), vec(seccomp_program(), 0..3), any::<bool>())
        .prop_map(|(capabilities, no_new_privs, masked_paths, readonly_paths, seccomp, privileged)| Security {
            capabilities,
            no_new_privs,
            masked_paths,
            readonly_paths,
            seccomp,
            privileged,
        })
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<u8>().prop_map(ExitStatus::Code),
        (signal(), any::<bool>()).prop_map(|(signal, core_dumped)| ExitStatus::Signaled { signal, core_dumped }),
        Just(ExitStatus::OomKilled),
    ]
}

impl Arbitrary for HostToZone {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        prop_oneof![
            ("[!-~]{1,40}", hostname()).prop_map(|(zone_id, hostname)| HostToZone::Welcome { zone_id, hostname }),
            (id(), workload_spec()).prop_map(|(id, spec)| HostToZone::CreateWorkload { id, spec }),
            id().prop_map(|id| HostToZone::StartWorkload { id }),
            (id(), signal()).prop_map(|(id, signal)| HostToZone::Signal { id, signal }),
            id().prop_map(|id| HostToZone::RemoveWorkload { id }),
            (id(), id(), argv(), env(), option::of(path()), any::<bool>(), option::of(user())).prop_map(
                |(exec_id, workload_id, argv, env, cwd, tty, user)| HostToZone::Exec {
                    exec_id,
                    workload_id,
                    argv,
                    env,
                    cwd,
                    tty,
                    user
                }
            ),
            (id(), data()).prop_map(|(stream_id, data)| HostToZone::Stdin { stream_id, data }),
            id().prop_map(|stream_id| HostToZone::CloseStdin { stream_id }),
            (id(), any::<u16>(), any::<u16>()).prop_map(|(stream_id, rows, cols)| HostToZone::Resize {
                stream_id,
                rows,
                cols
            }),
            option::of(id()).prop_map(|id| HostToZone::GetStats { id }),
            any::<u32>().prop_map(|grace_ms| HostToZone::Shutdown { grace_ms }),
            any::<u64>().prop_map(|nonce| HostToZone::Ping { nonce }),
            id().prop_map(|id| HostToZone::QueryWorkload { id }),
            (id(), 1..=u16::MAX).prop_map(|(stream_id, port)| HostToZone::PortForward { stream_id, port }),
            (id(), resource_limits()).prop_map(|(id, limits)| HostToZone::UpdateLimits { id, limits }),
            (volume_name(), vec(volume_entry(), 1..6))
                .prop_map(|(volume, entries)| HostToZone::VolumeData { volume, entries }),
        ]
        .boxed()
    }
}

impl Arbitrary for ZoneToHost {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        let error_code = prop_oneof![
            Just(ErrorCode::InvalidRequest),
            Just(ErrorCode::NotFound),
            Just(ErrorCode::AlreadyExists),
            Just(ErrorCode::FailedPrecondition),
            Just(ErrorCode::ResourceExhausted),
            Just(ErrorCode::SpawnFailed),
            Just(ErrorCode::Unsupported),
            Just(ErrorCode::Internal),
        ];
        let stage = prop_oneof![
            Just(InitStage::EarlyMounts),
            Just(InitStage::Rootfs),
            Just(InitStage::Cgroups),
            Just(InitStage::Network),
            Just(InitStage::Hostname),
            Just(InitStage::Channel),
        ];
        prop_oneof![
            (text(20), "[0-9a-z.+-]{0,30}", any::<u64>()).prop_map(|(init_version, kernel_release, boot_time_ms)| {
                ZoneToHost::Hello { protocol_version: PROTOCOL_VERSION, init_version, kernel_release, boot_time_ms }
            }),
            id().prop_map(|id| ZoneToHost::WorkloadCreated { id }),
            (id(), any::<u32>()).prop_map(|(id, pid)| ZoneToHost::WorkloadStarted { id, pid }),
            id().prop_map(|id| ZoneToHost::WorkloadRemoved { id }),
            (id(), prop_oneof![Just(OutputFd::Stdout), Just(OutputFd::Stderr)], data())
                .prop_map(|(stream_id, fd, data)| ZoneToHost::Output { stream_id, fd, data }),
            (id(), any::<u32>()).prop_map(|(exec_id, pid)| ZoneToHost::ExecStarted { exec_id, pid }),
            (id(), exit_status()).prop_map(|(stream_id, status)| ZoneToHost::Exited { stream_id, status }),
            (option::of(id()), error_code, text(60)).prop_map(|(request, code, message)| ZoneToHost::Error {
                request,
                code,
                message
            }),
            (stage, text(60)).prop_map(|(stage, reason)| ZoneToHost::InitFailed { stage, reason }),
            any::<u64>().prop_map(|nonce| ZoneToHost::Pong { nonce }),
            (option::of(id()), any::<u64>(), any::<u64>()).prop_map(|(id, cpu_usage_ns, memory_bytes)| {
                ZoneToHost::Stats { id, usage: ResourceUsage { cpu_usage_ns, memory_bytes } }
            }),
            (
                id(),
                prop_oneof![
                    Just(WorkloadPhase::Created),
                    any::<u32>().prop_map(|pid| WorkloadPhase::Running { pid }),
                    exit_status().prop_map(|status| WorkloadPhase::Exited { status }),
                ]
            )
                .prop_map(|(id, phase)| ZoneToHost::WorkloadStatus { id, phase }),
            id().prop_map(|stream_id| ZoneToHost::PortForwardConnected { stream_id }),
            id().prop_map(|id| ZoneToHost::LimitsUpdated { id }),
        ]
        .boxed()
    }
}
