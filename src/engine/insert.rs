//! Insert: validate, embed, store durably, add to the index, and report
//! the stored images the duplicate verdict calls copies of the new one.
//!
//! Split in two for bulk ingest: [`Engine::prepare`] (CPU-bound: decode and
//! embed) runs for several images at once, [`Engine::commit_group`] (the
//! store writes and the index updates, under the index slot's read lock)
//! stores the ones ready, in order, with one flush to disk for them all: a
//! group commit, so an InsertStream pays one fsync per group, not per image.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use super::Match;
use super::{Embedded, EmbeddedImage};
use super::{Engine, Resolved, Shared};
use crate::error::{Error, Result};
use crate::local::Keypoints;
use crate::store::{Attachments, ImageFacts, Inserted, Record};
use sha2::{Digest, Sha256};

/// Longest accepted id, in bytes.
const MAX_ID_BYTES: usize = 512;

/// Largest accepted metadata (keys plus values), in bytes.
const MAX_METADATA_BYTES: usize = 64 << 10;

/// Nearest neighbours (by cosine) an insert checks with the Siamese
/// verdict, at least: a duplicate's cosine can rank below merely similar
/// photos, so the shortlist is wider than the answer.
const DUPLICATE_CANDIDATES: usize = 32;

/// One image to store.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    /// Empty: derived from the image bytes.
    pub id: String,
    pub image: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub upsert: bool,
}

/// An image validated and embedded, ready to be stored.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub id: String,
    embedded: Embedded,
    facts: ImageFacts,
    thumbnail: Option<Vec<u8>>,
    keypoints: Option<Keypoints>,
    metadata: BTreeMap<String, String>,
    upsert: bool,
}

/// What an insert did.
#[derive(Debug, Clone)]
pub struct InsertOutcome {
    pub id: String,
    pub duplicates: Vec<Match>,
    pub replaced: bool,
}

impl Engine {
    /// Stores one image; acknowledged once durable on disk.
    pub async fn insert(&self, image: NewImage) -> Result<InsertOutcome> {
        let prepared = self.prepare(image).await?;
        self.commit(prepared).await
    }

    /// The CPU-bound half of an insert: validates and embeds. Bulk ingest
    /// runs several of these at once and commits them in order.
    pub async fn prepare(&self, image: NewImage) -> Result<Prepared> {
        self.check_ready()?;
        let id = image_id(&image)?;
        check_metadata(&image.metadata)?;
        let embedded = {
            let _counted = InFlight::new();
            self.embed_image(image.image, true).await
        };
        let EmbeddedImage {
            embedded,
            facts,
            thumbnail,
            keypoints,
            centre: _,
        } = embedded?;
        Ok(Prepared {
            id,
            embedded,
            facts,
            thumbnail,
            keypoints,
            metadata: image.metadata,
            upsert: image.upsert,
        })
    }

    /// The storing half of an insert: durable once this returns.
    pub async fn commit(&self, prepared: Prepared) -> Result<InsertOutcome> {
        let mut outcomes = self.commit_group(vec![prepared]).await;
        outcomes
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a commit gave no outcome".into())))
    }

    /// Stores `group` in order, with one flush to disk for all of it; one
    /// outcome per image, each durable once returned, as if committed one
    /// by one in this order (an image's duplicates never include one later
    /// in the group).
    pub async fn commit_group(&self, group: Vec<Prepared>) -> Vec<Result<InsertOutcome>> {
        if group.is_empty() {
            return Vec::new();
        }
        let (shared, n) = (self.shared.clone(), group.len());
        match tokio::task::spawn_blocking(move || shared.insert_group(group)).await {
            Ok(outcomes) => outcomes,
            Err(e) => (0..n)
                .map(|_| Err(Error::Internal(format!("worker failed: {e}"))))
                .collect(),
        }
    }
}

impl Shared {
    fn insert_group(&self, group: Vec<Prepared>) -> Vec<Result<InsertOutcome>> {
        let n = group.len();
        let inserted_at_ms = now_ms();
        let mut stored: Vec<Result<(Record, Inserted)>> = Vec::with_capacity(n);
        let mut keypoints = Vec::with_capacity(n);
        {
            let index = match self.write_slot() {
                Ok(index) => index,
                Err(e) => {
                    let message = e.to_string();
                    return (0..n)
                        .map(|_| Err(Error::Unavailable(message.clone())))
                        .collect();
                }
            };
            for prepared in group {
                let Embedded {
                    features,
                    siamese,
                    regions,
                } = prepared.embedded;
                let record = Record {
                    id: prepared.id,
                    seq: 0,
                    features,
                    siamese,
                    metadata: prepared.metadata,
                    inserted_at_ms,
                    facts: Some(prepared.facts),
                };
                let encoded = prepared.keypoints.as_ref().map(Keypoints::to_bytes);
                // The parts rank a query's checked candidates beside their
                // keypoints: kept when the keypoints are.
                let attached = Attachments {
                    thumbnail: prepared.thumbnail.as_deref(),
                    keypoints: encoded.as_deref(),
                    regions: encoded.as_ref().map(|_| regions.as_slice()),
                };
                let result = self.store.insert(&record, prepared.upsert, attached);
                stored.push(result.map(|inserted| (record, inserted)));
                keypoints.push(prepared.keypoints);
            }
            // Every record sled accepted goes into the index, even if the
            // flush below fails for it: the index mirrors the store. (If it
            // fails, the store serves none of them, and once it is reopened
            // maintenance rebuilds the index from what it holds.)
            for (record, inserted) in stored.iter().flatten() {
                if let Some(old) = inserted.replaced {
                    index.remove(old);
                    self.forget_damaged(old);
                }
                index.add(inserted.seq, &record.features);
            }
            self.flush_group(&mut stored);
        }
        self.maintenance.notify_one();
        // Judged as of its own commit: records stored later in the group
        // (higher seqs) are no candidates, and the search looks that many
        // further so they crowd nothing out.
        let later = stored
            .iter()
            .filter(|s| s.is_ok())
            .count()
            .saturating_sub(1);
        stored
            .into_iter()
            .zip(keypoints)
            .map(|(result, keypoints)| {
                let (mut record, inserted) = result?;
                let id = record.id.clone();
                record.seq = inserted.seq;
                let mut subject = Resolved::stored(record);
                subject.upto = Some(inserted.seq);
                subject.keypoints = keypoints;
                let duplicates = self.duplicates_of(subject, later)?;
                Ok(InsertOutcome {
                    id,
                    duplicates,
                    replaced: inserted.replaced.is_some(),
                })
            })
            .collect()
    }

    /// One flush for every write of a group that succeeded. If it fails,
    /// every one of them failed: none is acknowledged, even if a later
    /// flush succeeds (the store reopens after a failed write, and what it
    /// had not flushed is then gone or removed again).
    fn flush_group(&self, stored: &mut [Result<(Record, Inserted)>]) {
        if !stored.iter().any(Result::is_ok) {
            return;
        }
        let Err(first) = self.store.flush() else {
            return;
        };
        let again = flush_failure_for_others(&first);
        let mut first = Some(first);
        for slot in stored.iter_mut().filter(|s| s.is_ok()) {
            *slot = Err(first.take().unwrap_or_else(&again));
        }
    }

    /// The stored images the duplicate verdict says `record` duplicates:
    /// a shortlist of nearest neighbours by cosine, judged pair by pair.
    /// `extra` more candidates are searched for, as many as may be left out
    /// for being stored after `query` in the same group commit.
    pub(super) fn duplicates_of(&self, query: Resolved, extra: usize) -> Result<Vec<Match>> {
        let max = self.config.max_duplicates;
        let shortlist = match self.siamese {
            Some(_) => max.saturating_mul(4).max(DUPLICATE_CANDIDATES),
            None => max,
        };
        let mut found = self.nearest(&query, shortlist + extra, -1.0)?;
        found.retain(|m| m.duplicate);
        found.truncate(max);
        Ok(found)
    }
}

/// Counts an insert being embedded in `lookalike_inserts_in_flight`, also
/// when the request is dropped midway (a client that leaves).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        metrics::gauge!("lookalike_inserts_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("lookalike_inserts_in_flight").decrement(1.0);
    }
}

/// The error of a flush a group shared, for each write but the first: the
/// same kind (a full disk stays RESOURCE_EXHAUSTED) and the same cause.
fn flush_failure_for_others(first: &Error) -> impl Fn() -> Error {
    let kind = match first.is_disk_full() {
        true => std::io::ErrorKind::StorageFull,
        false => std::io::ErrorKind::Other,
    };
    let mut cause: &dyn std::error::Error = first;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let cause = cause.to_string();
    move || Error::Store {
        doing: "flushing to disk",
        source: sled::Error::Io(std::io::Error::new(kind, cause.clone())),
    }
}

/// The id to store an image under: the caller's, or a content hash.
fn image_id(image: &NewImage) -> Result<String> {
    if image.image.is_empty() {
        return Err(Error::BadImage("the image is empty (0 bytes)".into()));
    }
    if image.id.is_empty() {
        let digest = Sha256::digest(&image.image);
        return Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect());
    }
    check_id(&image.id)?;
    Ok(image.id.clone())
}

/// Refuses an id over [`MAX_ID_BYTES`].
pub(super) fn check_id(id: &str) -> Result<()> {
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "id is {} bytes, the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        return Err(Error::InvalidArgument(format!(
            "metadata is {size} bytes, the limit is {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn photo(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("read photo")
    }

    fn image(id: &str, bytes: &[u8], upsert: bool) -> NewImage {
        NewImage {
            id: id.into(),
            image: bytes.to_vec(),
            upsert,
            ..Default::default()
        }
    }

    async fn commit_group(engine: &Engine, images: Vec<NewImage>) -> Vec<InsertOutcome> {
        let mut group = Vec::new();
        for image in images {
            group.push(engine.prepare(image).await.expect("prepare"));
        }
        engine
            .commit_group(group)
            .await
            .into_iter()
            .map(|r| r.expect("commit"))
            .collect()
    }

    fn ids(outcome: &InsertOutcome) -> Vec<&str> {
        outcome.duplicates.iter().map(|m| m.id.as_str()).collect()
    }

    /// A group commit answers as one-by-one commits would: an image's
    /// duplicates are those stored before it, never later ones of its
    /// group, not even its own id upserted again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_commit_answers_as_one_by_one_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(Config::with_data_dir(dir.path())).expect("open");
        engine.load_index().await.expect("index");
        let (cow, duck) = (photo("animal-cow.jpg"), photo("bird-duck.jpg"));

        let out = commit_group(
            &engine,
            vec![
                image("a", &cow, false),
                image("b", &duck, false),
                image("a-copy", &cow, false),
                image("a-copy-2", &cow, false),
            ],
        )
        .await;
        assert!(ids(&out[0]).is_empty(), "{:?}", out[0]);
        assert!(ids(&out[1]).is_empty(), "{:?}", out[1]);
        assert_eq!(ids(&out[2]), ["a"], "{:?}", out[2]);
        let mut third = ids(&out[3]);
        third.sort();
        assert_eq!(third, ["a", "a-copy"], "{:?}", out[3]);

        // The same id upserted twice in one group: neither answer names the
        // id itself, and the second replaces the first.
        let out = commit_group(
            &engine,
            vec![image("x", &duck, true), image("x", &duck, true)],
        )
        .await;
        assert!(!out[0].replaced && out[1].replaced, "{out:?}");
        for o in &out {
            assert!(!ids(o).contains(&"x"), "{o:?}");
            assert!(ids(o).contains(&"b"), "{o:?}");
        }
        assert_eq!(engine.stats().count, 5);
    }
}
