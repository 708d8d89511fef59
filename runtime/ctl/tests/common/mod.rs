//! Shared by the CLI's integration tests.

use std::path::Path;

use bulkhead_ctl::{Cli, run};
use clap::Parser;

/// Runs `bulkhead ARGS` against `socket` in process and returns (exit code or error text, stdout).
pub async fn bulkhead(socket: &Path, args: &[&str]) -> (Result<i32, String>, String) {
    let mut argv = vec!["bulkhead", "--socket", socket.to_str().unwrap_or_default()];
    argv.extend_from_slice(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => return (Err(e.to_string()), String::new()),
    };
    let mut out = Vec::new();
    let r = run(cli, &mut out).await.map_err(|e| format!("{e:#}"));
    (r, String::from_utf8_lossy(&out).into_owned())
}
