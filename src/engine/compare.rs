//! Compare: how alike two images are (cosine of CNN features, Siamese
//! distance, keypoints that agree on one geometry) and the duplicate
//! verdict for the pair.

use super::verdict::{Measured, Tier};
use super::{blocking, Engine, ImageSource};
use crate::config::bounds;
use crate::error::Result;
use crate::local;
use crate::store::Decision;
use crate::vector::dot;

/// How alike two images are.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub similarity: f32,
    /// Siamese distance, when both images have a Siamese embedding.
    pub distance: Option<f32>,
    pub duplicate: bool,
    /// How close the pair is; `None` below the similar floor.
    pub tier: Option<Tier>,
    /// The user's decision about the pair (both given by id), if any.
    pub review: Option<Decision>,
    /// The Siamese distance at which `duplicate` flips for this pair
    /// (`Shared::pair_threshold`), when a Siamese model is loaded.
    pub threshold: Option<f32>,
    pub similarity_threshold: f32,
    /// Keypoint matches one geometry explains; `None` when either image
    /// has no keypoints.
    pub keypoint_matches: Option<u32>,
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
        let shared = self.shared.clone();
        blocking(move || {
            let (x, y) = (&a.embedded, &b.embedded);
            let similarity = dot(&x.features, &y.features).clamp(-1.0, 1.0);
            let distance = shared.distance(x.siamese.as_deref(), y.siamese.as_deref());
            let evidence = match (&a.keypoints, &b.keypoints) {
                // As a query is checked against a stored image.
                (Some(x), Some(y)) => Some(local::verify(x, &y.stored())),
                _ => None,
            };
            let measured = Measured {
                similarity,
                distance,
                evidence,
            };
            let floor = shared.config.similar_similarity;
            let verdict = shared.judge(a.side(), b.side(), measured, max_distance, floor)?;
            Ok(Comparison {
                keypoint_matches: evidence.map(|e| e.inliers as u32),
                similarity,
                distance,
                duplicate: verdict.duplicate,
                tier: verdict.tier,
                review: verdict.review,
                threshold: shared.pair_threshold(evidence.as_ref(), max_distance),
                similarity_threshold: shared.config.duplicate_similarity,
            })
        })
        .await
    }
}
