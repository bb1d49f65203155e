//! A moment with hyper after each answer, before an HTTP/1 connection is parked.
//!
//! Parking ([`super::connection`]) frees hyper's buffers, but a parked connection that speaks
//! again needs a new hyper connection: about 4,000 of the 26,000 instructions of a 1 KiB hit.
//! A client that asks again at once (a page's next resources, an API client, a load
//! generator) would pay that on every request. So a connection waiting for its next request
//! lingers with hyper for [`LINGER`] before it is parked, as long as fewer than
//! [`MAX_LINGERING`] connections of the server linger at once; beyond that, connections are
//! parked at once. Lingering thus holds at most that many sets of hyper's buffers (about
//! 27 KiB each, 7 MiB in all) on top of what parked connections hold.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

/// How long a connection waiting for its next request stays with hyper.
pub const LINGER: Duration = Duration::from_millis(50);

/// Most connections of one server lingering at once.
pub const MAX_LINGERING: usize = 256;

/// The connections of one server that linger now.
#[derive(Debug)]
pub struct Lingering {
    count: AtomicUsize,
    limit: usize,
}

impl Lingering {
    /// Room for `limit` connections lingering at once.
    pub fn new(limit: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            limit,
        }
    }

    /// Connections lingering now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Takes a place among the lingering, if one is free.
    fn enter(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < self.limit).then_some(count + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's lingering between an answer and its next request.
#[derive(Debug)]
pub struct Linger {
    lingering: Arc<Lingering>,
    /// Ends the moment; kept from one wait to the next, dropped when the connection parks.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the connection began to wait, once it has.
    waiting_since: Option<Instant>,
    /// Whether it holds a place among the lingering.
    entered: bool,
}

impl Linger {
    /// A connection of the server whose lingering connections `lingering` counts.
    pub fn new(lingering: Arc<Lingering>) -> Self {
        Self {
            lingering,
            timer: None,
            waiting_since: None,
            entered: false,
        }
    }

    /// Called while the connection waits for its next request with nothing to read: whether
    /// it stays with hyper for now (`cx` is woken when the moment ends) rather than parking.
    pub fn stays(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waiting_since.is_none() {
            let now = Instant::now();
            self.waiting_since = Some(now);
            self.entered = self.lingering.enter();
            if !self.entered {
                return false;
            }
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(now + LINGER),
                None => self.timer = Some(Box::pin(sleep_until(now + LINGER))),
            }
        }
        let Some(timer) = self.timer.as_mut().filter(|_| self.entered) else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return true;
        }
        self.leave();
        false
    }

    /// The client spoke: the connection no longer waits. The timer is left as it is (resetting
    /// it would cost every request); if it runs out during a later exchange, it wakes the
    /// connection's task once for nothing.
    pub fn spoke(&mut self) {
        if self.waiting_since.take().is_some() {
            self.leave();
        }
    }

    /// The connection was parked: when it began to wait (now, if it never did), and the
    /// timer is freed.
    pub fn parked(&mut self) -> Instant {
        self.leave();
        self.timer = None;
        self.waiting_since.take().unwrap_or_else(Instant::now)
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.entered) {
            self.lingering.leave();
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Poll;

    use super::*;

    /// Polls `stays` once.
    async fn stays(linger: &mut Linger) -> bool {
        poll_fn(|cx| Poll::Ready(linger.stays(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_connection_stays_for_the_moment_then_parks_from_when_it_began() {
        let lingering = Arc::new(Lingering::new(2));
        let mut linger = Linger::new(lingering.clone());
        let began = Instant::now();
        assert!(stays(&mut linger).await);
        assert_eq!(lingering.count(), 1);

        tokio::time::advance(LINGER - Duration::from_millis(1)).await;
        assert!(stays(&mut linger).await);
        // Woken when the moment ends, and then parked.
        poll_fn(|cx| {
            if linger.stays(cx) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        assert_eq!(Instant::now(), began + LINGER);
        assert_eq!(lingering.count(), 0);
        assert_eq!(linger.parked(), began);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_speaks_gives_back_its_place_and_waits_afresh_next_time() {
        let lingering = Arc::new(Lingering::new(1));
        let mut linger = Linger::new(lingering.clone());
        assert!(stays(&mut linger).await);
        tokio::time::advance(LINGER / 2).await;
        linger.spoke();
        assert_eq!(lingering.count(), 0);

        // The next wait has the whole moment again.
        assert!(stays(&mut linger).await);
        tokio::time::advance(LINGER - Duration::from_millis(1)).await;
        assert!(stays(&mut linger).await);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!stays(&mut linger).await);
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_limit_connections_park_at_once_until_a_place_is_free() {
        let lingering = Arc::new(Lingering::new(1));
        let mut first = Linger::new(lingering.clone());
        let mut second = Linger::new(lingering.clone());
        assert!(stays(&mut first).await);
        assert!(!stays(&mut second).await);
        assert!(!stays(&mut second).await, "it stays parked for this wait");
        assert_eq!(lingering.count(), 1);

        drop(first);
        assert_eq!(lingering.count(), 0);
        second.parked();
        assert!(stays(&mut second).await);
        assert_eq!(lingering.count(), 1);
    }
}
