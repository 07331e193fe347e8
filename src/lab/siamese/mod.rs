//! Training the Siamese head and measuring its verdict.
//!
//! The network itself, and loading and running it, are the daemon's
//! ([`crate::siamese`]); this is how its weights are made: [`photos`] loads
//! a photo collection with its train/validation split, [`views`] draws
//! random copies of a photo, [`train`] fits the network with the contrastive
//! loss, and [`quality`] scores held-out pairs and calibrates the duplicate
//! threshold shipped with the weights.

pub mod photos;
pub mod quality;
pub mod train;
pub mod views;
