//! SPDY/3.1, the multiplexing protocol kubelet's streaming endpoints speak (draft-mbelshe-httpbis-spdy-00
//! as amended for 3.1, and as moby/spdystream implements it for client-go and the API server).

mod compress;
mod dictionary;
pub mod frame;
pub mod session;

pub use session::{Session, SpdyStream, StreamReader, StreamWriter};
