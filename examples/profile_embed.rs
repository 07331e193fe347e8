//! Runs the Lite0 forward pass in a loop, for profilers:
//! `cargo run --release --example profile_embed -- BATCH THREADS SECONDS`.

use lookalike::embed::{Embedder, ModelKind};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (batch, threads, secs) = (
        args.first().copied().unwrap_or(16),
        args.get(1).copied().unwrap_or(2),
        args.get(2).copied().unwrap_or(10),
    );
    let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, threads).expect("load");
    let img = image::RgbImage::from_fn(300, 240, |x, y| {
        image::Rgb([x as u8, y as u8, (x ^ y) as u8])
    });
    let inputs = vec![embedder.input(&img); batch];
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed().as_secs() < secs as u64 {
        std::hint::black_box(embedder.embed_inputs(&inputs));
        n += batch;
    }
    println!("{:.1} images/s", n as f64 / started.elapsed().as_secs_f64());
}
