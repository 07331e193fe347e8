//! [`Store`] on sled, the embedded default.
//!
//! Seven trees: `records` (seq, big-endian so iteration is in seq order, to
//! the encoded record), `ids` (id to seq), `thumbs` (seq to thumbnail),
//! `keypoints` (seq to the image's encoded keypoints, see [`crate::local`]),
//! `regions` (seq to its head map's parts, see
//! [`crate::embed::regions`]), `reviews` (see [`super::reviews`]) and `meta` (named blobs). An insert or
//! delete touches every tree it changes in one transaction, so they never
//! disagree after a crash.
//!
//! A write that fails with an I/O error (a full disk) leaves sled failing
//! every later write for good, so the store reopens the database in place
//! on the next write once the disk has room ([`SledStore::heal`]): writes
//! recover by themselves, reads go on meanwhile.
//!
//! Locks, in order, all under the engine's locks and above sled's:
//! `healing` (a reopen), `open` (read: held only to clone the open
//! database's handle; write: by a reopen, across sled's open),
//! `review_lock` (held by a review and by a delete around their
//! transactions: a delete lists the decisions naming its id first, and no
//! new one may appear meanwhile), `unflushed` (alone, or by a reopen under
//! `open`). Nothing is called under them but sled.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use sled::{
    transaction::{ConflictableTransactionError, TransactionError},
    Transactional,
};

use super::reviews::{self, Decision, Review};
use super::{codec, Attachment, Attachments, CheckReport, Inserted, Record, Store};
use crate::error::{Error, Result};

pub struct SledStore {
    /// The database folder, to reopen it in place.
    dir: PathBuf,
    /// The open database. Replaced whole when [`SledStore::heal`] reopens
    /// it; `None` only while a reopen that failed is retried.
    open: RwLock<Option<Arc<Trees>>>,
    /// A write or flush failed with an I/O error (a full disk, most often).
    /// sled keeps that error for good: every later write fails with it,
    /// even once space is back. So the next write reopens the database
    /// first, which recovers what is on disk.
    failed: AtomicBool,
    /// One reopen at a time, and when the last one was tried.
    healing: Mutex<Option<Instant>>,
    /// Inserts not yet covered by a flush that succeeded (see [`Unflushed`]).
    unflushed: Mutex<Unflushed>,
    /// Reopens so far ([`Store::reopens`]).
    reopens: AtomicU64,
    /// Pairs with a decision (each stored under two keys), so that the
    /// common case, no decisions at all, costs no lookup.
    review_pairs: AtomicUsize,
    /// See the module doc.
    review_lock: Mutex<()>,
    /// See [`Store::identity`].
    identity: u64,
    /// sled's own `len` walks the whole tree (69 s with a cold page cache at
    /// a million images); this is kept in step instead, and saved by a
    /// clean [`Store::close`] so that the next open need not walk it.
    count: AtomicUsize,
    /// Set by [`Store::close`]: later writes are refused, since the counts
    /// saved with it would no longer hold.
    closed: AtomicBool,
    /// Added to sled's id counter to make a seq: a database restored from
    /// a snapshot keeps the snapshot's seqs (its saved graph refers to
    /// them) and starts new ones above them (meta key [`SEQ_BASE`]).
    seq_base: AtomicU64,
}

/// One open sled database and its trees.
struct Trees {
    db: sled::Db,
    records: sled::Tree,
    ids: sled::Tree,
    thumbs: sled::Tree,
    keypoints: sled::Tree,
    regions: sled::Tree,
    reviews: sled::Tree,
    meta: sled::Tree,
}

/// Inserts whose outcome a failed flush left unknown: the caller was told
/// the insert failed, yet part of sled's log may have reached the disk
/// before the error. After a reopen each one found stored is removed
/// again, so that an insert reported as failed is never stored (and its
/// retry is not refused as a duplicate). An upsert that replaced a record
/// is left as it is: the old version is gone either way, and retrying the
/// upsert gives the same result.
#[derive(Default)]
struct Unflushed {
    /// Bumped by every flush as it starts.
    epoch: u64,
    /// (epoch when stored, seq, id) of plain inserts since a good flush.
    inserts: Vec<(u64, u64, String)>,
}

/// Meta key of [`SledStore::seq_base`], little-endian.
const SEQ_BASE: &str = "seq_base";

/// Meta key of the counts a clean [`Store::close`] saves: records, then
/// review pairs, u64 little-endian each. The next open takes them and
/// removes the key (durably) before anything else can write, so a crash
/// from then on leaves no key and the open after it counts afresh.
const CLEAN_COUNTS: &str = "clean_counts";

/// Meta key of the database's identity ([`Store::identity`]), 8 random
/// bytes written at its first open. Not copied into snapshots: a restored
/// database is another one.
const IDENTITY: &str = "identity";

/// Free space the data folder's disk needs before a reopen is tried after a
/// full disk: sled writes as it recovers, and a reopen that fails leaves
/// no database to read from until the next one.
const REOPEN_MIN_FREE: u64 = 16 << 20;

/// Time between reopen attempts while they fail (or space stays short).
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// How long a reopen waits for reads and scans in flight on the old
/// database to finish before it gives up until the next write; of that,
/// at most [`REOPEN_LAST_DRAIN`] with new reads held back.
const REOPEN_DRAIN: Duration = Duration::from_secs(2);
const REOPEN_LAST_DRAIN: Duration = Duration::from_millis(100);

impl Trees {
    fn open(dir: &Path) -> Result<Self> {
        let db = open_db(dir)?;
        let tree = |name| {
            db.open_tree(name)
                .map_err(Error::store("opening its trees"))
        };
        let (records, ids, meta) = (tree("records")?, tree("ids")?, tree("meta")?);
        let (thumbs, reviews) = (tree("thumbs")?, tree("reviews")?);
        let (keypoints, regions) = (tree("keypoints")?, tree("regions")?);
        Ok(Trees {
            db,
            records,
            ids,
            thumbs,
            keypoints,
            regions,
            reviews,
            meta,
        })
    }

    fn attached(&self, kind: Attachment) -> &sled::Tree {
        match kind {
            Attachment::Thumbnail => &self.thumbs,
            Attachment::Keypoints => &self.keypoints,
            Attachment::Regions => &self.regions,
        }
    }

    /// The database's identity, made (durably) at its first open.
    fn identity(&self) -> Result<u64> {
        let saved = self
            .meta
            .get(IDENTITY)
            .map_err(Error::store("reading metadata"))?;
        if let Some(bytes) = saved {
            if let Ok(bytes) = <[u8; 8]>::try_from(bytes.as_ref()) {
                return Ok(u64::from_le_bytes(bytes));
            }
        }
        let identity: u64 = rand::random();
        self.meta
            .insert(IDENTITY, &identity.to_le_bytes()[..])
            .map_err(Error::store("saving the database's identity"))?;
        self.db.flush().map_err(Error::store("flushing to disk"))?;
        Ok(identity)
    }

    fn seq_base(&self) -> Result<u64> {
        match self
            .meta
            .get(SEQ_BASE)
            .map_err(Error::store("reading metadata"))?
        {
            Some(bytes) => {
                Ok(u64::from_le_bytes(bytes.as_ref().try_into().map_err(
                    |_| Error::Storage("the seq base is corrupt".into()),
                )?))
            }
            None => Ok(0),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let started = Instant::now();
        let trees = Trees::open(dir)?;
        let opened_ms = started.elapsed().as_millis() as u64;
        let (count, review_pairs, saved) = match take_clean_counts(&trees)? {
            Some((count, pairs)) => (count, pairs, true),
            None => (trees.ids.len(), trees.reviews.len() / 2, false),
        };
        tracing::info!(
            images = count,
            opened_ms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            counts = if saved {
                "saved at the last clean stop"
            } else {
                "counted"
            },
            "database opened"
        );
        let (count, review_pairs) = (AtomicUsize::new(count), AtomicUsize::new(review_pairs));
        let seq_base = AtomicU64::new(trees.seq_base()?);
        let identity = trees.identity()?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            open: RwLock::new(Some(Arc::new(trees))),
            failed: AtomicBool::new(false),
            healing: Mutex::new(None),
            unflushed: Mutex::new(Unflushed::default()),
            reopens: AtomicU64::new(0),
            review_pairs,
            review_lock: Mutex::new(()),
            identity,
            count,
            closed: AtomicBool::new(false),
            seq_base,
        })
    }

    /// The open database, for one operation. None is open only after a
    /// reopen failed; then this tries again (at most once per
    /// [`REOPEN_BACKOFF`]), so that reads recover even with no write.
    fn trees(&self) -> Result<Arc<Trees>> {
        let current = || self.open.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(trees) = current() {
            return Ok(trees);
        }
        self.heal()?;
        current().ok_or_else(|| {
            Error::Unavailable(
                "the database is being reopened after a failed write; retry in a moment".into(),
            )
        })
    }

    /// Runs a write: reopens the database first when an earlier write
    /// failed, and notes an I/O failure of this one.
    fn write<T>(&self, f: impl FnOnce(&Trees) -> Result<T>) -> Result<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(
                "the database is closed (the daemon is stopping)".into(),
            ));
        }
        if self.failed.load(Ordering::SeqCst) {
            self.heal()?;
        }
        let trees = self.trees()?;
        let result = f(&trees);
        if let Err(Error::Store {
            source: sled::Error::Io(_),
            ..
        }) = &result
        {
            self.failed.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Reopens the database in place after a write failed, once the disk
    /// has room again: sled recovers what reached the disk, inserts the
    /// caller was told had failed are removed again ([`Unflushed`]), and
    /// the counts are read afresh. Fails (RESOURCE_EXHAUSTED for a disk
    /// still full, UNAVAILABLE otherwise) while it cannot yet; the next
    /// write tries again, at most once per [`REOPEN_BACKOFF`].
    ///
    /// Locks: `healing`, then `open` for writing (blocking new reads for
    /// the reopen's length); nothing else is taken under them but sled.
    fn heal(&self) -> Result<()> {
        let mut last_try = self.healing.lock().unwrap_or_else(|e| e.into_inner());
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(()); // another write healed it meanwhile
        }
        // A statvfs: cheap enough for every write while the disk is full.
        let free = fs2::available_space(&self.dir).unwrap_or(0);
        if free < REOPEN_MIN_FREE {
            return Err(Error::Store {
                doing: "writing",
                source: sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "the disk of {} is full ({} MiB free); writes resume by themselves \
                         once {} MiB are free",
                        self.dir.display(),
                        free >> 20,
                        REOPEN_MIN_FREE >> 20
                    ),
                )),
            });
        }
        if last_try.is_some_and(|t| t.elapsed() < REOPEN_BACKOFF) {
            return Err(Error::Unavailable(
                "an earlier write failed and the database is being reopened; retry in a moment"
                    .into(),
            ));
        }
        *last_try = Some(Instant::now());
        // Reads and scans in flight hold the old database (and its file
        // lock). Wait for them first without blocking anyone (a long scan
        // makes this give up), then briefly under the write lock for those
        // that began meanwhile.
        let busy =
            |open: &Option<Arc<Trees>>| open.as_ref().is_some_and(|t| Arc::strong_count(t) > 1);
        let waiting = || {
            Error::Unavailable(
                "the database is waiting for reads in flight to finish before it reopens \
                 after a failed write; retry in a moment"
                    .into(),
            )
        };
        let started = Instant::now();
        while busy(&self.open.read().unwrap_or_else(|e| e.into_inner())) {
            if started.elapsed() > REOPEN_DRAIN {
                return Err(waiting());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        while busy(&open) {
            if started.elapsed() > REOPEN_LAST_DRAIN {
                return Err(waiting());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        *open = None;
        let trees = Arc::new(Trees::open(&self.dir)?);
        *open = Some(trees.clone());
        self.reopens.fetch_add(1, Ordering::SeqCst);
        // Still failed if this fails: the next write tries again.
        let undone = self.undo_unflushed(&trees);
        // Counted after the undo, which removes records.
        self.count.store(trees.ids.len(), Ordering::SeqCst);
        self.review_pairs
            .store(trees.reviews.len() / 2, Ordering::SeqCst);
        self.seq_base.store(trees.seq_base()?, Ordering::SeqCst);
        undone?;
        self.failed.store(false, Ordering::SeqCst);
        tracing::warn!(
            dir = %self.dir.display(),
            "the database was reopened after a failed write; writes work again"
        );
        Ok(())
    }

    /// Registers the plain insert of `id` under `seq` in [`Unflushed`] until
    /// a flush that starts after it succeeds.
    fn hold_back(&self, seq: u64, id: &str) {
        let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = unflushed.epoch;
        unflushed.inserts.push((epoch, seq, id.to_owned()));
    }

    /// Removes every insert whose flush failed and that reached the disk
    /// anyway (see [`Unflushed`]), durably.
    fn undo_unflushed(&self, trees: &Trees) -> Result<()> {
        let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
        let mut undone = 0;
        for (_, seq, id) in &unflushed.inserts {
            let key = seq_key(*seq);
            let trees_of_a_record = (
                &trees.records,
                &trees.ids,
                &trees.thumbs,
                &trees.keypoints,
                &trees.regions,
            );
            let removed = trees_of_a_record
                .transaction(|(records, ids, thumbs, keypoints, regions)| {
                    if ids.get(id.as_bytes())?.as_deref() != Some(&key[..]) {
                        return Ok(false);
                    }
                    ids.remove(id.as_bytes())?;
                    records.remove(&key)?;
                    thumbs.remove(&key)?;
                    keypoints.remove(&key)?;
                    regions.remove(&key)?;
                    Ok(true)
                })
                .map_err(tx_error("removing an insert that was reported as failed"))?;
            undone += usize::from(removed);
        }
        if undone > 0 {
            trees.db.flush().map_err(Error::store("flushing to disk"))?;
            tracing::warn!(
                undone,
                "removed inserts that reached the disk although their flush failed (their \
                 callers were told they failed)"
            );
        }
        unflushed.inserts.clear();
        Ok(())
    }

    /// Stores a record under its own seq (restoring a snapshot into an
    /// empty store); [`SledStore::start_seqs_after`] must follow.
    pub fn restore_record(&self, record: &Record) -> Result<()> {
        let value = codec::encode(record);
        self.write(|t| {
            t.ids
                .insert(record.id.as_bytes(), &seq_key(record.seq))
                .and_then(|_| t.records.insert(seq_key(record.seq), value))
                .map_err(Error::store("restoring a record"))
        })?;
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Stores an attachment under its record's seq (restoring a snapshot).
    pub fn restore_attachment(&self, kind: Attachment, seq: u64, bytes: &[u8]) -> Result<()> {
        self.write(|t| {
            t.attached(kind)
                .insert(seq_key(seq), bytes)
                .map_err(Error::store("restoring an attachment"))
        })?;
        Ok(())
    }

    fn review_guard(&self) -> MutexGuard<'_, ()> {
        self.review_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every key (both orders) of the decisions naming `id`.
    fn review_keys_of(t: &Trees, id: &str) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        for item in t.reviews.scan_prefix(reviews::prefix(id)) {
            let (key, _) = item.map_err(Error::store("reading review decisions"))?;
            let (_, other) = reviews::split(&key)?;
            keys.push(key.to_vec());
            if other != id {
                keys.push(reviews::key(&other, id));
            }
        }
        Ok(keys)
    }

    /// Reads every record and every id, offline (`lookalike check`):
    /// which records cannot be read back, and where the two trees disagree.
    pub fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut id_of_seq = std::collections::HashMap::new();
        let t = self.trees()?;
        for item in t.records.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    // sled cannot go on past what it cannot read.
                    report.unreadable = Some(e.to_string());
                    break;
                }
            };
            let seq = seq_from(&key)?;
            report.records += 1;
            match codec::decode(seq, &value) {
                Ok(record) => {
                    id_of_seq.insert(seq, record.id);
                }
                Err(e) => report.damaged.push((seq, e.to_string())),
            }
        }
        for item in t.ids.iter() {
            let (id, seq) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    report.unreadable.get_or_insert(e.to_string());
                    break;
                }
            };
            report.ids += 1;
            let id = String::from_utf8_lossy(&id).into_owned();
            let seq = seq_from(&seq)?;
            match id_of_seq.get(&seq) {
                Some(stored) if *stored == id => {}
                Some(_) => report.mismatched_ids.push(id),
                None if report.damaged.iter().any(|(s, _)| *s == seq) => {}
                None => report.orphan_ids.push(id),
            }
        }
        Ok(report)
    }

    /// New seqs start above `seq` (the highest restored one).
    pub fn start_seqs_after(&self, seq: u64) -> Result<()> {
        let base = seq.max(self.seq_base.load(Ordering::SeqCst));
        self.write(|t| {
            t.meta
                .insert(SEQ_BASE, &base.to_le_bytes())
                .map_err(Error::store("writing metadata"))
        })?;
        self.seq_base.store(base, Ordering::SeqCst);
        Ok(())
    }

    /// Whether `seq` is an insert whose caller was told it failed (a flush
    /// failed after it): sled still holds it in memory until the reopen,
    /// but it is not served.
    fn reported_failed(&self, seq: u64) -> bool {
        let unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
        unflushed.inserts.iter().any(|(_, s, _)| *s == seq)
    }

    /// A scan of one tree that keeps its database open while it runs
    /// (a reopen waits for it); one error item if none is open.
    fn scan<T: Send + 'static>(
        &self,
        iter: impl FnOnce(&Trees) -> sled::Iter,
        item: impl Fn((sled::IVec, sled::IVec)) -> Result<T> + Send + 'static,
        doing: &'static str,
    ) -> Box<dyn Iterator<Item = Result<T>> + Send + 'static> {
        match self.trees() {
            Ok(trees) => {
                let items = iter(&trees);
                Box::new(items.map(move |kv| {
                    let _open = &trees;
                    item(kv.map_err(Error::store(doing))?)
                }))
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }
}

/// How long [`open_db`] waits for another holder of the database's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens sled, waiting up to [`LOCK_WAIT`] while its file lock is held.
/// sled releases the lock only when its background flusher has stopped,
/// a moment after the last handle is dropped, so a reopen in the same
/// process (or a restart while the old process is still exiting) can find
/// it taken; a lock still held after the wait means another process is
/// using the database, and the error says so.
fn open_db(dir: &Path) -> Result<sled::Db> {
    let started = Instant::now();
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(256 << 20)
            .open()
        {
            Ok(db) => return Ok(db),
            // sled (pinned at 0.34.7) reports a taken lock only in the text of
            // an `ErrorKind::Other` I/O error.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                return Err(Error::file(
                    "open the database (another lookalike may hold its lock) at",
                    dir,
                )(sled::Error::Io(e)))
            }
            Err(e) => return Err(Error::file("open the database at", dir)(e)),
        }
    }
}

/// The counts a clean close saved, if any, removed durably from the
/// database before they are returned (see [`CLEAN_COUNTS`]).
fn take_clean_counts(trees: &Trees) -> Result<Option<(usize, usize)>> {
    let Some(bytes) = trees
        .meta
        .remove(CLEAN_COUNTS)
        .map_err(Error::store("reading the counts saved at the last stop"))?
    else {
        return Ok(None);
    };
    trees.db.flush().map_err(Error::store("flushing to disk"))?;
    let count = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    match (count(0), count(8), bytes.len()) {
        (Some(records), Some(pairs), 16) => Ok(Some((records, pairs))),
        _ => {
            tracing::warn!(
                bytes = bytes.len(),
                "the counts saved at the last stop are malformed; counting afresh"
            );
            Ok(None)
        }
    }
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_from(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Storage(format!("bad seq key of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// For `map_err`: a transaction error into ours, saying what the
/// transaction was doing.
fn tx_error(doing: &'static str) -> impl FnOnce(TransactionError<Error>) -> Error {
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => Error::Store { doing, source },
    }
}

impl Store for SledStore {
    fn next_seq(&self) -> Result<u64> {
        // generate_id is unique and increasing across restarts (and
        // reopens).
        let id = self.write(|t| t.db.generate_id().map_err(Error::store("allocating a seq")))?;
        Ok(id + 1 + self.seq_base.load(Ordering::SeqCst))
    }

    fn insert(&self, record: &Record, upsert: bool, attached: Attachments<'_>) -> Result<Inserted> {
        let seq = self.next_seq()?;
        let value = codec::encode(record);
        let replaced = self.write(|t| {
            (&t.records, &t.ids, &t.thumbs, &t.keypoints, &t.regions)
                .transaction(|(records, ids, thumbs, keypoints, regions)| {
                    let old = ids.get(record.id.as_bytes())?;
                    if old.is_some() && !upsert {
                        return Err(ConflictableTransactionError::Abort(Error::AlreadyExists(
                            record.id.clone(),
                        )));
                    }
                    let old = match old {
                        Some(bytes) => {
                            let old =
                                seq_from(&bytes).map_err(ConflictableTransactionError::Abort)?;
                            records.remove(&seq_key(old))?;
                            thumbs.remove(&seq_key(old))?;
                            keypoints.remove(&seq_key(old))?;
                            regions.remove(&seq_key(old))?;
                            Some(old)
                        }
                        None => None,
                    };
                    ids.insert(record.id.as_bytes(), &seq_key(seq))?;
                    records.insert(&seq_key(seq), value.as_slice())?;
                    if let Some(thumbnail) = attached.thumbnail {
                        thumbs.insert(&seq_key(seq), thumbnail)?;
                    }
                    if let Some(points) = attached.keypoints {
                        keypoints.insert(&seq_key(seq), points)?;
                    }
                    if let Some(parts) = attached.regions {
                        regions.insert(&seq_key(seq), parts)?;
                    }
                    Ok(old)
                })
                .map_err(tx_error("storing a record"))
        });
        let replaced = match replaced {
            Ok(replaced) => replaced,
            Err(e) => {
                // A write that failed on I/O may still be applied in sled's
                // memory (and reach the disk with a later flush): the caller
                // is told it failed, so it is held back like an insert whose
                // flush failed, and removed at the reopen if it is there.
                if !upsert && !matches!(e, Error::AlreadyExists(_)) {
                    self.hold_back(seq, &record.id);
                }
                return Err(e);
            }
        };
        if replaced.is_none() {
            self.count.fetch_add(1, Ordering::SeqCst);
            self.hold_back(seq, &record.id);
        }
        Ok(Inserted { seq, replaced })
    }

    fn get(&self, id: &str) -> Result<Option<Record>> {
        let seq = self
            .trees()?
            .ids
            .get(id.as_bytes())
            .map_err(Error::store("looking up an id"))?;
        match seq {
            Some(seq) => self.get_by_seq(seq_from(&seq)?),
            None => Ok(None),
        }
    }

    fn get_by_seq(&self, seq: u64) -> Result<Option<Record>> {
        if self.failed.load(Ordering::SeqCst) && self.reported_failed(seq) {
            return Ok(None);
        }
        let read = self
            .trees()?
            .records
            .get(seq_key(seq))
            .map_err(|e| match e {
                // sled's own checksum of what it read failed.
                sled::Error::Corruption { .. } => Error::Damaged {
                    seq,
                    what: e.to_string(),
                },
                e => Error::store("reading a record")(e),
            });
        match read? {
            Some(bytes) => Ok(Some(codec::decode(seq, &bytes)?)),
            None => Ok(None),
        }
    }

    fn attachment(&self, kind: Attachment, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .trees()?
            .attached(kind)
            .get(seq_key(seq))
            .map_err(Error::store("reading an attachment"))?
            .map(|v| v.to_vec()))
    }

    fn delete(&self, id: &str) -> Result<Option<u64>> {
        let (removed, review_keys) = self.write(|t| {
            let _reviews = self.review_guard();
            let review_keys = Self::review_keys_of(t, id)?;
            let trees_of_a_record = (
                &t.records,
                &t.ids,
                &t.thumbs,
                &t.keypoints,
                &t.regions,
                &t.reviews,
            );
            let removed = trees_of_a_record
                .transaction(|(records, ids, thumbs, keypoints, regions, reviews)| {
                    match ids.remove(id.as_bytes())? {
                        Some(bytes) => {
                            let seq =
                                seq_from(&bytes).map_err(ConflictableTransactionError::Abort)?;
                            records.remove(&seq_key(seq))?;
                            thumbs.remove(&seq_key(seq))?;
                            keypoints.remove(&seq_key(seq))?;
                            regions.remove(&seq_key(seq))?;
                            for key in &review_keys {
                                reviews.remove(key.as_slice())?;
                            }
                            Ok(Some(seq))
                        }
                        None => Ok(None),
                    }
                })
                .map_err(tx_error("deleting a record"))?;
            Ok((removed, review_keys))
        })?;
        if removed.is_some() {
            self.count.fetch_sub(1, Ordering::SeqCst);
            let pairs = review_keys.len().div_ceil(2);
            self.review_pairs.fetch_sub(pairs, Ordering::SeqCst);
        }
        Ok(removed)
    }

    fn review_set(
        &self,
        a: &str,
        b: &str,
        decision: Option<Decision>,
        at_ms: i64,
    ) -> Result<Option<Decision>> {
        let (ab, ba) = (reviews::key(a, b), reviews::key(b, a));
        let previous = self.write(|t| {
            let _reviews = self.review_guard();
            (&t.ids, &t.reviews)
                .transaction(|(ids, reviews)| {
                    for id in [a, b] {
                        if ids.get(id.as_bytes())?.is_none() {
                            return Err(ConflictableTransactionError::Abort(Error::NotFound(
                                id.to_string(),
                            )));
                        }
                    }
                    let previous = match decision {
                        Some(d) => {
                            let v = reviews::value(d, at_ms);
                            reviews.insert(ba.as_slice(), &v)?;
                            reviews.insert(ab.as_slice(), &v)?
                        }
                        None => {
                            reviews.remove(ba.as_slice())?;
                            reviews.remove(ab.as_slice())?
                        }
                    };
                    Ok(previous)
                })
                .map_err(tx_error("storing a review decision"))
        })?;
        let previous = previous
            .map(|v| reviews::parse_value(&v).map(|(d, _)| d))
            .transpose()?;
        match (previous.is_some(), decision.is_some()) {
            (false, true) => {
                self.review_pairs.fetch_add(1, Ordering::SeqCst);
            }
            (true, false) => {
                self.review_pairs.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
        Ok(previous)
    }

    fn review_get(&self, a: &str, b: &str) -> Result<Option<Decision>> {
        if self.review_pairs.load(Ordering::SeqCst) == 0 {
            return Ok(None);
        }
        self.trees()?
            .reviews
            .get(reviews::key(a, b))
            .map_err(Error::store("reading a review decision"))?
            .map(|v| reviews::parse_value(&v).map(|(d, _)| d))
            .transpose()
    }

    fn reviews(&self, id: Option<&str>) -> Result<Vec<Review>> {
        let t = self.trees()?;
        let items = match id {
            Some(id) => t.reviews.scan_prefix(reviews::prefix(id)),
            None => t.reviews.iter(),
        };
        let mut out = Vec::new();
        for item in items {
            let (key, value) = item.map_err(Error::store("reading review decisions"))?;
            let (first, second) = reviews::split(&key)?;
            // Each pair is stored under both orders: list it once, a < b.
            let (a, b) = if first <= second {
                (first, second)
            } else if id.is_some() {
                (second, first)
            } else {
                continue;
            };
            let (decision, decided_at_ms) = reviews::parse_value(&value)?;
            out.push(Review {
                a,
                b,
                decision,
                decided_at_ms,
            });
        }
        Ok(out)
    }

    fn attachments(
        &self,
        kind: Attachment,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send + '_> {
        self.scan(
            move |t| t.attached(kind).iter(),
            |(k, v)| Ok((seq_from(&k)?, v.to_vec())),
            "scanning the attachments",
        )
    }

    fn restore_review(&self, review: &Review) -> Result<()> {
        let v = reviews::value(review.decision, review.decided_at_ms);
        self.write(|t| {
            t.reviews
                .insert(reviews::key(&review.a, &review.b), &v)
                .and_then(|_| t.reviews.insert(reviews::key(&review.b, &review.a), &v))
                .map_err(Error::store("restoring a review decision"))
        })?;
        self.review_pairs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last_seq(&self) -> Result<u64> {
        match self
            .trees()?
            .records
            .last()
            .map_err(Error::store("reading the last record"))?
        {
            Some((key, _)) => seq_from(&key),
            None => Ok(0),
        }
    }

    fn scan_after(&self, after: u64) -> Box<dyn Iterator<Item = Result<Record>> + Send + '_> {
        let start = seq_key(after.saturating_add(1));
        self.scan(
            |t| t.records.range(start..),
            |(key, value)| codec::decode(seq_from(&key)?, &value),
            "scanning the records",
        )
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .trees()?
            .meta
            .get(key.as_bytes())
            .map_err(Error::store("reading metadata"))?
            .map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write(|t| {
            t.meta
                .insert(key.as_bytes(), value)
                .map_err(Error::store("writing metadata"))
        })?;
        Ok(())
    }

    fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.trees()?
            .meta
            .iter()
            // The seq base, the identity and the saved counts belong to
            // this database, not to its copies.
            .filter(|item| {
                !matches!(item, Ok((k, _)) if [SEQ_BASE, IDENTITY, CLEAN_COUNTS]
                    .iter()
                    .any(|own| k.as_ref() == own.as_bytes()))
            })
            .map(|item| {
                let (k, v) = item.map_err(Error::store("reading metadata"))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn identity(&self) -> Option<u64> {
        Some(self.identity)
    }

    fn live_seqs(&self) -> Result<std::collections::HashSet<u64>> {
        let trees = self.trees()?;
        let mut seqs = std::collections::HashSet::with_capacity(self.len());
        for item in trees.ids.iter().values() {
            seqs.insert(seq_from(&item.map_err(Error::store("reading the ids"))?)?);
        }
        Ok(seqs)
    }

    fn size_on_disk(&self) -> Result<u64> {
        self.trees()?
            .db
            .size_on_disk()
            .map_err(Error::store("measuring its size on disk"))
    }

    fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }

    fn flush(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(()); // `close` flushed, and nothing was written since
        }
        let upto = {
            let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
            unflushed.epoch += 1;
            unflushed.epoch - 1
        };
        self.write(|t| t.db.flush().map_err(Error::store("flushing to disk")))?;
        let mut unflushed = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
        unflushed.inserts.retain(|(epoch, _, _)| *epoch > upto);
        Ok(())
    }

    fn close(&self) -> Result<()> {
        self.flush()?;
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut counts = [0u8; 16];
        counts[..8].copy_from_slice(&(self.count.load(Ordering::SeqCst) as u64).to_le_bytes());
        counts[8..]
            .copy_from_slice(&(self.review_pairs.load(Ordering::SeqCst) as u64).to_le_bytes());
        let trees = self.trees()?;
        trees
            .meta
            .insert(CLEAN_COUNTS, &counts[..])
            .map_err(Error::store("saving the counts for the next start"))?;
        trees.db.flush().map_err(Error::store("flushing to disk"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, x: f32) -> Record {
        Record {
            id: id.into(),
            seq: 0,
            features: vec![x, 1.0 - x],
            siamese: Some(vec![x]),
            metadata: [("k".to_string(), id.to_string())].into(),
            inserted_at_ms: 7,
            facts: None,
        }
    }

    /// A database held open elsewhere is refused with a clear message after
    /// the lock wait, not a hang.
    #[test]
    fn a_held_database_is_refused_after_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = SledStore::open(dir.path()).expect("open");
        let started = Instant::now();
        let err = SledStore::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(
            started.elapsed() >= LOCK_WAIT,
            "gave up after {:?}",
            started.elapsed()
        );
        assert!(
            err.chain().contains("another lookalike may hold its lock"),
            "unclear error: {err}"
        );
    }

    /// A clean close saves the counts and the next open takes them instead
    /// of walking the ids; they are used once, so a crash after that open
    /// (no close) makes the open after it count afresh. Writes after a
    /// close are refused.
    #[test]
    fn counts_saved_by_a_clean_close_are_used_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for (id, x) in [("a", 0.1), ("b", 0.2)] {
            store
                .insert(&record(id, x), false, Attachments::default())
                .expect("insert");
        }
        store.close().expect("close");
        let err = store
            .insert(&record("late", 0.3), false, Attachments::default())
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        store
            .flush()
            .expect("a flush after close has nothing to do");
        // Proof that the next open reads the saved counts rather than
        // counting: make them say 7.
        let trees = store.trees().expect("open");
        let mut seven = [0u8; 16];
        seven[..8].copy_from_slice(&7u64.to_le_bytes());
        trees.meta.insert(CLEAN_COUNTS, &seven[..]).expect("meta");
        trees.db.flush().expect("flush");
        drop((trees, store));
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), 7, "the saved counts were not used");
        store
            .insert(&record("c", 0.3), false, Attachments::default())
            .expect("insert");
        drop(store); // a crash: no close
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), 3, "stale saved counts were used again");
        store.close().expect("close");
        drop(store);
        assert_eq!(SledStore::open(dir.path()).expect("reopen").len(), 3);
    }

    /// An insert whose caller was told its flush failed is not served, and
    /// the reopen that follows removes it even though it reached the disk;
    /// the counts are read afresh; writes work again.
    #[test]
    fn a_reopen_removes_inserts_reported_as_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        store
            .insert(&record("kept", 0.1), false, Attachments::default())
            .expect("insert");
        store.flush().expect("flush");
        store
            .insert(&record("failed", 0.2), false, Attachments::default())
            .expect("insert");
        // It reached the disk (sled flushed it), but the flush its caller
        // waited for failed.
        store.trees().expect("open").db.flush().expect("sled flush");
        store.failed.store(true, Ordering::SeqCst);
        assert!(store.get("failed").expect("get").is_none(), "served");
        assert!(store.get("kept").expect("get").is_some());
        store.heal().expect("reopen");
        assert_eq!(store.reopens(), 1);
        assert_eq!(store.len(), 1);
        assert!(store.get("failed").expect("get").is_none());
        store
            .insert(&record("failed", 0.3), false, Attachments::default())
            .expect("the retry is not refused as a duplicate");
        store.flush().expect("flush");
        drop(store);
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), 2);
        let got = store.get("failed").expect("get").expect("the retry");
        assert_eq!(got.features, vec![0.3, 0.7]);
    }

    #[test]
    fn insert_get_delete_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b);
        {
            let store = SledStore::open(dir.path()).expect("open");
            a = store
                .insert(&record("a", 0.1), false, thumbnailed(b"ta"))
                .expect("insert a");
            b = store
                .insert(&record("b", 0.2), false, Attachments::default())
                .expect("insert b");
            assert!(b.seq > a.seq);
            assert!(matches!(
                store.insert(&record("a", 0.3), false, Attachments::default()),
                Err(Error::AlreadyExists(_))
            ));
            assert_eq!(store.len(), 2);
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), 2);
        let got = store.get("b").expect("get").expect("present");
        assert_eq!(got.features, vec![0.2, 0.8]);
        assert_eq!(got.seq, b.seq);
        assert_eq!(store.last_seq().expect("last"), b.seq);

        let c = store
            .insert(&record("a", 0.9), true, thumbnailed(b"ta2"))
            .expect("upsert");
        assert_eq!(c.replaced, Some(a.seq));
        assert!(c.seq > b.seq);
        assert!(store.get_by_seq(a.seq).expect("get").is_none());
        assert_eq!(store.len(), 2);

        assert_eq!(store.delete("b").expect("delete"), Some(b.seq));
        assert_eq!(store.delete("b").expect("delete again"), None);
        assert!(store.get("b").expect("get").is_none());
        let ids: Vec<String> = store.scan_after(0).map(|r| r.expect("scan").id).collect();
        assert_eq!(ids, vec!["a".to_string()]);
        assert_eq!(store.len(), 1);
        for kind in [
            Attachment::Thumbnail,
            Attachment::Keypoints,
            Attachment::Regions,
        ] {
            // The replaced record's attachments went with it.
            assert_eq!(store.attachment(kind, a.seq).expect("attachment"), None);
            assert_eq!(
                store.attachment(kind, c.seq).expect("attachment"),
                Some(b"ta2".to_vec())
            );
            let all: Vec<u64> = store
                .attachments(kind)
                .map(|r| r.expect("scan").0)
                .collect();
            assert_eq!(all, [c.seq]);
        }
        store.delete("a").expect("delete a");
        assert_eq!(
            store
                .attachment(Attachment::Keypoints, c.seq)
                .expect("gone"),
            None
        );
    }

    /// The same bytes as thumbnail, keypoints and parts.
    fn thumbnailed(bytes: &[u8]) -> Attachments<'_> {
        Attachments {
            thumbnail: Some(bytes),
            keypoints: Some(bytes),
            regions: Some(bytes),
        }
    }

    #[test]
    fn review_decisions_stick_and_go_with_a_deleted_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            for id in ["a", "b", "c"] {
                store
                    .insert(&record(id, 0.5), false, Attachments::default())
                    .expect("insert");
            }
            assert_eq!(store.review_get("a", "b").expect("get"), None);
            assert!(matches!(
                store.review_set("a", "zz", Some(Decision::Duplicate), 1),
                Err(Error::NotFound(id)) if id == "zz"
            ));
            let prev = store.review_set("b", "a", Some(Decision::NotDuplicate), 1);
            assert_eq!(prev.expect("set"), None);
            store
                .review_set("a", "c", Some(Decision::Duplicate), 2)
                .expect("set");
            store.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(
            store.review_get("a", "b").expect("get"),
            Some(Decision::NotDuplicate)
        );
        assert_eq!(
            store.review_get("b", "a").expect("get"),
            Some(Decision::NotDuplicate)
        );
        let all = store.reviews(None).expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].a.as_str(), all[0].b.as_str()), ("a", "b"));
        assert_eq!(store.reviews(Some("c")).expect("list c").len(), 1);
        // An upsert keeps them; a delete drops every one naming the id.
        store
            .insert(&record("a", 0.7), true, Attachments::default())
            .expect("upsert");
        assert_eq!(store.reviews(None).expect("list").len(), 2);
        store.delete("a").expect("delete");
        assert!(store.reviews(None).expect("list").is_empty());
        assert_eq!(store.review_get("b", "a").expect("get"), None);
        assert_eq!(
            store.review_set("b", "c", None, 3).expect("revoke nothing"),
            None
        );
    }
}
