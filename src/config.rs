//! Configuration of the daemon, in one struct.
//!
//! Every field is a `serve` flag and can also be set through an environment
//! variable `LOOKALIKE_*`; the defaults work out of the box (sled under
//! `./lookalike-data`, the bundled EfficientNet-Lite0 model).

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use crate::embed::ModelKind;
use crate::error::{Error, Result};

/// hnsw_rs exits the process when asked for more connections than this.
const HNSW_MAX_CONNECTIONS: usize = 256;

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address to serve gRPC on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "LOOKALIKE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Folder of the database (created if missing).
    #[arg(long, env = "LOOKALIKE_DATA_DIR", default_value = "./lookalike-data")]
    pub data_dir: PathBuf,

    /// Embedding model. A database remembers its model and refuses another.
    #[arg(long, env = "LOOKALIKE_MODEL", default_value = "efficientnet-lite0")]
    pub model: ModelKind,

    /// Weights file to use instead of the bundled one (safetensors).
    #[arg(long, env = "LOOKALIKE_WEIGHTS")]
    pub weights: Option<PathBuf>,

    /// Threads one embedding pass may use (0: one per core).
    #[arg(long, env = "LOOKALIKE_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// How long the embedding worker waits for more requests to batch with
    /// one that has arrived, in milliseconds.
    #[arg(long, env = "LOOKALIKE_BATCH_BUDGET_MS", default_value_t = 2.0)]
    pub batch_budget_ms: f64,

    /// Largest accepted request message, in bytes (tonic's default is 4 MiB).
    #[arg(long, env = "LOOKALIKE_MAX_MESSAGE_BYTES", default_value_t = 32 << 20)]
    pub max_message_bytes: usize,

    /// Largest accepted decoded image, in pixels (width times height).
    #[arg(
        long,
        env = "LOOKALIKE_MAX_IMAGE_PIXELS",
        default_value_t = 100_000_000
    )]
    pub max_image_pixels: u64,

    /// Images the store must hold before PCA + HNSW replace exact search.
    #[arg(long, env = "LOOKALIKE_PCA_MIN_IMAGES", default_value_t = 1000)]
    pub pca_min_images: usize,

    /// Dimensions the PCA keeps (fewer if the store holds fewer images).
    #[arg(long, env = "LOOKALIKE_PCA_COMPONENTS", default_value_t = 100)]
    pub pca_components: usize,

    /// Refit the PCA when the store has grown by this factor since the last fit.
    #[arg(long, env = "LOOKALIKE_PCA_REFIT_GROWTH", default_value_t = 2.0)]
    pub pca_refit_growth: f64,

    /// At most this many images (a random sample) are used to fit the PCA.
    #[arg(long, env = "LOOKALIKE_PCA_MAX_FIT_SAMPLES", default_value_t = 20_000)]
    pub pca_max_fit_samples: usize,

    /// HNSW links per node (M). At most 256.
    #[arg(long, env = "LOOKALIKE_HNSW_M", default_value_t = 24)]
    pub hnsw_m: usize,

    /// HNSW candidate list size while building.
    #[arg(long, env = "LOOKALIKE_HNSW_EF_CONSTRUCTION", default_value_t = 200)]
    pub hnsw_ef_construction: usize,

    /// HNSW candidate list size while searching (raised to k when k is larger).
    #[arg(long, env = "LOOKALIKE_HNSW_EF_SEARCH", default_value_t = 96)]
    pub hnsw_ef_search: usize,

    /// HNSW candidates re-ranked by exact cosine per query, as a multiple of k.
    /// 8 keeps recall@10 near 0.98 on 100k real embeddings, where 4 gave
    /// 0.95 (`cargo bench --bench index`).
    #[arg(long, env = "LOOKALIKE_RERANK_FACTOR", default_value_t = 8)]
    pub rerank_factor: usize,

    /// Rebuild the graph once deleted points exceed this fraction of it.
    #[arg(
        long,
        env = "LOOKALIKE_REBUILD_TOMBSTONE_FRACTION",
        default_value_t = 0.2
    )]
    pub rebuild_tombstone_fraction: f64,

    /// Cosine similarity at or above which two images count as duplicates
    /// when no Siamese distance is available (no Siamese model for this
    /// backbone, or records stored before one was).
    #[arg(long, env = "LOOKALIKE_DUPLICATE_SIMILARITY", default_value_t = 0.85)]
    pub duplicate_similarity: f32,

    /// Largest k a Query may ask for.
    #[arg(long, env = "LOOKALIKE_MAX_K", default_value_t = 1000)]
    pub max_k: usize,

    /// Most duplicates listed in an Insert response.
    #[arg(long, env = "LOOKALIKE_MAX_DUPLICATES", default_value_t = 10)]
    pub max_duplicates: usize,

    /// Siamese weights (safetensors from `lookalike train-siamese`; default:
    /// the bundled model, trained on EfficientNet-Lite0 maps).
    #[arg(long, env = "LOOKALIKE_SIAMESE_WEIGHTS")]
    pub siamese_weights: Option<PathBuf>,

    /// Siamese distance at or below which two images are duplicates
    /// (default: the threshold calibrated with the model).
    #[arg(long, env = "LOOKALIKE_DUPLICATE_DISTANCE")]
    pub duplicate_distance: Option<f32>,
}

impl Config {
    /// A configuration with every default, for a given data folder.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            model: ModelKind::EfficientNetLite0,
            weights: None,
            threads: 0,
            batch_budget_ms: 2.0,
            max_message_bytes: 32 << 20,
            max_image_pixels: 100_000_000,
            pca_min_images: 1000,
            pca_components: 100,
            pca_refit_growth: 2.0,
            pca_max_fit_samples: 20_000,
            hnsw_m: 24,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 96,
            rerank_factor: 8,
            rebuild_tombstone_fraction: 0.2,
            duplicate_similarity: 0.85,
            max_k: 1000,
            max_duplicates: 10,
            siamese_weights: None,
            duplicate_distance: None,
        }
    }

    /// Rejects values that would crash a dependency or make no sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        if self.hnsw_m < 2 || self.hnsw_m > HNSW_MAX_CONNECTIONS {
            return bad(format!(
                "--hnsw-m must be in 2..={HNSW_MAX_CONNECTIONS}, got {}",
                self.hnsw_m
            ));
        }
        if self.hnsw_ef_construction == 0 || self.hnsw_ef_search == 0 {
            return bad("--hnsw-ef-construction and --hnsw-ef-search must be positive".into());
        }
        if self.pca_components == 0 {
            return bad("--pca-components must be positive".into());
        }
        if self.pca_min_images < 2 {
            return bad(format!(
                "--pca-min-images must be at least 2, got {}",
                self.pca_min_images
            ));
        }
        if self.pca_refit_growth.is_nan() || self.pca_refit_growth <= 1.0 {
            return bad(format!(
                "--pca-refit-growth must be above 1, got {}",
                self.pca_refit_growth
            ));
        }
        if !(0.0..=1.0).contains(&self.rebuild_tombstone_fraction) {
            return bad("--rebuild-tombstone-fraction must be in [0, 1]".into());
        }
        if !(-1.0..=1.0).contains(&self.duplicate_similarity) {
            return bad("--duplicate-similarity must be in [-1, 1]".into());
        }
        if let Some(d) = self.duplicate_distance {
            check_distance(d, "--duplicate-distance")?;
        }
        if !(0.0..=1000.0).contains(&self.batch_budget_ms) {
            return bad("--batch-budget-ms must be in [0, 1000]".into());
        }
        if self.max_k == 0 || self.rerank_factor == 0 {
            return bad("--max-k and --rerank-factor must be positive".into());
        }
        Ok(())
    }
}

/// A Siamese distance threshold must lie in (0, 2]: embeddings are unit vectors.
pub fn check_distance(d: f32, what: &str) -> Result<()> {
    if d > 0.0 && d <= 2.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be in (0, 2], got {d}"
        )))
    }
}
