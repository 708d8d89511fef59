//! Crash-safe persistence of the daemon's desired state: a directory of JSON records, one file per key.
//!
//! A write goes to a temporary file in the same directory, is fsynced, renamed over the record and the
//! directory is fsynced: after a crash at any point the record is either the old one or the new one, never a
//! mix. Every record carries a schema version; a record of an unknown version or one that does not parse is
//! reported and moved aside (`<key>.json.corrupt`) instead of being dropped silently or stopping the daemon.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The record format version this daemon writes and reads.
pub const RECORD_VERSION: u32 = 1;

const SUFFIX: &str = ".json";
const TMP_PREFIX: &str = ".tmp-";
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Longest key: fits ids and names, keeps file names far below NAME_MAX.
pub const MAX_KEY_LEN: usize = 128;
/// Largest record file read back; a bigger one is treated as corrupt rather than loaded.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Unix time in nanoseconds: the timestamps records carry.
pub type Nanos = i64;

/// The current time as [`Nanos`] (0 if the clock is before 1970).
pub fn now() -> Nanos {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as Nanos).unwrap_or(0)
}

/// Errors of the store; each names the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is not a safe file name.
    #[error("invalid record key {0:?}: use 1-128 characters of a-z, 0-9, '-', '_' and '.', not starting with '.'")]
    InvalidKey(String),
    /// The state directory could not be created or opened.
    #[error("creating state directory {path}")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing a record failed; the previous version (if any) is intact.
    #[error("writing record {path}")]
    Write {
        /// Record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding record {key}")]
    Encode {
        /// Record key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Reading a record or the directory failed.
    #[error("reading {path}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Removing a record failed.
    #[error("removing record {path}")]
    Remove {
        /// Record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Why a record file was set aside at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptReason {
    /// Not JSON of the expected shape.
    Unparsable(String),
    /// Written by a newer (or unknown) schema.
    UnknownVersion(u32),
    /// Larger than [`MAX_RECORD_BYTES`].
    TooLarge(u64),
}

/// A record file that could not be loaded; it has been renamed to `moved_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    /// The record's key.
    pub key: String,
    /// Why it was set aside.
    pub reason: CorruptReason,
    /// Where the file is now, for a person to inspect.
    pub moved_to: PathBuf,
}

/// Everything [`RecordStore::load_all`] found.
#[derive(Debug)]
pub struct LoadReport<T> {
    /// Loaded records, sorted by key.
    pub records: Vec<(String, T)>,
    /// Records that could not be loaded.
    pub corrupt: Vec<CorruptRecord>,
    /// Leftover temporary files of interrupted writes that were removed.
    pub stale_temp_files: usize,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    version: u32,
    record: &'a T,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    record: T,
}

/// A directory of records of type `T`.
#[derive(Debug)]
pub struct RecordStore<T> {
    dir: PathBuf,
    _records: PhantomData<fn() -> T>,
}

/// Checks that `key` is safe as a file name (no separators, no dot files, no `..`).
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(StoreError::InvalidKey(key.to_owned())) }
}

impl<T: Serialize + DeserializeOwned> RecordStore<T> {
    /// Opens (creating, mode 0700) the directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::CreateDir { path: dir.clone(), source })?;
        Ok(RecordStore { dir, _records: PhantomData })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{SUFFIX}"))
    }

    /// Writes `value` under `key`, atomically and durably.
    pub fn put(&self, key: &str, value: &T) -> Result<(), StoreError> {
        validate_key(key)?;
        let bytes = serde_json::to_vec_pretty(&EnvelopeOut { version: RECORD_VERSION, record: value })
            .map_err(|source| StoreError::Encode { key: key.to_owned(), source })?;
        let path = self.path(key);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{key}-{}", std::process::id()));
        let write_err = |source| StoreError::Write { path: path.clone(), source };
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// Reads the record under `key`, if there is one.
    pub fn get(&self, key: &str) -> Result<Option<T>, StoreError> {
        validate_key(key)?;
        let path = self.path(key);
        match decode_file::<T>(&path) {
            Ok(v) => Ok(Some(v)),
            Err(Decode::Missing) => Ok(None),
            Err(Decode::Io(source)) => Err(StoreError::Read { path, source }),
            Err(Decode::Corrupt(reason)) => Err(StoreError::Read {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, format!("{reason:?}")),
            }),
        }
    }

    /// Removes the record under `key`; removing a missing record is not an error.
    pub fn remove(&self, key: &str) -> Result<bool, StoreError> {
        validate_key(key)?;
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir).map_err(|source| StoreError::Remove { path, source })?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Remove { path, source }),
        }
    }

    /// Loads every record, removes leftovers of interrupted writes and sets corrupt records aside.
    pub fn load_all(&self) -> Result<LoadReport<T>, StoreError> {
        let read_err = |source| StoreError::Read { path: self.dir.clone(), source };
        let mut report = LoadReport { records: Vec::new(), corrupt: Vec::new(), stale_temp_files: 0 };
        for entry in fs::read_dir(&self.dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                // Only this daemon writes here, and at load time it is not writing.
                if fs::remove_file(entry.path()).is_ok() {
                    report.stale_temp_files += 1;
                }
                continue;
            }
            let Some(key) = name.strip_suffix(SUFFIX) else { continue };
            if validate_key(key).is_err() {
                continue;
            }
            let path = entry.path();
            match decode_file::<T>(&path) {
                Ok(v) => report.records.push((key.to_owned(), v)),
                Err(Decode::Missing) => {}
                Err(Decode::Io(source)) => return Err(StoreError::Read { path, source }),
                Err(Decode::Corrupt(reason)) => {
                    let moved_to = self.dir.join(format!("{name}{CORRUPT_SUFFIX}"));
                    fs::rename(&path, &moved_to).map_err(|source| StoreError::Write { path: path.clone(), source })?;
                    report.corrupt.push(CorruptRecord { key: key.to_owned(), reason, moved_to });
                }
            }
        }
        if report.stale_temp_files > 0 || !report.corrupt.is_empty() {
            sync_dir(&self.dir).map_err(read_err)?;
        }
        report.records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(report)
    }
}

enum Decode {
    Missing,
    Io(io::Error),
    Corrupt(CorruptReason),
}

fn decode_file<T: DeserializeOwned>(path: &Path) -> Result<T, Decode> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Decode::Missing),
        Err(e) => return Err(Decode::Io(e)),
    };
    let len = f.metadata().map_err(Decode::Io)?.len();
    if len > MAX_RECORD_BYTES {
        return Err(Decode::Corrupt(CorruptReason::TooLarge(len)));
    }
    let bytes = fs::read(path).map_err(Decode::Io)?;
    let version = serde_json::from_slice::<VersionOnly>(&bytes)
        .map_err(|e| Decode::Corrupt(CorruptReason::Unparsable(e.to_string())))?
        .version;
    if version != RECORD_VERSION {
        return Err(Decode::Corrupt(CorruptReason::UnknownVersion(version)));
    }
    serde_json::from_slice::<EnvelopeIn<T>>(&bytes)
        .map(|e| e.record)
        .map_err(|e| Decode::Corrupt(CorruptReason::Unparsable(e.to_string())))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        n: u64,
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn rec(n: u64) -> Rec {
        Rec { name: format!("r{n}"), n }
    }

    #[test]
    fn put_get_remove_round_trip() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path().join("zones"))?;
        assert_eq!(s.get("a")?, None);
        s.put("a", &rec(1))?;
        assert_eq!(s.get("a")?, Some(rec(1)));
        s.put("a", &rec(2))?;
        assert_eq!(s.get("a")?, Some(rec(2)));
        assert!(s.remove("a")?);
        assert!(!s.remove("a")?, "removing twice is not an error");
        assert_eq!(s.get("a")?, None);
        Ok(())
    }

    #[test]
    fn directory_and_files_are_private() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path().join("zones"))?;
        s.put("a", &rec(1))?;
        assert_eq!(fs::metadata(s.dir())?.permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(s.dir().join("a.json"))?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn keys_that_could_escape_are_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path())?;
        for bad in ["", "../x", "a/b", ".hidden", "UPPER", "sp ace", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(matches!(s.put(bad, &rec(1)), Err(StoreError::InvalidKey(_))), "{bad:?}");
            assert!(matches!(s.get(bad), Err(StoreError::InvalidKey(_))), "{bad:?}");
        }
        for good in ["a", "zone-1", "0f3a_b.c", &"k".repeat(MAX_KEY_LEN)] {
            validate_key(good)?;
        }
        Ok(())
    }

    #[test]
    fn load_all_returns_records_sorted_and_cleans_up_interrupted_writes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path())?;
        s.put("b", &rec(2))?;
        s.put("a", &rec(1))?;
        // A crash between creating the temp file and the rename leaves this behind; the record is intact.
        fs::write(dir.path().join(".tmp-a-999"), b"{\"version\":1,\"rec")?;
        let r = s.load_all()?;
        assert_eq!(r.records, vec![("a".to_owned(), rec(1)), ("b".to_owned(), rec(2))]);
        assert_eq!(r.stale_temp_files, 1);
        assert!(r.corrupt.is_empty());
        assert!(!dir.path().join(".tmp-a-999").exists());
        Ok(())
    }

    #[test]
    fn corrupt_and_future_records_are_set_aside_not_lost() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path())?;
        s.put("good", &rec(1))?;
        fs::write(dir.path().join("trunc.json"), b"{\"version\":1,\"record\":{\"na")?;
        fs::write(dir.path().join("future.json"), b"{\"version\":2,\"record\":{}}")?;
        fs::write(dir.path().join("shape.json"), b"{\"version\":1,\"record\":{\"name\":3}}")?;
        let r = s.load_all()?;
        assert_eq!(r.records, vec![("good".to_owned(), rec(1))]);
        let mut keys: Vec<_> = r.corrupt.iter().map(|c| (c.key.as_str(), c.reason.clone())).collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(keys[0], ("future", CorruptReason::UnknownVersion(2)));
        assert!(matches!(keys[1], ("shape", CorruptReason::Unparsable(_))));
        assert!(matches!(keys[2], ("trunc", CorruptReason::Unparsable(_))));
        for c in &r.corrupt {
            assert!(c.moved_to.exists(), "{c:?}");
        }
        // A second load finds only the good record: set-aside files are not records.
        let again = s.load_all()?;
        assert_eq!(again.records.len(), 1);
        assert!(again.corrupt.is_empty());
        Ok(())
    }

    #[test]
    fn oversized_records_are_not_read_into_memory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path())?;
        let f = File::create(dir.path().join("big.json"))?;
        f.set_len(MAX_RECORD_BYTES + 1)?;
        let r = s.load_all()?;
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].reason, CorruptReason::TooLarge(MAX_RECORD_BYTES + 1));
        Ok(())
    }

    #[test]
    fn unrelated_files_are_ignored() -> TestResult {
        let dir = tempfile::tempdir()?;
        let s = RecordStore::<Rec>::open(dir.path())?;
        fs::write(dir.path().join("README"), b"hello")?;
        fs::write(dir.path().join("Bad Key.json"), b"{}")?;
        let r = s.load_all()?;
        assert!(r.records.is_empty() && r.corrupt.is_empty());
        Ok(())
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any sequence of puts and removes leaves exactly the last state of each key on disk.
            #[test]
            fn store_matches_a_map_model(ops in proptest::collection::vec((0u8..4, any::<Option<u64>>()), 1..40)) {
                let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let s = RecordStore::<Rec>::open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut model = std::collections::BTreeMap::new();
                for (k, v) in ops {
                    let key = format!("k{k}");
                    match v {
                        Some(n) => {
                            s.put(&key, &rec(n)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            model.insert(key, rec(n));
                        }
                        None => {
                            let existed = s.remove(&key).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(existed, model.remove(&key).is_some());
                        }
                    }
                }
                let loaded = s.load_all().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected: Vec<_> = model.into_iter().collect();
                prop_assert_eq!(loaded.records, expected);
            }
        }
    }
}
