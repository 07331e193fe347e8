//! lookalike: an image-similarity database daemon.
//!
//! A request flows through one module per stage: [`decode`] (bytes to
//! pixels) → [`embed`] (pixels to CNN features) → [`pca`] (features to the
//! compact space the graph uses) → [`index`] (HNSW) and [`store`] (sled) →
//! [`engine`] (the operations, tying the stages together) → [`api`] (gRPC),
//! served by [`server`].

pub mod api;
pub mod augment;
pub mod child;
pub mod config;
pub mod decode;
pub mod embed;
pub mod engine;
pub mod error;
pub mod eval;
pub mod files;
pub mod index;
pub mod pca;
pub mod server;
pub mod siamese;
pub mod store;
pub mod vector;

pub use config::Config;
pub use engine::Engine;
pub use error::{Error, Result};
