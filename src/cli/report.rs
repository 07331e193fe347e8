//! `lookalike report --out report.html`: one static HTML file that shows
//! the duplicate groups as thumbnail grids (keep-best marked, tier and
//! distance shown) and a 2-D map of the stored images' features (t-SNE of
//! their PCA projections, on an even sample), a point showing its thumbnail.
//!
//! The page is `src/report/template.html` with the data put in as JSON: no
//! server, no external script, font or request; it opens offline. The data
//! comes from the daemon over gRPC (Groups, Get, List); t-SNE runs here, in
//! the client, so the daemon never spends its cores on a picture.

use std::{collections::HashMap, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use lookalike::api::proto::{GetRequest, GetResponse, Group, ListRequest};
use serde_json::{json, Value};

use super::groups::{fetch_groups, tier_name, GroupArgs};
use super::{Client, ClientArgs};

/// The page; `PLACEHOLDER` is replaced by the data.
const TEMPLATE: &str = include_str!("../report/template.html");
const PLACEHOLDER: &str = "__LOOKALIKE_DATA__";
/// Gets in flight at once while fetching the members' thumbnails.
const FETCH_CONCURRENCY: usize = 16;
/// Longer side of the thumbnails of images only on the map (group members
/// keep the stored size): a quarter of the bytes.
const MAP_THUMBNAIL_SIDE: u32 = 64;
/// JPEG quality of the report's thumbnails, re-encoded from the stored ones
/// (quality 80): a report of 10,000 images is 44 MB instead of 58 and opens
/// in 1.4 s instead of 2.0 (BENCHMARKS.md).
const REPORT_QUALITY: u8 = 60;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The HTML file to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Images drawn on the map: an even sample of at most this many (t-SNE
    /// time grows with it: about 100 s for 10,000 on two cores).
    #[arg(long, default_value_t = 20_000)]
    pub map_sample: u32,
    /// Leave the map out.
    #[arg(long)]
    pub no_map: bool,
    #[command(flatten)]
    pub group: GroupArgs,
    #[command(flatten)]
    pub connection: ClientArgs,
}

/// The images a report shows, each once, by id.
#[derive(Default)]
struct Images {
    list: Vec<Value>,
    by_id: HashMap<String, usize>,
}

impl Images {
    /// Adds an image (once), its thumbnail re-encoded at [`REPORT_QUALITY`]
    /// and, with `side`, shrunk to it.
    fn add(&mut self, image: &GetResponse, side: Option<u32>) -> usize {
        if let Some(&i) = self.by_id.get(&image.id) {
            return i;
        }
        let thumb = (!image.thumbnail.is_empty()).then(|| {
            let side = side.unwrap_or(u32::MAX);
            let bytes = shrink(&image.thumbnail, side).unwrap_or_else(|| image.thumbnail.clone());
            format!(
                "data:image/jpeg;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        });
        self.list.push(json!({
            "id": image.id,
            "thumb": thumb,
            "width": image.width,
            "height": image.height,
            "bytes": image.file_bytes,
            "inserted_at_ms": image.inserted_at_unix_ms,
            "map": null,
            "group": null,
        }));
        self.by_id.insert(image.id.clone(), self.list.len() - 1);
        self.list.len() - 1
    }
}

pub async fn report(client: &mut Client, args: ReportArgs) -> Result<()> {
    let started = Instant::now();
    let groups = fetch_groups(client, &args.group).await?;
    let mut images = Images::default();
    let members = fetch_members(client, &groups).await?;
    for image in &members {
        images.add(image, None);
    }
    let mut groups_json = Vec::with_capacity(groups.len());
    for (n, g) in groups.iter().enumerate() {
        let index = |id: &str| images.by_id.get(id).copied().unwrap_or(0);
        for m in &g.members {
            images.list[index(&m.id)]["group"] = json!(n);
        }
        groups_json.push(json!({
            "representative": index(&g.members[0].id),
            "keep": index(&g.members[g.keep as usize].id),
            "keep_reason": g.keep_reason,
            "members": g.members.iter().map(|m| json!({
                "image": index(&m.id),
                "tier": tier_name(m.tier),
                "similarity": m.similarity,
                "distance": m.distance,
            })).collect::<Vec<_>>(),
        }));
    }
    let mut map_points = 0;
    if !args.no_map && args.map_sample > 0 {
        map_points = add_map(client, args.map_sample, &mut images).await?;
    }
    let grouped: usize = groups.iter().map(|g| g.members.len()).sum();
    let total = client
        .stats(lookalike::api::proto::StatsRequest {})
        .await?
        .into_inner()
        .count;
    let data = json!({
        "title": "lookalike report",
        "generated_at": now_utc(),
        "server": args.connection.server,
        "stats": {
            "images": total,
            "groups": groups.len(),
            "grouped_images": grouped,
            "map_points": map_points,
            "map_method": format!(
                "t-SNE of the PCA-projected CNN features of {map_points} images (an even sample)"
            ),
        },
        "images": images.list,
        "groups": groups_json,
    });
    let json = serde_json::to_string(&data)?.replace('<', "\\u003c");
    let Some((head, tail)) = TEMPLATE.split_once(PLACEHOLDER) else {
        bail!("the report template has no data placeholder");
    };
    let html = [head, json.as_str(), tail].concat();
    std::fs::write(&args.out, html)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {}: {} groups ({grouped} images), map of {map_points} images, in {:.1} s",
        args.out.display(),
        groups.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every group member's record and thumbnail.
async fn fetch_members(client: &Client, groups: &[Group]) -> Result<Vec<GetResponse>> {
    let ids: Vec<String> = groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.id.clone()))
        .collect();
    let bar = ProgressBar::new(ids.len() as u64).with_message("thumbnails");
    let fetched: Vec<Result<GetResponse>> = futures_util::stream::iter(ids)
        .map(|id| {
            let mut client = client.clone();
            let bar = bar.clone();
            async move {
                let r = client
                    .get(GetRequest {
                        id: id.clone(),
                        include_features: false,
                        include_thumbnail: true,
                    })
                    .await
                    .with_context(|| format!("cannot get {id}"))?
                    .into_inner();
                bar.inc(1);
                Ok(r)
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    bar.finish_and_clear();
    fetched.into_iter().collect()
}

/// Lists an even sample of the store, lays it out with t-SNE and sets the
/// `map` of each sampled image; returns how many are on the map.
async fn add_map(client: &mut Client, sample: u32, images: &mut Images) -> Result<usize> {
    let mut stream = client
        .list(ListRequest {
            sample,
            include_thumbnail: true,
            include_projected: true,
            include_metadata: false,
        })
        .await?
        .into_inner();
    let mut points = Vec::new();
    let mut vectors: Vec<f32> = Vec::new();
    let mut dim = 0;
    while let Some(item) = stream.message().await.context("the list stream broke")? {
        let Some(projected) = &item.projected else {
            continue;
        };
        dim = projected.values.len();
        vectors.extend_from_slice(&projected.values);
        points.push(images.add(&item, Some(MAP_THUMBNAIL_SIDE)));
    }
    // t-SNE needs at least 3 x perplexity + 1 points; a map of fewer says
    // nothing anyway.
    if points.len() < 8 || dim < 2 {
        return Ok(0);
    }
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "laying out the map of {} images (t-SNE)",
        points.len()
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let n = points.len();
    let layout = tokio::task::spawn_blocking(move || tsne(vectors, n, dim)).await??;
    spinner.finish_and_clear();
    for (k, &i) in points.iter().enumerate() {
        images.list[i]["map"] = json!([layout[2 * k], layout[2 * k + 1]]);
    }
    Ok(n)
}

/// A JPEG thumbnail shrunk to `side` pixels at most, at [`REPORT_QUALITY`];
/// `None` if it does not decode (the stored one is used then).
fn shrink(jpeg: &[u8], side: u32) -> Option<Vec<u8>> {
    let image = image::load_from_memory(jpeg).ok()?.into_rgb8();
    lookalike::decode::thumbnail_at(&image, side, REPORT_QUALITY).ok()
}

/// A 2-D t-SNE layout of `n` row vectors of `dim` values, row-major.
fn tsne(vectors: Vec<f32>, n: usize, dim: usize) -> Result<Vec<f32>> {
    use linfa::traits::Transformer;
    let data =
        ndarray::Array2::from_shape_vec((n, dim), vectors.iter().map(|&v| f64::from(v)).collect())?;
    let perplexity = ((n - 1) as f64 / 3.0 - 1.0).clamp(2.0, 30.0);
    let layout = linfa_tsne::TSneParams::embedding_size(2)
        .perplexity(perplexity)
        .approx_threshold(0.5)
        .max_iter(1000)
        .transform(data)
        .map_err(|e| anyhow::anyhow!("t-SNE failed: {e}"))?;
    Ok(layout.iter().map(|&v| v as f32).collect())
}

/// Now, as `2026-12-04T15:40:00Z`.
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn template_has_one_placeholder() {
        assert_eq!(super::TEMPLATE.matches(super::PLACEHOLDER).count(), 1);
    }
}
