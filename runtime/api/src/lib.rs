//! bulkheadd's control API, the contract between the daemon and its clients (the `bulkhead` CLI and
//! `bulkhead-cri`).
//!
//! The definitions are in `proto/bulkhead/control/v1/control.proto`; the Rust code in `src/gen/` is generated
//! from them by `tonic-prost-build` and checked in, so building needs no `protoc` and changes show up in review.
//! The test `generated_code_is_fresh` fails when the checked-in code does not match the proto; regenerate with
//! `BULKHEAD_REGENERATE=1 cargo test -p bulkhead-api generated_code_is_fresh`.
//!
//! Servers and clients use the generated types only at their edge and convert them into their own domain types
//! there (with validation), so the daemon's core never handles protobuf's optional-everything shapes.
#![forbid(unsafe_code)]

/// Connecting to bulkheadd.
#[cfg(feature = "client")]
pub mod client {
    use std::path::Path;

    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tonic::transport::{Channel, Endpoint};

    /// A channel to bulkheadd's control socket at `socket` (the daemon listens on a unix socket only).
    pub async fn connect_unix(socket: &Path) -> Result<Channel, tonic::transport::Error> {
        endpoint().connect_with_connector(dialer(socket)).await
    }

    /// A channel that dials bulkheadd's socket at `socket` on first use and again after the daemon restarts:
    /// for long-running clients (bulkhead-cri) that must start before the daemon and outlive its restarts.
    pub fn connect_unix_lazy(socket: &Path) -> Channel {
        endpoint().connect_with_connector_lazy(dialer(socket))
    }

    // The URI is required by tonic but unused: the connector dials the socket.
    fn endpoint() -> Endpoint {
        Endpoint::from_static("http://localhost")
    }

    fn dialer(
        socket: &Path,
    ) -> impl tower::Service<
        tonic::transport::Uri,
        Response = TokioIo<UnixStream>,
        Error = std::io::Error,
        Future = impl Future<Output = Result<TokioIo<UnixStream>, std::io::Error>> + Send,
    > + Send
    + Clone
    + 'static {
        let path = socket.to_owned();
        tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        })
    }
}

/// `bulkhead.control.v1`: zones, workloads, images and host information.
pub mod control {
    /// Version 1 of the control API.
    #[allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
    pub mod v1 {
        include!("gen/bulkhead.control.v1.rs");
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn crate_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn generate(out: &Path) -> std::io::Result<()> {
        let proto = crate_dir().join("proto/bulkhead/control/v1/control.proto");
        tonic_prost_build::configure()
            .out_dir(out)
            .build_transport(false)
            .emit_rerun_if_changed(false)
            .compile_protos(&[proto], &[crate_dir().join("proto")])
    }

    /// The checked-in code is what the proto generates (like linkerd2-proxy-api's `rs-gen-check`).
    #[test]
    fn generated_code_is_fresh() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        generate(tmp.path())?;
        let name = "bulkhead.control.v1.rs";
        let fresh = std::fs::read_to_string(tmp.path().join(name))?;
        let checked_in_path = crate_dir().join("src/gen").join(name);
        if std::env::var_os("BULKHEAD_REGENERATE").is_some() {
            std::fs::write(&checked_in_path, &fresh)?;
        }
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "{} is stale: run BULKHEAD_REGENERATE=1 cargo test -p bulkhead-api generated_code_is_fresh",
            checked_in_path.display()
        );
        Ok(())
    }
}
