//! `tokio_util::codec` support (feature `codec`, on by default).

use std::fmt;
use std::marker::PhantomData;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::WireError;
use crate::frame::{HEADER_LEN, Message, check_header, decode, encode_into};
use crate::messages::{HostToZone, ZoneToHost};

/// The codec bulkheadd uses: reads [`ZoneToHost`], writes [`HostToZone`].
pub type HostCodec = WireCodec<ZoneToHost, HostToZone>;

/// The codec bulkhead-zone uses: reads [`HostToZone`], writes [`ZoneToHost`].
pub type ZoneCodec = WireCodec<HostToZone, ZoneToHost>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The stream ended cleanly; more data is an error.
    Ended,
    /// A decode error happened; every later decode fails.
    Failed,
}

/// A [`Decoder`] of `In` frames and [`Encoder`] of `Out` frames, for `FramedRead`/`FramedWrite`/`Framed`.
///
/// The decoder is strict and final: after its first error it returns [`WireError::Poisoned`] forever (so a caller
/// that keeps polling never resynchronises on garbage), and once the stream has ended, further data is
/// [`WireError::DataAfterEof`]. A partial frame at end of stream is [`WireError::TruncatedAtEof`]. Note that
/// `FramedRead` yields `None` once after an error and, if polled again, reads again: stop polling at the first
/// error or `None`, and close the channel.
pub struct WireCodec<In, Out> {
    state: State,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> WireCodec<In, Out> {
    /// A codec for a fresh channel.
    pub fn new() -> Self {
        WireCodec { state: State::Open, _messages: PhantomData }
    }

    /// Whether a decode error has made this codec unusable.
    pub fn is_poisoned(&self) -> bool {
        self.state == State::Failed
    }
}

impl<In, Out> Default for WireCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> fmt::Debug for WireCodec<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireCodec")
            .field("in", &std::any::type_name::<In>())
            .field("out", &std::any::type_name::<Out>())
            .field("state", &self.state)
            .finish()
    }
}

impl<In: Message, Out> WireCodec<In, Out> {
    fn fail(&mut self, e: WireError) -> WireError {
        self.state = State::Failed;
        e
    }
}

impl<In: Message, Out> Decoder for WireCodec<In, Out> {
    type Item = In;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, WireError> {
        match self.state {
            State::Open => {}
            State::Failed => return Err(WireError::Poisoned),
            State::Ended => return Err(self.fail(WireError::DataAfterEof)),
        }
        match decode::<In>(src) {
            Ok(Some(msg)) => Ok(Some(msg)),
            Ok(None) => {
                // The header (if complete) has been checked, so the frame length is bounded: reserve it all.
                if let Ok(Some(len)) = check_header(src, In::DIRECTION) {
                    src.reserve((HEADER_LEN + len).saturating_sub(src.len()));
                }
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, WireError> {
        if self.state == State::Ended {
            return if src.is_empty() { Ok(None) } else { Err(self.fail(WireError::DataAfterEof)) };
        }
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => {
                self.state = State::Ended;
                Ok(None)
            }
            None => Err(self.fail(WireError::TruncatedAtEof { buffered: src.len() })),
        }
    }
}

impl<In, Out: Message> Encoder<Out> for WireCodec<In, Out> {
    type Error = WireError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_into(&item, dst)
    }
}

impl<In, Out: Message> Encoder<&Out> for WireCodec<In, Out> {
    type Error = WireError;

    fn encode(&mut self, item: &Out, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_into(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{Framed, FramedRead};

    use super::*;
    use crate::frame::encode;
    use crate::{MAX_FRAME_PAYLOAD, OutputFd, PROTOCOL_VERSION, StreamId};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn hello() -> ZoneToHost {
        ZoneToHost::Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: "0.1.0".into(),
            kernel_release: "6.12.0-bulkhead".into(),
            boot_time_ms: 420,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn handshake_over_a_duplex_channel() -> TestResult {
        let (host_io, zone_io) = tokio::io::duplex(1 << 20);
        let mut host = Framed::new(host_io, HostCodec::new());
        let mut zone = Framed::new(zone_io, ZoneCodec::new());

        zone.send(hello()).await?;
        let big = ZoneToHost::Output { stream_id: StreamId(1), fd: OutputFd::Stdout, data: vec![1; 70_000].into() };
        assert!(matches!(zone.send(big).await, Err(WireError::Invalid(_))));
        let out = ZoneToHost::Output { stream_id: StreamId(1), fd: OutputFd::Stdout, data: vec![1; 1000].into() };
        zone.send(&out).await?;
        assert_eq!(host.next().await.transpose()?, Some(hello()));
        assert_eq!(host.next().await.transpose()?, Some(out));

        let welcome = HostToZone::Welcome { zone_id: "z1".into(), hostname: "web".into() };
        host.send(&welcome).await?;
        assert_eq!(zone.next().await.transpose()?, Some(welcome));

        drop(zone);
        assert!(host.next().await.is_none(), "clean end of stream");
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn end_of_stream_inside_a_frame() -> TestResult {
        let (mut w, r) = tokio::io::duplex(1024);
        let f = encode(&ZoneToHost::Pong { nonce: 1 })?;
        w.write_all(&f).await?;
        w.write_all(&f[..f.len() - 1]).await?;
        drop(w);
        let mut host = FramedRead::new(r, HostCodec::new());
        assert_eq!(host.next().await.transpose()?, Some(ZoneToHost::Pong { nonce: 1 }));
        assert!(matches!(host.next().await, Some(Err(WireError::TruncatedAtEof { buffered }))
            if buffered == f.len() - 1));
        assert!(host.next().await.is_none());
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn garbage_ends_the_stream() -> TestResult {
        let (mut w, r) = tokio::io::duplex(1024);
        let mut host = FramedRead::new(r, HostCodec::new());
        w.write_all(b"GET / HTTP/1.1\r\n").await?;
        assert!(matches!(host.next().await, Some(Err(WireError::BadMagic { .. }))));
        assert!(host.next().await.is_none());
        // FramedRead reads again if polled after that; the codec refuses to resynchronise on a good frame.
        w.write_all(&encode(&ZoneToHost::Pong { nonce: 1 })?).await?;
        assert!(matches!(host.next().await, Some(Err(WireError::Poisoned))));
        Ok(())
    }

    #[test]
    fn poisoned_after_an_error() -> TestResult {
        let mut codec = ZoneCodec::new();
        let mut buf = BytesMut::from(&b"XXXXXXXXXXXXXXXXXXXX"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(WireError::BadMagic { .. })));
        assert!(codec.is_poisoned());
        let mut buf = BytesMut::from(&encode(&HostToZone::Ping { nonce: 1 })?[..]);
        assert!(matches!(codec.decode(&mut buf), Err(WireError::Poisoned)));
        assert!(matches!(codec.decode_eof(&mut buf), Err(WireError::Poisoned)));
        Ok(())
    }

    #[test]
    fn end_of_stream_is_final() -> TestResult {
        let mut codec = ZoneCodec::new();
        let mut buf = BytesMut::from(&encode(&HostToZone::Ping { nonce: 1 })?[..]);
        assert_eq!(codec.decode_eof(&mut buf)?, Some(HostToZone::Ping { nonce: 1 }));
        assert_eq!(codec.decode_eof(&mut buf)?, None);
        assert_eq!(codec.decode_eof(&mut buf)?, None);
        let mut buf = BytesMut::from(&encode(&HostToZone::Ping { nonce: 2 })?[..]);
        assert!(matches!(codec.decode(&mut buf), Err(WireError::DataAfterEof)));
        assert!(codec.is_poisoned());
        Ok(())
    }

    #[test]
    fn buffering_is_bounded_by_the_header() -> TestResult {
        let mut codec = HostCodec::new();
        let f = encode(&ZoneToHost::Pong { nonce: 1 })?;
        // A header announcing the largest legal payload: the codec reserves that much and no more.
        let mut head = f[..HEADER_LEN].to_vec();
        head[8..12].copy_from_slice(&(MAX_FRAME_PAYLOAD as u32).to_le_bytes());
        let mut buf = BytesMut::from(&head[..]);
        assert!(codec.decode(&mut buf)?.is_none());
        assert!(buf.capacity() >= HEADER_LEN + MAX_FRAME_PAYLOAD);
        // One byte over: refused, nothing reserved.
        let mut codec = HostCodec::new();
        head[8..12].copy_from_slice(&(MAX_FRAME_PAYLOAD as u32 + 1).to_le_bytes());
        let mut buf = BytesMut::from(&head[..]);
        let cap = buf.capacity();
        assert!(matches!(codec.decode(&mut buf), Err(WireError::FrameTooLarge { .. })));
        assert_eq!(buf.capacity(), cap);
        Ok(())
    }
}
