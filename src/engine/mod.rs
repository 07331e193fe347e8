//! The engine: what the daemon does, with no knowledge of gRPC.
//!
//! An [`Engine`] is a cheap-to-clone handle over the shared state: the
//! store, the embedding network and the current index. Requests flow
//! decode → embed (on tokio's blocking pool: it is CPU-bound) → store →
//! index → respond. One file per operation: [`insert`], [`query`],
//! [`compare`], [`get`], [`delete`], [`stats`]; [`verdict`] is the duplicate
//! rule they share. A background task (see [`maintenance`]) fits the PCA
//! once enough images are stored, refits it as the store grows and rebuilds
//! the graph when deleted points pile up; it swaps the new index in whole,
//! so queries never wait on it.

mod batcher;
mod compare;
mod delete;
mod get;
mod groups;
mod insert;
mod local;
mod maintenance;
mod query;
mod review;
mod snapshot;
mod stats;
mod verdict;

pub use batcher::{Batcher, Embedded};
pub use compare::Comparison;
pub use get::{ListOptions, Listed};
pub use groups::{Group, GroupEvent, GroupMember, GroupOptions};
pub use insert::{InsertOutcome, NewImage, Prepared};
pub use query::Match;
pub use snapshot::{restore, Manifest};
pub use stats::Stats;
pub use verdict::{Tier, Verdict};

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use tokio::sync::Notify;

use crate::config::Config;
use crate::decode;
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::local::Keypoints;
use crate::pca::Projection;
use crate::siamese::Siamese;
use crate::store::{ImageFacts, SledStore, Store};

/// Meta key naming the model a database was built with.
pub const META_MODEL: &str = "model";
/// Meta key naming the Siamese weights the stored vectors come from.
pub const META_SIAMESE: &str = "siamese";
/// Meta key of the view of each image the network sees ([`View`]).
pub const META_VIEW: &str = "view";
/// Meta key of the fitted PCA projection.
pub const META_PCA: &str = "pca";
/// How long shutdown waits for background maintenance to stop.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// An image in a request: encoded bytes, or the id of a stored one.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Bytes(Vec<u8>),
    Id(String),
}

/// One image's descriptors, from a request or the store.
struct Resolved {
    embedded: Embedded,
    /// The seq to leave out of its own results, for a stored image.
    exclude: Option<u64>,
    /// The stored image's id (review decisions are about ids).
    id: Option<String>,
    /// What the decoder saw (absent for records stored before it was kept).
    facts: Option<ImageFacts>,
    /// Only records stored up to this seq are candidates (an insert's
    /// duplicates, judged as of its own commit).
    upto: Option<u64>,
    /// Its keypoints, for the geometric check of candidates (none for
    /// records stored before keypoints were kept).
    keypoints: Option<Keypoints>,
    /// The CNN features of another view of it (a query image's centre, in
    /// a database of whole views), searched with as well.
    also: Option<Vec<f32>>,
    /// The network's input for that view, not embedded yet.
    centre_input: Option<Vec<f32>>,
}

impl Resolved {
    fn side(&self) -> verdict::Side<'_> {
        verdict::Side {
            id: self.id.as_deref(),
            facts: self.facts.as_ref(),
        }
    }
}

/// An image decoded and embedded.
pub struct EmbeddedImage {
    pub embedded: Embedded,
    /// The network's input for its centre view, when asked for and the
    /// database's view is another (a query by image may search with both).
    pub centre: Option<Vec<f32>>,
    pub facts: ImageFacts,
    pub thumbnail: Option<Vec<u8>>,
    /// `None` with `--no-keypoints`.
    pub keypoints: Option<Keypoints>,
}

/// Owns an engine's lifetime, as mini-redis's `DbDropGuard` owns its `Db`:
/// the background maintenance task holds a handle of its own, so the shared
/// state is never dropped while it runs, and something must stop it.
/// Dropping the guard does, whichever way its owner leaves (an error, a
/// panic): it stops the task and flushes the store. A clean stop calls
/// [`Engine::close`] first, which also waits for writes in flight and saves
/// the graph.
pub struct EngineGuard {
    engine: Engine,
}

impl EngineGuard {
    pub fn new(engine: Engine) -> Self {
        EngineGuard { engine }
    }

    /// A handle on the guarded engine.
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        let shared = &self.engine.shared;
        if let Some(task) = shared.stop_maintenance() {
            task.abort();
        }
        if let Err(e) = shared.store.flush() {
            tracing::error!(error = %e, "cannot flush the store on the way out");
        }
    }
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
    /// Bounds the memory of every decode in flight together.
    decode_budget: decode::DecodeBudget,
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
    /// Writers (insert, delete) hold this in read mode around their write,
    /// taken before `index`; a snapshot holds it in write mode while it
    /// copies the records, so it sees no write half-done and reads go on.
    /// Lock order: `writes`, then `index`, then the store and index locks.
    writes: RwLock<()>,
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
    /// Seqs of stored records found damaged (unreadable) so far: skipped by
    /// searches, groups, lists and rebuilds, logged once each, counted in
    /// Stats. A leaf lock: nothing is taken while it is held.
    damaged: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// The store's reopen count the index was last built against: after a
    /// reopen (a write failed, a full disk) the store may hold less or
    /// other than the index, so maintenance rebuilds it from the store.
    store_reopens_seen: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// Opens the database in `config.data_dir` and loads the model. The index
    /// is empty until [`Engine::load_index`] runs.
    pub fn open(config: Config) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(Error::file("create the data folder", &config.data_dir))?;
        let store = SledStore::open(&config.data_dir.join("sled"))?;
        let view = database_view(&store)?;
        check_model(&store, config.model.name())?;
        let embedder = Arc::new(
            Embedder::load(config.model, config.weights.as_deref(), config.threads)?
                .with_view(view),
        );
        let siamese = load_siamese(&config, &embedder)?;
        if let Some(s) = &siamese {
            check_siamese(&store, s.fingerprint())?;
        }
        let batcher = Batcher::start(
            embedder.clone(),
            siamese.clone(),
            Duration::from_micros((config.batch_budget_ms * 1000.0) as u64),
        )?;
        let decode_memory_mib = config.decode_memory_mib;
        Ok(Engine {
            shared: Arc::new(Shared {
                config,
                store: Box::new(store),
                embedder,
                siamese,
                batcher,
                decode_budget: decode::DecodeBudget::new(decode_memory_mib),
                index: RwLock::new(Arc::new(Index::exact())),
                writes: RwLock::new(()),
                closed: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                maintenance: Notify::new(),
                shutdown: AtomicBool::new(false),
                maintenance_task: std::sync::Mutex::new(None),
                damaged: std::sync::Mutex::new(Default::default()),
                store_reopens_seen: Default::default(),
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
        Ok(self.embed_image(bytes, false).await?.embedded)
    }

    /// [`Engine::embed`], plus what the decoder saw and, with `thumbnail`
    /// (and thumbnails on), a thumbnail.
    ///
    /// The decode first takes room in the decode memory budget for what its
    /// header says it will allocate (see [`decode::cost`]).
    pub async fn embed_image(&self, bytes: Vec<u8>, thumbnail: bool) -> Result<EmbeddedImage> {
        self.embed_views(bytes, thumbnail, false).await
    }

    /// [`Engine::embed_image`]; with `centre_too`, in a database of whole
    /// views, the network's input for the image's centre view is made too
    /// (from the same decode), not embedded ([`EmbeddedImage::centre`]).
    async fn embed_views(
        &self,
        bytes: Vec<u8>,
        thumbnail: bool,
        centre_too: bool,
    ) -> Result<EmbeddedImage> {
        let bytes = Arc::new(bytes);
        let (cost, what) = {
            let bytes = bytes.clone();
            let max_pixels = self.shared.config.max_image_pixels;
            blocking(move || decode::cost(&bytes, max_pixels)).await?
        };
        let reservation = match self.shared.decode_budget.reserve(cost, &what).await {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("lookalike_decode_budget_refusals_total").increment(1);
                return Err(e);
            }
        };
        let shared = self.shared.clone();
        let decoded = blocking(move || {
            let _reservation = reservation;
            let started = std::time::Instant::now();
            let size = shared.embedder.kind().input_size();
            let view = shared.embedder.view();
            let views: &[decode::View] = match centre_too && view != decode::View::Centre {
                true => &[view, decode::View::Centre],
                false => &[view],
            };
            let config = &shared.config;
            let side = (thumbnail && !config.no_thumbnails).then_some(config.thumbnail_side);
            let keypoints = !config.no_keypoints;
            let decoded = decode::for_network(
                &bytes,
                config.max_image_pixels,
                (size, views),
                side,
                keypoints,
            );
            metrics::histogram!("lookalike_decode_seconds").record(started.elapsed().as_secs_f64());
            decoded
        })
        .await?;
        // The keypoints are found beside the network's forward pass.
        let keypoints = async {
            match decoded.for_keypoints {
                Some(grey) => blocking(move || Ok(crate::local::extract_grey(grey)))
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let mut inputs = decoded.inputs.into_iter();
        let (input, centre) = (inputs.next().unwrap_or_default(), inputs.next());
        let (embedded, keypoints) = tokio::try_join!(self.shared.batcher.embed(input), keypoints)?;
        Ok(EmbeddedImage {
            embedded,
            centre,
            facts: decoded.facts,
            thumbnail: decoded.thumbnail,
            keypoints,
        })
    }

    /// Stops background maintenance (a rebuild in progress is abandoned:
    /// the index is a cache of the store), waits for writes in flight,
    /// refuses new ones, flushes the store and saves the graph for a fast
    /// next start; call before exit.
    pub async fn close(&self) -> Result<()> {
        if let Some(task) = self.shared.stop_maintenance() {
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
            // Flushes, and saves the counts so the next open need not walk
            // the ids; the graph is saved even if that fails (its stamp
            // then will not match, and it is rebuilt).
            let store_closed = shared.store.close();
            if shared.ready.load(Ordering::SeqCst) {
                shared.save_index(&slot)?;
            }
            store_closed
        })
        .await
    }

    /// Refuses writes from now on (UNAVAILABLE, "shutting down"); writes
    /// already past that check finish. The first step of a graceful stop;
    /// [`Engine::close`] then waits for them.
    pub fn refuse_writes(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
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
        self.resolve_with(image, false).await
    }

    /// [`Engine::resolve`]; for a `query`, a stored image's keypoints are
    /// not read (a query by id does without the keypoint check), and an
    /// image's centre view is prepared too in a database of whole views
    /// (a query by image may search with it as well).
    async fn resolve_with(&self, image: ImageSource, query: bool) -> Result<Resolved> {
        match image {
            ImageSource::Bytes(bytes) => {
                let image = self.embed_views(bytes, false, query).await?;
                Ok(Resolved {
                    embedded: image.embedded,
                    exclude: None,
                    id: None,
                    facts: Some(image.facts),
                    upto: None,
                    keypoints: image.keypoints,
                    also: None,
                    centre_input: image.centre,
                })
            }
            ImageSource::Id(id) => {
                check_stored_id(&id)?;
                let record = self.get(id).await?;
                let shared = self.shared.clone();
                let seq = record.seq;
                let keypoints = match !query && !self.shared.config.no_keypoints {
                    false => None,
                    true => blocking(move || shared.keypoints(seq)).await?,
                };
                Ok(Resolved {
                    keypoints,
                    ..Resolved::stored(record)
                })
            }
        }
    }
}

/// Refuses an id no stored image can have, before the store is asked.
fn check_stored_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidArgument("image id is empty".into()));
    }
    insert::check_id(id)
}

impl Resolved {
    fn stored(record: crate::store::Record) -> Self {
        Resolved {
            embedded: Embedded {
                features: record.features,
                siamese: record.siamese,
                regions: Vec::new(),
            },
            exclude: Some(record.seq),
            id: Some(record.id),
            facts: record.facts,
            upto: None,
            keypoints: None,
            also: None,
            centre_input: None,
        }
    }
}

impl Shared {
    /// Tells the maintenance task (and a build it runs) to stop; its handle,
    /// for the caller to wait on or abort.
    fn stop_maintenance(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.shutdown.store(true, Ordering::SeqCst);
        self.maintenance.notify_one();
        self.maintenance_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn current_index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `Ok` when `error` is a damaged record, which is quarantined (logged
    /// the first time, counted) so the caller can skip it; any other error
    /// is given back.
    fn skip_damaged(&self, error: Error) -> Result<()> {
        let Error::Damaged { seq, .. } = &error else {
            return Err(error);
        };
        let count = {
            let mut damaged = self.damaged.lock().unwrap_or_else(|e| e.into_inner());
            damaged.insert(*seq).then_some(damaged.len())
        };
        // Logged with the lock released: it is a leaf.
        if let Some(count) = count {
            tracing::error!(error = %error, "damaged record quarantined");
            metrics::gauge!("lookalike_damaged_records").set(count as f64);
        }
        Ok(())
    }

    /// A damaged record deleted or replaced: no longer counted.
    fn forget_damaged(&self, seq: u64) {
        let count = {
            let mut damaged = self.damaged.lock().unwrap_or_else(|e| e.into_inner());
            damaged.remove(&seq).then_some(damaged.len())
        };
        if let Some(count) = count {
            metrics::gauge!("lookalike_damaged_records").set(count as f64);
        }
    }

    /// How many damaged records have been found so far.
    fn damaged_count(&self) -> usize {
        self.damaged.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The index slot's read lock, for a write to the store and the index
    /// (see [`Shared::index`]); refused once shutdown has begun.
    fn write_slot(&self) -> Result<WriteSlot<'_>> {
        let writes = self.writes.read().unwrap_or_else(|e| e.into_inner());
        let slot = self.index.read().unwrap_or_else(|e| e.into_inner());
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the daemon is shutting down".into()));
        }
        Ok(WriteSlot {
            _writes: writes,
            index: slot,
        })
    }
}

/// What a writer holds from its store write to its index update: the
/// `writes` lock and the index slot, both in read mode (see `Shared`).
struct WriteSlot<'a> {
    _writes: std::sync::RwLockReadGuard<'a, ()>,
    index: std::sync::RwLockReadGuard<'a, Arc<Index>>,
}

impl std::ops::Deref for WriteSlot<'_> {
    type Target = Arc<Index>;

    fn deref(&self) -> &Arc<Index> {
        &self.index
    }
}

/// Runs CPU-bound or blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}

/// The view of its images a database's vectors were made from: the one it
/// records; a database made before views were recorded (it has a model)
/// has centre views; a new one gets the default, and records it.
fn database_view(store: &dyn Store) -> Result<decode::View> {
    if let Some(name) = store.meta_get(META_VIEW)? {
        return decode::View::from_name(&name).ok_or_else(|| {
            Error::ModelMismatch(format!(
                "this database's images were embedded in view '{}', which this build does not know",
                String::from_utf8_lossy(&name)
            ))
        });
    }
    let view = match store.meta_get(META_MODEL)? {
        Some(_) => decode::View::Centre,
        None => decode::View::default(),
    };
    store.meta_put(META_VIEW, view.name().as_bytes())?;
    store.flush()?;
    Ok(view)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_guard_stops_maintenance_and_frees_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard =
            EngineGuard::new(Engine::open(Config::with_data_dir(dir.path())).expect("open"));
        let engine = guard.engine();
        engine.load_index().await.expect("load the index");
        engine.spawn_maintenance();
        let state = Arc::downgrade(&engine.shared);
        drop(engine);
        // The maintenance task still holds the state; the guard stops it.
        assert!(state.strong_count() > 0);
        drop(guard);
        for _ in 0..200 {
            if state.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine's state outlived its guard");
    }

    #[test]
    fn a_database_keeps_the_view_it_was_made_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name: &str| SledStore::open(&dir.path().join(name)).expect("open");
        // A new database gets the default view, and keeps it.
        let new = open("new");
        assert_eq!(database_view(&new).expect("view"), decode::View::Whole);
        assert_eq!(
            new.meta_get(META_VIEW).expect("meta").as_deref(),
            Some(&b"whole"[..])
        );
        assert_eq!(database_view(&new).expect("view"), decode::View::Whole);
        // One made before views were recorded has a model: centre views.
        let old = open("old");
        old.meta_put(META_MODEL, b"efficientnet-lite0")
            .expect("put");
        assert_eq!(database_view(&old).expect("view"), decode::View::Centre);
        assert_eq!(database_view(&old).expect("view"), decode::View::Centre);
        // An unknown view is refused, not guessed.
        let odd = open("odd");
        odd.meta_put(META_VIEW, b"sideways").expect("put");
        let err = database_view(&odd).expect_err("refused");
        assert!(err.to_string().contains("sideways"), "{err}");
    }
}
