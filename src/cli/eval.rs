//! `lookalike eval`: how well lookalike works on your photos, measured
//! through a real daemon.
//!
//! Each run starts a private daemon (this binary, `serve`, on a free
//! loopback port over a temporary database), inserts the photos, queries it
//! and reports. `near-dup` queries with the seeded transformed copies of
//! `lookalike::lab::eval::plan` (`--hard`: its harder families); `classes`
//! queries each photo by id and scores neighbours of the same class (one
//! sub-folder per class); `groups` stores the photos with all their copies
//! and scores the daemon's whole-database groups against the known copy
//! sets.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use futures_util::{stream, StreamExt, TryStreamExt};
use lookalike::api::proto::{
    image_ref::Source, lookalike_client::LookalikeClient, ImageRef, InsertRequest, Match,
    QueryRequest,
};
use lookalike::lab::child::ChildDaemon;
use lookalike::lab::eval::{
    metrics::{Report, Tally},
    plan,
};
use serde_json::Value;
use tonic::transport::Channel;

/// Queries in flight at once.
const CONCURRENCY: usize = 8;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Recall of transformed copies: crops, rescales, JPEG, rotation, flips,
    /// colour, greyscale, text, combinations (see `lookalike::lab::eval::plan`).
    NearDup {
        /// Photos (files or folders) to make copies of; all are stored.
        #[arg(long, required = true, num_args = 1..)]
        images: Vec<PathBuf>,
        /// More photos stored as distractors (never queried for).
        #[arg(long, num_args = 1..)]
        distractors: Vec<PathBuf>,
        /// Seed of the transforms' random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Report each copy's parameters (crop-30, jpeg-q10, ...) instead of
        /// grouping by family.
        #[arg(long)]
        by_label: bool,
        /// Query with the harder families instead: crops keeping 25 % and
        /// 15 % of the area, crop + rotation + colour, the photo inside a
        /// screenshot, a sticker over it, a perspective view, blur + noise,
        /// rotation by 30-45 degrees, and a combination.
        #[arg(long)]
        hard: bool,
        /// Also write every copy queried with to this folder (JPEG, named
        /// photo-label), to see what each family does.
        #[arg(long)]
        save_copies: Option<PathBuf>,
        /// Also print (to stderr) every copy whose photo did not come
        /// first: what came first instead, with its cosine, keypoint
        /// matches and verdict, and where the photo came.
        #[arg(long)]
        misses: bool,
        #[command(flatten)]
        common: EvalArgs,
    },
    /// Precision of same-class neighbours; DIR holds one sub-folder per class.
    Classes {
        #[arg(long)]
        images: PathBuf,
        /// Neighbours scored for precision@k.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        #[command(flatten)]
        common: EvalArgs,
    },
    /// Quality of Groups: stores the photos and all their transformed copies
    /// (the near-dup families) plus distractors, groups the database, and
    /// scores the groups against the known copy sets.
    Groups {
        /// Photos to make copies of; all are stored.
        #[arg(long, required = true, num_args = 1..)]
        images: Vec<PathBuf>,
        /// More photos stored as they are (each its own original).
        #[arg(long, num_args = 1..)]
        distractors: Vec<PathBuf>,
        /// A TSV of `path`, `split`, `group` (scripts/fetch-datasets.sh's
        /// splits.tsv; paths relative to the file's folder): files of one
        /// group are the same photo (the same picture in two sets).
        #[arg(long)]
        same_photo: Option<PathBuf>,
        /// Seed of the transforms' random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Whether Groups checks keypoints, true or false (default: the
        /// server's, true at this size).
        #[arg(long)]
        keypoints: Option<bool>,
        #[command(flatten)]
        common: EvalArgs,
    },
    /// Quality of the Siamese duplicate verdict against CNN cosine and dHash,
    /// on the validation photos (in-process, no daemon).
    Siamese(super::siamese::EvalSiameseArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Embedding model of the private daemon.
    #[arg(long, default_value = "efficientnet-lite0")]
    model: String,
    /// PCA + HNSW threshold of the private daemon (default: exact search
    /// until 1000 images, as a fresh daemon does).
    #[arg(long, default_value_t = 1000)]
    pca_min_images: usize,
}

pub async fn run(command: EvalCommand) -> Result<()> {
    let (report, json) = match command {
        EvalCommand::NearDup {
            images,
            distractors,
            seed,
            by_label,
            hard,
            save_copies,
            misses,
            common,
        } => (
            near_dup(
                &images,
                &distractors,
                seed,
                (by_label, hard, save_copies.as_deref(), misses),
                &common,
            )
            .await?,
            common.json,
        ),
        EvalCommand::Classes { images, k, common } => {
            (classes(&images, k, &common).await?, common.json)
        }
        EvalCommand::Groups {
            images,
            distractors,
            same_photo,
            seed,
            keypoints,
            common,
        } => {
            let sets = Photos {
                images: &images,
                distractors: &distractors,
                same_photo: same_photo.as_deref(),
                keypoints,
            };
            (groups(sets, seed, &common).await?, common.json)
        }
        EvalCommand::Siamese(args) => {
            return tokio::task::spawn_blocking(move || super::siamese::eval(args)).await?;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

async fn near_dup(
    images: &[PathBuf],
    distractors: &[PathBuf],
    seed: u64,
    (by_label, hard, save_copies, misses): (bool, bool, Option<&Path>, bool),
    args: &EvalArgs,
) -> Result<Report> {
    let originals = super::collect_images(images)?;
    let extra = super::collect_images(distractors)?;
    if originals.is_empty() {
        bail!("no images found in {images:?}");
    }
    let daemon = PrivateDaemon::start(args).await?;
    let mut client = daemon.client().await?;
    let mut stored = Vec::new();
    for p in &originals {
        stored.push((p.display().to_string(), p.clone()));
    }
    for p in &extra {
        stored.push((format!("distractor:{}", p.display()), p.clone()));
    }
    insert_all(&mut client, &stored).await?;
    eprintln!(
        "stored {} photos ({} distractors); querying...",
        stored.len(),
        extra.len()
    );

    let mut queries = Vec::new();
    for (i, path) in originals.iter().enumerate() {
        let img = image::load_from_memory(&std::fs::read(path)?)
            .with_context(|| format!("cannot decode {}", path.display()))?
            .into_rgb8();
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let copies = match hard {
            true => plan::hard_variants(&img, seed)?,
            false => plan::variants(&img, seed)?,
        };
        for v in copies {
            if let Some(dir) = save_copies {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let file = dir.join(format!("{stem}-{}.jpg", v.label));
                std::fs::create_dir_all(dir)
                    .and_then(|()| std::fs::write(&file, &v.bytes))
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            queries.push((path.display().to_string(), v));
        }
    }
    let started = Instant::now();
    let ranks: Vec<(String, Option<usize>, Option<usize>)> = stream::iter(queries.iter())
        .map(|(target, v)| {
            let mut client = client.clone();
            async move {
                let matches = top_matches(&mut client, Source::Data(v.bytes.clone()), 10).await?;
                let rank_of =
                    |ids: &[&String]| ids.iter().position(|id| *id == target).map(|r| r + 1);
                let rank = rank_of(&matches.iter().map(|m| &m.id).collect::<Vec<_>>());
                // The cosine alone: the same results ordered by similarity.
                let mut by_cosine: Vec<&Match> = matches.iter().collect();
                by_cosine.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
                let cosine_rank = rank_of(&by_cosine.iter().map(|m| &m.id).collect::<Vec<_>>());
                if misses && rank != Some(1) {
                    eprintln!("{}", describe_miss(target, &v.label, &matches, rank));
                }
                let group = if by_label {
                    v.label.clone()
                } else {
                    v.family.to_string()
                };
                Ok::<_, anyhow::Error>((group, rank, cosine_rank))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    let (mut tally, mut cosine) = (Tally::default(), Tally::default());
    for (family, rank, cosine_rank) in &ranks {
        tally.add_near_dup(family, *rank);
        cosine.add_near_dup(family, *cosine_rank);
    }
    let order: &[&str] = match hard {
        true => &plan::HARD_FAMILIES,
        false => &plan::FAMILIES,
    };
    // Each row, then the same queries ranked by the cosine alone (the
    // keypoint check left out), as the baseline beside it.
    let rows = tally
        .rows(order)
        .into_iter()
        .zip(cosine.rows(order))
        .flat_map(|(row, mut base)| {
            base.group = format!("{} (cosine only)", row.group);
            [row, base]
        })
        .collect();
    let mut notes = BTreeMap::new();
    notes.insert("photos".into(), originals.len().into());
    notes.insert("distractors".into(), extra.len().into());
    notes.insert("model".into(), args.model.clone().into());
    notes.insert("seed".into(), seed.into());
    notes.insert(
        "queries_per_second".into(),
        ((queries.len() as f64 / secs * 10.0).round() / 10.0).into(),
    );
    Ok(Report {
        kind: "near-dup family".into(),
        columns: ["recall@1".into(), "recall@10".into(), "mAP".into()],
        rows,
        notes,
    })
}

/// One line on a copy whose photo did not come first (`--misses`).
fn describe_miss(target: &str, label: &str, matches: &[Match], rank: Option<usize>) -> String {
    let facts = |m: &Match| {
        format!(
            "{} (cosine {:.3}, {} keypoint matches, {})",
            m.id,
            m.similarity,
            m.keypoint_matches.map_or("no".into(), |n| n.to_string()),
            if m.duplicate {
                "duplicate"
            } else {
                "not a duplicate"
            }
        )
    };
    let first = matches.first().map_or("nothing".into(), facts);
    let photo = match rank {
        Some(r) => format!("at rank {r}: {}", facts(&matches[r - 1])),
        None => format!("not in the first {}", matches.len()),
    };
    format!("miss: {target} {label}: first {first}; the photo {photo}")
}

/// What `eval groups` stores, and which files are one photo.
struct Photos<'a> {
    images: &'a [PathBuf],
    distractors: &'a [PathBuf],
    same_photo: Option<&'a Path>,
    /// Groups' `keypoints` (eval groups only).
    keypoints: Option<bool>,
}

/// The photo each file shows, by a `path, split, group` TSV: files of one
/// group map to the same name (the group's), keyed by canonical path.
fn same_photo_names(tsv: &Path) -> Result<HashMap<PathBuf, String>> {
    let text =
        std::fs::read_to_string(tsv).with_context(|| format!("cannot read {}", tsv.display()))?;
    let base = tsv.parent().unwrap_or(Path::new("."));
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [path, _, group, ..] = cols[..] {
            if let Ok(p) = base.join(path).canonicalize() {
                out.insert(p, format!("photo:{group}"));
            }
        }
    }
    Ok(out)
}

async fn groups(sets: Photos<'_>, seed: u64, args: &EvalArgs) -> Result<Report> {
    let originals = super::collect_images(sets.images)?;
    let extra = super::collect_images(sets.distractors)?;
    if originals.is_empty() {
        bail!("no images found in {:?}", sets.images);
    }
    let names = match sets.same_photo {
        Some(tsv) => same_photo_names(tsv)?,
        None => HashMap::new(),
    };
    // What photo a stored id shows, and the family of a copy.
    let photo_of = |p: &Path| {
        p.canonicalize()
            .ok()
            .and_then(|c| names.get(&c).cloned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let mut truth: HashMap<String, String> = HashMap::new();
    let mut family: HashMap<String, &'static str> = HashMap::new();
    let daemon = PrivateDaemon::start(args).await?;
    let mut client = daemon.client().await?;
    let mut stored = Vec::new();
    for p in originals.iter().chain(&extra) {
        let id = p.display().to_string();
        truth.insert(id.clone(), photo_of(p));
        stored.push((id, p.clone()));
    }
    insert_all(&mut client, &stored).await?;
    let mut copies = 0;
    for (i, path) in originals.iter().enumerate() {
        let img = image::load_from_memory(&std::fs::read(path)?)
            .with_context(|| format!("cannot decode {}", path.display()))?
            .into_rgb8();
        let variants = plan::variants(&img, seed.wrapping_mul(1_000_003).wrapping_add(i as u64))?;
        let requests: Vec<InsertRequest> = variants
            .into_iter()
            .enumerate()
            .map(|(k, v)| {
                let id = format!("{}#{}#{k}", path.display(), v.label);
                truth.insert(id.clone(), photo_of(path));
                family.insert(id.clone(), v.family);
                InsertRequest {
                    id,
                    image: v.bytes,
                    metadata: HashMap::new(),
                    upsert: true,
                }
            })
            .collect();
        copies += requests.len();
        if let Some((id, why)) = stream_all(&mut client, requests).await?.first() {
            bail!("cannot store the copy {id}: {why}");
        }
    }
    eprintln!(
        "stored {} photos ({} distractors) and {copies} copies; grouping...",
        originals.len() + extra.len(),
        extra.len()
    );
    let started = Instant::now();
    let mut stream = client
        .groups(lookalike::api::proto::GroupsRequest {
            keypoints: sets.keypoints,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let mut found: Vec<Vec<String>> = Vec::new();
    while let Some(resp) = stream.message().await? {
        if let Some(lookalike::api::proto::groups_response::Item::Group(g)) = resp.item {
            for m in &g.members {
                group_of.insert(m.id.clone(), found.len());
            }
            found.push(g.members.into_iter().map(|m| m.id).collect());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(score_groups(&found, &group_of, &truth, &family, secs, args))
}

/// Pair precision and recall of `found` against `truth` (id to photo), per
/// copy family: how many copies share a group with their original's photo.
fn score_groups(
    found: &[Vec<String>],
    group_of: &HashMap<String, usize>,
    truth: &HashMap<String, String>,
    family: &HashMap<String, &'static str>,
    secs: f64,
    args: &EvalArgs,
) -> Report {
    let mut grouped_pairs = 0u64;
    let mut right_pairs = 0u64;
    let mut mixed = 0;
    let mut examples: Vec<Value> = Vec::new();
    for members in found {
        let photos: Vec<&String> = members.iter().filter_map(|m| truth.get(m)).collect();
        let mut distinct = photos.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > 1 {
            mixed += 1;
            if examples.len() < 5 {
                examples.push(members.iter().map(|m| Value::from(m.as_str())).collect());
            }
        }
        for (i, a) in photos.iter().enumerate() {
            for b in &photos[i + 1..] {
                grouped_pairs += 1;
                right_pairs += u64::from(a == b);
            }
        }
    }
    let mut per_photo: HashMap<&String, u64> = HashMap::new();
    for photo in truth.values() {
        *per_photo.entry(photo).or_default() += 1;
    }
    let true_pairs: u64 = per_photo.values().map(|n| n * (n - 1) / 2).sum();
    // Per family: a copy counts when some other image of its photo shares
    // its group.
    let mut rows: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for (id, fam) in family {
        let photo = &truth[id];
        let g = group_of.get(id);
        let with_own = g.is_some_and(|g| {
            found[*g]
                .iter()
                .any(|m| m != id && truth.get(m) == Some(photo))
        });
        let row = rows.entry(fam).or_default();
        row.0 += 1;
        row.1 += usize::from(with_own);
        row.2 += usize::from(g.is_none());
    }
    let row =
        |name: &str, (n, own, none): (usize, usize, usize)| lookalike::lab::eval::metrics::Row {
            group: name.to_string(),
            queries: n,
            at_1: own as f64 / n.max(1) as f64,
            at_k: none as f64 / n.max(1) as f64,
            map: (n - own - none) as f64 / n.max(1) as f64,
        };
    let all = rows
        .values()
        .fold((0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
    let mut out = vec![row("all", all)];
    for fam in plan::FAMILIES {
        if let Some(r) = rows.get(fam) {
            out.push(row(fam, *r));
        }
    }
    let ratio = |a: u64, b: u64| ((a as f64 / b.max(1) as f64) * 10_000.0).round() / 10_000.0;
    let mut notes = BTreeMap::new();
    notes.insert("stored".into(), truth.len().into());
    notes.insert("groups".into(), found.len().into());
    notes.insert(
        "pair_precision".into(),
        ratio(right_pairs, grouped_pairs).into(),
    );
    notes.insert("pair_recall".into(), ratio(right_pairs, true_pairs).into());
    notes.insert("groups_with_two_photos".into(), mixed.into());
    if !examples.is_empty() {
        notes.insert("groups_with_two_photos_examples".into(), examples.into());
    }
    notes.insert(
        "groups_seconds".into(),
        ((secs * 10.0).round() / 10.0).into(),
    );
    notes.insert("model".into(), args.model.clone().into());
    Report {
        kind: "copy family".into(),
        columns: [
            "with its photo".into(),
            "in no group".into(),
            "elsewhere".into(),
        ],
        rows: out,
        notes,
    }
}

async fn classes(dir: &Path, k: usize, args: &EvalArgs) -> Result<Report> {
    let mut stored = Vec::new();
    let mut class_of = HashMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for class_dir in entries {
        let class = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for p in super::collect_images(&[class_dir])? {
            let id = p.display().to_string();
            class_of.insert(id.clone(), class.clone());
            stored.push((id, p));
        }
    }
    if stored.len() < 2 {
        bail!(
            "need at least two photos in class sub-folders of {}",
            dir.display()
        );
    }
    let daemon = PrivateDaemon::start(args).await?;
    let mut client = daemon.client().await?;
    insert_all(&mut client, &stored).await?;
    let mut per_class: HashMap<&str, usize> = HashMap::new();
    for c in class_of.values() {
        *per_class.entry(c.as_str()).or_default() += 1;
    }
    let depth = (stored.len() - 1).min(1000);
    let results: Vec<(String, Vec<String>)> = stream::iter(stored.iter())
        .map(|(id, _)| {
            let mut client = client.clone();
            async move {
                Ok::<_, anyhow::Error>((
                    id.clone(),
                    top_ids(&mut client, Source::Id(id.clone()), depth).await?,
                ))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut tally = Tally::default();
    for (id, ranked) in &results {
        let class = &class_of[id];
        let relevant: Vec<bool> = ranked
            .iter()
            .map(|m| class_of.get(m) == Some(class))
            .collect();
        tally.add_class(class, &relevant, k, per_class[class.as_str()] - 1);
    }
    let mut notes = BTreeMap::new();
    notes.insert("photos".into(), stored.len().into());
    notes.insert("classes".into(), per_class.len().into());
    notes.insert("model".into(), args.model.clone().into());
    Ok(Report {
        kind: "class".into(),
        columns: ["precision@1".into(), format!("precision@{k}"), "mAP".into()],
        rows: tally.rows(&[]),
        notes,
    })
}

async fn insert_all(
    client: &mut LookalikeClient<Channel>,
    items: &[(String, PathBuf)],
) -> Result<()> {
    let requests: Vec<InsertRequest> = items
        .iter()
        .map(|(id, path)| {
            Ok(InsertRequest {
                id: id.clone(),
                image: std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                metadata: HashMap::new(),
                upsert: true,
            })
        })
        .collect::<Result<_>>()?;
    for (id, why) in stream_all(client, requests).await? {
        eprintln!("skipping {id}: {why}");
    }
    Ok(())
}

/// Streams `requests` into the daemon; the items it refused, as (id, why).
async fn stream_all(
    client: &mut LookalikeClient<Channel>,
    requests: Vec<InsertRequest>,
) -> Result<Vec<(String, String)>> {
    let mut answers = client
        .insert_stream(stream::iter(requests))
        .await?
        .into_inner();
    let mut refused = Vec::new();
    while let Some(a) = answers.message().await? {
        if let Some(e) = a.error {
            refused.push((a.id, e.message));
        }
    }
    Ok(refused)
}

async fn top_ids(
    client: &mut LookalikeClient<Channel>,
    source: Source,
    k: usize,
) -> Result<Vec<String>> {
    let matches = top_matches(client, source, k).await?;
    Ok(matches.into_iter().map(|m| m.id).collect())
}

async fn top_matches(
    client: &mut LookalikeClient<Channel>,
    source: Source,
    k: usize,
) -> Result<Vec<Match>> {
    let resp = client
        .query(QueryRequest {
            image: Some(ImageRef {
                source: Some(source),
            }),
            k: k as u32,
            min_similarity: None,
            omit_metadata: true,
        })
        .await?
        .into_inner();
    Ok(resp.matches)
}

/// A daemon of our own over a temporary database; killed on drop.
struct PrivateDaemon {
    daemon: ChildDaemon,
    _dir: tempfile::TempDir,
}

impl PrivateDaemon {
    async fn start(args: &EvalArgs) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let pca = args.pca_min_images.to_string();
        let extra = [
            "--model",
            args.model.as_str(),
            "--pca-min-images",
            pca.as_str(),
        ];
        let daemon = ChildDaemon::start(
            &std::env::current_exe()?,
            dir.path(),
            &extra,
            Duration::from_secs(120),
        )
        .await
        .context("cannot start the evaluation daemon")?;
        Ok(PrivateDaemon { daemon, _dir: dir })
    }

    async fn client(&self) -> Result<LookalikeClient<Channel>> {
        Ok(LookalikeClient::new(self.daemon.channel().await?)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }
}
