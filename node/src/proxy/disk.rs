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

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

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
    Flush(oneshot::Sender<()>),
}

/// The disk tier.
pub struct DiskTier {
    dir: PathBuf,
    index: Cache<String, u64>,
    jobs: SyncSender<Job>,
    writable: Arc<AtomicBool>,
    counters: DiskCounters,
}

impl DiskTier {
    /// Opens (creating it if needed) the tier in `dir`, holding at most `budget` bytes; the
    /// files already there are indexed in the background, and stay readable meanwhile.
    pub fn open(dir: &Path, budget: u64, counters: DiskCounters) -> Result<Self, DiskError> {
        fs::create_dir_all(dir)?;
        let evict_from = dir.to_owned();
        let index = Cache::builder()
            .max_capacity(budget)
            .weigher(|_, bytes: &u64| u32::try_from(*bytes).unwrap_or(u32::MAX))
            .eviction_listener(move |key: Arc<String>, _, cause| {
                if cause == RemovalCause::Size {
                    let _ = fs::remove_file(file_path(&evict_from, &key));
                }
            })
            .build();
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let writable = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            dir: dir.to_owned(),
            index: index.clone(),
            writable: writable.clone(),
            counters: counters.clone(),
        };
        std::thread::Builder::new()
            .name("coral-disk-cache".to_owned())
            .spawn(move || writer.run(queue))?;
        Ok(Self {
            dir: dir.to_owned(),
            index,
            jobs,
            writable,
            counters,
        })
    }

    /// Queues the URL's variants for writing (dropped, and counted, when the queue is full).
    pub fn store(&self, key: &str, variants: Vec<Arc<Stored>>) {
        self.send(Job::Store {
            key: key.to_owned(),
            variants,
        });
    }

    /// Forgets the URL's file.
    pub fn remove(&self, key: &str) {
        self.send(Job::Remove {
            key: key.to_owned(),
        });
    }

    /// Waits until every write queued so far is on disk (or failed).
    pub async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        let jobs = self.jobs.clone();
        let queued = tokio::task::spawn_blocking(move || jobs.send(Job::Flush(done))).await;
        if matches!(queued, Ok(Ok(()))) {
            let _ = finished.await;
        }
    }

    fn send(&self, job: Job) {
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.counters.write_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => self.counters.write_failed.inc(),
        }
    }

    /// The URL's variants as stored on disk, if any.
    pub async fn load(&self, key: &str) -> Option<Vec<Arc<Stored>>> {
        let path = file_path(&self.dir, key);
        let read = tokio::task::spawn_blocking(move || read_file(&path, SystemTime::now()))
            .await
            .ok()?;
        match read {
            Ok((found, variants)) if found == key => {
                self.index.get(key);
                self.counters.read.inc();
                Some(variants)
            }
            Err(DiskError::Io(err)) if err.kind() == io::ErrorKind::NotFound => None,
            Ok((found, _)) => self.discard(key, &DiskError::WrongKey(found)),
            Err(err) => self.discard(key, &err),
        }
    }

    fn discard<T>(&self, key: &str, err: &DiskError) -> Option<T> {
        tracing::warn!(key, error = %err, "discarding an unusable cache file");
        self.counters.corrupt.inc();
        self.remove(key);
        None
    }

    /// Whether the last write succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Files and bytes indexed.
    pub fn usage(&self) -> (u64, u64) {
        self.index.run_pending_tasks();
        (self.index.entry_count(), self.index.weighted_size())
    }
}

/// The writer thread's side: files, index, health.
struct Writer {
    dir: PathBuf,
    index: Cache<String, u64>,
    writable: Arc<AtomicBool>,
    counters: DiskCounters,
}

impl Writer {
    /// Indexes what the directory holds, then writes until the tier is dropped.
    fn run(self, queue: Receiver<Job>) {
        self.recover();
        for job in queue {
            match job {
                Job::Store { key, variants } => match write_file(&self.dir, &key, &variants) {
                    Ok(bytes) => {
                        self.index.insert(key, bytes);
                        self.counters.written.inc();
                        self.set_writable(true);
                    }
                    Err(err) => {
                        tracing::warn!(key, error = %err, "cannot write to the disk cache");
                        self.counters.write_failed.inc();
                        self.set_writable(false);
                    }
                },
                Job::Remove { key } => {
                    self.index.invalidate(&key);
                    let _ = fs::remove_file(file_path(&self.dir, &key));
                }
                Job::Flush(done) => {
                    self.index.run_pending_tasks();
                    let _ = done.send(());
                }
            }
        }
    }

    fn set_writable(&self, writable: bool) {
        self.writable.store(writable, Ordering::Relaxed);
    }

    /// Indexes every usable cache file in the directory and deletes the rest (leftover
    /// temporary files, truncated or foreign files).
    fn recover(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            self.set_writable(false);
            return;
        };
        let (mut kept, mut bytes) = (0u64, 0u64);
        for entry in entries.flatten() {
            let path = entry.path();
            match read_key(&path) {
                Ok((key, size)) if path == file_path(&self.dir, &key) => {
                    self.index.insert(key, size);
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
        self.index.run_pending_tasks();
        tracing::info!(
            dir = %self.dir.display(),
            objects = kept,
            bytes,
            "disk cache recovered"
        );
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
    let mut out = BufWriter::new(File::create(&temporary)?);
    out.write_all(MAGIC)?;
    out.write_all(&(encoded.len() as u64).to_le_bytes())?;
    out.write_all(&encoded)?;
    for stored in variants {
        out.write_all(&stored.body)?;
    }
    out.into_inner().map_err(io::IntoInnerError::into_error)?;
    fs::rename(&temporary, &path)?;
    Ok(prefix_bytes(&encoded) + header.body_bytes())
}

impl FileHeader {
    fn body_bytes(&self) -> u64 {
        self.variants.iter().map(|variant| variant.body_bytes).sum()
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
    let expected = prefix_bytes(&encoded) + header.body_bytes();
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
fn read_file(path: &Path, now: SystemTime) -> Result<(String, Vec<Arc<Stored>>), DiskError> {
    let mut file = File::open(path)?;
    let (header, size) = read_header(&mut file)?;
    let expected = header.body_bytes();
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
            Arc::new(Stored::with_policy(variant.policy, head, body, now))
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
        assert_eq!(tier.counters.corrupt.get(), 1);
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
    async fn a_failing_disk_makes_the_tier_unwritable() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let tier = open(&cache_dir, 1 << 20);
        tier.flush().await;
        assert!(tier.writable());
        fs::remove_dir(&cache_dir).unwrap();
        tier.store("k", vec![stored("lost", SystemTime::now())]);
        tier.flush().await;
        assert!(!tier.writable());
        assert_eq!(tier.counters.write_failed.get(), 1);
        fs::create_dir(&cache_dir).unwrap();
        tier.store("k", vec![stored("kept", SystemTime::now())]);
        tier.flush().await;
        assert!(tier.writable(), "healthy again once a write succeeds");
    }
}
