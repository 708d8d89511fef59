//! The Xen-in-QEMU test bed, from Rust.
//!
//! `ci/testbed run [--add SRC:DEST]... [--memory MiB] [--timeout SECONDS] SCRIPT` boots QEMU -> Xen 4.17 ->
//! a Debian 12 dom0 holding the freshly built project, runs SCRIPT as root in dom0 and exits with its code.
//! [`Scenario`] wraps that command so scenarios can live next to the code they test:
//!
//! ```no_run
//! use bulkhead_testbed::{Scenario, outcome::Outcome};
//! let run = Scenario::from_script_text("#!/bin/sh\nxl info | grep -q xen_version\n")?
//!     .timeout(std::time::Duration::from_secs(120))
//!     .run()?;
//! assert_eq!(run.outcome, Outcome::Exited { code: 0 }, "{}", run.stderr_lossy());
//! # Ok::<(), bulkhead_testbed::TestbedError>(())
//! ```
//!
//! The binary `bulkhead-testbed` in this crate is the QEMU runner `ci/testbed` execs ([`qemu`]).

pub mod outcome;
pub mod qemu;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use outcome::Outcome;

/// Errors of the Rust API (not of the scenario: those are in [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The scenario script could not be written to a temporary file.
    #[error("writing the scenario script to a temporary file")]
    WriteScript(#[source] std::io::Error),
    /// `ci/testbed` could not be started.
    #[error("running {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// `ci/testbed` ended without writing an outcome (it failed before booting: see its stderr).
    #[error("ci/testbed exited with {status} before booting; its stderr ends with:\n{stderr_tail}")]
    NoOutcome {
        /// Exit status of ci/testbed.
        status: std::process::ExitStatus,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// The outcome file was unreadable.
    #[error("reading the outcome file {0}")]
    ReadOutcome(PathBuf, #[source] std::io::Error),
    /// The outcome file did not parse.
    #[error("parsing the outcome file {0}")]
    ParseOutcome(PathBuf, #[source] serde_json::Error),
}

/// The repository this crate was built from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One scenario to run in the test bed.
#[derive(Debug)]
pub struct Scenario {
    script: PathBuf,
    // Keeps a script written from text alive until the run is over.
    _script_file: Option<tempfile::TempPath>,
    adds: Vec<(PathBuf, String)>,
    memory_mib: Option<u32>,
    timeout: Option<Duration>,
    boot_timeout: Option<Duration>,
}

/// The environment variable that tags every process of one run (ci/testbed, the runner and QEMU inherit it),
/// so a test can find what its own run left behind without confusing it with other runs on the machine.
pub const RUN_TAG_ENV: &str = "BULKHEAD_TESTBED_TAG";

/// What a finished run produced.
#[derive(Debug)]
pub struct RunResult {
    /// How the run ended.
    pub outcome: Outcome,
    /// This run's value of [`RUN_TAG_ENV`].
    pub tag: String,
    /// The scenario's stdout, byte for byte.
    pub stdout: Vec<u8>,
    /// The scenario's stderr, plus the test bed's own progress lines (prefixed `testbed:`).
    pub stderr: Vec<u8>,
}

impl RunResult {
    /// stdout as text.
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text.
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Scenario {
    /// A scenario that runs an executable file in dom0.
    pub fn new(script: impl Into<PathBuf>) -> Self {
        Scenario {
            script: script.into(),
            _script_file: None,
            adds: Vec::new(),
            memory_mib: None,
            timeout: None,
            boot_timeout: None,
        }
    }

    /// A scenario from the text of a script (it needs its own `#!` line).
    pub fn from_script_text(text: &str) -> Result<Self, TestbedError> {
        let mut f = tempfile::Builder::new().prefix("scenario-").tempfile().map_err(TestbedError::WriteScript)?;
        f.write_all(text.as_bytes()).map_err(TestbedError::WriteScript)?;
        f.as_file().set_permissions(std::fs::Permissions::from_mode(0o755)).map_err(TestbedError::WriteScript)?;
        let path = f.into_temp_path();
        let mut s = Scenario::new(path.to_path_buf());
        s._script_file = Some(path);
        Ok(s)
    }

    /// Copies a host file or folder into dom0 at `dest` before the script runs.
    pub fn add(mut self, src: impl Into<PathBuf>, dest: impl Into<String>) -> Self {
        self.adds.push((src.into(), dest.into()));
        self
    }

    /// Memory of the emulated machine.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// How long the script may run.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// How long QEMU, Xen and dom0 may take to come up before the run counts as a bed failure.
    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = Some(t);
        self
    }

    /// The arguments after `ci/testbed`.
    fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        for (src, dest) in &self.adds {
            let mut spec = src.clone().into_os_string();
            spec.push(":");
            spec.push(dest);
            a.push("--add".into());
            a.push(spec);
        }
        if let Some(m) = self.memory_mib {
            a.push("--memory".into());
            a.push(m.to_string().into());
        }
        if let Some(t) = self.timeout {
            a.push("--timeout".into());
            a.push(t.as_secs().max(1).to_string().into());
        }
        a.push(self.script.clone().into_os_string());
        a
    }

    /// Boots the test bed and runs the scenario to its end.
    pub fn run(&self) -> Result<RunResult, TestbedError> {
        let tool = repo_root().join("ci/testbed");
        let outcome_dir = tempfile::tempdir().map_err(TestbedError::WriteScript)?;
        let outcome_file = outcome_dir.path().join("outcome.json");
        let tag = format!("{}-{}", std::process::id(), outcome_dir.path().display());
        let mut cmd = Command::new(&tool);
        cmd.args(self.args()).env("BULKHEAD_TESTBED_OUTCOME", &outcome_file).env(RUN_TAG_ENV, &tag);
        if let Some(t) = self.boot_timeout {
            cmd.env("BULKHEAD_TESTBED_BOOT_TIMEOUT", t.as_secs().max(1).to_string());
        }
        let out = cmd.output().map_err(|e| TestbedError::Spawn(tool.clone(), e))?;
        if !outcome_file.exists() {
            let text = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text.lines().collect();
            let stderr_tail = lines[lines.len().saturating_sub(30)..].join("\n");
            return Err(TestbedError::NoOutcome { status: out.status, stderr_tail });
        }
        let text =
            std::fs::read_to_string(&outcome_file).map_err(|e| TestbedError::ReadOutcome(outcome_file.clone(), e))?;
        let outcome = serde_json::from_str(&text).map_err(|e| TestbedError::ParseOutcome(outcome_file.clone(), e))?;
        Ok(RunResult { outcome, tag, stdout: out.stdout, stderr: out.stderr })
    }
}

impl Scenario {
    /// For `#[test]`s: runs the scenario and asserts that it exited 0 and printed a line "scenario ok"
    /// (panicking with its output otherwise). Its "figure: " and "failure reason: " lines are printed, so
    /// they are kept in the test output. Returns its stdout.
    pub fn run_ok(&self) -> String {
        let r = match self.run() {
            Ok(r) => r,
            Err(e) => panic!("the test bed could not run the scenario: {e}"),
        };
        let out = r.stdout_lossy();
        assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "stdout:\n{out}\nstderr:\n{}", r.stderr_lossy());
        assert!(out.lines().any(|l| l == "scenario ok"), "{out}");
        for line in out.lines().filter(|l| l.starts_with("figure: ") || l.starts_with("failure reason: ")) {
            println!("{line}");
        }
        out
    }
}

/// Processes still alive that carry `tag` in their environment (see [`RUN_TAG_ENV`]), with their command
/// lines. After a run has returned this must be empty: the runner takes QEMU down with it.
pub fn processes_tagged(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("{RUN_TAG_ENV}={tag}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        // Processes can vanish or be unreadable between listing and reading: skip them.
        let Ok(environ) = std::fs::read(e.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_documented_interface() {
        let s = Scenario::new("/s/check.sh")
            .add("/h/a", "/opt/a")
            .add("/h/b", "/b")
            .memory_mib(1536)
            .timeout(Duration::from_secs(90));
        let a: Vec<String> = s.args().iter().map(|x| x.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            ["run", "--add", "/h/a:/opt/a", "--add", "/h/b:/b", "--memory", "1536", "--timeout", "90", "/s/check.sh"]
        );
    }

    #[test]
    fn tagged_processes_are_found_and_others_are_not() -> std::io::Result<()> {
        let tag = format!("unit-{}", std::process::id());
        let mut child = Command::new("sleep").arg("30").env(RUN_TAG_ENV, &tag).spawn()?;
        // Until the child has exec'd, /proc shows the parent's environment: wait for the exec.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = processes_tagged(&tag);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = processes_tagged(&tag);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|(pid, cmd)| *pid == child.id() && cmd.starts_with("sleep")), "{found:?}");
        assert!(processes_tagged(&format!("{tag}-other")).is_empty());
        assert!(!processes_tagged(&tag).iter().any(|(pid, _)| *pid == child.id()));
        Ok(())
    }

    #[test]
    fn script_text_becomes_an_executable_file() {
        let s = Scenario::from_script_text("#!/bin/sh\nexit 0\n");
        let s = match s {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let meta = std::fs::metadata(&s.script).map(|m| m.permissions().mode() & 0o111);
        assert_eq!(meta.ok(), Some(0o111));
    }
}
