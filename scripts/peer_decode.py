#!/usr/bin/env python3
"""Pillow peer for the decode benchmark: decode FILE and produce the network's
input crop, as src/decode.rs does (RGB, shorter side to round(size/0.875),
bilinear, centre crop size x size, as a uint8 HWC array). Single thread.

Usage (in the bench venv, see scripts/setup-bench-env.sh); prints ONE JSON
object on stdout:

    py=$(scripts/setup-bench-env.sh | tail -n1)
    "$py" scripts/peer_decode.py /tmp/photo-12mp.jpg --size 224 --seconds 5
      -> {"plain_ms": ..., "draft_ms": ..., "width": ..., "height": ..., ...}

- plain: Image.open(FILE).convert('RGB'), resize (BILINEAR, reducing_gap=None),
  centre crop, numpy array.
- draft: the same, but img.draft('RGB', (target, target)) before loading, which
  lets libjpeg decode at 1/2, 1/4 or 1/8 scale (as long as both sides stay at
  or above target). For formats other than JPEG draft() does nothing.

Each variant runs once to warm up, then repeatedly for --seconds; the reported
times are medians in milliseconds. `draft_scale` is the JPEG scale draft()
chose, `crop_mean_abs_diff` the mean |plain - draft| of the two crops (0..255).
"""
import argparse
import json
import time

import numpy as np
from PIL import Image


def crop_from(img, size):
    w, h = img.size
    target = round(size / 0.875)
    scale = target / min(w, h)
    nw, nh = (target, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), target)
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    x0, y0 = (nw - min(size, nw)) // 2, (nh - min(size, nh)) // 2
    return np.asarray(img.crop((x0, y0, x0 + size, y0 + size)))


def plain(path, size):
    with Image.open(path) as img:
        return crop_from(img.convert("RGB"), size)


def draft(path, size):
    target = round(size / 0.875)
    with Image.open(path) as img:
        img.draft("RGB", (target, target))
        return crop_from(img.convert("RGB"), size)


def median_ms(fn, path, size, seconds):
    fn(path, size)
    times = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn(path, size)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= end:
            break
    return 1000 * float(np.median(times)), len(times)


def main():
    ap = argparse.ArgumentParser(description="Pillow decode + resize + crop timing")
    ap.add_argument("file")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=5.0, help="per variant")
    a = ap.parse_args()
    with Image.open(a.file) as img:
        width, height, fmt = img.width, img.height, img.format
        img.draft("RGB", (round(a.size / 0.875),) * 2)
        drafted = img.size
    p_ms, p_n = median_ms(plain, a.file, a.size, a.seconds)
    d_ms, d_n = median_ms(draft, a.file, a.size, a.seconds)
    diff = np.abs(plain(a.file, a.size).astype(np.int16) - draft(a.file, a.size).astype(np.int16))
    print(json.dumps({
        "plain_ms": p_ms, "draft_ms": d_ms, "width": width, "height": height,
        "format": fmt, "draft_size": list(drafted), "draft_scale": round(drafted[0] / width, 4),
        "plain_runs": p_n, "draft_runs": d_n, "crop_mean_abs_diff": float(diff.mean()),
        "size": a.size, "pillow": Image.__version__,
    }))


if __name__ == "__main__":
    main()
