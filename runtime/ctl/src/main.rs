//! `bulkhead`: see the crate docs of `bulkhead_ctl`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = bulkhead_ctl::Cli::parse();
    let mut out = std::io::stdout().lock();
    match bulkhead_ctl::run(cli, &mut out).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
