//! Building the root image with `mkfs.erofs` (erofs-utils; 1.5 on Debian 12).
//!
//! Options: `--preserve-mtime` keeps each file's mtime (1.5 otherwise may clamp to the build time); owners,
//! modes and the allowed xattrs come from the staging tree as they are, so the daemon must unpack as root.
//! No compression: zones read the image through a PV block device and the host page cache, and an
//! uncompressed image needs no decompression in the guest (erofs-utils 1.5 offers only lz4 anyway).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Default program; the daemon finds it on PATH.
pub const MKFS_EROFS: &str = "mkfs.erofs";
/// How much of mkfs.erofs' stderr is kept for the error message.
const STDERR_TAIL: usize = 2000;

/// Failures to build the image.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    /// The program is not installed.
    #[error("{program} is not installed: install erofs-utils (apt-get install erofs-utils)")]
    Missing {
        /// What was run.
        program: PathBuf,
    },
    /// It could not be started.
    #[error("running {program}")]
    Spawn {
        /// What was run.
        program: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// It failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// What was run.
        program: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
}

/// Builds the erofs image `out` from the directory `src`. Blocking.
pub fn build(program: &Path, src: &Path, out: &Path) -> Result<(), ErofsError> {
    let output = Command::new(program)
        .arg("--quiet")
        .arg("--preserve-mtime")
        .arg(out)
        .arg(src)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ErofsError::Missing { program: program.to_owned() }
            } else {
                ErofsError::Spawn { program: program.to_owned(), source }
            }
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let cut = stderr.len().saturating_sub(STDERR_TAIL);
    let start = (cut..=stderr.len()).find(|&i| stderr.is_char_boundary(i)).unwrap_or(stderr.len());
    Err(ErofsError::Failed { program: program.to_owned(), status: output.status, stderr: stderr[start..].to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_says_what_to_install() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let e = build(Path::new("/nonexistent/mkfs.erofs"), dir.path(), &dir.path().join("x.erofs"));
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("install erofs-utils"), "{msg}");
        Ok(())
    }

    #[test]
    fn failures_carry_the_programs_message() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let fake = dir.path().join("mkfs.erofs");
        std::fs::write(&fake, "#!/bin/sh\necho \"mkfs.erofs: boom\" >&2\nexit 3\n")?;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
        match build(&fake, dir.path(), &dir.path().join("x.erofs")) {
            Err(ErofsError::Failed { stderr, status, .. }) => {
                assert_eq!(stderr, "mkfs.erofs: boom");
                assert_eq!(status.code(), Some(3));
            }
            other => return Err(format!("expected a failure, got {other:?}").into()),
        }
        Ok(())
    }
}
