//! Feeds arbitrary bytes to the layer unpacker, as an uncompressed tar layer and through the gzip decoder
//! layers go through, into a fresh directory with tight limits.
//!
//! Checks: no panic (an error is fine: the input is hostile), and nothing is created outside the target
//! directory: the target sits at `<base>/a/b/root`, and `<base>`, `a` and `b` must hold nothing else
//! afterwards, so an escape by `..` or by a relative link up to three levels deep is caught. Absolute link
//! targets are refused by the same per-component no-follow walk, which the relative case exercises.

#![no_main]

use std::io::BufReader;
use std::path::Path;

use bulkhead_oci::layout::Compression;
use bulkhead_oci::unpack::{StreamKind, UnpackLimits, Unpacker};
use libfuzzer_sys::fuzz_target;

/// Small enough that a bomb stops fast, large enough that the seeds unpack whole.
const LIMITS: UnpackLimits =
    UnpackLimits { max_total_bytes: 1 << 20, max_entries: 512, max_path_len: 512, max_path_bytes: 64 << 10 };

fn unpack(base: &Path, data: &[u8], compression: Compression) {
    let parent = base.join("a/b");
    let root = parent.join("root");
    if let Err(e) = std::fs::create_dir(&root) {
        panic!("creating the target {}: {e}", root.display());
    }
    // Not root's chown: the fuzzer need not run as root, and ownership is not what is checked here.
    let mut u = match Unpacker::new(&root, LIMITS, StreamKind::Layer, false) {
        Ok(u) => u,
        Err(e) => panic!("opening the target: {e}"),
    };
    let applied = match bulkhead_oci::decompress(BufReader::new(data), compression) {
        Ok(r) => u.apply(r),
        Err(_) => return,
    };
    if applied.is_ok() {
        let _ = u.finish();
    }
    for (dir, only) in [(base.to_owned(), "a"), (base.join("a"), "b"), (parent, "root")] {
        let outside: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(Result::ok).map(|e| e.file_name()).filter(|n| n != only).collect(),
            Err(e) => panic!("listing {}: {e}", dir.display()),
        };
        assert!(outside.is_empty(), "the unpacker created {outside:?} in {} outside its target", dir.display());
    }
    // The next input gets a fresh target. Modes the layer set (a 000 directory) must not stop the cleanup.
    make_writable(&root);
    if let Err(e) = std::fs::remove_dir_all(&root) {
        panic!("removing {}: {e}", root.display());
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // On tmpfs when there is one: the fuzzer creates and removes a tree per input.
    let tmp = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm").to_owned() } else { std::env::temp_dir() };
    let base = match tempfile::Builder::new().prefix("layer-unpack-").tempdir_in(tmp) {
        Ok(d) => d,
        Err(e) => panic!("creating a temporary directory: {e}"),
    };
    if let Err(e) = std::fs::create_dir_all(base.path().join("a/b")) {
        panic!("creating the target's parents: {e}");
    }
    unpack(base.path(), data, Compression::None);
    unpack(base.path(), data, Compression::Gzip);
});
