//! Spill files: where a response too large for the cache waits on disk for the clients
//! sharing its one fetch, so that a crowd asking for a large file causes one origin fetch and
//! not one per client, without holding the body in memory.
//!
//! A spill file is an unnamed file in the cache directory (`O_TMPFILE`: it has no name, and
//! the kernel frees it when the last handle closes, a crash included). Spill files together
//! hold at most a budget of bytes, taken out of the disk budget, reserved whole from the
//! response's `Content-Length` before the first byte is written; a response without one, or
//! one beyond what is left, is not spilled (it streams to its clients alone, as before).
//! Making, writing, reading and closing a file (which frees its blocks) run off the runtime's
//! threads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// Where spill files go and how much they may hold together.
pub struct SpillArea {
    dir: PathBuf,
    limit: u64,
    used: Arc<AtomicU64>,
}

impl SpillArea {
    /// Spill files in `dir`, holding at most `limit` bytes together.
    pub fn new(dir: &Path, limit: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            limit,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A new spill file for a body of `len` bytes, with its room reserved; `None` when the
    /// budget has no room left for it or the file cannot be made.
    pub async fn file_for(&self, len: u64) -> Option<SpillFile> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(len).filter(|total| *total <= self.limit)
            })
            .ok()?;
        let reservation = Reservation {
            used: self.used.clone(),
            len,
        };
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir)).await {
            Ok(Ok(file)) => Some(SpillFile {
                file: Some(Arc::new(file)),
                reservation: Some(reservation),
            }),
            Ok(Err(err)) => {
                tracing::warn!(dir = %self.dir.display(), error = %err, "cannot make a spill file");
                None
            }
            Err(_) => None,
        }
    }

    /// Bytes reserved by the spill files open now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Room taken from the budget, given back when dropped.
struct Reservation {
    used: Arc<AtomicU64>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// One response's body on disk.
pub struct SpillFile {
    /// Taken only when dropped, to be closed off the runtime's threads.
    file: Option<Arc<File>>,
    /// Given back once the file is closed (its blocks freed); taken only when dropped.
    reservation: Option<Reservation>,
}

impl SpillFile {
    fn file(&self) -> Arc<File> {
        self.file.clone().expect("taken only when dropped")
    }

    /// Writes `bytes` at `offset`.
    pub async fn write_at(&self, offset: u64, bytes: Bytes) -> io::Result<()> {
        let file = self.file();
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
            .await
            .map_err(io::Error::other)?
    }

    /// Reads `len` bytes from `offset`.
    pub async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.file();
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; len];
            file.read_exact_at(&mut buffer, offset)?;
            Ok(Bytes::from(buffer))
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let closing = (self.file.take(), self.reservation.take());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(closing))),
            Err(_) => drop(closing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for files being closed to give their room back.
    async fn until_used(area: &SpillArea, bytes: u64) {
        for _ in 0..1000 {
            if area.used() == bytes {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("{} bytes used, not {bytes}", area.used());
    }

    #[tokio::test]
    async fn a_spill_file_gives_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let area = SpillArea::new(dir.path(), 1000);
        let file = area.file_for(11).await.unwrap();
        file.write_at(0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        file.write_at(6, Bytes::from_static(b"world"))
            .await
            .unwrap();
        assert_eq!(file.read_at(3, 5).await.unwrap(), "lo wo");
        assert!(file.read_at(8, 5).await.is_err(), "past the end");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill files have no name"
        );
    }

    #[tokio::test]
    async fn files_hold_no_more_than_the_budget_together_and_give_room_back_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let area = SpillArea::new(dir.path(), 1000);
        let first = area.file_for(600).await.unwrap();
        assert!(area.file_for(500).await.is_none());
        let second = area.file_for(400).await.unwrap();
        assert_eq!(area.used(), 1000);
        drop(first);
        until_used(&area, 400).await;
        assert!(area.file_for(600).await.is_some());
        drop(second);
        until_used(&area, 0).await;
    }

    #[tokio::test]
    async fn a_directory_that_cannot_hold_files_spills_nothing_and_reserves_nothing() {
        let area = SpillArea::new(Path::new("/nonexistent/coral"), 1000);
        assert!(area.file_for(10).await.is_none());
        assert_eq!(area.used(), 0);
    }
}
