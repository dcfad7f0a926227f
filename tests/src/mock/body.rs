//! The mock's response body: a queue of pre-rendered frames, written one frame at a time.
//!
//! Every SSE event is its own frame so that a client can observe `interval_ms` spacing, and a
//! streamed body counts itself in the mock's stats: completed when its last frame has been
//! handed to hyper, cancelled when hyper drops it before that (the client went away).
//! `reset_mid_stream` ends the queue with an error, which makes hyper drop the connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::state::State;

/// How long a cut body waits before failing, so that the frames before the cut are flushed
/// to the socket first.
const CUT_DELAY: Duration = Duration::from_millis(20);

/// What happens after the last queued frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The body ends normally.
    Complete,
    /// The body fails, so the connection is dropped mid-response.
    Cut,
}

/// A response body of queued frames.
pub struct MockBody {
    frames: VecDeque<Bytes>,
    interval: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    ending: Ending,
    cut_armed: bool,
    /// Set for streams: where to count completion or cancellation.
    stream_stats: Option<Arc<State>>,
    done: bool,
    /// Keeps the request in flight at the mock until the last frame is sent.
    held: Option<super::state::InFlightGuard>,
}

impl std::fmt::Debug for MockBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBody")
            .field("frames", &self.frames.len())
            .field("ending", &self.ending)
            .field("done", &self.done)
            .finish()
    }
}

impl MockBody {
    /// A body of one frame, with an exact length (so hyper sends `content-length`).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(VecDeque::from([bytes.into()]))
    }

    /// A body of several frames, not counted as a stream (for cutting a JSON body).
    pub fn frames(frames: Vec<Bytes>) -> Self {
        Self::new(frames.into())
    }

    fn new(frames: VecDeque<Bytes>) -> Self {
        Self {
            frames,
            interval: Duration::ZERO,
            sleep: None,
            ending: Ending::Complete,
            cut_armed: false,
            stream_stats: None,
            done: false,
            held: None,
        }
    }

    /// A streamed body (chunked encoding) whose completion or cancellation is counted in
    /// `stats`, with `interval` between frames.
    pub fn stream(frames: Vec<Bytes>, interval: Duration, stats: Arc<State>) -> Self {
        let mut body = Self::new(frames.into());
        body.interval = interval;
        body.stream_stats = Some(stats);
        body
    }

    /// Keeps only the first `keep` frames and then fails, dropping the connection.
    pub fn cut_after(mut self, keep: usize) -> Self {
        self.frames.truncate(keep);
        self.ending = Ending::Cut;
        self
    }

    /// Holds `guard` until the last frame is sent or the body is dropped.
    pub fn holding(mut self, guard: super::state::InFlightGuard) -> Self {
        self.held = Some(guard);
        self
    }

    fn finish(&mut self) {
        self.held = None;
        if !self.done {
            self.done = true;
            if let Some(stats) = &self.stream_stats {
                stats.completed_streams.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            if let Some(frame) = this.frames.pop_front() {
                if this.frames.is_empty() {
                    if this.ending == Ending::Complete {
                        this.finish();
                    }
                } else if !this.interval.is_zero() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.interval)));
                }
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.ending {
                Ending::Complete => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ending::Cut if !this.cut_armed => {
                    // Pause before failing so hyper flushes what was sent; a deliberate cut
                    // is neither a completed nor a cancelled stream.
                    this.cut_armed = true;
                    this.done = true;
                    this.sleep = Some(Box::pin(tokio::time::sleep(CUT_DELAY)));
                }
                Ending::Cut => {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock upstream: reset_mid_stream",
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.ending == Ending::Complete && self.sleep.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.stream_stats.is_none() && self.ending == Ending::Complete {
            SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if !self.done
            && let Some(stats) = &self.stream_stats
        {
            stats.cancelled_streams.fetch_add(1, Ordering::Relaxed);
        }
    }
}
