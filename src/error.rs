//! The library's error type.
//!
//! Every failure the engine can report, phrased for the person who sent the
//! request. The gRPC layer maps each variant to a status code in one place
//! (`api::status`); nothing here knows about gRPC.

use thiserror::Error;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// The request itself is malformed (missing field, k out of range, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The image bytes are empty or cannot be decoded.
    #[error("cannot decode image: {0}")]
    BadImage(String),
    /// The image is larger than the configured limits.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// No stored image has this id.
    #[error("no image with id '{0}'")]
    NotFound(String),
    /// An image with this id is stored and the request did not ask to replace it.
    #[error("an image with id '{0}' already exists (set upsert to replace it)")]
    AlreadyExists(String),
    /// The daemon is still loading its index.
    #[error("not ready: {0}")]
    Unavailable(String),
    /// The database was built with another embedding model.
    #[error("model mismatch: {0}")]
    ModelMismatch(String),
    /// The on-disk store failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The embedding network failed (weights missing or malformed, ...).
    #[error("model error: {0}")]
    Model(String),
    /// Fitting or applying the PCA projection failed.
    #[error("pca error: {0}")]
    Pca(String),
    /// An invariant broke; a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(e.to_string())
    }
}
