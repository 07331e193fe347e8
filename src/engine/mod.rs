//! The engine: what the daemon does, with no knowledge of gRPC.
//!
//! An [`Engine`] is a cheap-to-clone handle over the shared state: the
//! store, the embedding network and the current index. Requests flow
//! decode → embed (on tokio's blocking pool: it is CPU-bound) → store →
//! index → respond. A background task (see [`maintenance`]) fits the PCA
//! once enough images are stored, refits it as the store grows and rebuilds
//! the graph when deleted points pile up; it swaps the new index in whole,
//! so queries never wait on it.

mod maintenance;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{check_distance, Config};
use crate::embed::{Batcher, Embedded, Embedder};
use crate::error::{Error, Result};
use crate::index::{Hit, Index};
use crate::pca::{dot, Projection};
use crate::siamese::{self, Siamese};
use crate::store::{Record, SledStore, Store};

/// Meta key naming the model a database was built with.
pub const META_MODEL: &str = "model";
/// Meta key naming the Siamese weights the stored vectors come from.
pub const META_SIAMESE: &str = "siamese";
/// Meta key of the fitted PCA projection.
pub const META_PCA: &str = "pca";
/// How long shutdown waits for background maintenance to stop.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Longest accepted id, in bytes.
const MAX_ID_BYTES: usize = 512;
/// Largest accepted metadata (keys plus values), in bytes.
const MAX_METADATA_BYTES: usize = 64 << 10;
/// Nearest neighbours (by cosine) an insert checks with the Siamese
/// verdict, at least: a duplicate's cosine can rank below merely similar
/// photos, so the shortlist is wider than the answer.
const DUPLICATE_CANDIDATES: usize = 32;

/// An image in a request: encoded bytes, or the id of a stored one.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Bytes(Vec<u8>),
    Id(String),
}

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
    metadata: BTreeMap<String, String>,
    upsert: bool,
}

/// A stored image that matched a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: String,
    pub similarity: f32,
    /// Siamese distance, when both images have a Siamese embedding.
    pub distance: Option<f32>,
    /// The duplicate verdict for this pair.
    pub duplicate: bool,
    pub metadata: BTreeMap<String, String>,
}

/// What an insert did.
#[derive(Debug, Clone)]
pub struct InsertOutcome {
    pub id: String,
    pub duplicates: Vec<Match>,
    pub replaced: bool,
}

/// How alike two images are.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub similarity: f32,
    /// Siamese distance, when both images have a Siamese embedding.
    pub distance: Option<f32>,
    pub duplicate: bool,
    /// The Siamese distance threshold, when a Siamese model is loaded.
    pub threshold: Option<f32>,
    pub similarity_threshold: f32,
}

/// One image's descriptors, from a request or the store.
struct Resolved {
    embedded: Embedded,
    /// The seq to leave out of its own results, for a stored image.
    exclude: Option<u64>,
}

/// Counts and state, for Stats.
#[derive(Debug, Clone)]
pub struct Stats {
    pub count: u64,
    pub dimensions: u32,
    pub pca_dimensions: Option<u32>,
    pub index_size: u64,
    pub index_tombstones: u64,
    pub model: String,
    pub pca_min_images: u64,
    pub duplicate_distance: Option<f32>,
    pub duplicate_similarity: f32,
}

/// Handle to the engine; clones share one state.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    store: Box<dyn Store>,
    embedder: Arc<Embedder>,
    /// The duplicate verdict's network; `None` when there is none for the
    /// backbone (cosine decides then).
    siamese: Option<Arc<Siamese>>,
    /// Runs forward passes, batching concurrent requests.
    batcher: Batcher,
    /// The current index. Searches clone the `Arc` and let go at once.
    /// Writers (insert, delete) hold the read lock from their store write to
    /// their index update, so that whoever takes the write lock (a rebuild
    /// swapping a new index in, shutdown saving the graph) sees every stored
    /// record in the index, and no removal lands on an index already
    /// replaced. A rebuild builds its new index and catches up without the
    /// lock, and takes the write lock only for the last few records and the
    /// swap.
    ///
    /// Lock order: this lock first; under it the store (sled's own locks)
    /// and the index's locks (see `crate::index`), never the reverse: no
    /// code holding a store or index lock takes this one.
    index: RwLock<Arc<Index>>,
    /// Set under the index's write lock at shutdown, after which writes are
    /// refused: the graph saved then must hold every acknowledged insert.
    closed: AtomicBool,
    /// False until the index has been loaded from the store at start.
    ready: AtomicBool,
    /// Wakes the maintenance task after writes.
    maintenance: Notify,
    /// Tells the maintenance task (and a build it is running) to stop.
    shutdown: AtomicBool,
    /// The maintenance task, awaited at shutdown.
    maintenance_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// Opens the database in `config.data_dir` and loads the model. The index
    /// is empty until [`Engine::load_index`] runs.
    pub fn open(config: Config) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Storage(format!(
                "cannot create '{}': {e}",
                config.data_dir.display()
            ))
        })?;
        let store = SledStore::open(&config.data_dir.join("sled"))?;
        check_model(&store, config.model.name())?;
        let embedder = Arc::new(Embedder::load(
            config.model,
            config.weights.as_deref(),
            config.threads,
        )?);
        let siamese = load_siamese(&config, &embedder)?;
        if let Some(s) = &siamese {
            check_siamese(&store, s.fingerprint())?;
        }
        let batcher = Batcher::start(
            embedder.clone(),
            siamese.clone(),
            Duration::from_micros((config.batch_budget_ms * 1000.0) as u64),
        )?;
        Ok(Engine {
            shared: Arc::new(Shared {
                config,
                store: Box::new(store),
                embedder,
                siamese,
                batcher,
                index: RwLock::new(Arc::new(Index::exact())),
                closed: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                maintenance: Notify::new(),
                shutdown: AtomicBool::new(false),
                maintenance_task: std::sync::Mutex::new(None),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether the index is loaded and requests can be served.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Decodes and embeds an encoded image: decoding on the blocking pool,
    /// the forward pass batched with concurrent requests.
    pub async fn embed(&self, bytes: Vec<u8>) -> Result<Embedded> {
        let shared = self.shared.clone();
        let input = blocking(move || {
            shared
                .embedder
                .input_from_bytes(&bytes, shared.config.max_image_pixels)
        })
        .await?;
        self.shared.batcher.embed(input).await
    }

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
        let embedded = self.embed(image.image).await?;
        Ok(Prepared {
            id,
            embedded,
            metadata: image.metadata,
            upsert: image.upsert,
        })
    }

    /// The storing half of an insert: durable once this returns.
    pub async fn commit(&self, prepared: Prepared) -> Result<InsertOutcome> {
        let shared = self.shared.clone();
        blocking(move || shared.insert_features(prepared)).await
    }

    /// The `k` stored images most similar to `image`, best first, at or
    /// above `min_similarity`. A stored id is left out of its own results.
    pub async fn query(
        &self,
        image: ImageSource,
        k: usize,
        min_similarity: f32,
    ) -> Result<Vec<Match>> {
        self.check_ready()?;
        let max_k = self.shared.config.max_k;
        if k == 0 || k > max_k {
            return Err(Error::InvalidArgument(format!(
                "k must be in 1..={max_k}, got {k}"
            )));
        }
        if !(-1.0..=1.0).contains(&min_similarity) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity must be in [-1, 1], got {min_similarity}"
            )));
        }
        let query = self.resolve(image).await?;
        let shared = self.shared.clone();
        blocking(move || shared.nearest(&query.embedded, k, min_similarity, query.exclude)).await
    }

    /// Cosine similarity and Siamese distance of two images, and the
    /// duplicate verdict (at `max_distance`, or the server's threshold).
    pub async fn compare(
        &self,
        a: ImageSource,
        b: ImageSource,
        max_distance: Option<f32>,
    ) -> Result<Comparison> {
        if let Some(d) = max_distance {
            check_distance(d, "max_distance")?;
        }
        let (a, b) = tokio::try_join!(self.resolve(a), self.resolve(b))?;
        let (a, b) = (&a.embedded, &b.embedded);
        let similarity = dot(&a.features, &b.features).clamp(-1.0, 1.0);
        let distance = self.shared.distance(&a.siamese, &b.siamese);
        Ok(Comparison {
            similarity,
            distance,
            duplicate: self.shared.is_duplicate(similarity, distance, max_distance),
            threshold: self.shared.distance_threshold(),
            similarity_threshold: self.shared.config.duplicate_similarity,
        })
    }

    /// The stored record with this id.
    pub async fn get(&self, id: String) -> Result<Record> {
        let shared = self.shared.clone();
        blocking(move || shared.store.get(&id)?.ok_or(Error::NotFound(id))).await
    }

    /// Removes a stored image; durable once this returns.
    pub async fn delete(&self, id: String) -> Result<()> {
        self.check_ready()?;
        let shared = self.shared.clone();
        blocking(move || {
            {
                let index = shared.write_slot()?;
                let seq = shared
                    .store
                    .delete(&id)?
                    .ok_or_else(|| Error::NotFound(id.clone()))?;
                shared.store.flush()?;
                index.remove(seq);
            }
            shared.maintenance.notify_one();
            Ok(())
        })
        .await
    }

    pub fn stats(&self) -> Stats {
        let index = self.shared.current_index();
        Stats {
            count: self.shared.store.len() as u64,
            dimensions: self.shared.embedder.dim() as u32,
            pca_dimensions: index.projection().map(|p| p.out_dim() as u32),
            index_size: index.size() as u64,
            index_tombstones: index.tombstones() as u64,
            model: self.shared.embedder.kind().name().to_string(),
            pca_min_images: self.shared.config.pca_min_images as u64,
            duplicate_distance: self.shared.distance_threshold(),
            duplicate_similarity: self.shared.config.duplicate_similarity,
        }
    }

    /// Stops background maintenance (a rebuild in progress is abandoned:
    /// the index is a cache of the store), waits for writes in flight,
    /// refuses new ones, flushes the store and saves the graph for a fast
    /// next start; call before exit.
    pub async fn close(&self) -> Result<()> {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.maintenance.notify_one();
        let task = self
            .shared
            .maintenance_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            // A build stops at its next batch; a PCA fit cannot be
            // interrupted, and is not waited for: whatever it finishes is
            // never swapped in once `closed` is set.
            if tokio::time::timeout(CLOSE_WAIT, task).await.is_err() {
                tracing::warn!("index maintenance still running at shutdown; not waiting for it");
            }
        }
        let shared = self.shared.clone();
        blocking(move || {
            let slot = shared.index.write().unwrap_or_else(|e| e.into_inner());
            shared.closed.store(true, Ordering::SeqCst);
            shared.store.flush()?;
            if shared.ready.load(Ordering::SeqCst) {
                shared.save_index(&slot)?;
            }
            Ok(())
        })
        .await
    }

    fn check_ready(&self) -> Result<()> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(Error::Unavailable("the index is still loading".into()))
        }
    }

    /// Descriptors of a request image, plus the seq to leave out of its
    /// results when it is a stored image.
    async fn resolve(&self, image: ImageSource) -> Result<Resolved> {
        match image {
            ImageSource::Bytes(bytes) => Ok(Resolved {
                embedded: self.embed(bytes).await?,
                exclude: None,
            }),
            ImageSource::Id(id) => {
                if id.is_empty() {
                    return Err(Error::InvalidArgument("image id is empty".into()));
                }
                let record = self.get(id).await?;
                Ok(Resolved {
                    embedded: Embedded {
                        features: record.features,
                        siamese: record.siamese,
                    },
                    exclude: Some(record.seq),
                })
            }
        }
    }
}

impl Shared {
    fn current_index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The index slot's read lock, for a write to the store and the index
    /// (see [`Shared::index`]); refused once shutdown has begun.
    fn write_slot(&self) -> Result<std::sync::RwLockReadGuard<'_, Arc<Index>>> {
        let slot = self.index.read().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the daemon is shutting down".into()));
        }
        Ok(slot)
    }

    fn insert_features(&self, prepared: Prepared) -> Result<InsertOutcome> {
        let Embedded { features, siamese } = prepared.embedded;
        let record = Record {
            id: prepared.id,
            seq: 0,
            features,
            siamese,
            metadata: prepared.metadata,
            inserted_at_ms: now_ms(),
        };
        let upsert = prepared.upsert;
        let inserted = {
            let index = self.write_slot()?;
            let inserted = self.store.insert(&record, upsert)?;
            self.store.flush()?;
            if let Some(old) = inserted.replaced {
                index.remove(old);
            }
            index.add(inserted.seq, &record.features);
            inserted
        };
        self.maintenance.notify_one();
        let duplicates = self.duplicates_of(&record, inserted.seq)?;
        Ok(InsertOutcome {
            id: record.id,
            duplicates,
            replaced: inserted.replaced.is_some(),
        })
    }

    /// The stored images the duplicate verdict says `record` duplicates:
    /// a shortlist of nearest neighbours by cosine, judged pair by pair.
    fn duplicates_of(&self, record: &Record, seq: u64) -> Result<Vec<Match>> {
        let query = Embedded {
            features: record.features.clone(),
            siamese: record.siamese.clone(),
        };
        let max = self.config.max_duplicates;
        let shortlist = match self.siamese {
            Some(_) => max.saturating_mul(4).max(DUPLICATE_CANDIDATES),
            None => max,
        };
        let mut found = self.nearest(&query, shortlist, -1.0, Some(seq))?;
        found.retain(|m| m.duplicate);
        found.truncate(max);
        Ok(found)
    }

    /// Siamese distance of two embeddings; `None` if either is missing.
    fn distance(&self, a: &[f32], b: &[f32]) -> Option<f32> {
        (self.siamese.is_some() && !a.is_empty() && a.len() == b.len())
            .then(|| siamese::distance(a, b))
    }

    /// The Siamese threshold in force (config override, else the model's).
    fn distance_threshold(&self) -> Option<f32> {
        let model = self.siamese.as_ref()?.threshold();
        Some(self.config.duplicate_distance.unwrap_or(model))
    }

    /// The duplicate verdict: by Siamese distance when there is one, else by
    /// cosine.
    fn is_duplicate(&self, similarity: f32, distance: Option<f32>, max: Option<f32>) -> bool {
        match (distance, max.or(self.distance_threshold())) {
            (Some(d), Some(t)) => d <= t,
            _ => similarity >= self.config.duplicate_similarity,
        }
    }

    /// Searches the index, re-ranks the candidates on the full features
    /// the index holds (8-bit codes), then reads the best few from the
    /// store for their exact cosine, id and metadata (which also drops any
    /// that were deleted).
    fn nearest(
        &self,
        query: &Embedded,
        k: usize,
        min_similarity: f32,
        exclude: Option<u64>,
    ) -> Result<Vec<Match>> {
        let index = self.current_index();
        let candidates = match index.projection() {
            Some(_) => k.saturating_mul(self.config.rerank_factor).max(k + 8),
            None => k,
        };
        let hits: Vec<Hit> = index.search(&query.features, candidates, exclude);
        let hits = index.rescore(&query.features, hits, exact_scored(k));
        let mut matches = Vec::with_capacity(hits.len());
        for hit in hits {
            let Some(record) = self.store.get_by_seq(hit.seq)? else {
                continue;
            };
            let similarity = dot(&query.features, &record.features).clamp(-1.0, 1.0);
            if similarity >= min_similarity {
                let distance = self.distance(&query.siamese, &record.siamese);
                matches.push(Match {
                    id: record.id,
                    similarity,
                    distance,
                    duplicate: self.is_duplicate(similarity, distance, None),
                    metadata: record.metadata,
                });
            }
        }
        matches.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then_with(|| a.id.cmp(&b.id))
        });
        matches.truncate(k);
        Ok(matches)
    }
}

/// How many of the best re-ranked candidates are read from the store and
/// scored exactly, for `k` results: twice `k`, so that the 8-bit codes'
/// error (about 1e-3 in cosine) would have to exceed the gap between the
/// `k`-th and the `2k`-th candidate to push a true top-`k` neighbour out.
fn exact_scored(k: usize) -> usize {
    k.saturating_mul(2).max(k + 4)
}

/// Runs CPU-bound or blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
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
    if image.id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "id is {} bytes, the limit is {MAX_ID_BYTES}",
            image.id.len()
        )));
    }
    Ok(image.id.clone())
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

/// Records the model in a new database; refuses a database of another model.
fn check_model(store: &dyn Store, model: &str) -> Result<()> {
    match store.meta_get(META_MODEL)? {
        Some(stored) if stored != model.as_bytes() => Err(Error::ModelMismatch(format!(
            "this database was built with model '{}'; start with --model {} or use another --data-dir",
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&stored)
        ))),
        Some(_) => Ok(()),
        None => {
            store.meta_put(META_MODEL, model.as_bytes())?;
            store.flush()
        }
    }
}

/// The Siamese network for this backbone: the configured weights (which
/// must fit), else the bundled ones if they fit; `None` otherwise.
fn load_siamese(config: &Config, embedder: &Embedder) -> Result<Option<Arc<Siamese>>> {
    let path = config.siamese_weights.as_deref();
    match Siamese::load(path, config.model, embedder.tap_shape()) {
        Ok(s) => Ok(Some(Arc::new(s))),
        Err(e) if path.is_none() => {
            tracing::warn!("{e}; duplicates are decided by CNN cosine alone");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Records the Siamese weights in a database; refuses other weights, whose
/// vectors could not be compared with the stored ones.
fn check_siamese(store: &dyn Store, fingerprint: &str) -> Result<()> {
    match store.meta_get(META_SIAMESE)? {
        Some(stored) if stored != fingerprint.as_bytes() => Err(Error::ModelMismatch(format!(
            "this database's Siamese vectors come from Siamese weights {}, not these ({fingerprint}); \
             start with the --siamese-weights it was built with or use another --data-dir",
            String::from_utf8_lossy(&stored)
        ))),
        Some(_) => Ok(()),
        None => {
            store.meta_put(META_SIAMESE, fingerprint.as_bytes())?;
            store.flush()
        }
    }
}

fn load_projection(store: &dyn Store) -> Result<Option<Projection>> {
    store
        .meta_get(META_PCA)?
        .map(|b| Projection::from_bytes(&b))
        .transpose()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
