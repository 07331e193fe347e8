//! `lookalike groups`, `review` and `reviews`: the whole-database
//! duplicate groups, and the user's decisions about pairs.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lookalike::api::proto::{
    groups_response::Item, Decision, Group, GroupsRequest, ListReviewsRequest, ReviewRequest, Tier,
};
use serde_json::json;

use super::{Client, ClientArgs};

/// How to group (shared by `groups` and `report`).
#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    /// Nearest neighbours looked at per image (server default: 16).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub neighbours: u32,
    /// Most images per group (server default: 100).
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_group_size: u32,
    /// Also group images that are only similar (cosine at or above this).
    #[arg(long, allow_hyphen_values = true)]
    pub similar_floor: Option<f32>,
    /// Check the keypoints of neighbour pairs too, true or false (finds
    /// heavy crops; server default: true up to 100,000 stored images).
    #[arg(long)]
    pub keypoints: Option<bool>,
}

#[derive(Args, Debug)]
pub struct GroupsArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// Print JSON (one document: the groups and their members) for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: ClientArgs,
}

/// What a review says: exactly one of the three flags.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ReviewDecision {
    /// They are duplicates, whatever the model says.
    #[arg(long)]
    duplicate: bool,
    /// They are not duplicates, whatever the model says.
    #[arg(long)]
    not_duplicate: bool,
    /// Revoke the decision about the pair.
    #[arg(long)]
    clear: bool,
}

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// A stored id.
    pub a: String,
    /// Another stored id.
    pub b: String,
    #[command(flatten)]
    pub decision: ReviewDecision,
    #[command(flatten)]
    pub connection: ClientArgs,
}

#[derive(Args, Debug)]
pub struct ReviewsArgs {
    /// Only the decisions naming this id.
    #[arg(long)]
    pub id: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: ClientArgs,
}

/// Runs a grouping, with a progress bar on stderr; the groups in the
/// order the server found them.
pub async fn fetch_groups(client: &mut Client, args: &GroupArgs) -> Result<Vec<Group>> {
    let mut stream = client
        .groups(GroupsRequest {
            neighbours: args.neighbours,
            max_group_size: args.max_group_size,
            similar_floor: args.similar_floor,
            keypoints: args.keypoints,
        })
        .await?
        .into_inner();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:6} {bar:40} {pos}/{len} images  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut groups = Vec::new();
    while let Some(resp) = stream.message().await.context("the groups stream broke")? {
        match resp.item {
            Some(Item::Progress(p)) => {
                if bar.message() != p.phase {
                    bar.reset();
                    bar.set_message(p.phase);
                }
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            Some(Item::Group(g)) => groups.push(g),
            None => {}
        }
    }
    bar.finish_and_clear();
    Ok(groups)
}

pub fn tier_name(tier: i32) -> Option<&'static str> {
    match Tier::try_from(tier).ok()? {
        Tier::Exact => Some("exact"),
        Tier::NearDuplicate => Some("near-duplicate"),
        Tier::Similar => Some("similar"),
        Tier::Unspecified => None,
    }
}

pub fn decision_name(decision: i32) -> Option<&'static str> {
    match Decision::try_from(decision).ok()? {
        Decision::Duplicate => Some("duplicate"),
        Decision::NotDuplicate => Some("not-duplicate"),
        Decision::Clear => Some("clear"),
        Decision::Unspecified => None,
    }
}

pub async fn groups(client: &mut Client, args: GroupsArgs) -> Result<()> {
    let groups = fetch_groups(client, &args.group).await?;
    if args.json {
        let doc = json!({ "groups": groups.iter().map(group_json).collect::<Vec<_>>() });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if groups.is_empty() {
        println!("no duplicate groups");
        return Ok(());
    }
    let images: usize = groups.iter().map(|g| g.members.len()).sum();
    for (n, g) in groups.iter().enumerate() {
        let keep = &g.members[g.keep as usize];
        println!(
            "group {} ({} images), keep {}: {}",
            n + 1,
            g.members.len(),
            keep.id,
            g.keep_reason
        );
        for m in &g.members {
            let distance = m.distance.map_or("-".to_string(), |d| format!("{d:.3}"));
            println!(
                "  {:14} {:.3}  {:>6}  {:>5}x{:<5} {:>8} KB  {}",
                tier_name(m.tier).unwrap_or("representative"),
                m.similarity,
                distance,
                m.width,
                m.height,
                m.file_bytes / 1024,
                m.id
            );
        }
    }
    println!("{} groups, {images} images", groups.len());
    Ok(())
}

pub fn group_json(g: &Group) -> serde_json::Value {
    json!({
        "keep": g.keep,
        "keep_id": g.members.get(g.keep as usize).map(|m| m.id.clone()),
        "keep_reason": g.keep_reason,
        "members": g.members.iter().map(|m| json!({
            "id": m.id,
            "tier": tier_name(m.tier),
            "similarity": m.similarity,
            "distance": m.distance,
            "review": decision_name(m.review),
            "width": m.width,
            "height": m.height,
            "file_bytes": m.file_bytes,
            "inserted_at_unix_ms": m.inserted_at_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

pub async fn review(client: &mut Client, args: ReviewArgs) -> Result<()> {
    let d = &args.decision;
    let decision = if d.duplicate {
        Decision::Duplicate
    } else if d.not_duplicate {
        Decision::NotDuplicate
    } else {
        Decision::Clear
    };
    let resp = client
        .review(ReviewRequest {
            a: args.a.clone(),
            b: args.b.clone(),
            decision: decision as i32,
        })
        .await?
        .into_inner();
    let previous = decision_name(resp.previous).unwrap_or("none");
    match decision {
        Decision::Clear => println!("cleared {} / {} (was {previous})", args.a, args.b),
        _ => println!(
            "{} / {}: {} (was {previous})",
            args.a,
            args.b,
            decision_name(decision as i32).unwrap_or("?")
        ),
    }
    Ok(())
}

pub async fn reviews(client: &mut Client, args: ReviewsArgs) -> Result<()> {
    let resp = client
        .list_reviews(ListReviewsRequest {
            id: args.id.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if args.json {
        let list: Vec<_> = resp
            .reviews
            .iter()
            .map(|r| {
                json!({"a": r.a, "b": r.b, "decision": decision_name(r.decision),
                       "decided_at_unix_ms": r.decided_at_unix_ms})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "reviews": list }))?
        );
        return Ok(());
    }
    if resp.reviews.is_empty() {
        println!("no review decisions");
    }
    for r in resp.reviews {
        println!(
            "{:13}  {}  {}",
            decision_name(r.decision).unwrap_or("?"),
            r.a,
            r.b
        );
    }
    Ok(())
}
