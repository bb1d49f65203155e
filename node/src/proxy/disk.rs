//! The disk tier of the object cache: what the memory tier stores is also written to a
//! file, so neither a memory eviction nor a restart sends clients back to the origin.
//!
//! One file per URL, named by the SHA-256 of the cache key, holds every stored variant of
//! that URL: a magic string, the length of a CBOR header (the key and, per variant, its
//! cache policy, status, headers and body length), the header, then the bodies. CBOR rather
//! than JSON because header values need not be text, and must come back byte for byte. A file is written
//! under a temporary name and renamed into place, so a crash leaves the old file or the
//! new one; a truncated or foreign file is deleted when it is found.
//!
//! The byte budget is kept by an index (moka: TinyLFU admission, so a scan of one-off URLs
//! does not flush the popular ones, and LRU eviction) that weighs each file by its size;
//! evicting an entry deletes its file. On start the index is rebuilt from the directory.
//! Every write goes through one writer thread fed by a bounded queue: a disk that cannot
//! keep up loses writes (counted), never client time.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::cache::Stored;
use super::transfer::Head;

/// The first bytes of every cache file (the digit is the format version).
const MAGIC: &[u8; 9] = b"CORALOBJ1";
/// Longest header accepted when reading a file.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Writes waiting for the writer thread before new ones are dropped.
const QUEUE: usize = 256;
/// Writes failed in a row after which the tier reports itself unwritable.
const FAILURES_UNWRITABLE: u32 = 3;
/// How often an idle writer whose writes failed tries the directory again.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Why a cache file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The file does not start with the cache file magic.
    #[error("not a Coral cache file")]
    Foreign,
    /// The header cannot be written.
    #[error("cannot encode the header: {0}")]
    Encode(#[from] ciborium::ser::Error<io::Error>),
    /// The header cannot be read.
    #[error("unreadable header: {0}")]
    Decode(#[from] ciborium::de::Error<io::Error>),
    /// The file is shorter or longer than its header says.
    #[error("the file holds {actual} bytes, its header accounts for {expected}")]
    Length {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes in the file.
        actual: u64,
    },
    /// The file holds another URL than its name says.
    #[error("the file holds another URL: {0}")]
    WrongKey(String),
}

/// The disk tier's counters (`coral_proxy_disk_operations_total`), resolved once.
#[derive(Clone, Debug)]
pub struct DiskCounters {
    /// Files written.
    pub written: IntCounter,
    /// Writes that failed.
    pub write_failed: IntCounter,
    /// Writes dropped because the writer was behind.
    pub write_dropped: IntCounter,
    /// Objects read back.
    pub read: IntCounter,
    /// Reads that failed (the file is kept).
    pub read_failed: IntCounter,
    /// Files found unusable (and deleted).
    pub corrupt: IntCounter,
}

/// The header at the start of a cache file.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    key: String,
    variants: Vec<VariantHeader>,
}

/// One stored response, without its body.
#[derive(Serialize, Deserialize)]
struct VariantHeader {
    policy: CachePolicy,
    #[serde(with = "http_serde::status_code")]
    status: StatusCode,
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    body_bytes: u64,
}

enum Job {
    Store {
        key: String,
        variants: Vec<Arc<Stored>>,
    },
    Remove {
        key: String,
    },
    /// The index dropped the key for space: its file goes, unless it was stored again.
    Evicted {
        key: Arc<String>,
    },
    /// Runs the index's upkeep, then queues `Flushed` behind what the upkeep queued.
    Flush(oneshot::Sender<()>),
    Flushed(oneshot::Sender<()>),
    Stop,
}

/// What the tier and its writer thread share.
struct Shared {
    dir: PathBuf,
    index: Cache<String, u64>,
    /// Keys whose removal is queued: their files must not be read meanwhile.
    removing: Mutex<HashSet<String>>,
    /// Store jobs queued (bounded by [`QUEUE`]; removals are never dropped).
    queued_stores: AtomicUsize,
    writable: AtomicBool,
    counters: DiskCounters,
}

/// The disk tier.
pub struct DiskTier {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    writer: std::thread::JoinHandle<()>,
}

impl DiskTier {
    /// Opens (creating it if needed) the tier in `dir`, holding at most `budget` bytes; the
    /// files already there are indexed in the background, and stay readable meanwhile.
    pub fn open(dir: &Path, budget: u64, counters: DiskCounters) -> Result<Self, DiskError> {
        fs::create_dir_all(dir)?;
        let (jobs, queue) = mpsc::channel();
        let evicted = jobs.clone();
        let index = Cache::builder()
            .max_capacity(budget)
            .weigher(|_, bytes: &u64| u32::try_from(*bytes).unwrap_or(u32::MAX))
            .eviction_listener(move |key: Arc<String>, _, cause| {
                if cause == RemovalCause::Size {
                    let _ = evicted.send(Job::Evicted { key });
                }
            })
            .build();
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            index,
            removing: Mutex::new(HashSet::new()),
            queued_stores: AtomicUsize::new(0),
            writable: AtomicBool::new(true),
            counters,
        });
        let writer = Writer {
            shared: shared.clone(),
            requeue: jobs.clone(),
            failures: 0,
        };
        let writer = std::thread::Builder::new()
            .name("coral-disk-cache".to_owned())
            .spawn(move || writer.run(&queue))?;
        Ok(Self {
            shared,
            jobs,
            writer,
        })
    }

    /// Queues the URL's variants for writing (dropped, and counted, when [`QUEUE`] writes
    /// are already waiting).
    pub fn store(&self, key: &str, variants: Vec<Arc<Stored>>) {
        if self.shared.queued_stores.fetch_add(1, Ordering::Relaxed) >= QUEUE {
            self.shared.queued_stores.fetch_sub(1, Ordering::Relaxed);
            self.shared.counters.write_dropped.inc();
            return;
        }
        let _ = self.jobs.send(Job::Store {
            key: key.to_owned(),
            variants,
        });
    }

    /// Forgets the URL's file; from now on it is not read, even before it is deleted.
    pub fn remove(&self, key: &str) {
        self.shared
            .removing
            .lock()
            .expect("removing lock")
            .insert(key.to_owned());
        let _ = self.jobs.send(Job::Remove {
            key: key.to_owned(),
        });
    }

    /// Waits until every write queued so far is on disk (or failed).
    pub async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = finished.await;
        }
    }

    /// The URL's variants as stored on disk, if any.
    pub async fn load(&self, key: &str) -> Option<Vec<Stored>> {
        if self
            .shared
            .removing
            .lock()
            .expect("removing lock")
            .contains(key)
        {
            return None;
        }
        let path = file_path(&self.shared.dir, key);
        let read = tokio::task::spawn_blocking(move || read_file(&path, SystemTime::now())).await;
        let Ok(read) = read else {
            return self.discard(key, &"reading it panicked");
        };
        let counters = &self.shared.counters;
        match read {
            Ok((found, variants)) if found == key => {
                self.shared.index.get(key);
                counters.read.inc();
                Some(variants)
            }
            Ok((found, _)) => self.discard(key, &DiskError::WrongKey(found)),
            Err(DiskError::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
                self.shared.index.invalidate(key);
                None
            }
            Err(DiskError::Io(err)) if err.kind() != io::ErrorKind::UnexpectedEof => {
                tracing::warn!(key, error = %err, "cannot read from the disk cache");
                counters.read_failed.inc();
                None
            }
            Err(err) => self.discard(key, &err),
        }
    }

    fn discard<T>(&self, key: &str, err: &dyn std::fmt::Display) -> Option<T> {
        tracing::warn!(key, error = %err, "discarding an unusable cache file");
        self.shared.counters.corrupt.inc();
        self.remove(key);
        None
    }

    /// Whether the tier takes writes: its writer runs and has not failed
    /// [`FAILURES_UNWRITABLE`] writes in a row since its last success.
    pub fn writable(&self) -> bool {
        !self.writer.is_finished() && self.shared.writable.load(Ordering::Relaxed)
    }

    /// Files and bytes indexed.
    pub fn usage(&self) -> (u64, u64) {
        let index = &self.shared.index;
        index.run_pending_tasks();
        (index.entry_count(), index.weighted_size())
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
    }
}

/// The writer thread: files, index, health.
struct Writer {
    shared: Arc<Shared>,
    /// The queue, for jobs the writer puts behind others.
    requeue: Sender<Job>,
    /// Writes failed in a row.
    failures: u32,
}

impl Writer {
    /// Indexes what the directory holds, then runs jobs until the tier is dropped; while
    /// writes fail, probes the directory whenever it is idle for [`PROBE_INTERVAL`].
    fn run(mut self, queue: &Receiver<Job>) {
        self.recover();
        loop {
            let job = match queue.recv_timeout(PROBE_INTERVAL) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if self.failures > 0 {
                        let probe = self.shared.dir.join("probe.tmp");
                        let written =
                            fs::write(&probe, b"probe").and_then(|()| fs::remove_file(&probe));
                        self.outcome(written.is_ok());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let (dir, index) = (&self.shared.dir, &self.shared.index);
            match job {
                Job::Store { key, variants } => {
                    self.shared.queued_stores.fetch_sub(1, Ordering::Relaxed);
                    match write_file(dir, &key, &variants) {
                        Ok(bytes) => {
                            index.insert(key, bytes);
                            index.run_pending_tasks();
                            self.shared.counters.written.inc();
                            self.outcome(true);
                        }
                        Err(err) => {
                            tracing::warn!(key, error = %err, "cannot write to the disk cache");
                            self.shared.counters.write_failed.inc();
                            self.outcome(false);
                        }
                    }
                }
                Job::Remove { key } => {
                    index.invalidate(&key);
                    let _ = fs::remove_file(file_path(dir, &key));
                    self.shared
                        .removing
                        .lock()
                        .expect("removing lock")
                        .remove(&key);
                }
                Job::Evicted { key } => {
                    if !index.contains_key(key.as_str()) {
                        let _ = fs::remove_file(file_path(dir, &key));
                    }
                }
                Job::Flush(done) => {
                    index.run_pending_tasks();
                    let _ = self.requeue.send(Job::Flushed(done));
                }
                Job::Flushed(done) => {
                    let _ = done.send(());
                }
                Job::Stop => return,
            }
        }
    }

    /// Counts a write's outcome towards the tier's health.
    fn outcome(&mut self, succeeded: bool) {
        self.failures = if succeeded { 0 } else { self.failures + 1 };
        self.shared
            .writable
            .store(self.failures < FAILURES_UNWRITABLE, Ordering::Relaxed);
    }

    /// Indexes every usable cache file in the directory and deletes the rest (leftover
    /// temporary files, truncated or foreign files).
    fn recover(&mut self) {
        let dir = &self.shared.dir;
        let Ok(entries) = fs::read_dir(dir) else {
            self.failures = FAILURES_UNWRITABLE;
            self.shared.writable.store(false, Ordering::Relaxed);
            return;
        };
        let (mut kept, mut bytes) = (0u64, 0u64);
        for entry in entries.flatten() {
            let path = entry.path();
            match read_key(&path) {
                Ok((key, size)) if path == file_path(dir, &key) => {
                    self.shared.index.insert(key, size);
                    kept += 1;
                    bytes += size;
                }
                outcome => {
                    if let Err(err) = outcome {
                        tracing::debug!(path = %path.display(), error = %err, "deleting");
                    }
                    let _ = fs::remove_file(&path);
                }
            }
        }
        self.shared.index.run_pending_tasks();
        tracing::info!(dir = %dir.display(), objects = kept, bytes, "disk cache recovered");
    }
}

/// The file of a cache key.
fn file_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{:x}", Sha256::digest(key.as_bytes())))
}

/// Writes a URL's variants to its file; returns the file's size.
fn write_file(dir: &Path, key: &str, variants: &[Arc<Stored>]) -> Result<u64, DiskError> {
    let header = FileHeader {
        key: key.to_owned(),
        variants: variants
            .iter()
            .map(|stored| VariantHeader {
                policy: stored.policy.clone(),
                status: stored.head.status,
                headers: stored.head.headers.clone(),
                body_bytes: stored.body.len() as u64,
            })
            .collect(),
    };
    let mut encoded = Vec::new();
    ciborium::into_writer(&header, &mut encoded)?;
    let path = file_path(dir, key);
    let temporary = path.with_extension("tmp");
    let written =
        write_parts(&temporary, &encoded, variants).and_then(|()| fs::rename(&temporary, &path));
    if let Err(err) = written {
        let _ = fs::remove_file(&temporary);
        return Err(err.into());
    }
    let bodies: usize = variants.iter().map(|stored| stored.body.len()).sum();
    Ok(prefix_bytes(&encoded) + bodies as u64)
}

fn write_parts(path: &Path, encoded: &[u8], variants: &[Arc<Stored>]) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&(encoded.len() as u64).to_le_bytes())?;
    out.write_all(encoded)?;
    for stored in variants {
        out.write_all(&stored.body)?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(())
}

impl FileHeader {
    /// The bodies' total length, `None` if the header's lengths overflow.
    fn body_bytes(&self) -> Option<u64> {
        self.variants
            .iter()
            .try_fold(0u64, |total, variant| total.checked_add(variant.body_bytes))
    }
}

fn prefix_bytes(encoded: &[u8]) -> u64 {
    (MAGIC.len() + 8 + encoded.len()) as u64
}

/// Reads a file's header, checking that the file is as long as it says; returns the header
/// and the file's size.
fn read_header(file: &mut File) -> Result<(FileHeader, u64), DiskError> {
    let mut magic = [0; MAGIC.len()];
    let mut length = [0; 8];
    file.read_exact(&mut magic)
        .and_then(|()| file.read_exact(&mut length))
        .map_err(|_| DiskError::Foreign)?;
    let encoded_bytes = u64::from_le_bytes(length);
    if &magic != MAGIC || encoded_bytes > MAX_HEADER_BYTES {
        return Err(DiskError::Foreign);
    }
    let mut encoded = vec![0; encoded_bytes as usize];
    file.read_exact(&mut encoded)?;
    let header: FileHeader = ciborium::from_reader(encoded.as_slice())?;
    let expected = header
        .body_bytes()
        .and_then(|bodies| bodies.checked_add(prefix_bytes(&encoded)))
        .ok_or(DiskError::Foreign)?;
    let actual = file.metadata()?.len();
    if actual != expected {
        return Err(DiskError::Length { expected, actual });
    }
    Ok((header, actual))
}

/// The key a file holds and the file's size.
fn read_key(path: &Path) -> Result<(String, u64), DiskError> {
    let (header, size) = read_header(&mut File::open(path)?)?;
    Ok((header.key, size))
}

/// The key a file holds and its variants, as of `now`.
fn read_file(path: &Path, now: SystemTime) -> Result<(String, Vec<Stored>), DiskError> {
    let mut file = File::open(path)?;
    let (header, size) = read_header(&mut file)?;
    let expected = header.body_bytes().ok_or(DiskError::Foreign)?;
    let mut bodies = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.read_to_end(&mut bodies)?;
    if bodies.len() as u64 != expected {
        return Err(DiskError::Length {
            expected: size,
            actual: size - expected + bodies.len() as u64,
        });
    }
    let mut bodies = Bytes::from(bodies);
    let variants = header
        .variants
        .into_iter()
        .map(|variant| {
            let body = bodies.split_to(variant.body_bytes as usize);
            let head = Head {
                status: variant.status,
                headers: variant.headers,
            };
            Stored::with_policy(variant.policy, head, body, now)
        })
        .collect();
    Ok((header.key, variants))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cache::tests::{head, request};
    use crate::proxy::metrics::ProxyMetrics;
    use http::HeaderValue;
    use http_cache_semantics::BeforeRequest;
    use std::time::Duration;

    fn open(dir: &Path, budget: u64) -> DiskTier {
        DiskTier::open(dir, budget, ProxyMetrics::unregistered().disk_counters()).unwrap()
    }

    fn stored(body: impl Into<Bytes>, now: SystemTime) -> Arc<Stored> {
        let response = head(&[("cache-control", "max-age=600"), ("etag", "\"v1\"")]);
        Arc::new(Stored::new(&request(&[]), response, body.into(), now))
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn objects_survive_a_restart_with_their_policy() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let original = stored("hello", now);
        let tier = open(dir.path(), 1 << 20);
        tier.store("origin.test:80/a", vec![original.clone()]);
        tier.flush().await;
        drop(tier);

        let tier = open(dir.path(), 1 << 20);
        tier.flush().await;
        let (objects, bytes) = tier.usage();
        assert_eq!(objects, 1);
        assert!(bytes > 5, "{bytes}");
        let variants = tier.load("origin.test:80/a").await.expect("recovered");
        let [copy] = variants.as_slice() else {
            panic!("one variant expected");
        };
        assert_eq!(copy.body, "hello");
        assert_eq!(copy.head.headers, original.head.headers);
        assert_eq!(copy.expires_at, original.expires_at);
        let later = now + Duration::from_secs(60);
        assert!(matches!(
            copy.policy.before_request(&request(&[]), later),
            BeforeRequest::Fresh(_)
        ));
        assert!(tier.load("origin.test:80/other").await.is_none());
    }

    #[tokio::test]
    async fn header_values_that_are_not_text_survive() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut response = head(&[("cache-control", "max-age=600")]);
        let odd = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        response.headers.insert("x-odd", odd.clone());
        let original = Stored::new(&request(&[]), response, Bytes::new(), now);
        let tier = open(dir.path(), 1 << 20);
        tier.store("k", vec![Arc::new(original)]);
        tier.flush().await;
        let variants = tier.load("k").await.expect("stored");
        assert_eq!(variants[0].head.headers.get("x-odd"), Some(&odd));
    }

    #[tokio::test]
    async fn recovery_deletes_leftovers_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let tier = open(dir.path(), 1 << 20);
        tier.store("good", vec![stored("good body", now)]);
        tier.store("cut", vec![stored("cut body", now)]);
        tier.flush().await;
        drop(tier);
        let cut = file_path(dir.path(), "cut");
        let length = fs::metadata(&cut).unwrap().len();
        File::options()
            .write(true)
            .open(&cut)
            .unwrap()
            .set_len(length - 1)
            .unwrap();
        fs::write(dir.path().join("notes.txt"), "not a cache file").unwrap();
        fs::write(
            file_path(dir.path(), "half").with_extension("tmp"),
            "CORALOBJ1",
        )
        .unwrap();
        fs::copy(file_path(dir.path(), "good"), dir.path().join("misnamed")).unwrap();

        let tier = open(dir.path(), 1 << 20);
        tier.flush().await;
        let good = file_path(dir.path(), "good");
        assert_eq!(
            files(dir.path()),
            [good.file_name().unwrap().to_str().unwrap()]
        );
        assert_eq!(tier.usage().0, 1);
        assert!(tier.load("cut").await.is_none());
        assert_eq!(tier.load("good").await.unwrap()[0].body, "good body");
    }

    #[tokio::test]
    async fn a_damaged_file_found_on_read_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tier = open(dir.path(), 1 << 20);
        tier.flush().await;
        fs::write(file_path(dir.path(), "k"), "CORALOBJ1 and then nonsense").unwrap();
        assert!(tier.load("k").await.is_none());
        tier.flush().await;
        assert!(files(dir.path()).is_empty());
        assert_eq!(tier.shared.counters.corrupt.get(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_files_are_refused_without_panicking(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            with_magic in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("file");
            let mut bytes = if with_magic { MAGIC.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&tail);
            fs::write(&path, &bytes).unwrap();
            proptest::prop_assert!(read_file(&path, SystemTime::now()).is_err());
            proptest::prop_assert!(read_key(&path).is_err());
        }
    }

    #[tokio::test]
    async fn the_budget_deletes_evicted_files() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let tier = open(dir.path(), 64 * 1024);
        for index in 0..100 {
            tier.store(&format!("k{index}"), vec![stored(vec![b'x'; 4096], now)]);
            tier.flush().await;
        }
        let (objects, bytes) = tier.usage();
        assert!(bytes <= 64 * 1024, "{bytes} bytes indexed");
        assert!(objects >= 8, "{objects} objects kept");
        assert_eq!(files(dir.path()).len() as u64, objects);
    }

    #[tokio::test]
    async fn a_failing_disk_makes_the_tier_unwritable_after_failures_in_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let tier = open(&cache_dir, 1 << 20);
        tier.flush().await;
        assert!(tier.writable());
        fs::remove_dir(&cache_dir).unwrap();
        for attempt in 1..=FAILURES_UNWRITABLE {
            tier.store("k", vec![stored("lost", SystemTime::now())]);
            tier.flush().await;
            assert_eq!(tier.writable(), attempt < FAILURES_UNWRITABLE, "{attempt}");
        }
        assert_eq!(
            tier.shared.counters.write_failed.get(),
            u64::from(FAILURES_UNWRITABLE)
        );
        fs::create_dir(&cache_dir).unwrap();
        tier.store("k", vec![stored("kept", SystemTime::now())]);
        tier.flush().await;
        assert!(tier.writable(), "healthy again once a write succeeds");
        assert_eq!(files(&cache_dir).len(), 1, "no temporary file left behind");
    }

    #[tokio::test]
    async fn a_removed_file_is_not_read_even_before_it_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tier = open(dir.path(), 1 << 20);
        tier.store("k", vec![stored("old", SystemTime::now())]);
        tier.flush().await;
        tier.remove("k");
        assert!(tier.load("k").await.is_none());
        tier.flush().await;
        assert!(files(dir.path()).is_empty());
    }
}
