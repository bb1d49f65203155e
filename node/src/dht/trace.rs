//! The client request a DHT message serves, so that one request can be followed through the
//! logs of every node its lookups touch.
//!
//! A proxy runs its gets and puts inside [`traced`]; every request those lookups send carries
//! the trace (the proxy's request ID) on the wire, and the node answering logs it. Traffic of
//! the DHT's own upkeep (joins, refreshes, republishing) carries none.

use std::future::Future;
use std::sync::Arc;

/// Longest trace carried on the wire, in bytes: the proxy's request IDs fit.
pub const MAX_TRACE: usize = 64;

tokio::task_local! {
    static CURRENT: Arc<str>;
}

/// Runs `future` with every DHT request it sends carrying `trace`. A trace that could not
/// travel (longer than [`MAX_TRACE`], or not printable ASCII) is left out.
pub async fn traced<F: Future>(trace: &str, future: F) -> F::Output {
    if is_carriable(trace) {
        CURRENT.scope(Arc::from(trace), future).await
    } else {
        future.await
    }
}

/// The trace of the lookup the current task is running, or an empty one.
pub(super) fn current() -> Arc<str> {
    CURRENT
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::from(""))
}

/// Whether `trace` fits the wire: at most [`MAX_TRACE`] bytes of printable ASCII.
pub fn is_carriable(trace: &str) -> bool {
    trace.len() <= MAX_TRACE && trace.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lookup_sees_its_trace_and_upkeep_sees_none() {
        assert_eq!(&*traced("req-1", async { current() }).await, "req-1");
        assert_eq!(&*current(), "");
        let nested = traced("outer", async {
            traced("inner", async { current() }).await
        });
        assert_eq!(&*nested.await, "inner");
    }

    #[tokio::test]
    async fn a_trace_that_cannot_travel_is_left_out() {
        assert_eq!(&*traced("two words", async { current() }).await, "");
        assert_eq!(
            &*traced(&"x".repeat(MAX_TRACE + 1), async { current() }).await,
            ""
        );
        assert_eq!(
            &*traced(&"x".repeat(MAX_TRACE), async { current() }).await,
            "x".repeat(MAX_TRACE)
        );
    }
}
