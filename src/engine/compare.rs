//! Compare: how alike two images are (cosine of CNN features, Siamese
//! distance) and the duplicate verdict for the pair.

use super::{Engine, ImageSource};
use crate::config::bounds;
use crate::error::Result;
use crate::vector::dot;

/// How alike two images are.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub similarity: f32,
    /// Siamese distance, when both images have a Siamese embedding.
    pub distance: Option<f32>,
    pub duplicate: bool,
    /// The Siamese distance threshold, when a Siamese model is loaded.
    pub threshold: Option<f32>,
    pub similarity_threshold: f32,
}

impl Engine {
    /// Cosine similarity and Siamese distance of two images, and the
    /// duplicate verdict (at `max_distance`, or the server's threshold).
    pub async fn compare(
        &self,
        a: ImageSource,
        b: ImageSource,
        max_distance: Option<f32>,
    ) -> Result<Comparison> {
        if let Some(d) = max_distance {
            bounds::DISTANCE.check("max_distance", d)?;
        }
        let (a, b) = tokio::try_join!(self.resolve(a), self.resolve(b))?;
        let (a, b) = (&a.embedded, &b.embedded);
        let similarity = dot(&a.features, &b.features).clamp(-1.0, 1.0);
        let distance = self
            .shared
            .distance(a.siamese.as_deref(), b.siamese.as_deref());
        Ok(Comparison {
            similarity,
            distance,
            duplicate: self.shared.is_duplicate(similarity, distance, max_distance),
            threshold: self.shared.distance_threshold(),
            similarity_threshold: self.shared.config.duplicate_similarity,
        })
    }
}
