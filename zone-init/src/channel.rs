//! The zone's end of the host channel: a vchan client to bulkheadd (dom0) carrying bulkhead-wire frames.
//!
//! bulkheadd serves the vchan before it unpauses the zone, under the zone's own xenstore directory (named by
//! `bulkhead.channel`), so connecting never waits. The channel is non-blocking and driven by init's poll loop:
//! [`Channel::fd`] becomes readable on any vchan event (data arrived, space freed, peer closed), then
//! [`Channel::pump`] moves bytes both ways and returns the decoded messages.
//!
//! Outgoing frames queue in memory; [`Channel::backlog`] lets the caller stop reading workload output while
//! the host is slow, so a chatty workload cannot make init grow without bound.
//!
//! bulkheadd may restart while the zone runs. The new daemon serves a new vchan at the same path;
//! [`ServerProbe`] sees the new server named in xenstore and init reconnects ([`Channel::reconnect`]),
//! carrying over the frames the old daemon never got (whole frames only: a frame cut by the loss is dropped,
//! as the old daemon's half of it went with it).

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

use bulkhead_wire::{CHANNEL_SERVER_ID_NODE, HostToZone, WireError, ZoneToHost, decode, encode_into};
use bulkhead_xen::{Vchan, VchanState, Xenstore};
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
    /// Looking in xenstore for a (re)started bulkheadd.
    #[error("reading xenstore {path} for bulkheadd's channel")]
    Probe {
        /// The watched path.
        path: String,
        /// The cause.
        source: bulkhead_xen::Error,
    },
}

/// Outgoing bytes, with the frame boundaries in them, so that a reconnect resends whole frames only.
#[derive(Debug, Default)]
struct Outgoing {
    bytes: BytesMut,
    /// Total bytes ever taken out of `bytes` (written to a ring, or dropped).
    taken: u64,
    /// Start and end offsets (in `taken` terms) of the frames still wholly or partly in `bytes`.
    frames: VecDeque<(u64, u64)>,
}

impl Outgoing {
    fn queued_end(&self) -> u64 {
        self.taken + self.bytes.len() as u64
    }

    fn push(&mut self, msg: &ZoneToHost) -> Result<(), WireError> {
        let start = self.queued_end();
        encode_into(msg, &mut self.bytes)?;
        self.frames.push_back((start, self.queued_end()));
        Ok(())
    }

    fn take(&mut self, n: usize) {
        let _ = self.bytes.split_to(n);
        self.taken += n as u64;
        while self.frames.front().is_some_and(|&(_, end)| end <= self.taken) {
            self.frames.pop_front();
        }
    }

    /// Drops the rest of a frame that was partly written to a ring that is gone.
    fn drop_partial_frame(&mut self) {
        if let Some(&(start, end)) = self.frames.front()
            && start < self.taken
        {
            let rest = usize::try_from(end - self.taken).unwrap_or(usize::MAX).min(self.bytes.len());
            self.take(rest);
        }
    }

    /// Moves `other`'s whole frames to the end of this queue.
    fn append_whole_frames(&mut self, mut other: Outgoing) {
        other.drop_partial_frame();
        let shift = self.queued_end();
        let base = other.taken;
        self.bytes.extend_from_slice(&other.bytes);
        self.frames.extend(other.frames.iter().map(|&(s, e)| (s - base + shift, e - base + shift)));
    }
}

/// Looks in the channel's xenstore directory for a server other than the one init last connected to: a
/// restarted bulkheadd publishes a new ring there and names it in [`CHANNEL_SERVER_ID_NODE`] once it is ready.
/// Each look opens xenstore afresh and closes it, as libxenvchan does: in zones, a xenstore watch failed now
/// and then (EINVAL from starting libxenstore's reader thread), and a read on a connection kept open since
/// boot stalled init.
#[derive(Debug)]
pub struct ServerProbe {
    path: String,
    /// The id of the server last connected to.
    connected_to: Option<Vec<u8>>,
}

impl ServerProbe {
    /// Probes `path` (relative to the zone's xenstore directory).
    pub fn new(path: &str) -> Self {
        ServerProbe { path: path.to_owned(), connected_to: None }
    }

    /// The id of the server published now, if one is.
    fn published(&self) -> Result<Option<Vec<u8>>, ChannelError> {
        let fail = |source| ChannelError::Probe { path: self.path.clone(), source };
        Xenstore::open().map_err(fail)?.try_read(&format!("{}/{CHANNEL_SERVER_ID_NODE}", self.path)).map_err(fail)
    }

    /// Notes the server published now as the one being connected to. Call just before connecting.
    pub fn connecting(&mut self) -> Result<(), ChannelError> {
        self.connected_to = self.published()?;
        Ok(())
    }

    /// Forgets the server being connected to (the connection failed): the next look tries it again.
    pub fn forget(&mut self) {
        self.connected_to = None;
    }

    /// True when a server other than the last one connected to is published.
    pub fn new_server(&self) -> Result<bool, ChannelError> {
        let now = self.published()?;
        Ok(now.is_some() && now != self.connected_to)
    }
}

/// The frames a closed channel had not sent, for the next one.
#[derive(Debug)]
pub struct Unsent(Outgoing);

/// The connected channel.
#[derive(Debug)]
pub struct Channel {
    vchan: Vchan,
    path: String,
    rx: BytesMut,
    tx: Outgoing,
    /// Messages a [`flush`](Channel::flush) received, returned by the next [`pump`](Channel::pump).
    held: Vec<HostToZone>,
    /// What each ring read lands in, reused across pumps.
    read_buf: Vec<u8>,
}

impl Channel {
    /// Connects to the server bulkheadd published at `path` (relative to the zone's xenstore directory).
    pub fn connect(path: &str) -> Result<Self, ChannelError> {
        let vchan = Vchan::client(HOST_DOMID, path)
            .map_err(|source| ChannelError::Connect { path: path.to_owned(), source })?;
        Ok(Channel {
            vchan,
            path: path.to_owned(),
            rx: BytesMut::new(),
            tx: Outgoing::default(),
            held: Vec::new(),
            read_buf: vec![0u8; READ_CHUNK],
        })
    }

    /// Connects to the server now published at this channel's path and queues `first` (the hello) ahead of
    /// the frames a lost channel had not sent (taken from `unsent` only if connecting works). What the old
    /// server had not read from its ring is lost.
    pub fn reconnect(unsent: &mut Option<Unsent>, path: &str, first: &ZoneToHost) -> Result<Self, ChannelError> {
        let mut ch = Channel::connect(path)?;
        ch.queue(first)?;
        if let Some(Unsent(frames)) = unsent.take() {
            ch.tx.append_whole_frames(frames);
        }
        Ok(ch)
    }

    /// Closes the channel (unmapping its ring), keeping what it had not sent.
    pub fn into_unsent(self) -> Unsent {
        Unsent(self.tx)
    }

    /// The xenstore path of the server.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Readable when the vchan has an event; then call [`pump`](Channel::pump).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.vchan.fd()
    }

    /// Queues `msg`; [`pump`](Channel::pump) sends it. Call `pump` after queueing.
    pub fn queue(&mut self, msg: &ZoneToHost) -> Result<(), ChannelError> {
        self.tx.push(msg).map_err(ChannelError::Encode)
    }

    /// Fault injection (`bulkhead.selftest=channel-garbage`): queues `len` bytes that are no frame at all.
    pub fn queue_garbage(&mut self, len: usize) {
        // xorshift: noise without a random source; it never starts with the frame magic.
        let mut x: u32 = 0x9e37_79b9;
        let start = self.tx.queued_end();
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.tx.bytes.extend_from_slice(&x.to_le_bytes()[..1]);
        }
        self.tx.frames.push_back((start, self.tx.queued_end()));
    }

    /// Bytes queued but not yet in the ring.
    pub fn backlog(&self) -> usize {
        self.tx.bytes.len()
    }

    /// Sends what is queued (as [`pump`](Channel::pump) does) and keeps whatever arrives meanwhile for the next
    /// `pump`: an answer that comes at once (the welcome after the hello) is not lost.
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        let received = self.pump()?;
        self.held = received;
        Ok(())
    }

    /// Consumes pending events, writes what fits of the queue, reads what arrived, and returns the complete
    /// messages. Leaves notifications armed, so the fd wakes the caller when more can move.
    pub fn pump(&mut self) -> Result<Vec<HostToZone>, ChannelError> {
        self.vchan.drain_events().map_err(ChannelError::Io)?;
        let mut received = std::mem::take(&mut self.held);
        for _ in 0..PUMP_PASSES {
            let mut moved = false;
            while !self.tx.bytes.is_empty() {
                match self.vchan.write(&self.tx.bytes) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.tx.take(n);
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
            let writable = !self.tx.bytes.is_empty() && self.vchan.buffer_space() > 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_wire::{OutputFd, StreamId, decode_slice};
    use bytes::Bytes;

    fn output(n: u8) -> ZoneToHost {
        ZoneToHost::Output { stream_id: StreamId(1), fd: OutputFd::Stdout, data: Bytes::from(vec![n; 10]) }
    }

    fn decode_all(mut bytes: BytesMut) -> Vec<ZoneToHost> {
        let mut v = Vec::new();
        while let Ok(Some(m)) = decode::<ZoneToHost>(&mut bytes) {
            v.push(m);
        }
        assert!(bytes.is_empty(), "a cut frame was carried over");
        v
    }

    /// Three equal output frames queued; returns the queue and one frame's length.
    fn three_frames() -> Result<(Outgoing, usize), WireError> {
        let mut q = Outgoing::default();
        for n in 0..3 {
            q.push(&output(n))?;
        }
        let frame_len = q.bytes.len() / 3;
        Ok((q, frame_len))
    }

    #[test]
    fn a_reconnect_carries_whole_frames_and_drops_the_one_cut_by_the_loss() -> Result<(), WireError> {
        let (mut old, frame_len) = three_frames()?;
        // The first frame and half of the second reached the old ring.
        old.take(frame_len + frame_len / 2);
        let mut new = Outgoing::default();
        new.push(&ZoneToHost::Pong { nonce: 9 })?;
        new.append_whole_frames(old);
        assert_eq!(decode_all(new.bytes.clone()), [ZoneToHost::Pong { nonce: 9 }, output(2)]);
        // The boundaries moved along: taking the pong leaves exactly the carried frame.
        let pong_len = new.frames[0].1 as usize;
        new.take(pong_len);
        assert_eq!(new.frames.len(), 1);
        assert!(decode_slice::<ZoneToHost>(&new.bytes)?.is_some());
        Ok(())
    }

    #[test]
    fn a_loss_on_a_frame_boundary_carries_every_unsent_frame() -> Result<(), WireError> {
        let (mut old, frame_len) = three_frames()?;
        old.take(frame_len);
        let mut new = Outgoing::default();
        new.append_whole_frames(old);
        assert_eq!(decode_all(new.bytes), [output(1), output(2)]);
        Ok(())
    }
}
