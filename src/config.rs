//! Configuration of the daemon, in one struct.
//!
//! Every field is a `serve` flag and can also be set through an environment
//! variable `LOOKALIKE_*`; the defaults work out of the box (sled under
//! `./lookalike-data`, the bundled EfficientNet-Lite0 model).
//!
//! Each default is written once, in [`defaults`], and read both by clap and
//! by [`Config::with_data_dir`]; each numeric range is written once, as a
//! [`Bounds`], and checked both by clap while parsing a flag and by
//! [`Config::validate`] for a configuration built in code.

use std::{fmt::Display, net::SocketAddr, path::PathBuf, str::FromStr};

use clap::Args;

use crate::api::auth::{Keys, Secret};
use crate::embed::ModelKind;
use crate::error::{Error, Result};

/// Every default, once.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    use crate::embed::ModelKind;

    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50051));
    pub const DATA_DIR: &str = "./lookalike-data";
    pub const MODEL: ModelKind = ModelKind::EfficientNetLite0;
    pub const THREADS: usize = 0;
    pub const BATCH_BUDGET_MS: f64 = 2.0;
    pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
    /// 64 Mi pixels: a 64-megapixel phone photo (9248x6936) fits.
    pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;
    /// What decodes in flight may allocate together, in MiB.
    pub const DECODE_MEMORY_MIB: u32 = 1024;
    pub const PCA_MIN_IMAGES: usize = 1000;
    pub const PCA_COMPONENTS: usize = 100;
    pub const PCA_REFIT_GROWTH: f64 = 2.0;
    pub const PCA_MAX_FIT_SAMPLES: usize = 20_000;
    pub const HNSW_M: usize = 24;
    pub const HNSW_EF_CONSTRUCTION: usize = 200;
    pub const HNSW_EF_SEARCH: usize = 96;
    pub const RERANK_FACTOR: usize = 8;
    pub const REBUILD_TOMBSTONE_FRACTION: f64 = 0.2;
    pub const DUPLICATE_SIMILARITY: f32 = 0.85;
    pub const SIMILAR_SIMILARITY: f32 = 0.7;
    pub const THUMBNAIL_SIDE: u32 = 128;
    pub const GROUP_NEIGHBOURS: usize = 16;
    pub const MAX_GROUP_SIZE: usize = 100;
    /// Groups checks the keypoints of its neighbour pairs by default up to
    /// this many stored images (about 0.15 ms a pair on 2 cores: 16
    /// neighbours of 100,000 images take minutes, of a million an hour).
    pub const GROUP_KEYPOINTS_UP_TO: usize = 100_000;
    pub const MAX_K: usize = 1000;
    pub const MAX_DUPLICATES: usize = 10;
    pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
}

/// The values a numeric setting accepts.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<T> {
    min: T,
    max: T,
    /// Whether `min` itself is refused.
    min_excluded: bool,
}

impl<T: PartialOrd + Copy + Display> Bounds<T> {
    /// `min..=max`.
    pub const fn closed(min: T, max: T) -> Self {
        Bounds {
            min,
            max,
            min_excluded: false,
        }
    }

    /// Above `min`, up to `max`.
    pub const fn above(min: T, max: T) -> Self {
        Bounds {
            min,
            max,
            min_excluded: true,
        }
    }

    pub fn contains(&self, value: T) -> bool {
        let above_min = if self.min_excluded {
            value > self.min
        } else {
            value >= self.min
        };
        above_min && value <= self.max
    }

    /// `value`, or an error naming `what` and the range.
    pub fn check(&self, what: &str, value: T) -> Result<T> {
        if self.contains(value) {
            Ok(value)
        } else {
            Err(Error::InvalidArgument(format!(
                "{what} must be {self}, got {value}"
            )))
        }
    }
}

impl<T: PartialOrd + Copy + Display + FromStr + Send + Sync + 'static> Bounds<T> {
    /// A clap value parser that refuses values outside these bounds.
    pub fn parser(self) -> impl Fn(&str) -> std::result::Result<T, String> + Clone {
        move |text: &str| {
            let value: T = text
                .trim()
                .parse()
                .map_err(|_| format!("'{text}' is not a number"))?;
            if self.contains(value) {
                Ok(value)
            } else {
                Err(format!("must be {self}"))
            }
        }
    }
}

impl<T: Display> Display for Bounds<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = if self.min_excluded { '(' } else { '[' };
        write!(f, "in {open}{}, {}]", self.min, self.max)
    }
}

/// Every range, once.
pub mod bounds {
    use super::Bounds;

    /// A point keeps up to `2 M` neighbours on layer 0 in a fixed run of
    /// slots; past 256 a graph is all memory (hnswlib suggests 5 to 48).
    pub const HNSW_M: Bounds<usize> = Bounds::closed(2, 256);
    pub const EF: Bounds<usize> = Bounds::closed(1, 100_000);
    pub const BATCH_BUDGET_MS: Bounds<f64> = Bounds::closed(0.0, 1000.0);
    /// Below 1 KiB not even a header fits.
    pub const MAX_MESSAGE_BYTES: Bounds<usize> = Bounds::closed(1 << 10, 1 << 30);
    pub const MAX_IMAGE_PIXELS: Bounds<u64> = Bounds::closed(1, 1 << 32);
    /// Below 16 MiB even a small photo could not be decoded.
    pub const DECODE_MEMORY_MIB: Bounds<u32> = Bounds::closed(16, 1 << 20);
    pub const PCA_MIN_IMAGES: Bounds<usize> = Bounds::closed(2, usize::MAX);
    pub const PCA_COMPONENTS: Bounds<usize> = Bounds::closed(1, 4096);
    pub const PCA_REFIT_GROWTH: Bounds<f64> = Bounds::above(1.0, f64::MAX);
    pub const PCA_MAX_FIT_SAMPLES: Bounds<usize> = Bounds::closed(2, usize::MAX);
    pub const RERANK_FACTOR: Bounds<usize> = Bounds::closed(1, 1000);
    pub const FRACTION: Bounds<f64> = Bounds::closed(0.0, 1.0);
    /// A cosine similarity.
    pub const SIMILARITY: Bounds<f32> = Bounds::closed(-1.0, 1.0);
    /// A Siamese distance threshold: embeddings are unit vectors, so
    /// distances lie in [0, 2], and a threshold of 0 would match nothing
    /// but exact copies' rounding.
    pub const DISTANCE: Bounds<f32> = Bounds::above(0.0, 2.0);
    pub const MAX_K: Bounds<usize> = Bounds::closed(1, 100_000);
    pub const MAX_DUPLICATES: Bounds<usize> = Bounds::closed(0, 1000);
    pub const THUMBNAIL_SIDE: Bounds<u32> = Bounds::closed(16, 1024);
    pub const GROUP_NEIGHBOURS: Bounds<usize> = Bounds::closed(1, 1000);
    pub const MAX_GROUP_SIZE: Bounds<usize> = Bounds::closed(2, 1_000_000);
    pub const SHUTDOWN_TIMEOUT_SECS: Bounds<u64> = Bounds::closed(0, 3600);
}

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address to serve gRPC on. Port 0 picks a free port (printed at start).
    #[arg(long, env = "LOOKALIKE_LISTEN", default_value_t = defaults::LISTEN, help_heading = "Server")]
    pub listen: SocketAddr,

    /// Folder of the database (created if missing).
    #[arg(long, env = "LOOKALIKE_DATA_DIR", default_value = defaults::DATA_DIR, help_heading = "Server")]
    pub data_dir: PathBuf,

    /// On SIGTERM or SIGINT, how long requests in flight may take to finish,
    /// in seconds, before the daemon saves its index and exits anyway. A
    /// second signal exits at once (acknowledged writes are already on disk).
    #[arg(long = "shutdown-timeout", env = "LOOKALIKE_SHUTDOWN_TIMEOUT",
        default_value_t = defaults::SHUTDOWN_TIMEOUT_SECS,
        value_parser = bounds::SHUTDOWN_TIMEOUT_SECS.parser(), help_heading = "Server")]
    pub shutdown_timeout_secs: u64,

    /// Serve Prometheus metrics (GET /metrics) on this address; off unless
    /// set. Keep it on loopback or a private network: it has no key.
    #[arg(long, env = "LOOKALIKE_METRICS_LISTEN", help_heading = "Server")]
    pub metrics_listen: Option<SocketAddr>,

    /// API key with full access. Once a key is set, every call but health
    /// must carry one (`authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(
        long,
        env = "LOOKALIKE_API_KEY",
        hide_env_values = true,
        conflicts_with = "api_key_file",
        help_heading = "Security"
    )]
    pub api_key: Option<Secret>,

    /// File holding the full-access API key (a mounted secret, say).
    #[arg(long, env = "LOOKALIKE_API_KEY_FILE", help_heading = "Security")]
    pub api_key_file: Option<PathBuf>,

    /// API key that may only read: Query, Compare, Get, Stats (and
    /// reflection); a write with it is PERMISSION_DENIED.
    #[arg(
        long,
        env = "LOOKALIKE_READ_ONLY_API_KEY",
        hide_env_values = true,
        conflicts_with = "read_only_api_key_file",
        help_heading = "Security"
    )]
    pub read_only_api_key: Option<Secret>,

    /// File holding the read-only API key.
    #[arg(
        long,
        env = "LOOKALIKE_READ_ONLY_API_KEY_FILE",
        help_heading = "Security"
    )]
    pub read_only_api_key_file: Option<PathBuf>,

    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(
        long,
        env = "LOOKALIKE_TLS_CERT",
        requires = "tls_key",
        help_heading = "Security"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "LOOKALIKE_TLS_KEY",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only clients whose certificate this PEM CA bundle
    /// signed (needs --tls-cert).
    #[arg(
        long,
        env = "LOOKALIKE_TLS_CLIENT_CA",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Embedding model. A database remembers its model and refuses another.
    #[arg(long, env = "LOOKALIKE_MODEL", default_value_t = defaults::MODEL, help_heading = "Model")]
    pub model: ModelKind,

    /// Weights file to use instead of the bundled one (safetensors).
    #[arg(long, env = "LOOKALIKE_WEIGHTS", help_heading = "Model")]
    pub weights: Option<PathBuf>,

    /// Siamese weights (safetensors from `lookalike train-siamese`; default:
    /// the bundled model, trained on EfficientNet-Lite0 maps).
    #[arg(long, env = "LOOKALIKE_SIAMESE_WEIGHTS", help_heading = "Model")]
    pub siamese_weights: Option<PathBuf>,

    /// Threads one embedding pass may use (0: one per core).
    #[arg(long, env = "LOOKALIKE_THREADS", default_value_t = defaults::THREADS, help_heading = "Model")]
    pub threads: usize,

    /// How long the embedding worker waits for more requests to batch with
    /// one that has arrived, in milliseconds.
    #[arg(long, env = "LOOKALIKE_BATCH_BUDGET_MS", default_value_t = defaults::BATCH_BUDGET_MS,
        value_parser = bounds::BATCH_BUDGET_MS.parser(), help_heading = "Model")]
    pub batch_budget_ms: f64,

    /// Siamese distance at or below which two images are duplicates
    /// (default: the threshold calibrated with the model).
    #[arg(long, env = "LOOKALIKE_DUPLICATE_DISTANCE",
        value_parser = bounds::DISTANCE.parser(), help_heading = "Duplicate verdict")]
    pub duplicate_distance: Option<f32>,

    /// Cosine similarity at or above which two images count as duplicates
    /// when no Siamese distance is available (no Siamese model for this
    /// backbone, or records stored before one was).
    #[arg(long, env = "LOOKALIKE_DUPLICATE_SIMILARITY", default_value_t = defaults::DUPLICATE_SIMILARITY,
        value_parser = bounds::SIMILARITY.parser(), allow_hyphen_values = true,
        help_heading = "Duplicate verdict")]
    pub duplicate_similarity: f32,

    /// Cosine similarity at or above which a match that is not a duplicate
    /// is called *similar* (the third tier, after exact and near-duplicate).
    #[arg(long, env = "LOOKALIKE_SIMILAR_SIMILARITY", default_value_t = defaults::SIMILAR_SIMILARITY,
        value_parser = bounds::SIMILARITY.parser(), allow_hyphen_values = true,
        help_heading = "Duplicate verdict")]
    pub similar_similarity: f32,

    /// Skip the keypoint check: no keypoints are computed or stored (about
    /// 18 KB an image), matches are ranked by cosine alone and the verdict
    /// is the Siamese network's. Inserts and image queries get faster;
    /// heavy crops, screenshots and stickered copies are then often missed.
    #[arg(
        long,
        env = "LOOKALIKE_NO_KEYPOINTS",
        help_heading = "Duplicate verdict"
    )]
    pub no_keypoints: bool,

    /// Keep no thumbnails (by default a small JPEG per image is stored, a
    /// few KB, for `lookalike report` and Get).
    #[arg(long, env = "LOOKALIKE_NO_THUMBNAILS", help_heading = "Server")]
    pub no_thumbnails: bool,

    /// Longer side of stored thumbnails, in pixels.
    #[arg(long, env = "LOOKALIKE_THUMBNAIL_SIDE", default_value_t = defaults::THUMBNAIL_SIDE,
        value_parser = bounds::THUMBNAIL_SIDE.parser(), help_heading = "Server")]
    pub thumbnail_side: u32,

    /// Images the store must hold before PCA + HNSW replace exact search.
    #[arg(long, env = "LOOKALIKE_PCA_MIN_IMAGES", default_value_t = defaults::PCA_MIN_IMAGES,
        value_parser = bounds::PCA_MIN_IMAGES.parser(), help_heading = "Index")]
    pub pca_min_images: usize,

    /// Dimensions the PCA keeps (fewer if the store holds fewer images).
    #[arg(long, env = "LOOKALIKE_PCA_COMPONENTS", default_value_t = defaults::PCA_COMPONENTS,
        value_parser = bounds::PCA_COMPONENTS.parser(), help_heading = "Index")]
    pub pca_components: usize,

    /// Refit the PCA when the store has grown by this factor since the last fit.
    #[arg(long, env = "LOOKALIKE_PCA_REFIT_GROWTH", default_value_t = defaults::PCA_REFIT_GROWTH,
        value_parser = bounds::PCA_REFIT_GROWTH.parser(), help_heading = "Index")]
    pub pca_refit_growth: f64,

    /// At most this many images (a random sample) are used to fit the PCA.
    #[arg(long, env = "LOOKALIKE_PCA_MAX_FIT_SAMPLES", default_value_t = defaults::PCA_MAX_FIT_SAMPLES,
        value_parser = bounds::PCA_MAX_FIT_SAMPLES.parser(), help_heading = "Index")]
    pub pca_max_fit_samples: usize,

    /// HNSW links per node (M).
    #[arg(long, env = "LOOKALIKE_HNSW_M", default_value_t = defaults::HNSW_M,
        value_parser = bounds::HNSW_M.parser(), help_heading = "Index")]
    pub hnsw_m: usize,

    /// HNSW candidate list size while building.
    #[arg(long, env = "LOOKALIKE_HNSW_EF_CONSTRUCTION", default_value_t = defaults::HNSW_EF_CONSTRUCTION,
        value_parser = bounds::EF.parser(), help_heading = "Index")]
    pub hnsw_ef_construction: usize,

    /// HNSW candidate list size while searching (raised to k when k is larger).
    #[arg(long, env = "LOOKALIKE_HNSW_EF_SEARCH", default_value_t = defaults::HNSW_EF_SEARCH,
        value_parser = bounds::EF.parser(), help_heading = "Index")]
    pub hnsw_ef_search: usize,

    /// HNSW candidates re-ranked by exact cosine per query, as a multiple of k.
    /// 8 keeps recall@10 near 0.98 on 100k real embeddings, where 4 gave
    /// 0.95 (`cargo bench --bench index`).
    #[arg(long, env = "LOOKALIKE_RERANK_FACTOR", default_value_t = defaults::RERANK_FACTOR,
        value_parser = bounds::RERANK_FACTOR.parser(), help_heading = "Index")]
    pub rerank_factor: usize,

    /// Rebuild the graph once deleted points exceed this fraction of it.
    #[arg(long, env = "LOOKALIKE_REBUILD_TOMBSTONE_FRACTION",
        default_value_t = defaults::REBUILD_TOMBSTONE_FRACTION,
        value_parser = bounds::FRACTION.parser(), help_heading = "Index")]
    pub rebuild_tombstone_fraction: f64,

    /// Largest accepted request message, in bytes (tonic's default is 4 MiB).
    #[arg(long, env = "LOOKALIKE_MAX_MESSAGE_BYTES", default_value_t = defaults::MAX_MESSAGE_BYTES,
        value_parser = bounds::MAX_MESSAGE_BYTES.parser(), help_heading = "Limits")]
    pub max_message_bytes: usize,

    /// Largest accepted decoded image, in pixels (width times height).
    #[arg(long, env = "LOOKALIKE_MAX_IMAGE_PIXELS", default_value_t = defaults::MAX_IMAGE_PIXELS,
        value_parser = bounds::MAX_IMAGE_PIXELS.parser(), help_heading = "Limits")]
    pub max_image_pixels: u64,

    /// Memory all decodes in flight may use together, in MiB; a request
    /// waits (up to 30 s) for room, and one that alone needs more is refused.
    #[arg(long, env = "LOOKALIKE_DECODE_MEMORY_MIB", default_value_t = defaults::DECODE_MEMORY_MIB,
        value_parser = bounds::DECODE_MEMORY_MIB.parser(), help_heading = "Limits")]
    pub decode_memory_mib: u32,

    /// Largest k a Query may ask for.
    #[arg(long, env = "LOOKALIKE_MAX_K", default_value_t = defaults::MAX_K,
        value_parser = bounds::MAX_K.parser(), help_heading = "Limits")]
    pub max_k: usize,

    /// Most duplicates listed in an Insert response.
    #[arg(long, env = "LOOKALIKE_MAX_DUPLICATES", default_value_t = defaults::MAX_DUPLICATES,
        value_parser = bounds::MAX_DUPLICATES.parser(), help_heading = "Limits")]
    pub max_duplicates: usize,
}

impl Config {
    /// A configuration with every default, for a given data folder.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: defaults::LISTEN,
            data_dir: data_dir.into(),
            shutdown_timeout_secs: defaults::SHUTDOWN_TIMEOUT_SECS,
            metrics_listen: None,
            api_key: None,
            api_key_file: None,
            read_only_api_key: None,
            read_only_api_key_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            model: defaults::MODEL,
            weights: None,
            siamese_weights: None,
            threads: defaults::THREADS,
            batch_budget_ms: defaults::BATCH_BUDGET_MS,
            duplicate_distance: None,
            duplicate_similarity: defaults::DUPLICATE_SIMILARITY,
            similar_similarity: defaults::SIMILAR_SIMILARITY,
            no_keypoints: false,
            no_thumbnails: false,
            thumbnail_side: defaults::THUMBNAIL_SIDE,
            pca_min_images: defaults::PCA_MIN_IMAGES,
            pca_components: defaults::PCA_COMPONENTS,
            pca_refit_growth: defaults::PCA_REFIT_GROWTH,
            pca_max_fit_samples: defaults::PCA_MAX_FIT_SAMPLES,
            hnsw_m: defaults::HNSW_M,
            hnsw_ef_construction: defaults::HNSW_EF_CONSTRUCTION,
            hnsw_ef_search: defaults::HNSW_EF_SEARCH,
            rerank_factor: defaults::RERANK_FACTOR,
            rebuild_tombstone_fraction: defaults::REBUILD_TOMBSTONE_FRACTION,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            max_image_pixels: defaults::MAX_IMAGE_PIXELS,
            decode_memory_mib: defaults::DECODE_MEMORY_MIB,
            max_k: defaults::MAX_K,
            max_duplicates: defaults::MAX_DUPLICATES,
        }
    }

    /// The API keys, from the flags or their files.
    pub fn keys(&self) -> Result<Keys> {
        let load = |key: &Option<Secret>, file: &Option<PathBuf>| match (key, file) {
            (Some(key), _) => Ok(Some(key.clone())),
            (None, Some(path)) => Secret::from_file(path).map(Some),
            (None, None) => Ok(None),
        };
        let full = load(&self.api_key, &self.api_key_file)?;
        let read_only = load(&self.read_only_api_key, &self.read_only_api_key_file)?;
        Keys::new(full.as_ref(), read_only.as_ref())
    }

    /// The TLS settings, read from their files; `None` for plaintext.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |doing, path: &PathBuf| std::fs::read(path).map_err(Error::file(doing, path));
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_client_ca.is_some() {
                return Err(Error::InvalidArgument(
                    "TLS needs both --tls-cert and --tls-key".into(),
                ));
            }
            return Ok(None);
        };
        let identity = Identity::from_pem(
            read("read the TLS certificate", cert)?,
            read("read the TLS key", key)?,
        );
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("read the client CA", ca)?));
        }
        Ok(Some(tls))
    }

    /// Checks every range, for a configuration built in code (clap already
    /// checked those that came from flags), against the same [`bounds`].
    pub fn validate(&self) -> Result<()> {
        bounds::HNSW_M.check("--hnsw-m", self.hnsw_m)?;
        bounds::EF.check("--hnsw-ef-construction", self.hnsw_ef_construction)?;
        bounds::EF.check("--hnsw-ef-search", self.hnsw_ef_search)?;
        bounds::BATCH_BUDGET_MS.check("--batch-budget-ms", self.batch_budget_ms)?;
        if let Some(d) = self.duplicate_distance {
            bounds::DISTANCE.check("--duplicate-distance", d)?;
        }
        bounds::SIMILARITY.check("--duplicate-similarity", self.duplicate_similarity)?;
        bounds::SIMILARITY.check("--similar-similarity", self.similar_similarity)?;
        bounds::THUMBNAIL_SIDE.check("--thumbnail-side", self.thumbnail_side)?;
        bounds::PCA_MIN_IMAGES.check("--pca-min-images", self.pca_min_images)?;
        bounds::PCA_COMPONENTS.check("--pca-components", self.pca_components)?;
        bounds::PCA_REFIT_GROWTH.check("--pca-refit-growth", self.pca_refit_growth)?;
        bounds::PCA_MAX_FIT_SAMPLES.check("--pca-max-fit-samples", self.pca_max_fit_samples)?;
        bounds::RERANK_FACTOR.check("--rerank-factor", self.rerank_factor)?;
        bounds::FRACTION.check(
            "--rebuild-tombstone-fraction",
            self.rebuild_tombstone_fraction,
        )?;
        bounds::MAX_MESSAGE_BYTES.check("--max-message-bytes", self.max_message_bytes)?;
        bounds::MAX_IMAGE_PIXELS.check("--max-image-pixels", self.max_image_pixels)?;
        bounds::DECODE_MEMORY_MIB.check("--decode-memory-mib", self.decode_memory_mib)?;
        bounds::MAX_K.check("--max-k", self.max_k)?;
        bounds::MAX_DUPLICATES.check("--max-duplicates", self.max_duplicates)?;
        bounds::SHUTDOWN_TIMEOUT_SECS.check("--shutdown-timeout", self.shutdown_timeout_secs)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> std::result::Result<Config, clap::Error> {
        let mut argv = vec!["lookalike"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).map(|f| f.config)
    }

    /// clap's defaults and `with_data_dir` agree field by field (both read
    /// `defaults`; this catches a field that one of them sets by hand).
    #[test]
    fn flags_and_code_share_their_defaults() {
        let parsed = parse(&[]).expect("defaults parse");
        let coded = Config::with_data_dir(defaults::DATA_DIR);
        assert_eq!(format!("{parsed:?}"), format!("{coded:?}"));
        coded.validate().expect("the defaults are valid");
    }

    #[test]
    fn out_of_range_flags_are_refused_by_clap_with_the_range() {
        for (flag, value, range) in [
            ("--hnsw-m", "300", "in [2, 256]"),
            ("--hnsw-m", "1", "in [2, 256]"),
            ("--duplicate-distance", "0", "in (0, 2]"),
            ("--duplicate-distance", "2.5", "in (0, 2]"),
            ("--duplicate-similarity", "-1.5", "in [-1, 1]"),
            ("--pca-refit-growth", "1", "in (1, "),
            ("--rebuild-tombstone-fraction", "NaN", "in [0, 1]"),
            ("--batch-budget-ms", "ten", "not a number"),
        ] {
            let err = match parse(&[flag, value]) {
                Ok(_) => panic!("{flag} {value} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(flag) && err.contains(range), "{err}");
        }
        let ok = parse(&["--duplicate-similarity", "-0.5", "--hnsw-m", "256"]).expect("in range");
        assert_eq!((ok.duplicate_similarity, ok.hnsw_m), (-0.5, 256));
    }

    #[test]
    fn validate_uses_the_same_ranges_for_configs_built_in_code() {
        let mut config = Config::with_data_dir("x");
        config.hnsw_m = 300;
        let err = config.validate().expect_err("M 300").to_string();
        assert!(
            err.contains("--hnsw-m must be in [2, 256], got 300"),
            "{err}"
        );
        let mut config = Config::with_data_dir("x");
        config.duplicate_distance = Some(0.0);
        let err = config.validate().expect_err("distance 0").to_string();
        assert!(err.contains("in (0, 2]"), "{err}");
    }
}
