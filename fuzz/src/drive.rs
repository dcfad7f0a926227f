//! Drives the data plane's streaming bodies the way hyper does, on one thread: an upstream
//! body that hands its bytes over in pieces, with a `Pending` between pieces ([`trickle`]),
//! and a runtime to poll the result to its end ([`block_on`]). Where an input is cut into
//! pieces is decided by the input itself ([`pieces`]), so a failing input replays exactly.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use dataplane::providers::{BodyError, UpstreamBody};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

/// One current-thread runtime with a clock (the relay holds a deadline) for every execution.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"))
});

/// Builds the runtime before the first measured execution.
pub fn init() {
    LazyLock::force(&RUNTIME);
}

pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.block_on(future)
}

/// A stable hash of the input: the seed of every choice a target makes about it.
pub fn hash(input: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    h.finish()
}

/// `input` cut at up to 16 places chosen from its hash (sometimes byte by byte at the start,
/// which splits every CRLF and every multi-byte character there).
pub fn pieces(input: &[u8]) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(hash(input));
    let mut cuts: Vec<usize> = match rng.u8(..4) {
        0 => (1..input.len().min(32)).collect(),
        _ => (0..rng.usize(..=16))
            .map(|_| rng.usize(..=input.len()))
            .collect(),
    };
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for cut in cuts {
        if cut > start {
            out.push(Bytes::copy_from_slice(&input[start..cut]));
            start = cut;
        }
    }
    out
}

/// An upstream body that yields `pieces` one per poll, `Pending` (and woken at once) between.
pub fn trickle(pieces: Vec<Bytes>) -> UpstreamBody {
    Trickle {
        pieces: pieces.into_iter(),
        ready: false,
    }
    .boxed()
}

struct Trickle {
    pieces: std::vec::IntoIter<Bytes>,
    ready: bool,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.pieces.next().map(|piece| Ok(Frame::data(piece))))
    }
}

/// Reads a body to its end: its bytes, or the error it ended with.
pub fn collect(body: UpstreamBody) -> Result<Bytes, BodyError> {
    block_on(body.collect()).map(|c| c.to_bytes())
}
