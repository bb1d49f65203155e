//! Large cached bodies kept in sealed memory files, so that answers send them with `sendfile`.
//!
//! A body written to a socket from ordinary memory is copied by the kernel into the socket's
//! buffers, and copied again by whoever reads it. `sendfile` from a file hands the socket the
//! file's pages instead, so only the reader copies: that is how nginx sends its cache files,
//! and on a cache hit of a large object the copy is most of the work.
//!
//! Whether that pays depends on the machine: on some days on the benchmark machine `sendfile`
//! over loopback ran 3.5 times slower than a copy (BENCHMARKS.md), so it is a setting
//! (`proxy.sendfileMinBytes`), off unless set.
//!
//! [`seal`] copies a body of at least the set length into an anonymous memory file
//! (`memfd`), seals it against any change and maps it read-only; the returned [`Bytes`] reads
//! that mapping, so everything else (ranges, peers, the disk tier) uses it as before. The
//! mapping's address range is registered, and [`poll_write_vectored`] recognises a buffer
//! that lies in a registered range and sends it with `sendfile` from the file, at the same
//! offset. The seals guarantee the pages the kernel hands to the socket never change, and
//! a page stays alive as long as the socket still needs it, even once the file is gone.
//!
//! Each sealed body holds one file descriptor while it lives.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock, RwLockWriteGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use memmap2::Mmap;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::sendfile::sendfile;
use nix::sys::socket::{MsgFlags, sendmsg};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::config::MIN_SENDFILE_BYTES;

/// The shortest body ever sealed (`proxy.sendfileMinBytes` cannot be set lower).
pub const SMALLEST_SEALED_LEN: usize = MIN_SENDFILE_BYTES as usize;

/// The sealed mappings alive, by start address.
static MAPPINGS: LazyLock<RwLock<BTreeMap<usize, Region>>> = LazyLock::new(Default::default);
/// Bodies left in ordinary memory although long enough to seal.
static UNSEALED: AtomicU64 = AtomicU64::new(0);
/// Bytes sent with `sendfile`.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Most sealed bodies alive at once: each holds a file descriptor and a memory mapping, so
/// half the open-file limit (connections need the rest) and a quarter of the mappings a
/// process may have (`vm.max_map_count`; the allocator and threads need the rest). Read once,
/// after `coral-node run` raised the open-file limit.
static MAX_SEALED: LazyLock<usize> = LazyLock::new(|| {
    let open_files = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let mappings = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(65_530);
    usize::try_from((open_files / 2).min(mappings / 4)).unwrap_or(usize::MAX)
});

/// How much is sealed and sent, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedStats {
    /// Sealed bodies alive.
    pub bodies: usize,
    /// Bodies left in ordinary memory although long enough to seal (out of descriptors or
    /// mappings, or memory files refused), since the process started.
    pub unsealed: u64,
    /// Bytes sent with `sendfile`, since the process started.
    pub sent_bytes: u64,
}

/// The process's sealed bodies and what was sent from them.
pub fn stats() -> SealedStats {
    SealedStats {
        bodies: mappings_read_len(),
        unsealed: UNSEALED.load(Ordering::Relaxed),
        sent_bytes: SENT.load(Ordering::Relaxed),
    }
}

/// A registered mapping: its length and the file it maps.
#[derive(Debug)]
struct Region {
    len: usize,
    file: Arc<OwnedFd>,
}

/// The owner of a sealed body's mapping: unregisters it before it is unmapped.
struct SealedMapping {
    map: Mmap,
}

impl AsRef<[u8]> for SealedMapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for SealedMapping {
    fn drop(&mut self) {
        // The file closes once the lock is released.
        let removed = mappings_write().remove(&(self.map.as_ptr() as usize));
        drop(removed);
    }
}

/// `body` held in a sealed memory file when it is at least `min_len` long (and
/// [`SMALLEST_SEALED_LEN`]) and not sealed already; otherwise, or when no file can be made (too
/// many sealed bodies, the process out of descriptors), `body` itself.
pub fn seal(body: Bytes, min_len: usize) -> Bytes {
    if body.len() < min_len.max(SMALLEST_SEALED_LEN) || is_sealed(&body) {
        return body;
    }
    let sealed = if mappings_read_len() < *MAX_SEALED {
        sealed_copy(&body)
    } else {
        Err(io::Error::other("the most sealed bodies are alive"))
    };
    sealed.unwrap_or_else(|error| {
        UNSEALED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%error, len = body.len(), "body kept in ordinary memory");
        body
    })
}

fn sealed_copy(body: &[u8]) -> io::Result<Bytes> {
    let mut file = File::from(memory_file()?);
    file.write_all(body)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    // SAFETY: the file is sealed against writes, growth and shrinking and nothing maps it
    // writable, so the mapping's contents can never change or vanish while it lives.
    let map = unsafe { Mmap::map(&file)? };
    let region = Region {
        len: map.len(),
        file: Arc::new(file.into()),
    };
    mappings_write().insert(map.as_ptr() as usize, region);
    Ok(Bytes::from_owner(SealedMapping { map }))
}

/// A new memory file that allows seals and can never be executed; kernels before 6.3 do not
/// know the last flag.
fn memory_file() -> io::Result<OwnedFd> {
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let no_exec = MFdFlags::from_bits_retain(nix::libc::MFD_NOEXEC_SEAL);
    match memfd_create(c"coral-body", flags | no_exec) {
        Err(Errno::EINVAL) => Ok(memfd_create(c"coral-body", flags)?),
        created => Ok(created?),
    }
}

/// Whether `buf` lies wholly in a sealed mapping, and so goes out with `sendfile`.
pub fn is_sealed(buf: &[u8]) -> bool {
    region_of(buf).is_some()
}

/// The file and offset `buf` lies at, when it lies wholly in a sealed mapping.
fn region_of(buf: &[u8]) -> Option<(Arc<OwnedFd>, usize)> {
    let start = buf.as_ptr() as usize;
    let mappings = MAPPINGS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (&base, region) = mappings.range(..=start).next_back()?;
    let offset = start - base;
    (offset + buf.len() <= region.len).then(|| (Arc::clone(&region.file), offset))
}

fn mappings_read_len() -> usize {
    MAPPINGS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .len()
}

fn mappings_write() -> RwLockWriteGuard<'static, BTreeMap<usize, Region>> {
    MAPPINGS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one write sends: ordinary buffers in one vectored write (told more follows when a
/// sealed buffer is next), or one sealed buffer from its file.
enum NextWrite<'a, 'b> {
    Vectored {
        bufs: &'a [IoSlice<'b>],
        more: bool,
    },
    Sealed {
        file: Arc<OwnedFd>,
        offset: usize,
        len: usize,
    },
}

impl<'a, 'b> NextWrite<'a, 'b> {
    /// The first write of `bufs`: the buffers before the first sealed one, or that one.
    fn first(bufs: &'a [IoSlice<'b>]) -> Self {
        let sealed = bufs
            .iter()
            .enumerate()
            .filter(|(_, buf)| buf.len() >= SMALLEST_SEALED_LEN)
            .find_map(|(index, buf)| Some((index, buf.len(), region_of(buf)?)));
        match sealed {
            None => NextWrite::Vectored { bufs, more: false },
            Some((index, len, (file, offset))) => {
                let before = &bufs[..index];
                if before.iter().all(|buf| buf.is_empty()) {
                    NextWrite::Sealed { file, offset, len }
                } else {
                    NextWrite::Vectored {
                        bufs: before,
                        more: true,
                    }
                }
            }
        }
    }

    /// Tries the write once on the non-blocking socket.
    fn send(&self, stream: &TcpStream) -> io::Result<usize> {
        match self {
            NextWrite::Vectored { bufs, more: false } => stream.try_write_vectored(bufs),
            NextWrite::Vectored { bufs, more: true } => stream.try_io(Interest::WRITABLE, || {
                // The head waits in the socket for the body instead of leaving alone.
                Ok(sendmsg::<()>(
                    stream.as_raw_fd(),
                    bufs,
                    &[],
                    MsgFlags::from_bits_retain(nix::libc::MSG_MORE),
                    None,
                )?)
            }),
            NextWrite::Sealed { file, offset, len } => stream.try_io(Interest::WRITABLE, || {
                let mut offset = i64::try_from(*offset).map_err(io::Error::other)?;
                let sent = sendfile(stream.as_fd(), file.as_fd(), Some(&mut offset), *len)?;
                SENT.fetch_add(sent as u64, Ordering::Relaxed);
                Ok(sent)
            }),
        }
    }
}

/// Writes a prefix of `bufs` to `stream`, as `poll_write_vectored` does, except that a buffer
/// lying in a sealed mapping goes by `sendfile`. Buffers before the first sealed one go in one
/// vectored write; a sealed one first in line goes alone.
pub fn poll_write_vectored(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let write = NextWrite::first(bufs);
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match write.send(stream) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            written => return Poll::Ready(written),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn body(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    /// The length from which the tests seal bodies.
    const MIN_LEN: usize = 64 * 1024;

    #[test]
    fn bodies_from_the_set_length_are_sealed_with_the_same_bytes_and_shorter_ones_are_not() {
        let large = body(MIN_LEN + 10);
        let sealed = seal(large.clone(), MIN_LEN);
        assert_eq!(sealed, large);
        assert!(is_sealed(&sealed));
        assert!(!is_sealed(&large));

        assert!(!is_sealed(&seal(body(MIN_LEN - 1), MIN_LEN)));
        assert!(is_sealed(&seal(body(SMALLEST_SEALED_LEN), 0)));
        assert!(!is_sealed(&seal(body(SMALLEST_SEALED_LEN - 1), 0)));
    }

    #[test]
    fn a_slice_of_a_sealed_body_is_found_at_its_offset_and_the_region_goes_with_the_body() {
        let sealed = seal(body(3 * MIN_LEN), MIN_LEN);
        let (_, offset) = region_of(&sealed.slice(100..2 * MIN_LEN)).unwrap();
        assert_eq!(offset, 100);
        assert!(seal(sealed.clone(), MIN_LEN).as_ptr() == sealed.as_ptr());

        let start = sealed.as_ptr() as usize;
        drop(sealed);
        assert!(!MAPPINGS.read().unwrap().contains_key(&start));
    }

    /// Writes all of `bufs` through [`poll_write_vectored`]; returns what each call wrote.
    async fn write_all(stream: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> Vec<usize> {
        let mut writes = Vec::new();
        while !bufs.is_empty() {
            let written = poll_fn(|cx| poll_write_vectored(stream, cx, bufs))
                .await
                .unwrap();
            writes.push(written);
            IoSlice::advance_slices(&mut bufs, written);
        }
        writes
    }

    #[tokio::test]
    async fn sealed_slices_reach_a_slow_reader_whole_between_ordinary_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut reader = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (writer, _) = listener.accept().await.unwrap();

        let sealed = seal(body(160 * MIN_LEN), MIN_LEN);
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        let part = sealed.slice(1000..150 * MIN_LEN);
        let tail = Bytes::from_static(b"tail");
        let expected = [&head[..], &part[..], &tail[..]].concat();

        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut chunk = vec![0; 64 * 1024];
            while received.len() < expected.len() {
                // Slow enough that the socket's buffers fill and writes come back short.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let n = reader.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "closed after {} bytes", received.len());
                received.extend_from_slice(&chunk[..n]);
            }
            assert!(received == expected, "the bytes differ");
        });
        let mut bufs = [
            IoSlice::new(&head),
            IoSlice::new(&part),
            IoSlice::new(&tail),
        ];
        let writes = write_all(&writer, &mut bufs).await;
        reading.await.unwrap();
        // The head goes alone, not in one vectored write with the sealed slice after it.
        assert_eq!(writes[0], head.len());
        assert!(writes.len() > 3, "the reader never fell behind: {writes:?}");
    }
}
