//! The geometric check of a query's best candidates (see [`crate::local`]):
//! their stored keypoints against the query's, so that a heavy crop, a
//! screenshot or a stickered copy of a stored photo, whose pooled CNN
//! vector has drifted below merely similar photos, still comes first.
//!
//! How it ranks: `similarity + KEYPOINT_BONUS x min(inliers, BONUS_CAP)`,
//! where the similarity is the *regional* one ([`regional`]: the query
//! against the best of the stored image's nine parts or its whole,
//! [`crate::embed::regions`]), so that a crop of a part the whole photo's
//! vector does not describe still comes first (crop-area copies found
//! first 0.967 -> 0.978 among 10,368 photos, BENCHMARKS.md),
//! plus [`SAME_PICTURE_RANK`] when the evidence shows one picture
//! ([`Evidence::same_picture`]: enough inliers spread over the shared
//! part), so that the copies the check found come first, however alike
//! other photos look to the CNN. A chance match of unrelated photos has
//! 0-5 inliers, a copy tens to hundreds (measured in BENCHMARKS.md,
//! "Harder copies"). A pair whose evidence shows one picture is a
//! duplicate, whatever the cosine says.

use rayon::prelude::*;

use super::Shared;
use crate::embed::regions;
use crate::error::Result;
use crate::local::{self, Evidence, Keypoints};
use crate::store::Attachment;

/// Candidates checked per query (the best by cosine): a copy keeping 15 %
/// of a photo ranks within the first few dozen by cosine among 10,000
/// photos, rarely lower (measured offline on 2,730 copies: checking the
/// best 16, 24, 32 or 48 found 0.9799, 0.9828, 0.9835 and 0.9850 first;
/// each check costs about 0.14 ms on a 2-core Xeon VM).
pub(super) const CHECKED_CANDIDATES: usize = 24;

/// When none of the first [`CHECKED_CANDIDATES`] shows one picture, the
/// best this many are checked: a stickered copy's cosine can fall to the
/// fifth dozen (with 10,277 distractors, stickers found first went from
/// 0.93 to 0.99). A query with a copy among the first pays nothing more.
pub(super) const EXTENDED_CANDIDATES: usize = 64;

/// Rank bonus per inlier, and the inliers it counts at most.
const KEYPOINT_BONUS: f32 = 0.03;
const BONUS_CAP: usize = 10;

/// What a candidate the keypoints show to be the query's picture adds to
/// its rank: with at least [`local::SAME_PICTURE_INLIERS`] inliers it
/// ranks at 1.3 or more (a cosine of -1, the capped bonus 0.3, this), the
/// most any other can reach (1 + 0.3). Without it a look-alike photo with
/// a few chance inliers outranked a heavy crop found by its geometry.
const SAME_PICTURE_RANK: f32 = 2.0;

/// The rank of a candidate: its cosine plus the keypoint bonus, plus
/// [`SAME_PICTURE_RANK`] when the keypoints show one picture.
pub(super) fn rank(similarity: f32, evidence: Option<&Evidence>) -> f32 {
    let bonus = evidence.map_or(0.0, |e| KEYPOINT_BONUS * e.inliers.min(BONUS_CAP) as f32);
    let same_picture = if verified(evidence) {
        SAME_PICTURE_RANK
    } else {
        0.0
    };
    similarity + bonus + same_picture
}

/// The similarity a checked candidate is ranked by: its cosine, or the
/// query's cosine with its best stored part when that is higher.
pub(super) fn regional(similarity: f32, best_part: Option<f32>) -> f32 {
    best_part.map_or(similarity, |part| part.max(similarity))
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

    /// The best cosine of the query (any of its `views`: the CNN features of
    /// each) with the stored parts of each of `seqs`, each record's parts
    /// read once;
    /// `None` for a record without them (stored before they were kept, or
    /// with `--no-keypoints`) or whose parts do not read back (logged).
    pub(super) fn best_parts(&self, views: &[&[f32]], seqs: &[u64]) -> Result<Vec<Option<f32>>> {
        seqs.iter()
            .map(|&seq| {
                let Some(bytes) = self.store.attachment(Attachment::Regions, seq)? else {
                    return Ok(None);
                };
                let mut best: Option<f32> = None;
                for view in views {
                    match regions::best_part(view, &bytes) {
                        Ok(part) => {
                            best = match (best, part) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                (a, b) => a.or(b),
                            }
                        }
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "stored parts do not read back; not used");
                            return Ok(None);
                        }
                    }
                }
                Ok(best)
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(inliers: usize, coverage: f32) -> Option<Evidence> {
        Some(Evidence {
            inliers,
            coverage,
            unexplained: Some(0.0),
        })
    }

    #[test]
    fn a_verified_copy_ranks_above_any_look_alike() {
        let copy = evidence(local::SAME_PICTURE_INLIERS, local::SAME_PICTURE_COVERAGE);
        // All of the bonus, but in one corner: not shown to be one picture.
        let framed = evidence(40, 0.3);
        assert!(verified(copy.as_ref()) && !verified(framed.as_ref()));
        assert!(rank(-1.0, copy.as_ref()) >= rank(1.0, framed.as_ref()));
        assert!(rank(0.2, copy.as_ref()) > rank(0.99, framed.as_ref()));
        // Below the rule, inliers still count, up to the cap.
        assert!(rank(0.5, evidence(5, 0.2).as_ref()) > rank(0.5, evidence(2, 0.2).as_ref()));
        assert_eq!(
            rank(0.5, evidence(40, 0.3).as_ref()),
            rank(0.5, evidence(BONUS_CAP, 0.3).as_ref())
        );
        assert_eq!(rank(0.5, None), 0.5);
    }

    #[test]
    fn a_better_part_lifts_the_rank_and_a_worse_one_does_not_lower_it() {
        assert_eq!(regional(0.4, Some(0.7)), 0.7);
        assert_eq!(regional(0.4, Some(0.2)), 0.4);
        assert_eq!(regional(0.4, None), 0.4);
    }
}
