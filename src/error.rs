//! The library's error type.
//!
//! Every failure the engine can report, phrased for the person who sent the
//! request. The gRPC layer maps each variant to a status code in one place
//! (`api::status`); nothing here knows about gRPC.

use std::{net::SocketAddr, path::PathBuf};

use thiserror::Error;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error a dependency reports, kept as the cause of ours.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// The daemon is at a capacity limit right now (the decode memory
    /// budget); the same request may succeed later.
    #[error("busy: {0}")]
    Busy(String),
    /// No stored image has this id.
    #[error("no image with id '{}'", shorten(.0))]
    NotFound(String),
    /// An image with this id is stored and the request did not ask to replace it.
    #[error("an image with id '{}' already exists (set upsert to replace it)", shorten(.0))]
    AlreadyExists(String),
    /// The daemon is still loading its index.
    #[error("not ready: {0}")]
    Unavailable(String),
    /// The database was built with another embedding model.
    #[error("model mismatch: {0}")]
    ModelMismatch(String),
    /// The daemon could not listen on its address.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A file or folder of the daemon's could not be read or written
    /// (weights, the saved graph, the database folder).
    #[error("cannot {doing} '{}'", path.display())]
    File {
        /// What was being done, as a verb phrase ("read the weights").
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// sled failed.
    #[error("the database failed while {doing}")]
    Store {
        /// What was being done ("storing a record").
        doing: &'static str,
        #[source]
        source: sled::Error,
    },
    /// One stored record cannot be read back: quarantined (skipped by
    /// searches, groups and rebuilds) until it is deleted or re-inserted.
    #[error(
        "record seq {seq} is damaged ({what}); searches skip it: `lookalike check` lists \
         every damaged record, and deleting or re-inserting its id replaces it"
    )]
    Damaged { seq: u64, what: String },
    /// What is on disk is not what lookalike wrote (a corrupt record, a
    /// saved graph that does not parse).
    #[error("storage error: {0}")]
    Storage(String),
    /// A forward pass of a network failed.
    #[error("the network failed while {doing}")]
    Network {
        doing: &'static str,
        #[source]
        source: candle_core::Error,
    },
    /// The embedding or Siamese network cannot be loaded (weights malformed,
    /// for another backbone, ...).
    #[error("model error: {0}")]
    Model(String),
    /// Fitting or applying the PCA projection failed.
    #[error("pca error: {0}")]
    Pca(String),
    /// An invariant broke; a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// For `map_err`: a file error saying what was being done, and where.
    pub fn file<E: Into<Cause>>(
        doing: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(E) -> Error {
        let path = path.into();
        move |source| Error::File {
            doing,
            path,
            source: source.into(),
        }
    }

    /// For `map_err`: a sled error saying what was being done.
    pub fn store(doing: &'static str) -> impl FnOnce(sled::Error) -> Error {
        move |source| Error::Store { doing, source }
    }

    /// Whether the cause is a full disk (or quota): the request may succeed
    /// once space is freed.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            let io = e
                .downcast_ref::<std::io::Error>()
                .or(match e.downcast_ref() {
                    Some(sled::Error::Io(io)) => Some(io),
                    _ => None,
                });
            if io.is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }) {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The message and every cause under it, `: `-separated, for a client
    /// or a log line that shows one string.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

/// sled errors met with `?` where no better context is at hand.
impl From<sled::Error> for Error {
    fn from(source: sled::Error) -> Self {
        Error::Store {
            doing: "accessing the store",
            source,
        }
    }
}

/// candle errors met with `?` inside a forward pass.
impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Network {
            doing: "running a forward pass",
            source,
        }
    }
}

/// An id for a message: at most 64 characters, then "...", so that an
/// error never echoes a huge id in full.
pub fn shorten(id: &str) -> String {
    match id.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &id[..at]),
        None => id.to_string(),
    }
}
