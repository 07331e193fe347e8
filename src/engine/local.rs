//! The geometric check of a query's best candidates (see [`crate::local`]):
//! their stored keypoints against the query's, so that a heavy crop, a
//! screenshot or a stickered copy of a stored photo, whose pooled CNN
//! vector has drifted below merely similar photos, still comes first.
//!
//! How it ranks: `similarity + KEYPOINT_BONUS x min(inliers, BONUS_CAP)`;
//! a chance match of unrelated photos has 0-5 inliers, a copy tens to
//! hundreds (measured in BENCHMARKS.md, "Harder copies"). A pair whose
//! evidence shows one picture ([`Evidence::same_picture`]: enough inliers
//! spread over the shared part) is a duplicate, whatever the cosine says.

use rayon::prelude::*;

use super::Shared;
use crate::error::Result;
use crate::local::{self, Evidence, Keypoints};
use crate::store::Attachment;

/// Candidates checked per query (the best by cosine): a copy keeping 15 %
/// of a photo ranks within the first few dozen by cosine among 10,000
/// photos, rarely lower (measured offline on 2,730 copies: checking the
/// best 16, 24, 32 or 48 found 0.9799, 0.9828, 0.9835 and 0.9850 first;
/// each check costs about 0.19 ms).
pub(super) const CHECKED_CANDIDATES: usize = 24;

/// When none of the first [`CHECKED_CANDIDATES`] shows one picture, the
/// best this many are checked: a stickered copy's cosine can fall to the
/// fifth dozen (with 10,277 distractors, stickers found first went from
/// 0.93 to 0.99). A query with a copy among the first pays nothing more.
pub(super) const EXTENDED_CANDIDATES: usize = 64;

/// Rank bonus per inlier, and the inliers it counts at most.
const KEYPOINT_BONUS: f32 = 0.03;
const BONUS_CAP: usize = 10;

/// The rank of a candidate: its cosine plus the keypoint bonus.
pub(super) fn rank(similarity: f32, evidence: Option<&Evidence>) -> f32 {
    similarity + evidence.map_or(0.0, |e| KEYPOINT_BONUS * e.inliers.min(BONUS_CAP) as f32)
}

/// Whether the keypoints alone show the pair is one picture
/// ([`Evidence::same_picture`]).
pub(super) fn verified(evidence: Option<&Evidence>) -> bool {
    evidence.is_some_and(Evidence::same_picture)
}

impl Shared {
    /// The keypoints stored with the record of `seq`; `None` when it has
    /// none (stored before they were kept) or they do not read back (then
    /// logged: the check is skipped for it, the query goes on).
    pub(super) fn keypoints(&self, seq: u64) -> Result<Option<Keypoints>> {
        let Some(bytes) = self.store.attachment(Attachment::Keypoints, seq)? else {
            return Ok(None);
        };
        match Keypoints::from_bytes(&bytes) {
            Ok(points) => Ok(Some(points)),
            Err(e) => {
                tracing::warn!(seq, error = %e, "stored keypoints do not read back; not checked");
                Ok(None)
            }
        }
    }

    /// The geometric evidence between `query` and the records of `seqs`,
    /// in order (checked on rayon's threads: a third of a millisecond each).
    pub(super) fn evidence(
        &self,
        query: &Keypoints,
        seqs: &[u64],
    ) -> Result<Vec<Option<Evidence>>> {
        let stored = seqs
            .iter()
            .map(|&seq| self.keypoints(seq))
            .collect::<Result<Vec<_>>>()?;
        Ok(stored
            .par_iter()
            .map(|points| points.as_ref().map(|p| local::verify(query, p)))
            .collect())
    }
}
