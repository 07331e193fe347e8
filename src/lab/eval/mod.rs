//! Measuring how well lookalike works on a user's own photos.
//!
//! [`plan`] makes the documented, seeded transformed copies of a photo that
//! near-duplicate search must see through; [`metrics`] turns ranked results
//! into recall@1, recall@10, mAP and precision@k, overall and per group, and
//! renders them as a table or JSON. The `lookalike eval` command drives them
//! against a real daemon.

pub mod metrics;
pub mod plan;
