//! A deadline on sending to a client: one that takes no bytes for `clientLimits.sendTimeout`
//! while some wait to be sent gets its connection closed. Without it a client could hold an
//! answer, and what the answer pins (a transfer, a spill file, a shaping turn), for as long as
//! it keeps its connection open without reading.
//!
//! The clock runs while a write cannot proceed because the socket's send queue is full; the
//! kernel reports the socket writable again once part of the queue has drained, so a client
//! reading very slowly through a large queue could be taken for one that stopped. This covers
//! HTTP/1 and the socket under HTTP/2; an HTTP/2 client that stops granting flow-control
//! window stops hyper writing at all, and is not caught.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

/// The clock of one connection's stalled sends.
#[derive(Debug)]
pub struct SendDeadline {
    limit: Duration,
    /// Made at the first stall and reused after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether a send is stalled now (the timer runs).
    stalled: bool,
}

impl SendDeadline {
    /// A deadline of `limit` for each stall.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            stalled: false,
        }
    }

    /// Passes on the outcome of a write or flush. One that cannot proceed starts the clock,
    /// unless it already runs, and fails with `TimedOut` once the clock runs out; one that
    /// proceeds stops it.
    pub fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if attempt.is_ready() {
            self.stalled = false;
            return attempt;
        }
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        if !self.stalled {
            timer.as_mut().reset(deadline);
            self.stalled = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::task::noop_waker_ref;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stall_fails_once_it_lasts_the_limit_and_progress_restarts_the_clock() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut deadline = SendDeadline::new(Duration::from_secs(10));
        let blocked = || Poll::<io::Result<usize>>::Pending;
        assert!(deadline.check(&mut cx, blocked()).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(deadline.check(&mut cx, blocked()).is_pending());
        assert!(matches!(
            deadline.check(&mut cx, Poll::Ready(Ok(5))),
            Poll::Ready(Ok(5))
        ));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            deadline.check(&mut cx, blocked()).is_pending(),
            "a new stall has its own 10 s"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        match deadline.check(&mut cx, blocked()) {
            Poll::Ready(Err(err)) => assert_eq!(err.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }
}
