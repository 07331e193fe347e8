//! lookalike: an image-similarity database daemon.
//!
//! A request flows through one module per stage: [`decode`] (bytes to
//! pixels) → [`embed`] (pixels to CNN features) → [`pca`] (features to the
//! compact space the graph uses) → [`index`] (HNSW) and [`store`] (sled) →
//! [`engine`] (the operations, tying the stages together) → [`api`] (gRPC),
//! served by [`server`]. The Siamese head ([`siamese`]) gives the duplicate
//! verdict; [`vector`] holds the vector maths every stage shares.
//!
//! What trains and measures the networks (augmentations, evaluation plans,
//! Siamese training, a child daemon for tests) lives apart, in `lab`, behind
//! the `lab` feature.

pub mod api;
pub mod config;
pub mod decode;
pub mod embed;
pub mod engine;
pub mod error;
pub mod files;
pub mod index;
#[cfg(feature = "lab")]
pub mod lab;
pub mod local;
pub mod pca;
pub mod server;
pub mod siamese;
pub mod store;
pub mod telemetry;
pub mod vector;

pub use config::Config;
pub use engine::Engine;
pub use error::{Error, Result};
