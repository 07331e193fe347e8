//! Groups: every set of stored images that are duplicates of each other,
//! over the whole database, with a suggestion of which copy to keep.
//!
//! Built from the index's k-nearest-neighbour graph, never from all pairs:
//! 1. **scan**: every record, in seq order; for each, its `neighbours`
//!    nearest stored images (graph search, re-ranked on the index's 8-bit
//!    codes of the full features: cosine within about 0.002). Only what
//!    the verdict needs is kept per image (id, Siamese embedding, facts).
//! 2. **judge**: each neighbour pair (once) gets the verdict Compare gives
//!    (see `verdict`: review decisions, exact, Siamese distance, and, with
//!    `keypoints`, the keypoint check of the pairs the Siamese distance
//!    does not call duplicates: heavy crops, stickered copies, screenshots;
//!    see `local`). Pairs the graph may not propose are added: same file or
//!    pixels (by hash) and pairs a user marked DUPLICATE.
//! 3. **group**, without chaining: images are taken as representatives in
//!    order of how many duplicates they have (then seq); a representative's
//!    group is itself and its duplicates not yet in a group, closest first,
//!    at most `max_group_size`, leaving out one a user said is not a
//!    duplicate of a member already taken, and one that is not (by Siamese
//!    distance) a duplicate of at least half the members already taken
//!    (see `agrees_with_group`; a member the keypoints verified joins on
//!    that evidence). So every member is a duplicate of its
//!    group's representative by the verdict, never a copy of a copy of it;
//!    a photo and two different crops of it land in one group, two
//!    different photos that each resemble a third do not.
//!
//! Deterministic for a given database and graph (ties go to the lower
//! seq). The keep-best suggestion: the most pixels, then the least
//! compressed (most bytes per pixel), then the earliest inserted.

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use tokio::sync::mpsc;

use super::verdict::{self, Measured, Tier};
use super::{blocking, local, Engine, Shared};
use crate::error::Result;
use crate::local::Evidence;
use crate::store::{Decision, ImageFacts};
use crate::vector::dot;

/// Records searched per parallel batch while scanning.
const SCAN_BATCH: usize = 2048;

/// How a grouping runs.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// Nearest neighbours looked at per image.
    pub neighbours: usize,
    /// Most members per group, representative included.
    pub max_group_size: usize,
    /// Also take *similar* images (cosine at or above this, not
    /// duplicates) into groups, as members of tier similar; `None`: only
    /// duplicates.
    pub similar_floor: Option<f32>,
    /// Check the keypoints of neighbour pairs the Siamese distance does not
    /// call duplicates; `None`: when at most
    /// [`GROUP_KEYPOINTS_UP_TO`](crate::config::defaults::GROUP_KEYPOINTS_UP_TO)
    /// images are stored. Never on a daemon run with `--no-keypoints`.
    pub keypoints: Option<bool>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    pub id: String,
    /// Its tier with the representative; `None` for the representative.
    pub tier: Option<Tier>,
    /// Cosine similarity with the representative (1 for itself).
    pub similarity: f32,
    /// Siamese distance with the representative, when both have one.
    pub distance: Option<f32>,
    /// The user's decision about it and the representative, if any.
    pub review: Option<Decision>,
    pub facts: Option<ImageFacts>,
    pub inserted_at_ms: i64,
}

/// A set of duplicates; `members[0]` is the representative.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<GroupMember>,
    /// Index in `members` of the copy to keep.
    pub keep: usize,
    /// Why that one, in words.
    pub keep_reason: String,
}

/// What a grouping reports as it goes.
#[derive(Debug, Clone)]
pub enum GroupEvent {
    Progress {
        phase: &'static str,
        done: u64,
        total: u64,
    },
    Group(Group),
}

/// What is kept per image during a grouping.
struct Node {
    seq: u64,
    id: String,
    siamese: Option<Vec<f32>>,
    facts: Option<ImageFacts>,
    inserted_at_ms: i64,
}

/// A judged pair: the other image and how it relates.
#[derive(Debug, Clone, Copy)]
struct Edge {
    other: u32,
    tier: Tier,
    similarity: f32,
    distance: Option<f32>,
    review: Option<Decision>,
    /// The keypoints show the pair is one picture.
    verified: bool,
}

/// A candidate pair (node indices, lower first) and the verdict's parts
/// other than the keypoints.
struct Judged {
    pair: (u32, u32),
    similarity: f32,
    distance: Option<f32>,
    same_image: bool,
    /// A duplicate by the Siamese distance (or the cosine) whatever the
    /// keypoints show (even held to [`crate::local::SHARED_PART_MARGIN`]).
    model: bool,
    review: Option<Decision>,
}

/// Images whose neighbour pairs are checked per parallel batch (progress is
/// reported between batches).
const CHECK_BATCH: usize = 512;

impl Engine {
    /// Groups the whole database, sending progress and each group to
    /// `events` as it is found. Stops early when the receiver is dropped.
    pub async fn groups(
        &self,
        options: GroupOptions,
        events: mpsc::Sender<GroupEvent>,
    ) -> Result<()> {
        self.check_ready()?;
        crate::config::bounds::GROUP_NEIGHBOURS.check("neighbours", options.neighbours)?;
        crate::config::bounds::MAX_GROUP_SIZE.check("max_group_size", options.max_group_size)?;
        if let Some(floor) = options.similar_floor {
            crate::config::bounds::SIMILARITY.check("similar_floor", floor)?;
        }
        let shared = self.shared.clone();
        blocking(move || shared.groups(options, &events)).await
    }
}

/// Sends an event; false once the receiver is gone.
fn send(events: &mpsc::Sender<GroupEvent>, event: GroupEvent) -> bool {
    events.blocking_send(event).is_ok()
}

impl Shared {
    fn groups(&self, options: GroupOptions, events: &mpsc::Sender<GroupEvent>) -> Result<()> {
        // A daemon that keeps no keypoints has none to check.
        let keypoints = !self.config.no_keypoints
            && options
                .keypoints
                .unwrap_or(self.store.len() <= crate::config::defaults::GROUP_KEYPOINTS_UP_TO);
        let Some((nodes, neighbours)) = self.scan_neighbours(options, keypoints, events)? else {
            return Ok(());
        };
        let Some((edges, apart)) =
            self.judge_pairs(&nodes, &neighbours, options, keypoints, events)?
        else {
            return Ok(());
        };
        drop(neighbours);
        let total = nodes.len() as u64;
        let mut order: Vec<u32> = (0..nodes.len() as u32).collect();
        order.sort_by_key(|&i| {
            (
                std::cmp::Reverse(edges[i as usize].len()),
                nodes[i as usize].seq,
            )
        });
        let mut grouped = vec![false; nodes.len()];
        // (representative, members), in the order they were formed.
        let mut formed: Vec<(u32, Vec<Edge>)> = Vec::new();
        let mut last_report = std::time::Instant::now();
        for (done, &rep) in order.iter().enumerate() {
            if edges[rep as usize].is_empty() {
                break;
            }
            if last_report.elapsed().as_millis() >= 500 {
                last_report = std::time::Instant::now();
                let progress = GroupEvent::Progress {
                    phase: "group",
                    done: done as u64,
                    total,
                };
                if !send(events, progress) {
                    return Ok(());
                }
            }
            if grouped[rep as usize] {
                continue;
            }
            let mut members: Vec<Edge> = edges[rep as usize]
                .iter()
                .filter(|e| !grouped[e.other as usize])
                .copied()
                .collect();
            if members.is_empty() {
                continue;
            }
            members.sort_by(|a, b| {
                a.tier
                    .cmp(&b.tier)
                    .then_with(|| closeness(b).total_cmp(&closeness(a)))
                    .then_with(|| {
                        nodes[a.other as usize]
                            .seq
                            .cmp(&nodes[b.other as usize].seq)
                    })
            });
            let mut taken: Vec<Edge> = Vec::with_capacity(members.len());
            for m in members {
                if taken.len() + 1 >= options.max_group_size {
                    break;
                }
                if self.may_join(&nodes, &apart, &m, &taken) {
                    taken.push(m);
                }
            }
            if taken.is_empty() {
                continue;
            }
            grouped[rep as usize] = true;
            for m in &taken {
                grouped[m.other as usize] = true;
            }
            formed.push((rep, taken));
        }
        self.move_to_closer_groups(&nodes, &edges, &apart, &mut formed, options);
        for (rep, members) in formed {
            if members.is_empty() {
                continue;
            }
            let group = make_group(&nodes, rep, &members);
            if !send(events, GroupEvent::Group(group)) {
                return Ok(());
            }
        }
        send(
            events,
            GroupEvent::Progress {
                phase: "group",
                done: total,
                total,
            },
        );
        Ok(())
    }

    /// Every record's id, Siamese embedding and facts, and the seqs and
    /// cosines of its nearest neighbours; `None` when the receiver left.
    #[allow(clippy::type_complexity)]
    fn scan_neighbours(
        &self,
        options: GroupOptions,
        keypoints: bool,
        events: &mpsc::Sender<GroupEvent>,
    ) -> Result<Option<(Vec<Node>, Vec<Vec<(u64, f32)>>)>> {
        let index = self.current_index();
        let total = self.store.len() as u64;
        // Groups take similar members only at the request's floor (the
        // server's --similar-similarity is for Query and Compare).
        let duplicate = self.config.duplicate_similarity;
        let floor = options
            .similar_floor
            .map_or(duplicate, |f| f.min(duplicate));
        // Candidates a Siamese verdict or the keypoints may call duplicates
        // sit below the cosine floor at times: keep every neighbour when
        // either judges, else only those the cosine rule could accept.
        let floor = if self.siamese.is_some() || keypoints {
            -1.0
        } else {
            floor
        };
        let search = |features: &[f32], seq: u64| -> Vec<(u64, f32)> {
            let candidates = match index.projection() {
                Some(_) => options.neighbours * 2 + 8,
                None => options.neighbours,
            };
            let hits = index.search(features, candidates, Some(seq));
            index
                .rescore(features, hits, options.neighbours)
                .into_iter()
                .filter(|h| h.similarity >= floor)
                .map(|h| (h.seq, h.similarity))
                .collect()
        };
        let mut nodes = Vec::with_capacity(total as usize);
        let mut neighbours = Vec::with_capacity(total as usize);
        let mut batch = Vec::with_capacity(SCAN_BATCH);
        let mut records = self.store.scan_after(0);
        let mut last_report = std::time::Instant::now();
        loop {
            batch.clear();
            for record in records.by_ref().take(SCAN_BATCH) {
                match record {
                    Ok(record) => batch.push(record),
                    Err(e) => self.skip_damaged(e)?,
                }
            }
            if batch.is_empty() {
                break;
            }
            let found: Vec<Vec<(u64, f32)>> = batch
                .par_iter()
                .map(|r| search(&r.features, r.seq))
                .collect();
            neighbours.extend(found);
            nodes.extend(batch.drain(..).map(|r| Node {
                seq: r.seq,
                id: r.id,
                siamese: r.siamese,
                facts: r.facts,
                inserted_at_ms: r.inserted_at_ms,
            }));
            if last_report.elapsed().as_millis() >= 500 {
                last_report = std::time::Instant::now();
                let progress = GroupEvent::Progress {
                    phase: "scan",
                    done: nodes.len() as u64,
                    total: total.max(nodes.len() as u64),
                };
                if !send(events, progress) {
                    return Ok(None);
                }
            }
        }
        let done = nodes.len() as u64;
        if !send(
            events,
            GroupEvent::Progress {
                phase: "scan",
                done,
                total: done,
            },
        ) {
            return Ok(None);
        }
        Ok(Some((nodes, neighbours)))
    }

    /// The judged pairs of every image (both directions), duplicates (and,
    /// with a similar floor, similar pairs) only; and the pairs a user said
    /// are not duplicates. `keypoints`: check the pairs the rest of the
    /// verdict leaves open. `None` when the receiver left.
    #[allow(clippy::type_complexity)]
    fn judge_pairs(
        &self,
        nodes: &[Node],
        neighbours: &[Vec<(u64, f32)>],
        options: GroupOptions,
        keypoints: bool,
        events: &mpsc::Sender<GroupEvent>,
    ) -> Result<Option<(Vec<Vec<Edge>>, HashSet<(u32, u32)>)>> {
        let by_seq: HashMap<u64, u32> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.seq, i as u32))
            .collect();
        let by_id: HashMap<&str, u32> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i as u32))
            .collect();
        let mut reviews: HashMap<(u32, u32), Decision> = HashMap::new();
        for review in self.store.reviews(None)? {
            if let (Some(&a), Some(&b)) =
                (by_id.get(review.a.as_str()), by_id.get(review.b.as_str()))
            {
                reviews.insert((a.min(b), a.max(b)), review.decision);
            }
        }
        // Each candidate pair once (lower index first), with its cosine.
        let mut pairs: BTreeMap<(u32, u32), f32> = BTreeMap::new();
        for (i, list) in neighbours.iter().enumerate() {
            for &(seq, similarity) in list {
                if let Some(&j) = by_seq.get(&seq) {
                    let key = (i.min(j as usize) as u32, i.max(j as usize) as u32);
                    if key.0 != key.1 {
                        pairs.entry(key).or_insert(similarity);
                    }
                }
            }
        }
        // Same file or same pixels, which the graph may not all propose
        // when there are many copies.
        let mut by_hash: HashMap<[u8; 16], Vec<u32>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if let Some(f) = &node.facts {
                by_hash.entry(f.file_hash).or_default().push(i as u32);
                by_hash.entry(f.pixel_hash).or_default().push(i as u32);
            }
        }
        let mut extra: Vec<(u32, u32)> = reviews
            .iter()
            .filter(|(_, d)| **d == Decision::Duplicate)
            .map(|(k, _)| *k)
            .collect();
        for same in by_hash.values().filter(|v| v.len() > 1) {
            for &other in &same[1..] {
                extra.push((same[0].min(other), same[0].max(other)));
            }
        }
        for key in extra {
            if let std::collections::btree_map::Entry::Vacant(slot) = pairs.entry(key) {
                slot.insert(
                    self.stored_similarity(nodes[key.0 as usize].seq, nodes[key.1 as usize].seq)?,
                );
            }
        }
        let similar_floor = options.similar_floor.unwrap_or(f32::INFINITY);
        // The verdict's parts first; the keypoints of the pairs they leave
        // open (no review, not the same image, not a Siamese duplicate
        // whatever the keypoints show).
        let judged: Vec<Judged> = pairs
            .into_iter()
            .map(|(pair, similarity)| {
                let (x, y) = (&nodes[pair.0 as usize], &nodes[pair.1 as usize]);
                let distance = self.distance(x.siamese.as_deref(), y.siamese.as_deref());
                let held = distance.map(|d| d + crate::local::SHARED_PART_MARGIN);
                Judged {
                    pair,
                    similarity,
                    distance,
                    same_image: matches!((&x.facts, &y.facts), (Some(p), Some(q)) if p.same_image(q)),
                    model: self.is_duplicate(similarity, held, None),
                    review: reviews.get(&pair).copied(),
                }
            })
            .collect();
        let open: Vec<(u32, u32)> = judged
            .iter()
            .filter(|j| keypoints && !j.model && !j.same_image && j.review.is_none())
            .map(|j| j.pair)
            .collect();
        let Some(checked) = self.check_pairs(nodes, &open, events)? else {
            return Ok(None);
        };
        let mut edges: Vec<Vec<Edge>> = (0..nodes.len()).map(|_| Vec::new()).collect();
        for j in judged {
            let Judged {
                pair: (a, b),
                similarity,
                distance,
                same_image,
                model,
                review,
            } = j;
            // The pairs the check left out need no evidence: without it
            // the verdict is the distance's.
            let evidence = checked.get(&(a, b)).copied();
            let verified = local::verified(evidence.as_ref());
            let measured = Measured {
                similarity,
                distance,
                evidence,
            };
            let v = verdict::decide(
                model || self.model_duplicate(&measured, None),
                same_image,
                review,
                similarity,
                similar_floor,
            );
            let Some(tier) = v.tier else { continue };
            let edge = |other| Edge {
                other,
                tier,
                similarity,
                distance,
                review,
                verified,
            };
            edges[a as usize].push(edge(b));
            edges[b as usize].push(edge(a));
        }
        let apart = reviews
            .iter()
            .filter(|(_, d)| **d == Decision::NotDuplicate)
            .map(|(k, _)| *k)
            .collect();
        Ok(Some((edges, apart)))
    }

    /// Of the pairs `open` (node indices, lower first, sorted), the
    /// evidence of those whose keypoints show one picture
    /// ([`local::verified`]) or that they share only a part (the rest
    /// change nothing in the verdict, and are not kept); each image's
    /// keypoints are read once per run of pairs that start with it. `None`
    /// when the receiver left.
    fn check_pairs(
        &self,
        nodes: &[Node],
        open: &[(u32, u32)],
        events: &mpsc::Sender<GroupEvent>,
    ) -> Result<Option<HashMap<(u32, u32), Evidence>>> {
        let runs: Vec<&[(u32, u32)]> = open.chunk_by(|x, y| x.0 == y.0).collect();
        let total = open.len() as u64;
        let mut checked = HashMap::new();
        let mut done = 0u64;
        let mut last_report = std::time::Instant::now();
        for batch in runs.chunks(CHECK_BATCH) {
            let found: Vec<Vec<((u32, u32), Evidence)>> = batch
                .par_iter()
                .map(|run| -> Result<Vec<((u32, u32), Evidence)>> {
                    let Some(first) = self.keypoints(nodes[run[0].0 as usize].seq)? else {
                        return Ok(Vec::new());
                    };
                    let mut found = Vec::new();
                    for &(a, b) in run.iter() {
                        let Some(other) = self.keypoints(nodes[b as usize].seq)? else {
                            continue;
                        };
                        // The later image as the query, as its Insert
                        // checked the earlier one.
                        let evidence = crate::local::verify(&other, &first);
                        if local::verified(Some(&evidence)) || evidence.shares_only_a_part() {
                            found.push(((a, b), evidence));
                        }
                    }
                    Ok(found)
                })
                .collect::<Result<_>>()?;
            checked.extend(found.into_iter().flatten());
            done += batch.iter().map(|run| run.len() as u64).sum::<u64>();
            if last_report.elapsed().as_millis() >= 500 || done == total {
                last_report = std::time::Instant::now();
                let progress = GroupEvent::Progress {
                    phase: "check",
                    done,
                    total,
                };
                if !send(events, progress) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(checked))
    }

    /// Whether a candidate may join a group that has taken `taken` so far:
    /// no member is one a user said is not a duplicate of it (both may be
    /// copies of the representative by the model), and it agrees with the
    /// group (see [`Shared::agrees_with_group`]).
    fn may_join(
        &self,
        nodes: &[Node],
        apart: &HashSet<(u32, u32)>,
        candidate: &Edge,
        taken: &[Edge],
    ) -> bool {
        let key = |o: u32| (candidate.other.min(o), candidate.other.max(o));
        if !apart.is_empty() && taken.iter().any(|t| apart.contains(&key(t.other))) {
            return false;
        }
        self.agrees_with_group(nodes, candidate, taken)
    }

    /// The greedy pass gives a member to the first group whose
    /// representative it duplicates, which may not be the closest: a copy
    /// of photo B that also resembles photo A lands with A when A's group
    /// forms first. One pass, in group order, moves each member to the
    /// group whose representative it is closest to, when that group has
    /// room and takes it (a member a user paired with the representative
    /// stays).
    fn move_to_closer_groups(
        &self,
        nodes: &[Node],
        edges: &[Vec<Edge>],
        apart: &HashSet<(u32, u32)>,
        formed: &mut [(u32, Vec<Edge>)],
        options: GroupOptions,
    ) {
        let mut group_of_rep: HashMap<u32, usize> = HashMap::new();
        for (g, (rep, _)) in formed.iter().enumerate() {
            group_of_rep.insert(*rep, g);
        }
        for g in 0..formed.len() {
            let mut k = 0;
            while k < formed[g].1.len() {
                let member = formed[g].1[k];
                // A user's DUPLICATE decision pins a member where it is.
                if member.review == Some(Decision::Duplicate) {
                    k += 1;
                    continue;
                }
                let best = edges[member.other as usize]
                    .iter()
                    .filter(|e| e.tier <= member.tier && closeness(e) > closeness(&member))
                    .filter_map(|e| group_of_rep.get(&e.other).map(|&to| (to, e)))
                    .filter(|(to, _)| *to != g && formed[*to].1.len() + 1 < options.max_group_size)
                    .max_by(|(_, a), (_, b)| closeness(a).total_cmp(&closeness(b)));
                let Some((to, e)) = best else {
                    k += 1;
                    continue;
                };
                // The member as the other group sees it.
                let moved = Edge {
                    other: member.other,
                    ..*e
                };
                if self.may_join(nodes, apart, &moved, &formed[to].1) {
                    formed[g].1.remove(k);
                    formed[to].1.push(moved);
                } else {
                    k += 1;
                }
            }
        }
    }

    /// Whether a candidate (a duplicate of the representative) is also a
    /// duplicate, by Siamese distance, of at least half of the members
    /// taken so far that have a Siamese embedding. One false match with the
    /// representative (the verdict's error, multiplied by the many copies
    /// a photo can have) then cannot bring a different photo in: a copy of
    /// another photo resembles the representative by chance, not its other
    /// copies. Exact copies, pairs a user marked DUPLICATE and similar
    /// members (with a similar floor) always join; similar members are not
    /// counted.
    fn agrees_with_group(&self, nodes: &[Node], candidate: &Edge, taken: &[Edge]) -> bool {
        // Similar members are only said to be similar to the representative;
        // a copy the keypoints verified has evidence no chance match has.
        if candidate.tier != Tier::NearDuplicate
            || candidate.review == Some(Decision::Duplicate)
            || candidate.verified
        {
            return true;
        }
        let (Some(threshold), Some(own)) = (
            self.distance_threshold(),
            nodes[candidate.other as usize].siamese.as_deref(),
        ) else {
            return true;
        };
        let (mut checked, mut agree) = (0usize, 0usize);
        // Members the keypoints brought in (a heavy crop) are far from the
        // others by Siamese distance: they do not vote.
        for t in taken
            .iter()
            .filter(|t| t.tier != Tier::Similar && !t.verified)
        {
            if let Some(d) = self.distance(Some(own), nodes[t.other as usize].siamese.as_deref()) {
                checked += 1;
                agree += usize::from(d <= threshold);
            }
        }
        2 * agree >= checked
    }

    /// The exact cosine of two stored records (0 if either is gone).
    fn stored_similarity(&self, a: u64, b: u64) -> Result<f32> {
        match (self.store.get_by_seq(a)?, self.store.get_by_seq(b)?) {
            (Some(x), Some(y)) => Ok(dot(&x.features, &y.features).clamp(-1.0, 1.0)),
            _ => Ok(0.0),
        }
    }
}

/// How close an edge is: the Siamese distance where there is one (smaller
/// is closer, so negated), else the cosine.
fn closeness(edge: &Edge) -> f32 {
    match edge.distance {
        Some(d) => -d,
        None => edge.similarity,
    }
}

fn make_group(nodes: &[Node], rep: u32, members: &[Edge]) -> Group {
    let member = |i: u32, edge: Option<&Edge>| {
        let node = &nodes[i as usize];
        GroupMember {
            id: node.id.clone(),
            tier: edge.map(|e| e.tier),
            similarity: edge.map_or(1.0, |e| e.similarity),
            distance: edge
                .map_or(Some(0.0), |e| e.distance)
                .filter(|_| node.siamese.is_some()),
            review: edge.and_then(|e| e.review),
            facts: node.facts,
            inserted_at_ms: node.inserted_at_ms,
        }
    };
    let mut list = vec![member(rep, None)];
    list.extend(members.iter().map(|e| member(e.other, Some(e))));
    let seqs: Vec<u64> = std::iter::once(rep)
        .chain(members.iter().map(|e| e.other))
        .map(|i| nodes[i as usize].seq)
        .collect();
    let (keep, keep_reason) = keep_best(&list, &seqs);
    Group {
        members: list,
        keep,
        keep_reason,
    }
}

/// The member to keep and why: the most pixels, then the most bytes per
/// pixel (least compressed), then the earliest inserted (then the lowest
/// seq). Similar members (not duplicates) are never suggested.
pub fn keep_best(members: &[GroupMember], seqs: &[u64]) -> (usize, String) {
    let pixels = |m: &GroupMember| m.facts.map_or(0, |f| f.pixels());
    let bpp = |m: &GroupMember| match m.facts {
        Some(f) if f.pixels() > 0 => f.file_bytes as f64 / f.pixels() as f64,
        _ => 0.0,
    };
    let rank = |i: usize| {
        let m = &members[i];
        (
            pixels(m),
            bpp(m),
            std::cmp::Reverse(m.inserted_at_ms),
            std::cmp::Reverse(seqs[i]),
        )
    };
    let mut candidates: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].tier != Some(Tier::Similar))
        .collect();
    candidates.sort_by(|&a, &b| {
        rank(b)
            .partial_cmp(&rank(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let best = candidates[0];
    let m = &members[best];
    let reason = match candidates.get(1) {
        None => "the only duplicate".to_string(),
        Some(&next) => {
            let n = &members[next];
            match m.facts {
                Some(f) if pixels(m) > pixels(n) => format!("largest: {}x{} px", f.width, f.height),
                Some(_) if bpp(m) > bpp(n) => {
                    format!("same size, least compressed: {:.2} bytes/px", bpp(m))
                }
                _ if m.inserted_at_ms < n.inserted_at_ms => {
                    "same size and compression, inserted first".to_string()
                }
                _ => "alike in size, compression and age: stored first".to_string(),
            }
        }
    };
    (best, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(w: u32, h: u32, bytes: u64, at: i64, tier: Option<Tier>) -> GroupMember {
        GroupMember {
            id: format!("{w}x{h}-{bytes}-{at}"),
            tier,
            similarity: 1.0,
            distance: None,
            review: None,
            facts: Some(ImageFacts {
                width: w,
                height: h,
                file_bytes: bytes,
                ..ImageFacts::default()
            }),
            inserted_at_ms: at,
        }
    }

    #[test]
    fn keep_best_prefers_pixels_then_bytes_per_pixel_then_age() {
        let near = Some(Tier::NearDuplicate);
        let m = [
            member(100, 100, 5000, 1, None),
            member(200, 100, 5000, 2, near),
        ];
        assert_eq!(keep_best(&m, &[1, 2]), (1, "largest: 200x100 px".into()));
        let m = [
            member(100, 100, 5000, 1, None),
            member(100, 100, 9000, 2, near),
        ];
        let (best, why) = keep_best(&m, &[1, 2]);
        assert_eq!(best, 1);
        assert!(why.contains("least compressed: 0.90 bytes/px"), "{why}");
        let m = [
            member(100, 100, 5000, 9, None),
            member(100, 100, 5000, 2, near),
        ];
        assert_eq!(keep_best(&m, &[1, 2]).0, 1);
        // A similar member is never the one to keep, however large.
        let m = [
            member(100, 100, 5000, 1, None),
            member(900, 900, 5000, 2, Some(Tier::Similar)),
        ];
        assert_eq!(keep_best(&m, &[1, 2]).0, 0);
    }
}
