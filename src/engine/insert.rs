//! Insert: validate, embed, store durably, add to the index, and report
//! the stored images the duplicate verdict calls copies of the new one.
//!
//! Split in two for bulk ingest: [`Engine::prepare`] (CPU-bound: decode and
//! embed) runs for several images at once, [`Engine::commit`] (the store
//! write and the index update, under the index slot's read lock) in order.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use super::Match;
use super::{blocking, Engine, Resolved, Shared};
use super::{Embedded, EmbeddedImage};
use crate::error::{Error, Result};
use crate::store::{ImageFacts, Record};
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
        let shared = self.shared.clone();
        blocking(move || shared.insert_features(prepared)).await
    }
}

impl Shared {
    pub(super) fn insert_features(&self, prepared: Prepared) -> Result<InsertOutcome> {
        let Embedded { features, siamese } = prepared.embedded;
        let record = Record {
            id: prepared.id,
            seq: 0,
            features,
            siamese,
            metadata: prepared.metadata,
            inserted_at_ms: now_ms(),
            facts: Some(prepared.facts),
        };
        let upsert = prepared.upsert;
        let inserted = {
            let index = self.write_slot()?;
            let thumbnail = prepared.thumbnail.as_deref();
            let inserted = self.store.insert(&record, upsert, thumbnail)?;
            self.store.flush()?;
            if let Some(old) = inserted.replaced {
                index.remove(old);
            }
            index.add(inserted.seq, &record.features);
            inserted
        };
        self.maintenance.notify_one();
        let id = record.id.clone();
        let mut record = record;
        record.seq = inserted.seq;
        let duplicates = self.duplicates_of(Resolved::stored(record))?;
        Ok(InsertOutcome {
            id,
            duplicates,
            replaced: inserted.replaced.is_some(),
        })
    }

    /// The stored images the duplicate verdict says `record` duplicates:
    /// a shortlist of nearest neighbours by cosine, judged pair by pair.
    pub(super) fn duplicates_of(&self, query: Resolved) -> Result<Vec<Match>> {
        let max = self.config.max_duplicates;
        let shortlist = match self.siamese {
            Some(_) => max.saturating_mul(4).max(DUPLICATE_CANDIDATES),
            None => max,
        };
        let mut found = self.nearest(&query, shortlist, -1.0)?;
        found.retain(|m| m.duplicate);
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
