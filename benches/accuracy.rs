//! Near-duplicate accuracy next to imagededup's perceptual hashes, on the
//! same photos and copies: `cargo bench --bench accuracy`.
//!
//! Photos: `datasets/near-dup-bases` (from `scripts/fetch-datasets.sh`), or
//! the committed `tests/data` when that is missing. Copies: the seeded
//! families of `lookalike::lab::eval::plan`, written as files so both sides read
//! the same bytes. Ours: `lookalike eval near-dup` (a real daemon, exact
//! search or PCA + HNSW as configured). Peer: PyPI `imagededup` PHash and
//! DHash (ranking by Hamming distance), from `.tools/bench-venv`;
//! imagededup's CNN method downloads its weights from the internet at run
//! time and cannot run here, so it is not in the table.

use std::{path::PathBuf, process::Command, time::Instant};

use lookalike::lab::eval::plan;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let bases = root().join("datasets/near-dup-bases");
    let source = if bases.is_dir() {
        bases
    } else {
        root().join("tests/data")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (orig, copies) = (dir.path().join("originals"), dir.path().join("copies"));
    std::fs::create_dir_all(&orig).expect("mkdir");
    std::fs::create_dir_all(&copies).expect("mkdir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&source)
        .expect("photos")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("jpg" | "jpeg" | "png")
            )
        })
        .collect();
    files.sort();
    let mut queries = 0;
    for (i, path) in files.iter().enumerate() {
        let stem = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let ext = path
            .extension()
            .expect("ext")
            .to_string_lossy()
            .into_owned();
        std::fs::copy(path, orig.join(format!("{stem}.{ext}"))).expect("copy");
        let img = image::open(path).expect("decode").into_rgb8();
        // The same seeds `lookalike eval near-dup --seed 1` uses.
        for v in plan::variants(&img, 1_000_003u64.wrapping_add(i as u64)).expect("variants") {
            std::fs::write(copies.join(format!("{stem}__{}.jpg", v.label)), &v.bytes)
                .expect("write");
            queries += 1;
        }
    }
    println!(
        "\n## Near-duplicate accuracy: {} photos, {queries} copies ({})\n",
        files.len(),
        source.display()
    );
    println!("| method | recall@1 | recall@10 | mAP | wall s |");
    println!("|---|---|---|---|---|");

    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["eval", "near-dup", "--json", "--images"])
        .arg(&orig)
        .output()
        .expect("lookalike eval");
    let wall = started.elapsed().as_secs_f64();
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(v) => {
            let all = &v["rows"][0];
            println!(
                "| lookalike (EfficientNet-Lite0, daemon end to end) | {:.4} | {:.4} | {:.4} | {wall:.1} |",
                all["recall_at_1"].as_f64().unwrap_or(0.0),
                all["recall_at_10"].as_f64().unwrap_or(0.0),
                all["map"].as_f64().unwrap_or(0.0)
            );
        }
        Err(e) => println!(
            "| lookalike | failed: {e}: {} | | | |",
            String::from_utf8_lossy(&out.stderr)
        ),
    }

    let python = root().join(".tools/bench-venv/bin/python");
    if !python.exists() {
        println!("| imagededup PHash / DHash | skipped: run scripts/setup-bench-env.sh | | | |");
        return;
    }
    let started = Instant::now();
    let out = Command::new(python)
        .arg(root().join("scripts/peer_imagededup.py"))
        .args(["--method", "both", "--originals"])
        .arg(&orig)
        .arg("--queries")
        .arg(&copies)
        .output()
        .expect("peer_imagededup.py");
    let wall = started.elapsed().as_secs_f64();
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            println!(
                "| imagededup | failed: {e}: {} | | | |",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
    };
    for m in ["phash", "dhash"] {
        let r = &v[m];
        println!(
            "| imagededup {} (Hamming ranking) | {:.4} | {:.4} | {:.4} | {wall:.1} (both) |",
            m.to_uppercase(),
            r["recall_at_1"].as_f64().unwrap_or(0.0),
            r["recall_at_10"].as_f64().unwrap_or(0.0),
            r["map"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "\nPer family, recall@1 (ours from `lookalike eval near-dup`; imagededup per copy label):"
    );
    for m in ["phash", "dhash"] {
        if let Some(per) = v[m]["per_transform"].as_object() {
            let cells: Vec<String> = per
                .iter()
                .map(|(label, r)| {
                    format!("{label} {:.2}", r["recall_at_1"].as_f64().unwrap_or(0.0))
                })
                .collect();
            println!("- {m}: {}", cells.join(", "));
        }
    }
}
