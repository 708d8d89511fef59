//! The zone's end of the host channel: a vchan client to bulkheadd (dom0) carrying bulkhead-wire frames.
//!
//! bulkheadd serves the vchan before it unpauses the zone, under the zone's own xenstore directory (named by
//! `bulkhead.channel`), so connecting never waits. The channel is non-blocking and driven by init's poll loop:
//! [`Channel::fd`] becomes readable on any vchan event (data arrived, space freed, peer closed), then
//! [`Channel::pump`] moves bytes both ways and returns the decoded messages.
//!
//! Outgoing frames queue in memory; [`Channel::backlog`] lets the caller stop reading workload output while
//! the host is slow, so a chatty workload cannot make init grow without bound.

use std::os::fd::BorrowedFd;

use bulkhead_wire::{HostToZone, WireError, ZoneToHost, decode, encode_into};
use bulkhead_xen::{Vchan, VchanState};
use bytes::BytesMut;

/// dom0's domain id: the vchan server.
const HOST_DOMID: u32 = 0;
/// Bytes read from the ring per call.
const READ_CHUNK: usize = 64 * 1024;
/// Passes over the ring per [`Channel::pump`]: bounded so one busy peer cannot starve init's other work.
const PUMP_PASSES: usize = 64;

/// A host channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Connecting the vchan client.
    #[error("connecting to bulkheadd's channel at xenstore {path}")]
    Connect {
        /// The xenstore path.
        path: String,
        /// The cause.
        source: bulkhead_xen::Error,
    },
    /// Reading or writing the vchan.
    #[error("host channel I/O")]
    Io(#[source] bulkhead_xen::Error),
    /// The host sent a frame that does not decode or validate.
    #[error("bad frame from the host")]
    Decode(#[source] WireError),
    /// A message of ours did not encode (a bug: messages are validated before sending).
    #[error("encoding a message for the host")]
    Encode(#[source] WireError),
    /// bulkheadd closed its end.
    #[error("bulkheadd closed the channel")]
    Closed,
}

/// The connected channel.
#[derive(Debug)]
pub struct Channel {
    vchan: Vchan,
    rx: BytesMut,
    tx: BytesMut,
    /// What each ring read lands in, reused across pumps.
    read_buf: Vec<u8>,
}

impl Channel {
    /// Connects to the server bulkheadd published at `path` (relative to the zone's xenstore directory).
    pub fn connect(path: &str) -> Result<Self, ChannelError> {
        let vchan = Vchan::client(HOST_DOMID, path)
            .map_err(|source| ChannelError::Connect { path: path.to_owned(), source })?;
        Ok(Channel { vchan, rx: BytesMut::new(), tx: BytesMut::new(), read_buf: vec![0u8; READ_CHUNK] })
    }

    /// Readable when the vchan has an event; then call [`pump`](Channel::pump).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.vchan.fd()
    }

    /// Queues `msg`; [`pump`](Channel::pump) sends it. Call `pump` after queueing.
    pub fn queue(&mut self, msg: &ZoneToHost) -> Result<(), ChannelError> {
        encode_into(msg, &mut self.tx).map_err(ChannelError::Encode)
    }

    /// Bytes queued but not yet in the ring.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    /// Consumes pending events, writes what fits of the queue, reads what arrived, and returns the complete
    /// messages. Leaves notifications armed, so the fd wakes the caller when more can move.
    pub fn pump(&mut self) -> Result<Vec<HostToZone>, ChannelError> {
        self.vchan.drain_events().map_err(ChannelError::Io)?;
        let mut received = Vec::new();
        for _ in 0..PUMP_PASSES {
            let mut moved = false;
            while !self.tx.is_empty() {
                match self.vchan.write(&self.tx) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = self.tx.split_to(n);
                        moved = true;
                    }
                    Err(bulkhead_xen::Error::VchanPeerClosed) => return Err(ChannelError::Closed),
                    Err(e) => return Err(ChannelError::Io(e)),
                }
            }
            loop {
                match self.vchan.read(&mut self.read_buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.rx.extend_from_slice(&self.read_buf[..n]);
                        moved = true;
                    }
                    Err(bulkhead_xen::Error::VchanPeerClosed) => return Err(ChannelError::Closed),
                    Err(e) => return Err(ChannelError::Io(e)),
                }
            }
            while let Some(msg) = decode::<HostToZone>(&mut self.rx).map_err(ChannelError::Decode)? {
                received.push(msg);
            }
            // Arm both notifications, then look again: anything that arrived or drained in between is seen
            // now rather than lost until the next unrelated event.
            let readable = self.vchan.data_ready() > 0;
            let writable = !self.tx.is_empty() && self.vchan.buffer_space() > 0;
            if !moved && !readable && !writable {
                break;
            }
        }
        if self.vchan.is_open() == VchanState::PeerClosed && self.vchan.data_ready() == 0 {
            return Err(ChannelError::Closed);
        }
        Ok(received)
    }
}
