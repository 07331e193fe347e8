//! `lookalike train-siamese` and `lookalike eval siamese`: train the
//! duplicate-verdict network on your photos, and measure one.
//!
//! Both run in-process (no daemon): they need the CNN's mid-network maps,
//! and a training run is a batch job, not a service call.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lookalike::embed::{Embedder, ModelKind};
use lookalike::lab::siamese::{
    photos::{self, Photo, Split},
    quality::{self, QualityReport},
    train::{self, EpochLoss, TrainConfig},
};
use lookalike::siamese::Siamese;

/// Which photos to use, shared by both commands.
#[derive(Args, Debug)]
pub struct PhotoArgs {
    /// Photos: files or folders, walked recursively; a photo's folder name
    /// is its class.
    #[arg(long, required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// A splits.tsv (path, split, group) as scripts/fetch-datasets.sh
    /// writes it; without one, about a quarter of the photos (by content
    /// hash) are held out for validation.
    #[arg(long)]
    splits: Option<PathBuf>,
    /// Precision the duplicate threshold is calibrated to keep.
    #[arg(long, default_value_t = 0.99)]
    precision: f64,
    /// Threads for the CNN (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    photos: PhotoArgs,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Passes over the training photos per epoch.
    #[arg(long, default_value_t = 4)]
    passes_per_epoch: usize,
    /// Photos per batch (two views of each).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Adam learning rate (cosine-decayed to 5 % over the run).
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    /// Contrastive-loss margin (embeddings are unit vectors: distances 0..2).
    #[arg(long, default_value_t = 1.0)]
    margin: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the weights (safetensors, threshold included).
    #[arg(long, default_value = "models/siamese.safetensors")]
    out: PathBuf,
    /// Also write the loss curve and quality report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalSiameseArgs {
    #[command(flatten)]
    photos: PhotoArgs,
    /// Weights to measure (default: the bundled model).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also list this many pairs of different photos that the Siamese
    /// distance finds closest (the confusions that set the threshold).
    #[arg(long, default_value_t = 0)]
    closest_negatives: usize,
    /// Also write every pair scored, one per line, to this TSV: whether the
    /// two are one photo, the family, both photos, the Siamese distance,
    /// the cosine, the dHash bits that differ, the keypoint evidence
    /// (inliers, coverage, unexplained share), the shipped verdict and the
    /// regional cosine.
    #[arg(long)]
    pairs: Option<PathBuf>,
}

pub fn train(args: TrainArgs) -> Result<()> {
    let embedder = load_embedder(args.photos.threads)?;
    let (train_set, val) = load_split(&args.photos)?;
    eprintln!(
        "training on {} photos, validating on {}",
        train_set.len(),
        val.len()
    );
    let config = TrainConfig {
        epochs: args.epochs,
        passes_per_epoch: args.passes_per_epoch,
        batch_photos: args.batch,
        learning_rate: args.learning_rate,
        margin: args.margin,
        seed: args.seed,
    };
    let started = std::time::Instant::now();
    let mut bar = Bar(ProgressBar::hidden());
    let (net, losses) = train::train(&embedder, &train_set, &val, &config, &mut bar)?;
    bar.0.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();
    // Any positive threshold will do for scoring; calibration sets the real one.
    let mut siamese = Siamese::new(net, 1.0, ModelKind::EfficientNetLite0);
    // Calibrated on the classic copies, as the shipped model was.
    let pairs = quality::score_pairs(&embedder, &siamese, &val, false)?;
    let calibrated = quality::report(&pairs, args.photos.precision, None);
    let Some(threshold) = calibrated.methods[quality::SIAMESE].threshold else {
        bail!(
            "no Siamese threshold reaches precision {} on the validation pairs; not saved",
            args.photos.precision
        );
    };
    siamese.set_threshold(threshold);
    let report = quality::report(&pairs, args.photos.precision, Some(threshold));
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    siamese.save(&args.out)?;
    print_losses(&losses);
    println!(
        "\ntrained in {train_seconds:.0} s; wrote {} (threshold {threshold:.4})\n",
        args.out.display()
    );
    println!("{}", report.table());
    if let Some(path) = &args.report {
        let json = serde_json::json!({
            "train_photos": train_set.len(),
            "val_photos": val.len(),
            "train_seconds": train_seconds,
            "config": config,
            "losses": losses
                .iter()
                .enumerate()
                .map(|(epoch, l)| serde_json::json!({
                    "epoch": epoch + 1,
                    "train_loss": l.train,
                    "validation_loss": l.val,
                }))
                .collect::<Vec<_>>(),
            "quality": report,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

pub fn eval(args: EvalSiameseArgs) -> Result<()> {
    let embedder = load_embedder(args.photos.threads)?;
    let siamese = Siamese::load(
        args.weights.as_deref(),
        embedder.kind(),
        embedder.tap_shape(),
    )?;
    let (_, val) = load_split(&args.photos)?;
    let pairs = quality::score_pairs(&embedder, &siamese, &val, true)?;
    let report = quality::report(&pairs, args.photos.precision, Some(siamese.threshold()));
    print_report(&report, siamese.threshold(), val.len(), args.json)?;
    if args.closest_negatives > 0 {
        print_closest_negatives(&pairs, &val, args.closest_negatives);
    }
    if let Some(path) = &args.pairs {
        write_pairs(path, &pairs, &val, siamese.threshold())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Every scored pair as a TSV row (see `EvalSiameseArgs::pairs`).
fn write_pairs(path: &Path, pairs: &[quality::Pair], photos: &[Photo], shipped: f32) -> Result<()> {
    let mut out = String::from(
        "positive\tfamily\tphoto_a\tphoto_b\tsiamese_distance\tcosine\tdhash_bits\tinliers\tcoverage\tunexplained\tduplicate\tregional_cosine\n",
    );
    for p in pairs {
        let e = &p.evidence;
        let distance = -p.scores[quality::SIAMESE];
        // The verdict's score is at or above -t exactly when the daemon
        // calls the pair a duplicate at threshold t.
        let duplicate = p.scores[quality::VERDICT] >= -shipped;
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{distance:.4}\t{:.4}\t{}\t{}\t{:.3}\t{}\t{duplicate}\t{:.4}\n",
            p.positive,
            p.family,
            photos[p.photos.0].path.display(),
            photos[p.photos.1].path.display(),
            p.scores[1],
            -p.scores[2],
            e.inliers,
            e.coverage,
            e.unexplained.map_or("-".into(), |u| format!("{u:.3}")),
            p.scores[quality::REGIONAL],
        ));
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// The `n` pairs of different photos with the smallest Siamese distance,
/// with their cosine: where the verdict is most likely to be wrong.
fn print_closest_negatives(pairs: &[quality::Pair], photos: &[Photo], n: usize) {
    let mut negatives: Vec<&quality::Pair> = pairs.iter().filter(|p| !p.positive).collect();
    negatives.sort_by(|a, b| b.scores[0].total_cmp(&a.scores[0]));
    println!("\n| Siamese distance | cosine | pair | photo A | photo B |\n|---|---|---|---|---|");
    for p in negatives.iter().take(n) {
        println!(
            "| {:.4} | {:.4} | {} | {} | {} |",
            -p.scores[0],
            p.scores[1],
            p.family,
            photos[p.photos.0].path.display(),
            photos[p.photos.1].path.display()
        );
    }
}

fn print_report(report: &QualityReport, shipped: f32, photos: usize, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{photos} validation photos; the model's own threshold is {shipped:.4}\n");
        println!("{}", report.table());
    }
    Ok(())
}

fn load_embedder(threads: usize) -> Result<Embedder> {
    Ok(Embedder::load(ModelKind::EfficientNetLite0, None, threads)?)
}

/// The training and validation photos.
fn load_split(args: &PhotoArgs) -> Result<(Vec<Photo>, Vec<Photo>)> {
    let all = photos::load(&args.images, args.splits.as_deref())?;
    let (train, val): (Vec<Photo>, Vec<Photo>) =
        all.into_iter().partition(|p| p.split == Split::Train);
    if val.len() < 2 {
        bail!(
            "only {} validation photos: give more photos or a splits file",
            val.len()
        );
    }
    Ok((train, val))
}

fn print_losses(losses: &[EpochLoss]) {
    println!("| epoch | train loss | validation loss |\n|---|---|---|");
    for (i, l) in losses.iter().enumerate() {
        println!("| {} | {:.4} | {:.4} |", i + 1, l.train, l.val);
    }
}

/// A progress bar with the running loss.
struct Bar(ProgressBar);

impl train::Progress for Bar {
    fn start(&mut self, total_steps: u64) {
        self.0 = ProgressBar::new(total_steps);
        // Redraw at most once a second: a training run is long.
        self.0
            .set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(1));
        self.0.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {elapsed} (eta {eta}) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }

    fn step(&mut self, loss: f32) {
        self.0.set_message(format!("loss {loss:.4}"));
        self.0.inc(1);
    }

    fn epoch(&mut self, epoch: usize, loss: EpochLoss) {
        // Through suspend, not println: the line must reach a log file too.
        // (The bar's state is locked inside suspend: read it before.)
        let seconds = self.0.elapsed().as_secs_f64();
        self.0.suspend(|| {
            eprintln!(
                "epoch {}: train loss {:.4}, validation loss {:.4} ({seconds:.0} s)",
                epoch + 1,
                loss.train,
                loss.val
            )
        });
    }
}
