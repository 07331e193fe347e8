//! Insert: validate, embed, store durably, add to the index, and report
//! the stored images the duplicate verdict calls copies of the new one.
//!
//! Split in two for bulk ingest: [`Engine::prepare`] (CPU-bound: decode and
//! embed) runs for several images at once, [`Engine::commit_group`] (the
//! store writes and the index updates, under the index slot's read lock)
//! stores the ones ready, in order, with one flush to disk for them all: a
//! group commit, so an InsertStream pays one fsync per group, not per image.

use std::{
    collections::{BTreeMap, HashSet},
    time::{SystemTime, UNIX_EPOCH},
};

use super::Match;
use super::{Embedded, EmbeddedImage};
use super::{Engine, Resolved, Shared};
use crate::error::{Error, Result};
use crate::store::{ImageFacts, Inserted, Record};
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

    /// The inserts between their embedding and their acknowledgement.
    fn in_flight() -> metrics::Gauge {
        metrics::gauge!("lookalike_inserts_in_flight")
    }

    /// The CPU-bound half of an insert: validates and embeds. Bulk ingest
    /// runs several of these at once and commits them in order.
    pub async fn prepare(&self, image: NewImage) -> Result<Prepared> {
        self.check_ready()?;
        let id = image_id(&image)?;
        check_metadata(&image.metadata)?;
        Self::in_flight().increment(1.0);
        let embedded = self.embed_image(image.image, true).await;
        Self::in_flight().decrement(1.0);
        let EmbeddedImage {
            embedded,
            facts,
            thumbnail,
        } = embedded?;
        Ok(Prepared {
            id,
            embedded,
            facts,
            thumbnail,
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
                let Embedded { features, siamese } = prepared.embedded;
                let record = Record {
                    id: prepared.id,
                    seq: 0,
                    features,
                    siamese,
                    metadata: prepared.metadata,
                    inserted_at_ms,
                    facts: Some(prepared.facts),
                };
                let thumbnail = prepared.thumbnail.as_deref();
                let result = self.store.insert(&record, prepared.upsert, thumbnail);
                stored.push(result.map(|inserted| (record, inserted)));
            }
            self.flush_group(&mut stored);
            for (record, inserted) in stored.iter().flatten() {
                if let Some(old) = inserted.replaced {
                    index.remove(old);
                    self.forget_damaged(old);
                }
                index.add(inserted.seq, &record.features);
            }
        }
        self.maintenance.notify_one();
        let mut later: HashSet<String> = stored
            .iter()
            .flatten()
            .map(|(record, _)| record.id.clone())
            .collect();
        stored
            .into_iter()
            .map(|result| {
                let (mut record, inserted) = result?;
                later.remove(&record.id);
                let id = record.id.clone();
                record.seq = inserted.seq;
                let duplicates = self.duplicates_of(Resolved::stored(record), &later)?;
                Ok(InsertOutcome {
                    id,
                    duplicates,
                    replaced: inserted.replaced.is_some(),
                })
            })
            .collect()
    }

    /// One flush for every write of a group that succeeded. If it fails,
    /// each of them flushes again on its own, so each gets an error of its
    /// own (a full disk stays RESOURCE_EXHAUSTED) or is durable after all.
    fn flush_group(&self, stored: &mut [Result<(Record, Inserted)>]) {
        if !stored.iter().any(Result::is_ok) {
            return;
        }
        let Err(first) = self.store.flush() else {
            return;
        };
        let mut first = Some(first);
        for slot in stored.iter_mut().filter(|s| s.is_ok()) {
            let failed = match first.take() {
                Some(e) => Some(e),
                None => self.store.flush().err(),
            };
            if let Some(e) = failed {
                *slot = Err(e);
            }
        }
    }

    /// The stored images the duplicate verdict says `record` duplicates:
    /// a shortlist of nearest neighbours by cosine, judged pair by pair.
    /// Images with an id in `skip` are left out (stored after `query` in
    /// the same group commit).
    pub(super) fn duplicates_of(
        &self,
        query: Resolved,
        skip: &HashSet<String>,
    ) -> Result<Vec<Match>> {
        let max = self.config.max_duplicates;
        let shortlist = match self.siamese {
            Some(_) => max.saturating_mul(4).max(DUPLICATE_CANDIDATES),
            None => max,
        };
        let mut found = self.nearest(&query, shortlist, -1.0)?;
        found.retain(|m| m.duplicate && !skip.contains(&m.id));
        found.truncate(max);
        Ok(found)
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
