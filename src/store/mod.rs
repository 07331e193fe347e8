//! Persistence of image records.
//!
//! A record is what lookalike keeps per image: its id, the full
//! L2-normalised CNN features, its Siamese embedding, the caller's metadata,
//! the insert time and what the decoder saw ([`ImageFacts`]: size, content
//! hashes). Beside the records the store keeps a small thumbnail per image
//! (optional) and the review decisions users made about pairs of images
//! ([`reviews`]). Each record also gets a `seq`, a number unique for
//! the life of the database, which is what the ANN index stores: ids are
//! arbitrary strings, HNSW wants integers, and a replaced image gets a new
//! seq so the stale graph node can be filtered out.
//!
//! The engine sees only the [`Store`] trait; [`SledStore`] is the embedded
//! implementation.

mod codec;
pub mod reviews;
mod sled_store;

use std::collections::BTreeMap;

pub use crate::decode::ImageFacts;
pub use reviews::{Decision, Review};
pub use sled_store::SledStore;

/// What [`SledStore::check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Records read.
    pub records: u64,
    /// Ids read.
    pub ids: u64,
    /// Records that cannot be decoded: seq and why.
    pub damaged: Vec<(u64, String)>,
    /// Ids whose record is missing.
    pub orphan_ids: Vec<String>,
    /// Ids whose record names another id.
    pub mismatched_ids: Vec<String>,
    /// sled itself failed to read further (what it said); what follows
    /// was not checked.
    pub unreadable: Option<String>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
            && self.orphan_ids.is_empty()
            && self.mismatched_ids.is_empty()
            && self.unreadable.is_none()
    }
}

/// A record in the store's own encoding (for snapshots).
pub fn encode_record(record: &Record) -> Vec<u8> {
    codec::encode(record)
}

/// A record from [`encode_record`]'s bytes; its seq is set when stored.
pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    codec::decode(0, bytes)
}

use crate::error::Result;

/// One stored image.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub seq: u64,
    pub features: Vec<f32>,
    /// The Siamese embedding; `None` when the daemon ran without one.
    pub siamese: Option<Vec<f32>>,
    pub metadata: BTreeMap<String, String>,
    pub inserted_at_ms: i64,
    /// What the decoder saw; `None` for records stored before it was kept.
    pub facts: Option<ImageFacts>,
}

/// What is stored beside a record, under its seq, and goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attachment {
    /// A small JPEG (see [`crate::decode::thumbnail`]).
    Thumbnail,
    /// The image's keypoints (see [`crate::local::Keypoints::to_bytes`]).
    Keypoints,
    /// Its head map's parts (see [`crate::embed::regions::encode`]).
    Regions,
}

/// The attachments of one insert; `None` stores none of that kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attachments<'a> {
    pub thumbnail: Option<&'a [u8]>,
    pub keypoints: Option<&'a [u8]>,
    pub regions: Option<&'a [u8]>,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The new record's seq.
    pub seq: u64,
    /// The seq of the record it replaced (upsert), if any.
    pub replaced: Option<u64>,
}

/// Durable storage of records plus small named blobs (model name, PCA).
pub trait Store: Send + Sync + 'static {
    /// Stores `record` (and what is attached to it, when given) under a
    /// fresh seq (the `seq` field is ignored). Fails with `AlreadyExists`
    /// when the id is taken and `upsert` is false. A replaced record's
    /// attachments go with it; its review decisions stay: they are about
    /// the id.
    fn insert(&self, record: &Record, upsert: bool, attached: Attachments<'_>) -> Result<Inserted>;
    /// What is attached to the record of this seq, of this kind.
    fn attachment(&self, kind: Attachment, seq: u64) -> Result<Option<Vec<u8>>>;
    /// The record with this id.
    fn get(&self, id: &str) -> Result<Option<Record>>;
    /// The record with this seq (`None` once deleted or replaced).
    fn get_by_seq(&self, seq: u64) -> Result<Option<Record>>;
    /// Removes the record with this id, its attachments and every review
    /// decision that names it, in one transaction; returns its seq.
    fn delete(&self, id: &str) -> Result<Option<u64>>;
    /// Records (or, with `None`, revokes) a decision about the pair `a`,
    /// `b` (either order), durable once [`Store::flush`] returns. Both must
    /// be stored (`NotFound` otherwise). Returns the decision it replaced.
    fn review_set(
        &self,
        a: &str,
        b: &str,
        decision: Option<Decision>,
        at_ms: i64,
    ) -> Result<Option<Decision>>;
    /// The decision about the pair `a`, `b`, if any.
    fn review_get(&self, a: &str, b: &str) -> Result<Option<Decision>>;
    /// Every decision (each pair once, `a` < `b`), or those naming `id`.
    fn reviews(&self, id: Option<&str>) -> Result<Vec<Review>>;
    /// Stores a decision as it is (restoring a snapshot into an empty store).
    fn restore_review(&self, review: &Review) -> Result<()>;
    /// Every attachment of this kind with its record's seq, in seq order
    /// (for snapshots).
    fn attachments(
        &self,
        kind: Attachment,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send + '_>;
    /// Number of stored records.
    fn len(&self) -> usize;
    /// Whether no record is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Highest seq handed out so far (0 when none).
    fn last_seq(&self) -> Result<u64>;
    /// Records with seq greater than `after`, in seq order.
    fn scan_after(&self, after: u64) -> Box<dyn Iterator<Item = Result<Record>> + Send + '_>;
    /// A named blob.
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a named blob (durable once [`Store::flush`] returns).
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Makes every write so far durable (fsync).
    fn flush(&self) -> Result<()>;

    /// A clean stop: makes every write durable and saves what lets the
    /// next open start sooner (the counts). Call once no write is in
    /// flight; later writes are refused.
    fn close(&self) -> Result<()> {
        self.flush()
    }

    /// Bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64>;

    /// A seq above every seq this store has handed out (it uses one up).
    fn next_seq(&self) -> Result<u64>;

    /// Every metadata entry (model, Siamese identity, PCA), for snapshots.
    fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>>;

    /// A number that tells this database from any other (a restored copy
    /// included), fixed for its life; None if the store has none. A seq
    /// names one record for good only within one database.
    fn identity(&self) -> Option<u64> {
        None
    }

    /// The seq of every stored record (a walk of every id).
    fn live_seqs(&self) -> Result<std::collections::HashSet<u64>>;

    /// How many times the store was reopened after a failed write. Writes
    /// that failed may then be gone, or (an upsert) the record they
    /// replaced back: an index built before holds other than the store.
    fn reopens(&self) -> u64 {
        0
    }
}
