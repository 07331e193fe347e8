//! The duplicate verdict and the tiers: one rule for Insert's duplicates,
//! Query's matches, Compare and Groups.
//!
//! A pair is, from the strongest claim down:
//! - **exact**: the same file (SHA-256 of its bytes) or the same pixels at
//!   the same size (a lossless re-save);
//! - **near-duplicate**: the model's verdict, by Siamese distance where the
//!   backbone has a Siamese head, else by cosine similarity; or the
//!   keypoint check, when both images have keypoints and enough of them
//!   agree on one geometry (a heavy crop, a screenshot, a stickered copy:
//!   see [`super::local`]); but when the keypoints show the two share
//!   only a part (an app's frame around two different photos, a banner:
//!   [`Evidence::shares_only_a_part`]), the Siamese distance must be
//!   [`crate::local::SHARED_PART_MARGIN`] shorter;
//! - **similar**: not a duplicate, but at or above a cosine floor
//!   (`--similar-similarity`, or the request's).
//!
//! A user's review decision about the pair (see [`crate::store::reviews`])
//! overrides the model either way: DUPLICATE makes a pair a duplicate
//! (exact if it is the same image, else near-duplicate), NOT_DUPLICATE
//! makes it not one (similar at most).

use super::{local, Shared};
use crate::error::Result;
use crate::local::Evidence;
use crate::siamese;
use crate::store::{Decision, ImageFacts};

/// How close a pair is (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Exact,
    NearDuplicate,
    Similar,
}

/// The verdict about one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub duplicate: bool,
    /// `None` below the similar floor.
    pub tier: Option<Tier>,
    /// The user's decision about the pair, when there is one.
    pub review: Option<Decision>,
}

/// One side of a pair: a stored id (for review decisions) and what the
/// decoder saw (for the exact tier), where known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Side<'a> {
    pub id: Option<&'a str>,
    pub facts: Option<&'a ImageFacts>,
}

/// What is measured of a pair.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub similarity: f32,
    pub distance: Option<f32>,
    /// The keypoint check, when both images have keypoints.
    pub evidence: Option<Evidence>,
}

/// The rule, apart from the store: the model's verdict `model_duplicate`,
/// whether the two are the same image, the user's decision and the floor.
pub fn decide(
    model_duplicate: bool,
    same_image: bool,
    review: Option<Decision>,
    similarity: f32,
    similar_floor: f32,
) -> Verdict {
    let duplicate = match review {
        Some(Decision::Duplicate) => true,
        Some(Decision::NotDuplicate) => false,
        None => same_image || model_duplicate,
    };
    let tier = if duplicate && same_image {
        Some(Tier::Exact)
    } else if duplicate {
        Some(Tier::NearDuplicate)
    } else if similarity >= similar_floor {
        Some(Tier::Similar)
    } else {
        None
    };
    Verdict {
        duplicate,
        tier,
        review,
    }
}

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

    /// The model's duplicate verdict: by Siamese distance when there is
    /// one (at `max`, else the server's threshold), else by cosine.
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

    /// The Siamese distance at which the verdict about a pair flips: the
    /// caller's `max_distance`, else the server's threshold, less
    /// [`crate::local::SHARED_PART_MARGIN`] when the keypoints show the
    /// pair shares only a part. `None` without a Siamese model.
    pub(super) fn pair_threshold(
        &self,
        evidence: Option<&Evidence>,
        max_distance: Option<f32>,
    ) -> Option<f32> {
        if let Some(t) = max_distance {
            return self.siamese.is_some().then_some(t);
        }
        let t = self.distance_threshold()?;
        Some(match evidence.is_some_and(Evidence::shares_only_a_part) {
            true => t - crate::local::SHARED_PART_MARGIN,
            false => t,
        })
    }

    /// The model's verdict on what was measured: the Siamese distance (or
    /// the cosine), held to a shorter distance when the keypoints show the
    /// pair shares only a part, or the keypoints when they show one
    /// picture. A caller's own distance threshold is the whole rule it
    /// asked for: the distance alone.
    pub(super) fn model_duplicate(&self, measured: &Measured, max_distance: Option<f32>) -> bool {
        if max_distance.is_some() {
            return self.is_duplicate(measured.similarity, measured.distance, max_distance);
        }
        let evidence = measured.evidence.as_ref();
        let distance = measured
            .distance
            .map(|d| crate::local::judged_distance(d, evidence));
        local::verified(evidence) || self.is_duplicate(measured.similarity, distance, None)
    }

    /// The verdict about a pair, review decisions included.
    pub(super) fn judge(
        &self,
        a: Side<'_>,
        b: Side<'_>,
        measured: Measured,
        max_distance: Option<f32>,
        similar_floor: f32,
    ) -> Result<Verdict> {
        let review = match (a.id, b.id) {
            (Some(a), Some(b)) => self.store.review_get(a, b)?,
            _ => None,
        };
        let same_image = matches!((a.facts, b.facts), (Some(x), Some(y)) if x.same_image(y));
        Ok(decide(
            self.model_duplicate(&measured, max_distance),
            same_image,
            review,
            measured.similarity,
            similar_floor,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_overrides_the_model_both_ways() {
        let not = decide(true, true, Some(Decision::NotDuplicate), 1.0, 0.7);
        assert_eq!((not.duplicate, not.tier), (false, Some(Tier::Similar)));
        let yes = decide(false, false, Some(Decision::Duplicate), 0.2, 0.7);
        assert_eq!((yes.duplicate, yes.tier), (true, Some(Tier::NearDuplicate)));
        assert_eq!(decide(false, true, None, 0.99, 0.7).tier, Some(Tier::Exact));
        assert_eq!(decide(false, false, None, 0.69, 0.7).tier, None);
        assert_eq!(
            decide(false, false, None, 0.7, 0.7).tier,
            Some(Tier::Similar)
        );
    }
}
