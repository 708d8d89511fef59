//! A workload's output on disk, in the CRI log format kubelet reads (`<RFC 3339 time> <stream> <P|F> <text>`):
//! one line per output line, `F` for a full line, `P` for a partial one (output not ending in a newline is
//! written at once, so followers see it).
//!
//! The zone decides how much it prints, so the file is capped: past [`MAX_LOG_BYTES`] one marker line is
//! written and further output only reaches live followers.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_wire::OutputFd;
use bytes::Bytes;

/// Largest log file kept per workload.
pub const MAX_LOG_BYTES: u64 = 32 << 20;
/// Longest line read back from a log file (the writer never writes longer ones).
const MAX_LINE: usize = 128 << 10;

/// One piece of output with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Unix time, nanoseconds.
    pub timestamp: i64,
    /// Which stream.
    pub fd: OutputFd,
    /// The bytes, with the newline for a full line.
    pub data: Bytes,
}

/// The append end of a workload's log.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    written: u64,
    capped: bool,
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn stream_name(fd: OutputFd) -> &'static str {
    match fd {
        OutputFd::Stdout => "stdout",
        OutputFd::Stderr => "stderr",
    }
}

impl LogWriter {
    /// Opens (creating, mode 0600) the log at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let written = file.metadata()?.len();
        Ok(LogWriter { path: path.to_owned(), file, written, capped: written >= MAX_LOG_BYTES })
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `data` from `fd`, split into lines; returns the entries (for live followers, also when the
    /// file is full).
    pub fn append(&mut self, at: SystemTime, fd: OutputFd, data: &[u8]) -> io::Result<Vec<LogEntry>> {
        let ts = nanos(at);
        let stamp = humantime::format_rfc3339_nanos(at).to_string();
        let mut entries = Vec::new();
        let mut text = Vec::with_capacity(data.len() + 64);
        for piece in data.split_inclusive(|&b| b == b'\n') {
            let full = piece.ends_with(b"\n");
            let body = if full { &piece[..piece.len() - 1] } else { piece };
            text.extend_from_slice(stamp.as_bytes());
            text.push(b' ');
            text.extend_from_slice(stream_name(fd).as_bytes());
            text.extend_from_slice(if full { b" F " } else { b" P " });
            text.extend_from_slice(body);
            text.push(b'\n');
            entries.push(LogEntry { timestamp: ts, fd, data: Bytes::copy_from_slice(piece) });
        }
        if !self.capped {
            if self.written + text.len() as u64 > MAX_LOG_BYTES {
                self.capped = true;
                let note = format!(
                    "{stamp} stderr F [bulkhead: log file full at {MAX_LOG_BYTES} bytes; later output is not kept]\n"
                );
                self.file.write_all(note.as_bytes())?;
            } else {
                self.file.write_all(&text)?;
                self.written += text.len() as u64;
            }
        }
        Ok(entries)
    }
}

/// Parses one log line; `None` for lines that are not in the format.
fn parse_line(line: &[u8]) -> Option<LogEntry> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let body = parts.next().unwrap_or_default();
    let at = humantime::parse_rfc3339(ts).ok()?;
    let fd = match stream {
        b"stdout" => OutputFd::Stdout,
        b"stderr" => OutputFd::Stderr,
        _ => return None,
    };
    let mut data = body.to_vec();
    match tag {
        b"F" => data.push(b'\n'),
        b"P" => {}
        _ => return None,
    }
    Some(LogEntry { timestamp: nanos(at), fd, data: data.into() })
}

/// Reads the log at `path`: entries at or after `since` (Unix ns; 0 = all), only the last `tail_lines`
/// (counting full lines; 0 = all). A missing file is an empty log.
pub fn read(path: &Path, since: i64, tail_lines: usize) -> io::Result<Vec<LogEntry>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file.take(MAX_LOG_BYTES + (64 << 10)));
    let mut entries = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.ends_with(b"\n") {
            line.pop();
        }
        if let Some(e) = parse_line(&line).filter(|e| e.timestamp >= since) {
            entries.push(e);
        }
    }
    if tail_lines > 0 {
        let mut full = 0;
        let mut start = entries.len();
        while start > 0 {
            if entries[start - 1].data.ends_with(b"\n") {
                if full == tail_lines {
                    break;
                }
                full += 1;
            }
            start -= 1;
        }
        entries.drain(..start);
    }
    Ok(entries)
}

/// The time `ns` Unix nanoseconds denotes.
pub fn time_of(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn lines_round_trip_with_partial_lines_and_streams() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("w.log");
        let mut w = LogWriter::open(&path)?;
        let t = time_of(1_700_000_000_123_456_789);
        let e = w.append(t, OutputFd::Stdout, b"one\ntwo\nthr")?;
        assert_eq!(e.len(), 3);
        w.append(t, OutputFd::Stderr, b"oops\n")?;
        w.append(t, OutputFd::Stdout, b"ee\n")?;
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with("2023-11-14T22:13:20.123456789Z stdout F one\n"), "{text}");
        assert!(text.contains("stdout P thr\n"), "{text}");
        let all = read(&path, 0, 0)?;
        let joined: Vec<u8> = all.iter().filter(|e| e.fd == OutputFd::Stdout).flat_map(|e| e.data.to_vec()).collect();
        assert_eq!(joined, b"one\ntwo\nthree\n");
        assert_eq!(all[0].timestamp, 1_700_000_000_123_456_789);
        let tail = read(&path, 0, 2)?;
        let tail_text: Vec<u8> = tail.iter().flat_map(|e| e.data.to_vec()).collect();
        // The last two full lines, with the partial piece that the second one completes.
        assert_eq!(tail_text, b"throops\nee\n", "{tail:?}");
        assert!(read(&path, 1_800_000_000_000_000_000, 0)?.is_empty());
        assert!(read(&dir.path().join("missing"), 0, 0)?.is_empty());
        Ok(())
    }

    #[test]
    fn the_file_is_capped_but_followers_still_get_output() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("big.log");
        let mut w = LogWriter::open(&path)?;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..40 {
            assert_eq!(w.append(SystemTime::now(), OutputFd::Stdout, &chunk)?.len(), 1);
        }
        let len = std::fs::metadata(&path)?.len();
        assert!(len <= MAX_LOG_BYTES + 4096, "{len}");
        assert!(std::fs::read_to_string(&path)?.contains("log file full"));
        Ok(())
    }
}
