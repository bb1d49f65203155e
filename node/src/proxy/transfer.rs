//! One response in flight, shared by every client waiting for it (cut-through).
//!
//! The task fetching an object pushes the response head and then each body chunk as it
//! arrives; any number of readers follow, each at its own pace, from the first byte, so a
//! client that joins late still gets the whole body, and nobody waits for the last byte
//! before getting the first. The chunks stay until the transfer is dropped, which bounds
//! memory by the object size, except for an object too large for the cache. Such an object
//! is [`Transfer::spill`]ed to a file when its `Content-Length` fits the spill budget: chunks
//! then live on disk, readers still join at any time, and the producer goes at the origin's
//! pace. Otherwise (no length, no room, or found too large while streaming) the transfer
//! switches to [`Transfer::trim`] mode, keeps only what some reader still needs, takes no new
//! readers, and the producer waits while the slowest reader is more than a window behind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use tokio::sync::watch;

use super::metrics::Outcome;
use super::refusal::Refusal;
use super::spill::SpillFile;

/// A response head as the proxy keeps and forwards it.
#[derive(Clone, Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// End-to-end headers.
    pub headers: HeaderMap,
}

/// Why a transfer ended without a complete body: the refusal a client gets if no byte was
/// sent yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.message)]
pub struct TransferFailed(pub Refusal);

impl TransferFailed {
    /// A failure with a 502 status.
    pub fn bad_gateway(reason: &'static str, message: impl Into<String>) -> Self {
        Self(Refusal::new(StatusCode::BAD_GATEWAY, reason, message))
    }
}

/// A response being received, readable by many.
pub struct Transfer {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// A body chunk: in memory, or a stretch of the spill file.
#[derive(Clone)]
enum Chunk {
    Memory(Bytes),
    Spilled {
        file: Arc<SpillFile>,
        offset: u64,
        len: usize,
    },
}

#[derive(Default)]
struct State {
    head: Option<(Arc<Head>, Outcome)>,
    chunks: VecDeque<Chunk>,
    /// Absolute index of `chunks[0]`.
    first: usize,
    /// Bytes held in memory by `chunks`.
    held: usize,
    /// Where the chunks go once spilled, and the bytes written to it.
    spill: Option<(Arc<SpillFile>, u64)>,
    end: Option<Result<(), TransferFailed>>,
    /// Each live reader's next absolute chunk index.
    readers: HashMap<u64, usize>,
    next_reader: u64,
    trimming: bool,
    /// Whether the fetch is waiting on another node's answer (not yet on the origin's).
    waiting_on_peer: bool,
}

impl Transfer {
    /// An empty transfer, waiting for its head.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("transfer lock")
    }

    fn notify(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    /// Publishes the response head, and how the proxy came by it.
    pub fn set_head(&self, head: Head, outcome: Outcome) {
        self.lock().head = Some((Arc::new(head), outcome));
        self.notify();
    }

    /// Appends a body chunk, held in memory.
    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        {
            let mut state = self.lock();
            state.held += chunk.len();
            state.chunks.push_back(Chunk::Memory(chunk));
            if state.trimming {
                state.drop_passed_chunks();
            }
        }
        self.notify();
    }

    /// Ends the transfer: `Ok` when the body is complete. Only the first call counts.
    pub fn finish(&self, result: Result<(), TransferFailed>) {
        {
            let mut state = self.lock();
            if state.end.is_some() {
                return;
            }
            state.end = Some(result);
        }
        self.notify();
    }

    /// Keeps the body in `file` from now on, before its first chunk: see [`Self::push_spilled`].
    pub fn spill(&self, file: SpillFile) {
        self.lock().spill = Some((Arc::new(file), 0));
    }

    /// Appends a body chunk to the spill file (only the producer writes; readers read what
    /// was written before it was announced).
    pub async fn push_spilled(&self, chunk: Bytes) -> std::io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let Some((file, offset)) = self.lock().spill.clone() else {
            self.push(chunk);
            return Ok(());
        };
        let len = chunk.len();
        file.write_at(offset, chunk).await?;
        {
            let mut state = self.lock();
            if let Some((_, written)) = &mut state.spill {
                *written += len as u64;
            }
            state.chunks.push_back(Chunk::Spilled { file, offset, len });
        }
        self.notify();
        Ok(())
    }

    /// Ends the transfer with `failed` if no reader follows it (checked and ended at once,
    /// so that nobody joins in between); whether it did.
    pub fn abandon_if_unread(&self, failed: TransferFailed) -> bool {
        {
            let mut state = self.lock();
            if !state.readers.is_empty() || state.end.is_some() {
                return false;
            }
            state.end = Some(Err(failed));
        }
        self.notify();
        true
    }

    /// Marks the fetch as waiting on another node's answer, or no longer.
    pub fn set_waiting_on_peer(&self, waiting: bool) {
        self.lock().waiting_on_peer = waiting;
    }

    /// Stops keeping the whole body: from now on chunks every reader has passed are dropped
    /// and no reader can join.
    pub fn trim(&self) {
        let mut state = self.lock();
        state.trimming = true;
        state.drop_passed_chunks();
    }

    /// Waits until the readers are less than `window` bytes behind the producer, or none is
    /// left, and returns the number of live readers; `Err(Stalled)` when no reader moves on
    /// for `stall` (a reader slowed down but still reading is waited for).
    pub async fn wait_for_readers(&self, window: usize, stall: Duration) -> Result<usize, Stalled> {
        let mut changes = self.changed.subscribe();
        loop {
            {
                let state = self.lock();
                if state.held < window || state.readers.is_empty() {
                    return Ok(state.readers.len());
                }
            }
            match tokio::time::timeout(stall, changes.changed()).await {
                Err(_) => return Err(Stalled),
                Ok(Err(_)) => return Ok(0),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Every byte received so far followed by `tail` (bytes not pushed yet), when the
    /// transfer kept them all.
    pub fn body_so_far_with(&self, tail: &Bytes) -> Option<Bytes> {
        let state = self.lock();
        if state.trimming || state.first != 0 || state.spill.is_some() {
            return None;
        }
        if state.chunks.is_empty() {
            return Some(tail.clone());
        }
        let mut body = BytesMut::with_capacity(state.held + tail.len());
        for chunk in &state.chunks {
            if let Chunk::Memory(bytes) = chunk {
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(tail);
        Some(body.freeze())
    }

    /// A new reader starting at the first byte, unless the transfer no longer keeps it or
    /// has failed (a client arriving after the failure is better served by a fetch of its
    /// own than by a copy cut short).
    pub fn reader(self: &Arc<Self>) -> Option<TransferReader> {
        let id = {
            let mut state = self.lock();
            if state.trimming || matches!(state.end, Some(Err(_))) {
                return None;
            }
            let id = state.next_reader;
            state.next_reader += 1;
            state.readers.insert(id, 0);
            id
        };
        Some(TransferReader {
            transfer: self.clone(),
            changes: self.changed.subscribe(),
            id,
        })
    }
}

impl State {
    fn drop_passed_chunks(&mut self) {
        let lowest = self
            .readers
            .values()
            .copied()
            .min()
            .unwrap_or(self.first + self.chunks.len());
        while self.first < lowest {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            if let Chunk::Memory(bytes) = chunk {
                self.held -= bytes.len();
            }
            self.first += 1;
        }
    }
}

/// No reader of a transfer moved on for the time allowed.
#[derive(Debug, PartialEq, Eq)]
pub struct Stalled;

/// One client's view of a transfer.
pub struct TransferReader {
    transfer: Arc<Transfer>,
    changes: watch::Receiver<u64>,
    id: u64,
}

impl TransferReader {
    /// Waits for the response head, and how the proxy came by it.
    pub async fn head(&mut self) -> Result<(Arc<Head>, Outcome), TransferFailed> {
        loop {
            {
                let state = self.transfer.lock();
                if let Some(head) = &state.head {
                    return Ok(head.clone());
                }
                if let Some(end) = &state.end {
                    return Err(end.clone().err().unwrap_or_else(|| {
                        TransferFailed::bad_gateway(
                            "no_response",
                            "the fetch ended without a response",
                        )
                    }));
                }
            }
            self.wait().await?;
        }
    }

    /// Waits until the body has begun: a first chunk, or its end. A body that fails before
    /// its first byte is a failure the client can still be told about with a status, rather
    /// than with a connection closed before any answer.
    pub async fn body_begun(&mut self) -> Result<(), TransferFailed> {
        loop {
            {
                let state = self.transfer.lock();
                if state.readers[&self.id] < state.first + state.chunks.len() {
                    return Ok(());
                }
                match &state.end {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(failed)) => return Err(failed.clone()),
                    None => {}
                }
            }
            self.wait().await?;
        }
    }

    /// The next body chunk; `None` at the end of a complete body.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, TransferFailed>> {
        loop {
            let spilled = {
                let mut state = self.transfer.lock();
                let position = state.readers[&self.id];
                if position < state.first + state.chunks.len() {
                    let chunk = state.chunks[position - state.first].clone();
                    state.readers.insert(self.id, position + 1);
                    if state.trimming {
                        state.drop_passed_chunks();
                        drop(state);
                        self.transfer.notify();
                    }
                    match chunk {
                        Chunk::Memory(bytes) => return Some(Ok(bytes)),
                        Chunk::Spilled { file, offset, len } => Some((file, offset, len)),
                    }
                } else {
                    None
                }
            };
            if let Some((file, offset, len)) = spilled {
                return Some(file.read_at(offset, len).await.map_err(|err| {
                    TransferFailed::bad_gateway(
                        "spill_unreadable",
                        format!("the body's spill file could not be read: {err}"),
                    )
                }));
            }
            {
                let state = self.transfer.lock();
                if let Some(end) = &state.end {
                    return end.clone().err().map(Err);
                }
            }
            if let Err(err) = self.wait().await {
                return Some(Err(err));
            }
        }
    }

    /// Whether the fetch is waiting on another node's answer: a node asking for it must not
    /// wait on it in turn, or two nodes waiting on each other would wait until timeouts.
    pub fn is_waiting_on_peer(&self) -> bool {
        self.transfer.lock().waiting_on_peer
    }

    /// Whether the body will not be stored (the object is too large to cache), so that no
    /// whole copy will answer ranges or conditions.
    pub fn will_not_be_stored(&self) -> bool {
        let state = self.transfer.lock();
        state.trimming || state.spill.is_some()
    }

    async fn wait(&mut self) -> Result<(), TransferFailed> {
        self.changes
            .changed()
            .await
            .map_err(|_| TransferFailed::bad_gateway("abandoned", "the fetch was abandoned"))
    }
}

impl Drop for TransferReader {
    fn drop(&mut self) {
        let mut state = self.transfer.lock();
        state.readers.remove(&self.id);
        if state.trimming {
            state.drop_passed_chunks();
        }
        drop(state);
        self.transfer.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }

    async fn read_all(mut reader: TransferReader) -> Result<Vec<u8>, TransferFailed> {
        reader.head().await?;
        let mut body = Vec::new();
        while let Some(chunk) = reader.next_chunk().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(body)
    }

    #[tokio::test]
    async fn readers_get_every_byte_whenever_they_join() {
        let transfer = Transfer::new();
        let early = tokio::spawn(read_all(transfer.reader().unwrap()));
        transfer.set_head(head(), Outcome::Miss);
        transfer.push(Bytes::from_static(b"hello "));
        let late = transfer.reader().unwrap();
        transfer.push(Bytes::from_static(b"world"));
        transfer.finish(Ok(()));
        assert_eq!(early.await.unwrap().unwrap(), b"hello world");
        assert_eq!(read_all(late).await.unwrap(), b"hello world");
        assert_eq!(
            transfer.body_so_far_with(&Bytes::new()).unwrap(),
            Bytes::from_static(b"hello world")
        );
        assert_eq!(
            transfer
                .body_so_far_with(&Bytes::from_static(b"!"))
                .unwrap(),
            Bytes::from_static(b"hello world!")
        );
    }

    #[tokio::test]
    async fn a_reader_sees_bytes_before_the_end() {
        let transfer = Transfer::new();
        let mut reader = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.push(Bytes::from_static(b"first"));
        assert_eq!(
            reader.next_chunk().await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
    }

    #[tokio::test]
    async fn a_failure_reaches_every_reader() {
        let transfer = Transfer::new();
        let reader = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.push(Bytes::from_static(b"part"));
        let reset = TransferFailed::bad_gateway("origin_broken", "origin reset");
        transfer.finish(Err(reset.clone()));
        transfer.finish(Ok(()));
        assert!(
            transfer.reader().is_none(),
            "nobody joins a failed transfer"
        );
        assert_eq!(
            read_all(reader).await,
            Err(reset),
            "only the first end counts"
        );
    }

    #[tokio::test]
    async fn trimming_drops_what_every_reader_passed_and_refuses_newcomers() {
        let transfer = Transfer::new();
        let mut reader = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.trim();
        for _ in 0..4 {
            transfer.push(Bytes::from(vec![0; 1000]));
        }
        assert_eq!(transfer.lock().held, 4000);
        reader.next_chunk().await.unwrap().unwrap();
        reader.next_chunk().await.unwrap().unwrap();
        assert_eq!(transfer.lock().held, 2000);
        assert!(transfer.reader().is_none());
        assert!(reader.will_not_be_stored());
        assert!(transfer.body_so_far_with(&Bytes::new()).is_none());
        let stall = Duration::from_secs(1);
        assert_eq!(transfer.wait_for_readers(2500, stall).await, Ok(1));
        drop(reader);
        assert_eq!(transfer.wait_for_readers(1, stall).await, Ok(0));
    }

    #[tokio::test]
    async fn a_spilled_body_is_on_disk_and_readers_joining_late_get_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let area = crate::proxy::spill::SpillArea::new(dir.path(), 1 << 20);
        let transfer = Transfer::new();
        let early = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.spill(area.file_for(3000).await.unwrap());
        for byte in [b'a', b'b'] {
            transfer
                .push_spilled(Bytes::from(vec![byte; 1000]))
                .await
                .unwrap();
        }
        let late = transfer.reader().unwrap();
        transfer
            .push_spilled(Bytes::from(vec![b'c'; 1000]))
            .await
            .unwrap();
        transfer.finish(Ok(()));
        assert_eq!(transfer.lock().held, 0, "nothing held in memory");
        assert!(transfer.body_so_far_with(&Bytes::new()).is_none());
        assert!(late.will_not_be_stored());
        let expected: Vec<u8> = [b'a', b'b', b'c'].iter().flat_map(|b| [*b; 1000]).collect();
        assert_eq!(read_all(early).await.unwrap(), expected);
        assert_eq!(read_all(late).await.unwrap(), expected);
        assert_eq!(area.used(), 3000);
        drop(transfer);
        for _ in 0..1000 {
            if area.used() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(area.used(), 0, "the room is given back with the transfer");
    }

    #[tokio::test]
    async fn a_reader_waits_for_spilled_bytes_and_an_unread_transfer_can_be_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let area = crate::proxy::spill::SpillArea::new(dir.path(), 1 << 20);
        let transfer = Transfer::new();
        let mut reader = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.spill(area.file_for(2000).await.unwrap());
        let waiting = tokio::spawn(async move {
            let first = reader.next_chunk().await.unwrap().unwrap();
            (first, reader)
        });
        tokio::task::yield_now().await;
        transfer
            .push_spilled(Bytes::from(vec![b'x'; 1000]))
            .await
            .unwrap();
        let (first, reader) = waiting.await.unwrap();
        assert_eq!(first, vec![b'x'; 1000]);
        let gone = TransferFailed::bad_gateway("abandoned", "nobody reads");
        assert!(
            !transfer.abandon_if_unread(gone.clone()),
            "a reader follows it"
        );
        drop(reader);
        assert!(transfer.abandon_if_unread(gone.clone()));
        assert!(
            transfer.reader().is_none(),
            "nobody joins an abandoned transfer"
        );
        assert!(!transfer.abandon_if_unread(gone), "ended once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_waited_for_and_a_stopped_one_is_not() {
        let transfer = Transfer::new();
        let mut reader = transfer.reader().unwrap();
        transfer.set_head(head(), Outcome::Miss);
        transfer.trim();
        for _ in 0..10 {
            transfer.push(Bytes::from(vec![0; 1000]));
        }
        let (stopped, mut stop) = tokio::sync::oneshot::channel::<()>();
        let slow = tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                reader.next_chunk().await.unwrap().unwrap();
            }
            // Still a reader, but no longer reading.
            let _ = (&mut stop).await;
        });
        let stall = Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        assert_eq!(transfer.wait_for_readers(2500, stall).await, Ok(1));
        assert!(started.elapsed() >= Duration::from_secs(16));
        transfer.push(Bytes::from(vec![0; 1000]));
        assert_eq!(transfer.wait_for_readers(2500, stall).await, Err(Stalled));
        drop(stopped);
        slow.await.unwrap();
    }
}
