//! How a test-bed run ended, and the exit codes that carry it to a shell.

use serde::{Deserialize, Serialize};

/// Exit code of `ci/testbed run` when the scenario outlived `--timeout` and was killed
/// (the same number GNU `timeout` uses).
pub const EXIT_TIMEOUT: i32 = 124;

/// Exit code of `ci/testbed run` when the test bed itself failed: QEMU, Xen or dom0 did not come up in
/// time, crashed, or powered off before the scenario reported its status.
pub const EXIT_BED_FAILURE: i32 = 125;

/// The end of one run, as the runner writes it to `--status-file` and the Rust API reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// The scenario ran to its end with this exit code (a signal death is reported as 128 + signo).
    Exited {
        /// The scenario's exit code.
        code: i32,
    },
    /// The scenario ran past its timeout and was killed.
    TimedOut {
        /// The timeout that was exceeded, in seconds.
        after_secs: u64,
    },
    /// The test bed failed before the scenario could report.
    BedFailure {
        /// What went wrong, for a person.
        reason: String,
    },
}

impl Outcome {
    /// The process exit code that stands for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited { code } => *code,
            Outcome::TimedOut { .. } => EXIT_TIMEOUT,
            Outcome::BedFailure { .. } => EXIT_BED_FAILURE,
        }
    }
}

/// One line dom0's init sends on the status port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// Xen services are up; the scenario is about to start.
    Ready,
    /// The scenario has started.
    Started,
    /// The scenario ended with this code.
    Exit(i32),
    /// The scenario was killed after this many seconds.
    Timeout(u64),
    /// dom0's init could not set the bed up; the text says why.
    Error(String),
}

impl StatusLine {
    /// Parses one line (without its newline). Unknown or malformed lines give `None`: the status port is
    /// ours end to end, so anything else is noise to report, not to act on.
    pub fn parse(line: &str) -> Option<StatusLine> {
        let line = line.trim_end_matches('\r');
        let (word, rest) = match line.split_once(' ') {
            Some((w, r)) => (w, r.trim()),
            None => (line, ""),
        };
        match (word, rest) {
            ("ready", "") => Some(StatusLine::Ready),
            ("start", "") => Some(StatusLine::Started),
            ("exit", code) => code.parse::<i32>().ok().filter(|c| (0..=255).contains(c)).map(StatusLine::Exit),
            ("timeout", secs) => secs.parse().ok().map(StatusLine::Timeout),
            ("error", msg) if !msg.is_empty() => Some(StatusLine::Error(msg.to_owned())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(StatusLine::parse("ready"), Some(StatusLine::Ready));
        assert_eq!(StatusLine::parse("start\r"), Some(StatusLine::Started));
        assert_eq!(StatusLine::parse("exit 3"), Some(StatusLine::Exit(3)));
        assert_eq!(StatusLine::parse("exit 255"), Some(StatusLine::Exit(255)));
        assert_eq!(StatusLine::parse("timeout 10"), Some(StatusLine::Timeout(10)));
        assert_eq!(
            StatusLine::parse("error xenstored did not start"),
            Some(StatusLine::Error("xenstored did not start".into()))
        );
    }

    #[test]
    fn malformed_status_lines_are_rejected() {
        for bad in ["", "exit", "exit -1", "exit 256", "exit x", "ready now", "timeout", "error", "bogus 1"] {
            assert_eq!(StatusLine::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn outcomes_map_to_documented_exit_codes() {
        assert_eq!(Outcome::Exited { code: 3 }.exit_code(), 3);
        assert_eq!(Outcome::TimedOut { after_secs: 5 }.exit_code(), 124);
        assert_eq!(Outcome::BedFailure { reason: "x".into() }.exit_code(), 125);
    }

    #[test]
    fn outcome_round_trips_through_json() {
        let all = [
            Outcome::Exited { code: 7 },
            Outcome::TimedOut { after_secs: 9 },
            Outcome::BedFailure { reason: "dom0 panicked".into() },
        ];
        for o in all {
            let text = serde_json::to_string(&o).unwrap_or_default();
            let back: Outcome = serde_json::from_str(&text).unwrap_or(Outcome::Exited { code: -1 });
            assert_eq!(back, o, "{text}");
        }
    }
}
