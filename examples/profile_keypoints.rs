//! Extracts keypoints from one image file and checks it against a 40 % crop
//! of itself in a loop, for profilers:
//! `cargo run --release --example profile_keypoints -- FILE [SECONDS]`.
//! The image is decoded as the daemon decodes it for the network.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: profile_keypoints FILE [SECONDS]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let bytes = std::fs::read(&path).expect("read");
    let size = lookalike::embed::ModelKind::EfficientNetLite0.input_size();
    let decoded =
        lookalike::decode::for_network(&bytes, u64::MAX, (size, &[]), None, true).expect("decode");
    // As stored: the strongest of what was found.
    let points = lookalike::local::extract_grey(decoded.for_keypoints.expect("keypoints")).stored();
    let image = lookalike::decode::decode_at_least(
        &bytes,
        u64::MAX,
        lookalike::decode::resize_target(size),
    )
    .expect("decode");
    let (w, h) = image.dimensions();
    let crop = image::imageops::crop_imm(&image, w / 3, h / 3, w * 2 / 5, h * 2 / 5).to_image();
    let part = lookalike::local::extract(&crop);

    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed().as_secs_f64() < secs / 2.0 {
        std::hint::black_box(lookalike::local::extract(&image));
        n += 1;
    }
    let extract_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    let started = Instant::now();
    let mut m = 0u32;
    let mut evidence = lookalike::local::verify(&part, &points);
    while started.elapsed().as_secs_f64() < secs / 2.0 {
        evidence = std::hint::black_box(lookalike::local::verify(&part, &points));
        m += 1;
    }
    let verify_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(m);
    // A mirror image: alike to the CNN, no geometry agrees (the worst
    // case: every candidate of such a query is checked).
    let mirror = lookalike::local::extract(&image::imageops::flip_horizontal(&image));
    let started = Instant::now();
    let mut q = 0u32;
    let mut mirrored = lookalike::local::verify(&mirror, &points);
    while started.elapsed().as_secs_f64() < secs / 2.0 {
        mirrored = std::hint::black_box(lookalike::local::verify(&mirror, &points));
        q += 1;
    }
    let mirror_ms = started.elapsed().as_secs_f64() * 1e3 / f64::from(q);
    println!("its mirror image verified in {mirror_ms:.3} ms: {mirrored:?}");
    println!(
        "{}x{} decoded, {} keypoints: extract {extract_ms:.2} ms; a 16 % crop ({} keypoints) verified \
         in {verify_ms:.3} ms: {evidence:?}",
        w,
        h,
        points.points.len(),
        part.points.len()
    );
}
