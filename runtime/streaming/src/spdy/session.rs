//! The server end of a SPDY/3.1 session: the client opens streams, this end accepts them.
//!
//! Two tasks per session: a reader that decodes frames and routes DATA to per-stream queues, and a writer
//! that owns the socket's write half and the header compressor. Handlers see [`SpdyStream`]s.
//!
//! Flow control: the Go peer (moby/spdystream under client-go and the API server) implements none. It
//! ignores WINDOW_UPDATE and SETTINGS and never sends either, so honouring SPDY's 64 KiB initial send
//! window would stall every stream after 64 KiB. This end therefore does not limit what it sends, and
//! bounds what it buffers instead: queued inbound DATA across all streams holds at most
//! [`INBOUND_BUDGET`] bytes, and when that is used up the reader stops reading the socket (TCP pushes
//! back on the peer, as spdystream's own blocking frame handlers do). It still sends WINDOW_UPDATE for
//! what its handlers consume, so a peer that does count windows is never starved.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{
    FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameEncoder, Headers, WRITE_CHUNK, goaway, rst,
};
use crate::error::SessionError;

/// Most streams open at once on one session. A port-forward uses two per forwarded connection.
pub const MAX_STREAMS: usize = 256;
/// Bytes of inbound DATA queued for handlers, over all streams of a session.
pub const INBOUND_BUDGET: usize = 4 * 1024 * 1024;
/// Frames queued for the writer before senders wait.
const OUTBOUND_QUEUE: usize = 64;
/// Chunks queued per stream (the byte budget is the real bound).
const STREAM_QUEUE: usize = 64;
/// How long a closing session keeps reading so that closing the socket does not reset it while the
/// peer still has frames in flight (a reset can discard the last output before the peer reads it).
const LINGER: Duration = Duration::from_secs(5);

enum Out {
    Frame(Frame),
    /// GOAWAY, flush, and shut the write half down.
    Close(u32),
}

/// A SPDY session on an upgraded connection.
#[derive(Debug)]
pub struct Session {
    incoming: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Out>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Frame(fr) => f.debug_tuple("Frame").field(fr).finish(),
            Out::Close(s) => f.debug_tuple("Close").field(s).finish(),
        }
    }
}

impl Session {
    /// Starts the session's reader and writer on `io`.
    pub fn start<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        // As deep as the stream limit, so a burst of SYN_STREAMs is never refused for want of queue.
        let (in_tx, in_rx) = mpsc::channel(MAX_STREAMS);
        let writer = tokio::spawn(write_loop(FramedWrite::new(wr, FrameEncoder::default()), out_rx));
        let reader = tokio::spawn(read_loop(FramedRead::new(rd, FrameDecoder::default()), out_tx.clone(), in_tx));
        Self { incoming: in_rx, out: out_tx, reader, writer }
    }

    /// The next stream the client opened, or None once the session has ended.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// Stops taking new streams: later SYN_STREAMs are refused.
    pub fn stop_accepting(&mut self) {
        self.incoming.close();
    }

    /// Ends the session: GOAWAY after everything queued, then waits (bounded) for the peer to hang up.
    pub async fn close(mut self) {
        self.incoming.close();
        let _ = self.out.send(Out::Close(goaway::OK)).await;
        // The writer ends after the GOAWAY; the reader when the peer closes or LINGER passes.
        let _ = tokio::time::timeout(LINGER, &mut self.writer).await;
        let _ = tokio::time::timeout(LINGER, &mut self.reader).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A backstop for sessions dropped without close(): abort needs no runtime context.
        self.reader.abort();
        self.writer.abort();
    }
}

struct Entry {
    inbound: Option<mpsc::Sender<Chunk>>,
    flags: Arc<Flags>,
}

/// What both ends of the session's bookkeeping need to know about a stream's outbound side.
#[derive(Debug, Default)]
struct Flags {
    /// RST_STREAM was sent or received: nothing more may be sent.
    reset: AtomicBool,
    /// This end sent FIN (or will send nothing more).
    finished: AtomicBool,
}

impl Entry {
    /// Both directions are over: the entry only counts against MAX_STREAMS.
    fn over(&self) -> bool {
        self.inbound.is_none()
            && (self.flags.reset.load(Ordering::Relaxed) || self.flags.finished.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Chunk {
    data: Bytes,
    _budget: OwnedSemaphorePermit,
}

async fn write_loop<W: AsyncWrite + Unpin>(mut sink: FramedWrite<W, FrameEncoder>, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        let res = match out {
            Out::Frame(f) => {
                let r = sink.feed(f).await;
                // Flush when nothing else is queued, so bursts go out in one write.
                if r.is_ok() && rx.is_empty() { sink.flush().await } else { r }
            }
            Out::Close(status) => {
                let _ = sink.send(Frame::GoAway { last_good_stream_id: 0, status }).await;
                let _ = sink.get_mut().shutdown().await;
                return;
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "SPDY write failed; closing the session");
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, FrameDecoder>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<SpdyStream>,
) {
    let budget = Arc::new(Semaphore::new(INBOUND_BUDGET));
    let mut streams: HashMap<u32, Entry> = HashMap::new();
    let mut last_id = 0u32;
    let result: Result<(), SessionError> = async {
        while let Some(frame) = frames.next().await {
            match frame? {
                Frame::SynStream { stream_id, flags, headers, .. } => {
                    // Client streams are odd and increasing (draft section 2.3.2).
                    if stream_id % 2 == 0 || stream_id <= last_id {
                        return Err(SessionError::Protocol("stream id not odd and increasing"));
                    }
                    last_id = stream_id;
                    streams.retain(|_, e| !e.over());
                    if streams.len() >= MAX_STREAMS {
                        send(&out, Frame::RstStream { stream_id, status: rst::REFUSED_STREAM }).await;
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                    let stream_flags = Arc::new(Flags::default());
                    if flags & FLAG_UNIDIRECTIONAL != 0 {
                        stream_flags.finished.store(true, Ordering::Relaxed);
                    }
                    let stream = SpdyStream {
                        headers,
                        reader: StreamReader { id: stream_id, rx, out: out.clone(), pending: Bytes::new() },
                        writer: StreamWriter { id: stream_id, out: out.clone(), flags: stream_flags.clone() },
                    };
                    let inbound = (flags & FLAG_FIN == 0).then_some(tx);
                    match incoming.try_send(stream) {
                        Ok(()) => {
                            streams.insert(stream_id, Entry { inbound, flags: stream_flags });
                            send(&out, Frame::SynReply { stream_id, flags: 0, headers: Headers::new() }).await;
                        }
                        Err(_) => send(&out, Frame::RstStream { stream_id, status: rst::REFUSED_STREAM }).await,
                    }
                }
                Frame::Data { stream_id, flags, data } => {
                    let Some(entry) = streams.get_mut(&stream_id) else {
                        // Data racing a reset this end sent is normal; data for a stream never opened is not.
                        if stream_id > last_id {
                            return Err(SessionError::Protocol("DATA on a stream never opened"));
                        }
                        continue;
                    };
                    if let Some(tx) = &entry.inbound
                        && !data.is_empty()
                    {
                        // Callers bound DATA to MAX_DATA_PAYLOAD, below the budget, so this cannot wait forever.
                        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                        let Ok(permit) = budget.clone().acquire_many_owned(n).await else { break };
                        // A handler that dropped its reader does not want the data: discard it.
                        let _ = tx.send(Chunk { data, _budget: permit }).await;
                    }
                    if flags & FLAG_FIN != 0 {
                        entry.inbound = None;
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    if let Some(e) = streams.remove(&stream_id) {
                        e.flags.reset.store(true, Ordering::Relaxed);
                    }
                }
                Frame::Ping(id) => {
                    // Odd ids are the client's: echo them. Even ones would answer pings this end never sends.
                    if id % 2 == 1 {
                        send(&out, Frame::Ping(id)).await;
                    }
                }
                Frame::GoAway { .. } => break,
                Frame::Headers { .. } | Frame::Settings(_) | Frame::WindowUpdate { .. } => {}
                Frame::SynReply { .. } => {
                    return Err(SessionError::Protocol("SYN_REPLY for a stream this end never opened"));
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "SPDY session ended by a peer error");
        let _ = out.send(Out::Close(goaway::PROTOCOL_ERROR)).await;
    }
    // Every stream's reader now sees EOF, and accept() sees the end.
    drop(streams);
    drop(incoming);
    // Keep draining (bounded by the caller's LINGER) so the socket is not reset under the peer.
    while let Some(Ok(_)) = frames.next().await {}
}

async fn send(out: &mpsc::Sender<Out>, frame: Frame) {
    // The writer is gone only when the connection is; the reader notices that itself.
    let _ = out.send(Out::Frame(frame)).await;
}

/// One client-opened stream: its headers, and its two directions.
#[derive(Debug)]
pub struct SpdyStream {
    /// The SYN_STREAM's headers (names lower case).
    pub headers: Headers,
    /// What the client sends on it.
    pub reader: StreamReader,
    /// What this end sends on it.
    pub writer: StreamWriter,
}

impl SpdyStream {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        super::frame::header(&self.headers, name)
    }
}

/// The inbound half of a stream.
#[derive(Debug)]
pub struct StreamReader {
    id: u32,
    rx: mpsc::Receiver<Chunk>,
    out: mpsc::Sender<Out>,
    pending: Bytes,
}

impl StreamReader {
    /// The next bytes the client sent, or None at its FIN (or a reset, or the session's end).
    pub async fn recv(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        let chunk = self.rx.recv().await?;
        // Return the window; see the module doc. If the queue is full the update is dropped, harmlessly
        // for the Go peer, and a window-counting peer gets it with the next chunk's.
        let delta = u32::try_from(chunk.data.len()).unwrap_or(u32::MAX);
        let _ = self.out.try_send(Out::Frame(Frame::WindowUpdate { stream_id: self.id, delta }));
        Some(chunk.data)
    }

    /// Copies everything the client sends to `dst`, then shuts `dst` down.
    pub async fn copy_to<W: AsyncWrite + Unpin>(mut self, mut dst: W) -> io::Result<()> {
        while let Some(b) = self.recv().await {
            dst.write_all(&b).await?;
        }
        dst.shutdown().await
    }
}

/// The outbound half of a stream. Dropping it without [`finish`](Self::finish) resets the stream, so the
/// client is never left waiting for a FIN that cannot come.
#[derive(Debug)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    flags: Arc<Flags>,
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.flags.finished.swap(true, Ordering::Relaxed) && !self.flags.reset.swap(true, Ordering::Relaxed) {
            let _ = self.out.try_send(Out::Frame(Frame::RstStream { stream_id: self.id, status: rst::CANCEL }));
        }
    }
}

impl StreamWriter {
    /// Queues `data` for the client.
    pub async fn write(&mut self, mut data: Bytes) -> io::Result<()> {
        self.check()?;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(WRITE_CHUNK));
            self.frame(Frame::Data { stream_id: self.id, flags: 0, data: chunk }).await?;
        }
        Ok(())
    }

    /// Sends FIN: the client reads EOF. Later writes fail.
    pub async fn finish(&mut self) -> io::Result<()> {
        self.check()?;
        self.flags.finished.store(true, Ordering::Relaxed);
        self.frame(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    /// Aborts the stream (RST_STREAM CANCEL).
    pub async fn reset(&mut self) {
        self.flags.finished.store(true, Ordering::Relaxed);
        if !self.flags.reset.swap(true, Ordering::Relaxed) {
            let _ = self.frame(Frame::RstStream { stream_id: self.id, status: rst::CANCEL }).await;
        }
    }

    /// Copies `src` to the client until EOF, then sends FIN.
    pub async fn copy_from<R: AsyncRead + Unpin>(mut self, mut src: R) -> io::Result<()> {
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = src.read(&mut buf).await?;
            if n == 0 {
                return self.finish().await;
            }
            self.write(Bytes::copy_from_slice(&buf[..n])).await?;
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.flags.finished.load(Ordering::Relaxed) || self.flags.reset.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed or reset"));
        }
        Ok(())
    }

    async fn frame(&self, f: Frame) -> io::Result<()> {
        self.out.send(Out::Frame(f)).await.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "session closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    type ClientRead = FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, FrameDecoder>;
    type ClientWrite = FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, FrameEncoder>;

    /// A session on one end of a pipe, and a raw frame client on the other.
    fn pair() -> (Session, ClientRead, ClientWrite) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (rd, wr) = tokio::io::split(b);
        (Session::start(a), FramedRead::new(rd, FrameDecoder::default()), FramedWrite::new(wr, FrameEncoder::default()))
    }

    fn syn(stream_id: u32, ty: &str) -> Frame {
        let headers = vec![("streamtype".to_owned(), ty.to_owned())];
        Frame::SynStream { stream_id, associated_to: 0, priority: 0, flags: 0, headers }
    }

    /// The next frame that is not a WINDOW_UPDATE.
    async fn next(rd: &mut ClientRead) -> Option<Frame> {
        loop {
            match rd.next().await?.ok()? {
                Frame::WindowUpdate { .. } => continue,
                f => return Some(f),
            }
        }
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() -> TestResult {
        let (mut session, mut rd, mut wr) = pair();
        wr.send(syn(1, "stdin")).await?;
        let mut s = session.accept().await.ok_or("no stream")?;
        assert_eq!(s.header("streamType"), Some("stdin"));
        assert_eq!(next(&mut rd).await, Some(Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() }));
        wr.send(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"abc") }).await?;
        assert_eq!(s.reader.recv().await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(s.reader.recv().await, None, "FIN is EOF");
        s.writer.write(Bytes::from_static(b"xyz")).await?;
        s.writer.finish().await?;
        assert_eq!(next(&mut rd).await, Some(Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"xyz") }));
        assert_eq!(next(&mut rd).await, Some(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }));
        assert!(s.writer.write(Bytes::from_static(b"late")).await.is_err(), "no writes after FIN");
        Ok(())
    }

    #[tokio::test]
    async fn client_pings_are_echoed() -> TestResult {
        let (_session, mut rd, mut wr) = pair();
        wr.send(Frame::Ping(7)).await?;
        assert_eq!(next(&mut rd).await, Some(Frame::Ping(7)));
        Ok(())
    }

    #[tokio::test]
    async fn reused_or_even_stream_ids_end_the_session() -> TestResult {
        for bad in [2u32, 1] {
            let (mut session, mut rd, mut wr) = pair();
            wr.send(syn(1, "a")).await?;
            let _first = session.accept().await.ok_or("no stream")?;
            wr.send(syn(bad, "b")).await?;
            assert!(session.accept().await.is_none(), "id {bad} must end the session");
            let mut frames = Vec::new();
            while let Some(f) = next(&mut rd).await {
                frames.push(f);
            }
            assert!(
                frames.contains(&Frame::GoAway { last_good_stream_id: 0, status: goaway::PROTOCOL_ERROR }),
                "{frames:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused() -> TestResult {
        let (mut session, mut rd, mut wr) = pair();
        let mut held = Vec::new();
        for i in 0..MAX_STREAMS as u32 + 1 {
            wr.send(syn(2 * i + 1, "data")).await?;
        }
        for _ in 0..MAX_STREAMS {
            held.push(session.accept().await.ok_or("stream missing")?);
        }
        let last = 2 * MAX_STREAMS as u32 + 1;
        let mut refused = false;
        for _ in 0..=MAX_STREAMS {
            if next(&mut rd).await == Some(Frame::RstStream { stream_id: last, status: rst::REFUSED_STREAM }) {
                refused = true;
                break;
            }
        }
        assert!(refused, "stream {last} must be refused");
        Ok(())
    }

    #[tokio::test]
    async fn a_dropped_writer_resets_its_stream() -> TestResult {
        let (mut session, mut rd, mut wr) = pair();
        wr.send(syn(1, "x")).await?;
        let s = session.accept().await.ok_or("no stream")?;
        assert!(matches!(next(&mut rd).await, Some(Frame::SynReply { .. })));
        drop(s);
        assert_eq!(next(&mut rd).await, Some(Frame::RstStream { stream_id: 1, status: rst::CANCEL }));
        Ok(())
    }
}
