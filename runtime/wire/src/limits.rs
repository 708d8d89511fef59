//! Size and count limits of the protocol.
//!
//! Every limit is checked on both ends: [`encode`](crate::encode) refuses to send a message that breaks one, and
//! [`decode`](crate::decode) refuses to accept it. The frame limit is checked on the header alone, before the payload
//! is buffered; list counts are checked while the payload is deserialised (so a frame of a legal size cannot make
//! the receiver build a list of millions of empty strings); string lengths and the rest are checked by the
//! `validate()` step right after deserialisation. Changing a limit is a protocol change (see the crate docs,
//! "Versioning").

/// Largest payload one frame may carry, in bytes (1 MiB). Checked on the header before buffering.
pub const MAX_FRAME_PAYLOAD: usize = 1024 * 1024;

/// Largest chunk of stdin or output data in one `Stdin` / `Output` message (64 KiB).
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Most argv entries in a workload or exec (and at least one is required).
pub const MAX_ARGS: usize = 4096;

/// Most environment variables in a workload or exec.
pub const MAX_ENV: usize = 4096;

/// Longest single argv entry, environment name or environment value, in bytes (Linux `MAX_ARG_STRLEN`).
///
/// The whole message must still fit in [`MAX_FRAME_PAYLOAD`].
pub const MAX_ARG_LEN: usize = 128 * 1024;

/// Most supplementary group ids of a process.
pub const MAX_ADDITIONAL_GIDS: usize = 256;

/// Longest path (working directory), in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Longest hostname, in bytes (Linux `HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Longest identifier-like string (zone id, init version, kernel release), in bytes.
pub const MAX_SHORT_STRING_LEN: usize = 128;

/// Longest human-readable error message or failure reason, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Longest block device name (Linux's `DISK_NAME_LEN` is 32; Xen's `xvd` names are far shorter).
pub const MAX_DEVICE_NAME_LEN: usize = 15;

/// Highest signal number accepted (Linux `SIGRTMAX`); the lowest is 1.
pub const MAX_SIGNAL: i32 = 64;

/// Most masked paths, and most read-only paths, of a workload.
pub const MAX_SECURITY_PATHS: usize = 256;

/// Most seccomp programs of a workload.
pub const MAX_SECCOMP_PROGRAMS: usize = 8;

/// Most seccomp instructions of a workload, all programs together (a single program may not exceed the
/// kernel's `BPF_MAXINSNS`, 4096, either).
pub const MAX_SECCOMP_INSTRUCTIONS: usize = 4096;

/// Most mounts of a workload.
pub const MAX_MOUNTS: usize = 64;

/// Longest volume name (the host's key for one volume in the zone), in bytes.
pub const MAX_VOLUME_NAME_LEN: usize = 64;

/// Most entries (files, directories, symlinks, file chunks) in one `VolumeData` message.
pub const MAX_VOLUME_ENTRIES: usize = 1024;

/// Largest file chunk in one volume entry (256 KiB): a bigger file travels as several chunks, in order.
pub const MAX_VOLUME_CHUNK: usize = 256 * 1024;

/// Most path components of a volume entry below the volume's root.
pub const MAX_VOLUME_DEPTH: usize = 16;

/// Longest single path component of a volume entry, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
