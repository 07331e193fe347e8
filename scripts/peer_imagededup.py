#!/usr/bin/env python3
"""imagededup (PyPI) hash methods, PHash and DHash, as the accuracy peer for
near-duplicate search.

Usage (in the bench venv, see scripts/setup-bench-env.sh); prints ONE JSON
object on stdout, diagnostics (and imagededup's own log lines) on stderr:

    py=$(scripts/setup-bench-env.sh | tail -n1)
    "$py" scripts/peer_imagededup.py --originals DIR --queries DIR \\
        [--method phash|dhash|both] [--threshold 10] [--workers 0]
      -> {"phash": {"hash_s": ..., "images": ..., "recall_at_1": ...,
          "recall_at_10": ..., "map": ..., "per_transform": {LABEL: {...}},
          "threshold": 10, "precision_at_threshold": ...,
          "recall_at_threshold": ...}, "dhash": {...}, "version": "0.3.3.post2", ...}

    "$py" scripts/peer_imagededup.py --check     # the shim imports; {"version": ..., "ok": true}

DIR of originals: images (files not starting with '.'; the file stems must be
unique). DIR of queries: transformed copies named
`<original-stem>__<transform>.<ext>`: the part of the file stem before the LAST
double underscore names the original, the part after it is the transform label
(grouped by the full label). Queries whose original is missing are left out
(counted in "unmatched_queries", listed on stderr).

Per method:
  hash_s        wall time of hashing all originals and queries with imagededup
                (--workers 0: `encode_image` on each file in this process, one
                core; --workers N: `encode_images(dir, num_enc_workers=N)`, the
                library's multiprocessing path, pool start-up included).
  images        images hashed (originals + queries; unreadable ones are
                dropped by imagededup and counted in "failed").
  ranking       for each query, all originals by Hamming distance of the
                64-bit hashes, ascending, ties broken by original file name.
  recall_at_1   fraction of queries whose original is ranked first.
  recall_at_10  ... within the first 10.
  map           mean average precision; with exactly one relevant original per
                query, AP = 1 / rank of the original (so this equals MRR).
  mean_distance mean Hamming distance between each query and its original.
  threshold     imagededup's default find_duplicates max_distance_threshold
                (10); a pair is a duplicate when distance <= threshold (as in
                imagededup's search).
  precision_at_threshold  of all (query, original) pairs within the threshold,
                the fraction that are true pairs (null when there are none).
  recall_at_threshold     fraction of queries whose original is within it.
  per_transform {label: {n, recall_at_1, recall_at_10, map,
                recall_at_threshold, mean_distance}}.

Why the shim (see also scripts/setup-bench-env.sh): imagededup is installed
with --no-deps, without torch/torchvision/matplotlib. `imagededup/methods/__init__.py`
imports cnn.py (`import torch`) and `imagededup/utils/__init__.py` imports
models.py (torch, torchvision) and plotter.py (matplotlib), and the hashing
module imports `imagededup.utils.general_utils`, which runs that __init__. So
before importing, placeholder modules (types.ModuleType whose __path__ is the
real package folder) are registered in sys.modules as `imagededup.methods` and
`imagededup.utils`; `from imagededup.methods.hashing import PHash, DHash` then
loads only hashing.py and the utils/handlers submodules it needs. The hash code
itself is imagededup's, unchanged.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import types
from collections import defaultdict
from importlib import metadata

import numpy as np

METHODS = ("phash", "dhash")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def load_hashing():
    """Import imagededup's PHash and DHash without running the torch-importing
    package __init__ files of imagededup.methods and imagededup.utils."""
    spec = importlib.util.find_spec("imagededup")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("imagededup is not installed (scripts/setup-bench-env.sh installs it)")
    import imagededup  # its own __init__.py only sets __version__
    root = list(spec.submodule_search_locations)[0]
    for sub in ("methods", "utils"):
        name = f"imagededup.{sub}"
        if name in sys.modules:
            continue
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            sys.exit(f"{folder}: not found; the imagededup shim needs re-checking")
        mod = types.ModuleType(name)
        mod.__path__ = [folder]
        mod.__package__ = name
        mod.__file__ = None
        sys.modules[name] = mod
        setattr(imagededup, sub, mod)
    from imagededup.methods.hashing import DHash, PHash
    return {"phash": PHash, "dhash": DHash}


def version():
    try:
        return metadata.version("imagededup")
    except metadata.PackageNotFoundError:
        return None


def list_images(folder):
    """Like imagededup's generate_files (non-recursive): files not starting with '.'."""
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and not os.path.isdir(os.path.join(folder, n)))


def hash_dir(hasher, folder, workers):
    """{file name: 16-hex-digit hash} for the images imagededup could read."""
    if workers > 0:
        return hasher.encode_images(image_dir=folder, recursive=False, num_enc_workers=workers)
    out = {}
    for name in list_images(folder):
        h = hasher.encode_image(image_file=os.path.join(folder, name))
        if h:
            out[name] = h
    return out


def to_u64(hashes):
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def hamming(a, b):
    """Pairwise Hamming distances of two uint64 arrays -> (len(a), len(b))."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)


def split_query(name):
    stem = os.path.splitext(name)[0]
    orig, sep, label = stem.rpartition("__")
    return (orig, label) if sep and orig and label else (None, None)


def summarize(ranks, dists):
    ranks = np.asarray(ranks, dtype=np.float64)
    dists = np.asarray(dists, dtype=np.float64)
    return {
        "n": int(ranks.size),
        "recall_at_1": round(float(np.mean(ranks <= 1)), 5),
        "recall_at_10": round(float(np.mean(ranks <= 10)), 5),
        "map": round(float(np.mean(1.0 / ranks)), 5),
        "mean_distance": round(float(dists.mean()), 3),
    }


def evaluate(method, cls, a):
    hasher = cls(verbose=False)
    t0 = time.perf_counter()
    orig_h = hash_dir(hasher, a.originals, a.workers)
    query_h = hash_dir(hasher, a.queries, a.workers)
    hash_s = time.perf_counter() - t0
    n_files = len(list_images(a.originals)) + len(list_images(a.queries))

    # Originals sorted by name: a stable sort on distance then breaks ties by name.
    onames = sorted(orig_h)
    by_stem = {}
    for n in onames:
        stem = os.path.splitext(n)[0]
        if stem in by_stem:
            sys.exit(f"{a.originals}: two originals with the stem {stem!r}: {by_stem[stem]}, {n}")
        by_stem[stem] = len(by_stem)
    qnames, truth, labels, unmatched = [], [], [], []
    for n in sorted(query_h):
        orig, label = split_query(n)
        if orig not in by_stem:
            unmatched.append(n)
            continue
        qnames.append(n)
        truth.append(by_stem[orig])
        labels.append(label)
    if unmatched:
        log(f"{method}: {len(unmatched)} queries without an original (left out): "
            + ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    if not qnames:
        sys.exit("no query matches an original (names must be <original-stem>__<transform>.<ext>)")

    d = hamming(to_u64(query_h[n] for n in qnames), to_u64(orig_h[n] for n in onames))
    truth = np.array(truth)
    order = np.argsort(d, axis=1, kind="stable")
    ranks = np.argmax(order == truth[:, None], axis=1) + 1
    own = d[np.arange(len(qnames)), truth]

    within = d <= a.threshold
    true_within = int(within[np.arange(len(qnames)), truth].sum())
    pairs_within = int(within.sum())

    res = {"hash_s": round(hash_s, 4), "images": len(orig_h) + len(query_h),
           "failed": n_files - len(orig_h) - len(query_h),
           "originals": len(onames), "queries": len(qnames), "unmatched_queries": len(unmatched)}
    s = summarize(ranks, own)
    res.update({k: v for k, v in s.items() if k != "n"})
    groups = defaultdict(list)
    for i, label in enumerate(labels):
        groups[label].append(i)
    res["per_transform"] = {}
    for label in sorted(groups):
        idx = np.array(groups[label])
        g = summarize(ranks[idx], own[idx])
        g["recall_at_threshold"] = round(float(np.mean(own[idx] <= a.threshold)), 5)
        res["per_transform"][label] = g
    res["threshold"] = a.threshold
    res["pairs_at_threshold"] = pairs_within
    res["precision_at_threshold"] = (round(true_within / pairs_within, 5) if pairs_within else None)
    res["recall_at_threshold"] = round(true_within / len(qnames), 5)
    log(f"{method}: {res['images']} images hashed in {hash_s:.2f} s; R@1 {res['recall_at_1']:.3f} "
        f"R@10 {res['recall_at_10']:.3f} mAP {res['map']:.3f}; at <= {a.threshold}: precision "
        f"{res['precision_at_threshold']} recall {res['recall_at_threshold']:.3f}")
    return res


def main():
    ap = argparse.ArgumentParser(description="imagededup PHash/DHash near-duplicate peer")
    ap.add_argument("--originals", help="folder of original images")
    ap.add_argument("--queries", help="folder of <original-stem>__<transform>.<ext> copies")
    ap.add_argument("--method", choices=("phash", "dhash", "both"), default="both")
    ap.add_argument("--threshold", type=int, default=10,
                    help="Hamming distance threshold (imagededup's default: 10)")
    ap.add_argument("--workers", type=int, default=0,
                    help="0: hash in this process (default); N: encode_images with N worker processes")
    ap.add_argument("--check", action="store_true", help="only check that the hash methods import")
    a = ap.parse_args()
    methods = load_hashing()
    if a.check:
        img = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
        hashes = {m: methods[m](verbose=False).encode_image(image_array=img) for m in METHODS}
        ok = "torch" not in sys.modules and all(h and len(h) == 16 for h in hashes.values())
        print(json.dumps({"version": version(), "ok": ok, "hashes": hashes,
                          "torch_imported": "torch" in sys.modules}))
        sys.exit(0 if ok else 1)
    if not a.originals or not a.queries:
        ap.error("--originals and --queries are required")
    for folder in (a.originals, a.queries):
        if not os.path.isdir(folder):
            sys.exit(f"{folder}: not a folder")
    out = {}
    for m in METHODS if a.method == "both" else (a.method,):
        out[m] = evaluate(m, methods[m], a)
    out["version"] = version()
    out["workers"] = a.workers
    print(json.dumps(out))


if __name__ == "__main__":
    main()
