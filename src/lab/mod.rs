//! The lab: what trains and measures lookalike, apart from what it serves.
//!
//! Nothing in the daemon ([`crate::engine`] and the stages below it) uses
//! this tree; it is built with the `lab` cargo feature (on by default, since
//! the `lookalike eval` and `lookalike train-siamese` commands need it; a
//! daemon-only build is `cargo build --no-default-features`).
//!
//! - [`augment`]: the transformations that make copies of a photo (crops,
//!   rescales, re-encodes, rotations, colour shifts, captions);
//! - [`eval`]: seeded evaluation plans and retrieval metrics;
//! - [`siamese`]: training the Siamese head and measuring its verdict;
//! - [`child`]: a real daemon run as a child process, for `lookalike eval`,
//!   the end-to-end tests and the benchmarks.

pub mod augment;
pub mod child;
pub mod eval;
pub mod siamese;
