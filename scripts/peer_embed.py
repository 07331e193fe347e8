#!/usr/bin/env python3
"""ONNX Runtime peer for the embedding benchmark: the same EfficientNet-Lite
network and weights as the Rust code, exported by scripts/onnx_export.py.

Usage (in the bench venv, see scripts/setup-bench-env.sh); each subcommand
prints ONE JSON object on stdout:

    py=$(scripts/setup-bench-env.sh | tail -n1)
    "$py" scripts/onnx_export.py models/efficientnet-lite0.safetensors /tmp/lite0.onnx

    # Agreement with our embeddings: IN.f32 is the raw little-endian float32
    # input tensor (NCHW, already scaled (v-127)/128); OURS.f32 is our raw
    # float32 (N, dim) embeddings. Both sides are L2-normalised here.
    "$py" scripts/peer_embed.py check --onnx /tmp/lite0.onnx --input IN.f32 \\
        --shape N,3,224,224 --expect OURS.f32 --dim 1280
      -> {"min_cosine": ..., "mean_cosine": ..., "n": N, ...}

    # Forward-pass throughput only (random input, after warm-up),
    # intra_op_num_threads=T, inter_op_num_threads=1, sequential, ORT_ENABLE_ALL.
    "$py" scripts/peer_embed.py bench --onnx /tmp/lite0.onnx --size 224 --batch 16 \\
        --threads 2 --seconds 5
      -> {"images_per_sec": ..., "ms_per_batch": ..., "batch": 16, "threads": 2, ...}

    # End to end, the peer of our decode + forward: FILE read from memory 16
    # times per batch, each copy decoded with Pillow in draft mode (DCT-scaled
    # JPEG decode) and preprocessed as src/decode does, on a pool of T threads
    # (Pillow releases the GIL while decoding), then one ORT run with T threads.
    "$py" scripts/peer_embed.py e2e --onnx /tmp/lite0.onnx --image FILE --size 224 \\
        --batch 16 --threads 2 --seconds 5
      -> {"images_per_sec": ..., ...}

    # Sanity check of the export: Pillow preprocessing as in src/decode.rs
    # (shorter side to round(size/0.875), bilinear, centre crop), top-5 classes.
    # tests/data/chelsea.png must give a cat class (281-285), coffee.png 967.
    "$py" scripts/peer_embed.py classify --onnx /tmp/lite0.onnx \\
        --image tests/data/chelsea.png --size 224
      -> {"top5": [...], "top5_prob": [...], ...}
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path, threads=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads is not None:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def l2n(x):
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cmd_check(a):
    shape = tuple(int(v) for v in a.shape.split(","))
    x = np.fromfile(a.input, dtype="<f4")
    if x.size != int(np.prod(shape)):
        sys.exit(f"{a.input}: {x.size} floats, shape {shape} needs {int(np.prod(shape))}")
    x = x.reshape(shape)
    ours = np.fromfile(a.expect, dtype="<f4")
    if ours.size != shape[0] * a.dim:
        sys.exit(f"{a.expect}: {ours.size} floats, expected {shape[0]} x {a.dim}")
    ours = ours.reshape(shape[0], a.dim)
    s = session(a.onnx, a.threads)
    feats = np.concatenate([s.run(["features"], {"input": x[i:i + 64]})[0]
                            for i in range(0, shape[0], 64)])
    cos = np.sum(l2n(feats) * l2n(ours), axis=1)
    print(json.dumps({"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                      "n": int(shape[0]), "argmin": int(cos.argmin())}))


def cmd_bench(a):
    s = session(a.onnx, a.threads)
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, 3, a.size, a.size)).astype(np.float32)
    feed = {"input": x}
    warm_end = time.perf_counter() + a.warmup
    warm = 0
    while warm < 3 or time.perf_counter() < warm_end:
        s.run(["features"], feed)
        warm += 1
    times = []
    start = time.perf_counter()
    end = start + a.seconds
    while True:
        t0 = time.perf_counter()
        s.run(["features"], feed)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= end:
            break
    total = time.perf_counter() - start
    print(json.dumps({
        "images_per_sec": a.batch * len(times) / total,
        "ms_per_batch": 1000 * total / len(times),
        "median_ms_per_batch": 1000 * float(np.median(times)),
        "batch": a.batch, "threads": a.threads, "iterations": len(times),
        "size": a.size, "onnxruntime": ort.__version__,
    }))


def preprocess(path, size, draft=False):
    """Like src/decode to_input: RGB, shorter side to round(size/0.875)
    (bilinear), centre crop size x size, (v - 127) / 128, NCHW. With `draft`,
    JPEGs are decoded at the smallest DCT scale that keeps that side."""
    from PIL import Image
    img = Image.open(path)
    if draft:
        img.draft("RGB", (round(size / 0.875),) * 2)
    img = img.convert("RGB")
    w, h = img.size
    target = round(size / 0.875)
    scale = target / min(w, h)
    nw, nh = (target, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), target)
    img = img.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - min(size, nw)) // 2, (nh - min(size, nh)) // 2
    img = img.crop((x0, y0, x0 + size, y0 + size))
    arr = (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
    return arr.transpose(2, 0, 1)[None].copy()


def cmd_e2e(a):
    import io
    from concurrent.futures import ThreadPoolExecutor
    s = session(a.onnx, a.threads)
    with open(a.image, "rb") as f:
        data = f.read()
    pool = ThreadPoolExecutor(max_workers=a.threads)

    def batch():
        xs = list(pool.map(lambda _: preprocess(io.BytesIO(data), a.size, draft=True),
                           range(a.batch)))
        s.run(["features"], {"input": np.concatenate(xs)})

    batch()
    start = time.perf_counter()
    runs = 0
    while runs < 3 or time.perf_counter() < start + a.seconds:
        batch()
        runs += 1
    total = time.perf_counter() - start
    print(json.dumps({"images_per_sec": a.batch * runs / total, "batch": a.batch,
                      "threads": a.threads, "iterations": runs}))


def cmd_classify(a):
    s = session(a.onnx, a.threads)
    x = preprocess(a.image, a.size)
    logits = s.run(["logits"], {"input": x})[0][0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-logits)[:5]
    print(json.dumps({"image": os.path.basename(a.image), "top5": [int(i) for i in top],
                      "top5_prob": [round(float(p[i]), 4) for i in top]}))


def main():
    ap = argparse.ArgumentParser(description="ONNX Runtime peer for the embedding benchmark")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="cosine agreement with our embeddings")
    c.add_argument("--onnx", required=True)
    c.add_argument("--input", required=True, help="raw little-endian float32 NCHW input")
    c.add_argument("--shape", required=True, help="N,3,S,S")
    c.add_argument("--expect", required=True, help="raw float32 (N, dim) embeddings")
    c.add_argument("--dim", type=int, default=1280)
    c.add_argument("--threads", type=int, default=None)
    c.set_defaults(func=cmd_check)
    b = sub.add_parser("bench", help="time the forward pass")
    b.add_argument("--onnx", required=True)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (at least 3 runs)")
    b.set_defaults(func=cmd_bench)
    e = sub.add_parser("e2e", help="time Pillow draft decode + forward of one file")
    e.add_argument("--onnx", required=True)
    e.add_argument("--image", required=True)
    e.add_argument("--size", type=int, default=224)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--seconds", type=float, default=5.0)
    e.set_defaults(func=cmd_e2e)
    k = sub.add_parser("classify", help="top-5 ImageNet classes of one image")
    k.add_argument("--onnx", required=True)
    k.add_argument("--image", required=True)
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--threads", type=int, default=None)
    k.set_defaults(func=cmd_classify)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
