//! Errors of the streaming server, one enum per concern.

use std::io;

/// A SPDY frame could not be decoded or encoded. Each is fatal to the session: the header compression
/// state is shared by all frames, so nothing after a bad frame can be trusted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading from or writing to the connection failed.
    #[error("connection I/O")]
    Io(#[from] io::Error),
    /// A frame announced more payload than this end accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} (only 3 is spoken)")]
    Version(u16),
    /// A control frame shorter (or longer) than its type requires.
    #[error("malformed {0} frame")]
    Truncated(&'static str),
    /// A header block inflated beyond the limit.
    #[error("header block inflates beyond {limit} bytes")]
    HeaderBlockTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A header block with more pairs than accepted.
    #[error("header block of {count} headers exceeds the limit of {limit}")]
    TooManyHeaders {
        /// Announced count.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A header block that does not parse.
    #[error("malformed header block: {0}")]
    BadHeaderBlock(&'static str),
    /// The peer ended its header zlib stream, which SPDY never does.
    #[error("header compression stream ended")]
    HeaderStreamEnded,
    /// Inflating a header block failed.
    #[error("inflating a header block")]
    Inflate(#[source] flate2::DecompressError),
    /// Deflating a header block failed.
    #[error("deflating a header block")]
    Deflate(#[source] flate2::CompressError),
}

/// A SPDY session broke.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The frame layer failed.
    #[error("SPDY framing")]
    Frame(#[from] FrameError),
    /// The peer broke a rule of the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer opened more streams than allowed at once.
    #[error("more than {0} concurrent streams")]
    TooManyStreams(usize),
    /// The session ended (peer gone or GOAWAY) before the streams a request needs were opened.
    #[error("the session ended before all streams were opened")]
    Closed,
    /// The peer did not open the streams a request needs in time.
    #[error("timed out waiting for the client's streams")]
    StreamTimeout,
    /// A stream the request needs is missing, duplicated or of an unknown type.
    #[error("bad stream set: {0}")]
    BadStreams(String),
}

/// A streaming request was refused before a URL was issued.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request is invalid (CRI's rules, as kubelet applies them).
    #[error("invalid streaming request: {0}")]
    Invalid(&'static str),
    /// Too many requests are waiting for their client.
    #[error("too many pending streaming requests (limit {0}); retry later")]
    Full(usize),
    /// The system's random source failed.
    #[error("generating a token")]
    Random(#[source] getrandom::Error),
}

/// The server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listening socket failed.
    #[error("binding the streaming server to {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the bound address failed.
    #[error("reading the streaming server's address")]
    LocalAddr(#[source] io::Error),
    /// The configured base URL cannot carry request paths.
    #[error("base URL {0} cannot be a base")]
    BaseUrl(String),
}
