//! Decodes one image file into network input in a loop, for profilers:
//! `cargo run --release --example profile_decode -- FILE SECONDS`.

use lookalike::embed::{Embedder, ModelKind};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: profile_decode FILE [SECONDS]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let bytes = std::fs::read(&path).expect("read");
    let embedder = Embedder::load(ModelKind::EfficientNetLite0, None, 1).expect("load");
    let started = std::time::Instant::now();
    let mut n = 0u32;
    while started.elapsed().as_secs_f64() < secs {
        std::hint::black_box(
            lookalike::decode::network_input(
                &bytes,
                u64::MAX,
                embedder.kind().input_size(),
                embedder.view(),
            )
            .expect("decode"),
        );
        n += 1;
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    println!("{ms:.2} ms per image");
}
