//! Large cached bodies kept in sealed memory files, so that answers send them with `sendfile`.
//!
//! A body written to a socket from ordinary memory is copied by the kernel into the socket's
//! buffers, and copied again by whoever reads it. `sendfile` from a file hands the socket the
//! file's pages instead, so only the reader copies: that is how nginx sends its cache files,
//! and on a cache hit of a large object the copy is most of the work.
//!
//! [`seal`] copies a body of at least [`MIN_SEALED_LEN`] bytes into an anonymous memory file
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
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use memmap2::Mmap;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::sendfile::sendfile;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bodies shorter than this stay in ordinary memory: the copy is cheap next to the rest of an
/// answer, and a file descriptor and whole pages per body are not.
pub const MIN_SEALED_LEN: usize = 64 * 1024;

/// The sealed mappings alive, by start address.
static MAPPINGS: LazyLock<RwLock<BTreeMap<usize, Region>>> = LazyLock::new(Default::default);

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
        mappings_write().remove(&(self.map.as_ptr() as usize));
    }
}

/// `body` held in a sealed memory file when it is at least [`MIN_SEALED_LEN`] long and not
/// sealed already; otherwise, or when the file cannot be made (say the process is out of file
/// descriptors), `body` itself.
pub fn seal(body: Bytes) -> Bytes {
    if body.len() < MIN_SEALED_LEN || region_of(&body).is_some() {
        return body;
    }
    match sealed_copy(&body) {
        Ok(sealed) => sealed,
        Err(error) => {
            tracing::debug!(%error, len = body.len(), "body kept in ordinary memory");
            body
        }
    }
}

fn sealed_copy(body: &[u8]) -> io::Result<Bytes> {
    let fd = memfd_create(
        c"coral-body",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
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

fn mappings_write() -> std::sync::RwLockWriteGuard<'static, BTreeMap<usize, Region>> {
    MAPPINGS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a prefix of `bufs` to `stream`, as `poll_write_vectored` does, except that a buffer
/// lying in a sealed mapping goes by `sendfile`. Buffers before the first sealed one go in one
/// vectored write; a sealed one first in line goes alone.
pub fn poll_write_vectored(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let sealed = bufs
        .iter()
        .enumerate()
        .filter(|(_, buf)| buf.len() >= MIN_SEALED_LEN)
        .find_map(|(index, buf)| region_of(buf).map(|region| (index, buf.len(), region)));
    loop {
        ready!(stream.poll_write_ready(cx))?;
        let written = match &sealed {
            Some((0, len, (file, offset))) => stream.try_io(Interest::WRITABLE, || {
                let mut offset = i64::try_from(*offset).map_err(io::Error::other)?;
                Ok(sendfile(
                    stream.as_fd(),
                    file.as_fd(),
                    Some(&mut offset),
                    *len,
                )?)
            }),
            Some((index, ..)) => stream.try_write_vectored(&bufs[..*index]),
            None => stream.try_write_vectored(bufs),
        };
        match written {
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

    #[test]
    fn large_bodies_are_sealed_with_the_same_bytes_and_small_ones_are_not() {
        let large = body(MIN_SEALED_LEN + 10);
        let sealed = seal(large.clone());
        assert_eq!(sealed, large);
        assert!(region_of(&sealed).is_some());
        assert!(region_of(&large).is_none());

        let small = seal(body(MIN_SEALED_LEN - 1));
        assert!(region_of(&small).is_none());
    }

    #[test]
    fn a_slice_of_a_sealed_body_is_found_at_its_offset_and_the_region_goes_with_the_body() {
        let sealed = seal(body(3 * MIN_SEALED_LEN));
        let (_, offset) = region_of(&sealed.slice(100..2 * MIN_SEALED_LEN)).unwrap();
        assert_eq!(offset, 100);
        assert!(seal(sealed.clone()).as_ptr() == sealed.as_ptr());

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

        let sealed = seal(body(160 * MIN_SEALED_LEN));
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        let part = sealed.slice(1000..150 * MIN_SEALED_LEN);
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
