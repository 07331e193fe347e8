//! The duplicate verdict: by Siamese distance where the model has a
//! Siamese head, else by cosine similarity; one rule for Insert's
//! duplicates, Query's matches and Compare.

use super::Shared;
use crate::siamese;

impl Shared {
    /// Siamese distance of two embeddings; `None` if either is missing.
    pub(super) fn distance(&self, a: Option<&[f32]>, b: Option<&[f32]>) -> Option<f32> {
        let (a, b) = (a?, b?);
        (self.siamese.is_some() && a.len() == b.len()).then(|| siamese::distance(a, b))
    }

    /// The Siamese threshold in force (config override, else the model's).
    pub(super) fn distance_threshold(&self) -> Option<f32> {
        let model = self.siamese.as_ref()?.threshold();
        Some(self.config.duplicate_distance.unwrap_or(model))
    }

    /// The duplicate verdict: by Siamese distance when there is one, else by
    /// cosine.
    pub(super) fn is_duplicate(
        &self,
        similarity: f32,
        distance: Option<f32>,
        max: Option<f32>,
    ) -> bool {
        match (distance, max.or(self.distance_threshold())) {
            (Some(d), Some(t)) => d <= t,
            _ => similarity >= self.config.duplicate_similarity,
        }
    }
}
