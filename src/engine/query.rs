//! Query: the stored images most similar to an image, best first.
//!
//! The index proposes candidates (graph search on the PCA projections, or an
//! exact scan while the store is small), re-ranks them on its 8-bit codes of
//! the full features; the best few dozen get the keypoint check
//! ([`super::local`]) and are ranked by their best part too, which lifts
//! copies the cosine underrates; the best
//! by that rank are read from the store for their exact cosine, id,
//! metadata and duplicate verdict.

use super::local;
use super::verdict::{Measured, Side, Tier};
use super::{blocking, check_stored_id, Engine, ImageSource, Resolved, Shared};
use crate::error::{Error, Result};
use crate::index::Hit;
use crate::store::Decision;
use crate::vector::dot;
use std::collections::BTreeMap;

/// A stored image that matched a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: String,
    pub similarity: f32,
    /// Siamese distance, when both images have a Siamese embedding.
    pub distance: Option<f32>,
    /// The duplicate verdict for this pair.
    pub duplicate: bool,
    /// How close the pair is; `None` below the similar floor.
    pub tier: Option<Tier>,
    /// The user's decision about the pair, when there is one.
    pub review: Option<Decision>,
    pub metadata: BTreeMap<String, String>,
    /// Keypoint matches one geometry explains (see [`crate::local`]);
    /// `None` when either image has no keypoints.
    pub keypoint_matches: Option<u32>,
    /// What results are ordered by: the similarity plus the keypoint bonus.
    pub score: f32,
}

impl Engine {
    /// The `k` stored images most similar to `image`, best first, at or
    /// above `min_similarity` when given. A stored id is left out of its own
    /// results.
    pub async fn query(
        &self,
        image: ImageSource,
        k: usize,
        min_similarity: Option<f32>,
    ) -> Result<Vec<Match>> {
        self.check_ready()?;
        let max_k = self.shared.config.max_k;
        if k == 0 || k > max_k {
            return Err(Error::InvalidArgument(format!(
                "k must be in 1..={max_k}, got {k}"
            )));
        }
        let min_similarity = match min_similarity {
            None => f32::NEG_INFINITY,
            Some(floor) if (-1.0..=1.0).contains(&floor) => floor,
            Some(floor) => {
                return Err(Error::InvalidArgument(format!(
                    "min_similarity must be in [-1, 1], got {floor}"
                )))
            }
        };
        let shared = self.shared.clone();
        match image {
            // A query by id skips the keypoint check: it keeps its speed (a
            // stored image's copies were named when it or they were
            // inserted). Its record is read on the same blocking thread as
            // the search: one hand-off per call, not two.
            ImageSource::Id(id) => {
                check_stored_id(&id)?;
                blocking(move || {
                    let record = shared.store.get(&id)?.ok_or(Error::NotFound(id))?;
                    shared.nearest(&Resolved::stored(record), k, min_similarity)
                })
                .await
            }
            // In a database of whole views, a query image whose best
            // results hold no duplicate is searched for again with its
            // centre view as well: that view cuts away most of a frame
            // around a photo (a screenshot of it), which the whole view
            // sees. Only then: it costs a second forward pass.
            image => {
                let query = self.resolve_with(image, true).await?;
                let first = shared.clone();
                let (mut query, matches) = blocking(move || {
                    let matches = first.nearest(&query, k, min_similarity)?;
                    Ok((query, matches))
                })
                .await?;
                let Some(input) = query.centre_input.take() else {
                    return Ok(matches);
                };
                if matches.iter().any(|m| m.duplicate) {
                    return Ok(matches);
                }
                query.also = Some(shared.batcher.embed(input).await?.features);
                blocking(move || shared.nearest(&query, k, min_similarity)).await
            }
        }
    }
}

impl Shared {
    /// Searches the index, re-ranks the candidates on the full features
    /// the index holds (8-bit codes), then reads the best few from the
    /// store for their exact cosine, id and metadata (which also drops any
    /// that were deleted).
    pub(super) fn nearest(
        &self,
        subject: &Resolved,
        k: usize,
        min_similarity: f32,
    ) -> Result<Vec<Match>> {
        let (query, exclude) = (&subject.embedded, subject.exclude);
        let index = self.current_index();
        // With the keypoint check, enough candidates for all it may check:
        // the graph's best by the projections hold a heavy crop's original
        // only when they are `rerank_factor` times more than needed.
        let (keep, wanted) = match subject.keypoints {
            Some(_) => (
                exact_scored(k).max(local::EXTENDED_CANDIDATES),
                k.max(local::EXTENDED_CANDIDATES),
            ),
            None => (exact_scored(k), k),
        };
        let candidates = match index.projection() {
            Some(_) => wanted.saturating_mul(self.config.rerank_factor).max(k + 8),
            None => k,
        };
        let mut hits: Vec<Hit> = index.search(&query.features, candidates.max(keep), exclude);
        if let Some(also) = &subject.also {
            hits.extend(index.search(also, candidates.max(keep), exclude));
            hits.sort_by_key(|h| h.seq);
            hits.dedup_by_key(|h| h.seq);
        }
        if let Some(upto) = subject.upto {
            hits.retain(|h| h.seq <= upto);
        }
        let hits = match &subject.also {
            // Each candidate by the better of the two views' cosines.
            Some(also) => index.rescore_best(&[&query.features, also], hits, keep),
            None => index.rescore(&query.features, hits, keep),
        };
        if index.damaged() {
            self.maintenance.notify_one(); // to rebuild it
        }
        // The best few by cosine get the keypoint check (hits are best
        // first), a few dozen more when none of them shows one picture;
        // the rest of a wide shortlist (Insert's) are judged as before.
        let (mut evidence, mut parts) = match &subject.keypoints {
            Some(points) => {
                let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
                let first = seqs.len().min(local::CHECKED_CANDIDATES);
                let mut evidence = self.evidence(points, &seqs[..first])?;
                if !evidence.iter().any(|e| local::verified(e.as_ref())) {
                    let extended = seqs.len().min(local::EXTENDED_CANDIDATES);
                    evidence.extend(self.evidence(points, &seqs[first..extended])?);
                }
                // The candidates checked are also ranked by their parts.
                let views: Vec<&[f32]> = std::iter::once(query.features.as_slice())
                    .chain(subject.also.as_deref())
                    .collect();
                let parts = self.best_parts(&views, &seqs[..evidence.len()])?;
                (evidence, parts)
            }
            None => (Vec::new(), Vec::new()),
        };
        evidence.resize(hits.len(), None);
        parts.resize(hits.len(), None);
        let mut checked: Vec<_> = hits
            .into_iter()
            .zip(evidence)
            .zip(parts)
            .map(|((hit, e), part)| {
                let rank = local::rank(local::regional(hit.similarity, part), e.as_ref());
                (rank, hit, e, part)
            })
            .collect();
        checked.sort_by(|a, b| b.0.total_cmp(&a.0));
        checked.truncate(exact_scored(k));
        let mut matches = Vec::with_capacity(checked.len());
        for (_, hit, evidence, part) in checked {
            let record = match self.store.get_by_seq(hit.seq) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    self.skip_damaged(e)?;
                    continue;
                }
            };
            let view_cosine = |features: &[f32]| dot(features, &record.features);
            let similarity = subject
                .also
                .as_deref()
                .map_or(f32::NEG_INFINITY, view_cosine)
                .max(view_cosine(&query.features))
                .clamp(-1.0, 1.0);
            if similarity >= min_similarity {
                let distance = self.distance(query.siamese.as_deref(), record.siamese.as_deref());
                let stored = Side {
                    id: Some(&record.id),
                    facts: record.facts.as_ref(),
                };
                let measured = Measured {
                    similarity,
                    distance,
                    evidence,
                };
                let floor = self.config.similar_similarity;
                let verdict = self.judge(subject.side(), stored, measured, None, floor)?;
                matches.push(Match {
                    id: record.id,
                    similarity,
                    distance,
                    duplicate: verdict.duplicate,
                    tier: verdict.tier,
                    review: verdict.review,
                    metadata: record.metadata,
                    keypoint_matches: evidence.map(|e| e.inliers as u32),
                    score: local::rank(local::regional(similarity, part), evidence.as_ref()),
                });
            }
        }
        matches.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        matches.truncate(k);
        Ok(matches)
    }
}

/// How many of the best re-ranked candidates are read from the store and
/// scored exactly, for `k` results: twice `k`, so that the 8-bit codes'
/// error (about 1e-3 in cosine) would have to exceed the gap between the
/// `k`-th and the `2k`-th candidate to push a true top-`k` neighbour out.
fn exact_scored(k: usize) -> usize {
    k.saturating_mul(2).max(k + 4)
}
