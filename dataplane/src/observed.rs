//! A response body that passes every frame on the moment it arrives and lets an [`Observer`]
//! look at it on the way: each data frame, then the end (or a failure). Features that keep
//! something of an answer without delaying it — the response cache's copy (`cache`), the
//! Responses API's stored responses (`responses`) — are observers; the frame plumbing, and the
//! rule that a complete body's last frame counts as its end (hyper does not poll for the end
//! of a body that says it is complete), live here once.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;

/// What watches a body go by.
pub trait Observer: Send + Unpin + 'static {
    /// A data frame, as it is passed on.
    fn data(&mut self, data: &Bytes);
    /// The body is complete (called once at most).
    fn end(&mut self);
    /// The body failed: what was seen is incomplete.
    fn failed(&mut self);
}

/// `inner`, passed on frame by frame to whoever reads it, watched by `observer`.
pub fn observed(inner: Body, observer: impl Observer) -> Body {
    Body::new(Observed {
        inner,
        observer,
        ended: false,
    })
}

struct Observed<O> {
    inner: Body,
    observer: O,
    ended: bool,
}

impl<O: Observer> Observed<O> {
    fn end(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.observer.end();
        }
    }
}

impl<O: Observer> http_body::Body for Observed<O> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.data(data);
                }
                // A complete body's last frame: the server does not poll for the end.
                if this.inner.is_end_stream() {
                    this.end();
                }
            }
            None => this.end(),
            Some(Err(_)) => {
                this.ended = true;
                this.observer.failed();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[derive(Default)]
    struct Seen {
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Observer for Seen {
        fn data(&mut self, data: &Bytes) {
            let text = String::from_utf8_lossy(data).into_owned();
            self.log.lock().unwrap().push(text);
        }
        fn end(&mut self) {
            self.log.lock().unwrap().push("end".into());
        }
        fn failed(&mut self) {
            self.log.lock().unwrap().push("failed".into());
        }
    }

    #[tokio::test]
    async fn frames_pass_unchanged_and_the_end_is_seen_once() {
        let seen = Seen::default();
        let log = seen.log.clone();
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
        let inner = Body::from_stream(futures_util::stream::iter(chunks));
        let body = observed(inner, seen).collect().await.unwrap().to_bytes();
        assert_eq!(body, "ab");
        assert_eq!(*log.lock().unwrap(), ["a", "b", "end"]);
    }

    #[tokio::test]
    async fn a_complete_body_ends_with_its_last_frame() {
        let seen = Seen::default();
        let log = seen.log.clone();
        let body = observed(Body::from("whole"), seen);
        let mut body = std::pin::pin!(body);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "whole");
        // Not polled again, as hyper does not poll a body that says it is complete.
        assert_eq!(*log.lock().unwrap(), ["whole", "end"]);
    }

    #[tokio::test]
    async fn a_failed_body_is_not_an_end() {
        let seen = Seen::default();
        let log = seen.log.clone();
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("a")), Err(std::io::Error::other("cut"))];
        let inner = Body::from_stream(futures_util::stream::iter(chunks));
        assert!(observed(inner, seen).collect().await.is_err());
        assert_eq!(*log.lock().unwrap(), ["a", "failed"]);
    }
}
