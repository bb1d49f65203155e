//! Per-origin bandwidth shaping with fair sharing between clients.
//!
//! The bodies a node sends for one origin host all go through that origin's link, which
//! carries at most `bandwidth.originBytesPerSecond`. Bodies are cut into pieces of
//! [`PIECE_TIME`] of the rate, between [`MIN_PIECE`] and [`MAX_PIECE`]; each piece reserves the
//! link's next free moment and goes out when it comes. A client (an IPv4 address, an IPv6 /64) has one
//! reservation pending at a time, however many bodies it downloads at once, so busy clients
//! take turns: each gets an equal share, and the share a client leaves unused goes to the
//! others. A link idle for a while lets [`BURST`] of its rate through at once, so small
//! answers from a quiet origin are not delayed.
//!
//! Shaping slows answers down; it never refuses them. A link is kept while a body uses it
//! and until its reservations have passed (so bodies one after another are paced as one
//! stream); a client's turn while one of its bodies is being sent.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::Counter;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::client::BoxError;
use super::in_use::InUse;
use super::respond::ProxyBody;

/// Longest a piece occupies the link.
const PIECE_TIME: Duration = Duration::from_millis(20);
/// Largest piece, in bytes.
const MAX_PIECE: usize = 16 * 1024;
/// Smallest piece, in bytes (at very low rates).
const MIN_PIECE: usize = 512;
/// How far behind the present an idle link's free moment may lag: the burst it allows.
const BURST: Duration = Duration::from_millis(50);

/// The subscriber `address` belongs to, the client as shaping sees it: an IPv4 address, or
/// an IPv6 /64 (one subscriber's network).
pub fn subscriber(address: IpAddr) -> IpAddr {
    let address = address.to_canonical();
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// The links of every origin host this node sends bodies for.
pub struct OriginShaping {
    /// Bytes per second of each origin's link; `None` when origins are not shaped.
    rate: Option<f64>,
    links: InUse<String, Link>,
    /// Seconds bodies waited for their turn, summed.
    waited: Counter,
}

impl OriginShaping {
    /// Links carrying `bytes_per_second` each (0: no shaping), counting waits in `waited`.
    pub fn new(bytes_per_second: u64, waited: Counter) -> Self {
        Self {
            rate: (bytes_per_second > 0).then_some(bytes_per_second as f64),
            links: InUse::forgetting_when(Link::is_idle),
            waited,
        }
    }

    /// Whether origins are shaped at all.
    pub fn enabled(&self) -> bool {
        self.rate.is_some()
    }

    /// `body`, sent to `client` for `host` at that origin's pace and the client's share.
    pub fn shaped(&self, host: &str, client: IpAddr, body: ProxyBody) -> ProxyBody {
        let Some(rate) = self.rate else {
            return body;
        };
        if body.is_end_stream() {
            return body;
        }
        let link = self.links.get_or_make(host, || Link::new(rate));
        let turn = link
            .clients
            .get_or_make(&subscriber(client), || Semaphore::new(1));
        ShapedBody {
            inner: body,
            share: Share {
                link,
                turn,
                waited: self.waited.clone(),
            },
            rest: Bytes::new(),
            waiting: None,
        }
        .boxed()
    }
}

/// One origin's link.
struct Link {
    rate: f64,
    piece: usize,
    /// When the link is next free.
    free_at: Mutex<Instant>,
    /// Each client's turn: one pending reservation at a time.
    clients: InUse<IpAddr, Semaphore>,
}

impl Link {
    fn new(rate: f64) -> Self {
        let piece = (rate * PIECE_TIME.as_secs_f64()) as usize;
        let now = Instant::now();
        Self {
            rate,
            piece: piece.clamp(MIN_PIECE, MAX_PIECE),
            free_at: Mutex::new(now.checked_sub(BURST).unwrap_or(now)),
            clients: InUse::new(),
        }
    }

    /// Whether the link's reservations have passed, so a new link would do the same.
    fn is_idle(&self) -> bool {
        *self.free_at.lock().expect("link lock") + BURST <= Instant::now()
    }

    /// Reserves the link for `bytes` at `now`; returns when they may go.
    fn reserve(&self, bytes: usize, now: Instant) -> Instant {
        let mut free_at = self.free_at.lock().expect("link lock");
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = (*free_at).max(earliest);
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        start
    }
}

/// The wait before a piece goes out.
type Pacing = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// One body's place on its origin's link, as one of its client's bodies.
struct Share {
    link: Arc<Link>,
    turn: Arc<Semaphore>,
    waited: Counter,
}

impl Share {
    /// Waits for the client's turn, then for the link to carry `bytes`.
    fn pace(&self, bytes: usize) -> Pacing {
        let (link, turn, waited) = (self.link.clone(), self.turn.clone(), self.waited.clone());
        Box::pin(async move {
            let asked = Instant::now();
            let _turn = turn.acquire_owned().await.expect("turns are never closed");
            let start = link.reserve(bytes, Instant::now());
            tokio::time::sleep_until(start).await;
            let wait = asked.elapsed();
            if !wait.is_zero() {
                waited.inc_by(wait.as_secs_f64());
            }
        })
    }
}

/// A body sent piece by piece at its share of the link.
struct ShapedBody {
    inner: ProxyBody,
    share: Share,
    /// Bytes taken from `inner` and not yet sent.
    rest: Bytes,
    /// The piece waiting for its moment.
    waiting: Option<(Bytes, Pacing)>,
}

impl ShapedBody {
    fn held(&self) -> u64 {
        let waiting = self.waiting.as_ref().map_or(0, |(piece, _)| piece.len());
        (self.rest.len() + waiting) as u64
    }
}

impl Body for ShapedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some((_, pacing)) = &mut this.waiting {
                ready!(pacing.as_mut().poll(cx));
                let (piece, _) = this.waiting.take().expect("a piece was waiting");
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if !this.rest.is_empty() {
                let piece = this
                    .rest
                    .split_to(this.rest.len().min(this.share.link.piece));
                let pacing = this.share.pace(piece.len());
                this.waiting = Some((piece, pacing));
                continue;
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                end => return Poll::Ready(end),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held() == 0 && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held();
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint.set_lower(inner.lower() + held);
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::proxy::respond::full;

    const RATE: u64 = 1_000_000;

    fn shaping() -> OriginShaping {
        OriginShaping::new(RATE, Counter::new("waited", "waited").unwrap())
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Reads `body` until its end or `until`, and returns the bytes read.
    async fn read_until(mut body: ProxyBody, until: Instant) -> u64 {
        let mut read = 0;
        while let Ok(Some(frame)) = tokio::time::timeout_at(until, body.frame()).await {
            read += frame.unwrap().into_data().unwrap().len() as u64;
        }
        read
    }

    #[tokio::test(start_paused = true)]
    async fn one_body_gets_the_whole_rate_and_no_more() {
        let shaping = shaping();
        let body = shaping.shaped("a.example", ip(1), full(Bytes::from(vec![7; 3_000_000])));
        assert_eq!(body.size_hint().exact(), Some(3_000_000));
        let start = Instant::now();
        assert_eq!(
            read_until(body, start + Duration::from_secs(60)).await,
            3_000_000
        );
        let took = start.elapsed().as_secs_f64();
        assert!((2.9..3.1).contains(&took), "{took} s for 3 s worth");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_lets_a_burst_through_and_paces_the_rest() {
        let shaping = shaping();
        let until = Instant::now() + Duration::from_secs(60);
        let first = shaping.shaped("a.example", ip(1), full(Bytes::from(vec![1; 500_000])));
        assert_eq!(read_until(first, until).await, 500_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        let body = shaping.shaped("a.example", ip(2), full(Bytes::from(vec![2; 250_000])));
        assert_eq!(read_until(body, until).await, 250_000);
        let took = start.elapsed().as_secs_f64();
        let expected = 0.25 - BURST.as_secs_f64();
        assert!((took - expected).abs() < 0.02, "{took} s, not {expected} s");
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_one_after_another_are_paced_as_one_stream() {
        let shaping = shaping();
        let until = Instant::now() + Duration::from_secs(60);
        let start = Instant::now();
        for _ in 0..10 {
            let body = shaping.shaped("a.example", ip(1), full(Bytes::from(vec![1; 100_000])));
            assert_eq!(read_until(body, until).await, 100_000);
        }
        let took = start.elapsed().as_secs_f64();
        let expected = 1.0 - BURST.as_secs_f64();
        assert!((took - expected).abs() < 0.02, "{took} s, not {expected} s");
    }

    #[tokio::test]
    async fn empty_bodies_take_no_link() {
        let shaping = shaping();
        let body = shaping.shaped("a.example", ip(1), full(Bytes::new()));
        assert!(body.is_end_stream());
        assert_eq!(shaping.links.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_clients_share_equally_however_many_bodies_each_opens() {
        let shaping = shaping();
        let big = || full(Bytes::from(vec![7; 100_000_000]));
        let until = Instant::now() + Duration::from_secs(10);
        let mut readers = Vec::new();
        for (client, bodies) in [(1, 4), (2, 1), (3, 2)] {
            for _ in 0..bodies {
                let body = shaping.shaped("a.example", ip(client), big());
                readers.push((client, tokio::spawn(read_until(body, until))));
            }
        }
        let mut per_client: HashMap<u8, u64> = HashMap::new();
        for (client, reader) in readers {
            *per_client.entry(client).or_default() += reader.await.unwrap();
        }
        let total: u64 = per_client.values().sum();
        assert!(
            (9_900_000..=10_200_000).contains(&total),
            "{total} bytes in 10 s"
        );
        for (client, bytes) in per_client {
            let share = bytes as f64 / total as f64;
            assert!((0.30..0.37).contains(&share), "client {client}: {share}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_wanting_less_leaves_its_share_to_the_others() {
        let shaping = shaping();
        let until = Instant::now() + Duration::from_secs(10);
        let light = shaping.shaped("a.example", ip(1), full(Bytes::from(vec![1; 500_000])));
        let heavy = shaping.shaped("a.example", ip(2), full(Bytes::from(vec![2; 100_000_000])));
        let light = tokio::spawn(read_until(light, until));
        let heavy = tokio::spawn(read_until(heavy, until));
        assert_eq!(light.await.unwrap(), 500_000);
        let heavy = heavy.await.unwrap();
        assert!(
            heavy > 9_300_000,
            "{heavy} bytes: the light client's rest went unused"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn origins_have_links_of_their_own_and_a_quiet_one_lets_small_answers_through() {
        let shaping = shaping();
        let until = Instant::now() + Duration::from_secs(60);
        let busy = shaping.shaped("busy.example", ip(1), full(Bytes::from(vec![1; 5_000_000])));
        let busy = tokio::spawn(read_until(busy, until));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        let small = shaping.shaped("quiet.example", ip(1), full(Bytes::from(vec![2; 10_000])));
        assert_eq!(read_until(small, until).await, 10_000);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(busy.await.unwrap(), 5_000_000);
        assert_eq!(shaping.links.held(), 0, "no body holds a link any more");
    }

    #[tokio::test]
    async fn without_a_rate_bodies_pass_untouched() {
        let shaping = OriginShaping::new(0, Counter::new("waited", "waited").unwrap());
        assert!(!shaping.enabled());
        let body = shaping.shaped("a.example", ip(1), full(Bytes::from_static(b"hello")));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[test]
    fn one_ipv6_network_is_one_client() {
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:9:9::1".parse().unwrap();
        assert_eq!(subscriber(first), subscriber(neighbour));
        assert_ne!(subscriber(first), subscriber(elsewhere));
        assert_eq!(subscriber(ip(1)), ip(1));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(subscriber(mapped), ip(1));
    }
}
