#!/usr/bin/env python3
"""Index peers for the ANN benchmark: hnswlib and faiss (IndexHNSWFlat) with
the same HNSW parameters as ours, on the same vectors and exact neighbours.

Usage (in the bench venv, see scripts/setup-bench-env.sh); prints ONE JSON
object on stdout, diagnostics on stderr:

    py=$(scripts/setup-bench-env.sh | tail -n1)
    "$py" scripts/peer_index.py --base BASE.f32 --queries Q.f32 --dim D \\
        --truth TRUTH.u32 --k 10 --m 24 --ef-construction 200 \\
        --efs 16,32,64,128,256 --threads 2 [--lib hnswlib|faiss|both]
      -> {"hnswlib": {"build_s": ..., "mem_mib": ..., "runs": [{"ef": 16,
          "recall": ..., "qps_batch": ..., "qps_single": ...}, ...], ...},
          "faiss": {...}, "versions": {...}, "params": {...}}

Inputs:
  BASE.f32, Q.f32  raw little-endian float32, row-major, rows of D. The vectors
                   are expected L2-normalised: similarity is the inner product
                   (= cosine), hnswlib space 'ip', faiss METRIC_INNER_PRODUCT.
                   Nothing is renormalised here (a warning on stderr if the
                   norms are off).
  TRUTH.u32        raw little-endian uint32, row-major, the exact neighbours
                   (0-based rows of BASE) of each query, at least k per query
                   (the row length is taken from the file size: truth may hold
                   more than k; the first k are used).

Per lib:
  build_s      wall time of building the index (add with --threads threads).
  mem_mib      growth of this process's VmRSS (/proc/self/status) over the
               build, MiB. With --lib both each lib runs in its own fresh
               Python process (this script re-invoked), so one lib's freed
               memory cannot hide the other's.
  index_mib    the lib's own size: hnswlib index_file_size(), faiss the length
               of serialize_index(); both are the serialised index (vectors
               included), not the in-memory overhead.
  vectors_mib  the raw float32 base vectors, for reference.
  runs[]       per ef (hnswlib set_ef, faiss hnsw.efSearch):
      recall      mean over queries of |found top-k ∩ true top-k| / k
      qps_batch   all queries in one call with --threads threads
      qps_single  one query per call, 1 thread (includes the Python call
                  overhead per query, a few µs)
    Each timing is one untimed warm-up pass, then --trials trials, each
    repeating the pass until --min-seconds have passed (at least one pass);
    QPS = queries answered / time, the median trial's.
"""
import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

LIBS = ("hnswlib", "faiss")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def rss_mib():
    """VmRSS of this process in MiB (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def load_rows(path, dtype, width, what):
    a = np.fromfile(path, dtype=dtype)
    if width <= 0 or a.size % width:
        sys.exit(f"{path}: {a.size} values is not a whole number of {what} rows of {width}")
    return a.reshape(-1, width)


def load_inputs(a):
    base = np.ascontiguousarray(load_rows(a.base, "<f4", a.dim, "base").astype(np.float32))
    queries = np.ascontiguousarray(load_rows(a.queries, "<f4", a.dim, "query").astype(np.float32))
    nq = queries.shape[0]
    t = np.fromfile(a.truth, dtype="<u4")
    if nq == 0 or t.size % nq:
        sys.exit(f"{a.truth}: {t.size} values is not a whole number of rows for {nq} queries")
    truth = t.reshape(nq, -1)
    if truth.shape[1] < a.k:
        sys.exit(f"{a.truth}: {truth.shape[1]} neighbours per query, --k {a.k} needs at least {a.k}")
    truth = truth[:, :a.k].astype(np.int64)
    if truth.max(initial=0) >= base.shape[0]:
        sys.exit(f"{a.truth}: neighbour index {int(truth.max())} >= {base.shape[0]} base rows")
    for name, x in (("base", base), ("queries", queries)):
        n = np.linalg.norm(x[:1000], axis=1)
        if n.size and (abs(n.min() - 1) > 1e-3 or abs(n.max() - 1) > 1e-3):
            log(f"warning: {name} norms in [{n.min():.4f}, {n.max():.4f}], not L2-normalised;"
                " inner product is not cosine")
    return base, queries, truth


def recall_at_k(found, truth):
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / float(truth.size)


def timed(fn, n_queries, min_seconds, trials):
    """Warm-up once, then `trials` trials, each repeating fn until min_seconds;
    returns (last result, the median trial's qps)."""
    out = fn()
    qps = []
    for _ in range(trials):
        passes = 0
        start = time.perf_counter()
        while True:
            out = fn()
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        qps.append(passes * n_queries / elapsed)
    return out, sorted(qps)[trials // 2]


class Hnswlib:
    name = "hnswlib"

    def __init__(self, a):
        import hnswlib
        self.lib = hnswlib
        self.threads = a.threads

    def build(self, base, m, efc, threads):
        idx = self.lib.Index(space="ip", dim=base.shape[1])
        idx.init_index(max_elements=base.shape[0], M=m, ef_construction=efc, random_seed=100)
        idx.set_num_threads(threads)
        idx.add_items(base, np.arange(base.shape[0]), num_threads=threads)
        self.idx = idx

    def index_bytes(self):
        return int(self.idx.index_file_size())

    def set_ef(self, ef):
        self.idx.set_ef(ef)

    def search_batch(self, q, k):
        labels, _ = self.idx.knn_query(q, k=k, num_threads=self.threads)
        return labels

    def search_single(self, q, k):
        labels = np.empty((q.shape[0], k), dtype=np.int64)
        knn = self.idx.knn_query
        for i in range(q.shape[0]):
            labels[i] = knn(q[i:i + 1], k=k, num_threads=1)[0][0]
        return labels


class Faiss:
    name = "faiss"

    def __init__(self, a):
        import faiss
        self.lib = faiss
        self.threads = a.threads

    def build(self, base, m, efc, threads):
        faiss = self.lib
        faiss.omp_set_num_threads(threads)
        idx = faiss.IndexHNSWFlat(base.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = efc
        idx.add(base)
        self.idx = idx

    def index_bytes(self):
        return int(self.lib.serialize_index(self.idx).nbytes)

    def set_ef(self, ef):
        self.idx.hnsw.efSearch = ef

    def search_batch(self, q, k):
        self.lib.omp_set_num_threads(self.threads)
        return self.idx.search(q, k)[1]

    def search_single(self, q, k):
        self.lib.omp_set_num_threads(1)
        labels = np.empty((q.shape[0], k), dtype=np.int64)
        search = self.idx.search
        for i in range(q.shape[0]):
            labels[i] = search(q[i:i + 1], k)[1][0]
        return labels


def run_lib(name, a, base, queries, truth):
    peer = {"hnswlib": Hnswlib, "faiss": Faiss}[name](a)
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    peer.build(base, a.m, a.ef_construction, a.threads)
    build_s = time.perf_counter() - t0
    after = rss_mib()
    res = {
        "build_s": round(build_s, 4),
        "mem_mib": round(after - before, 2),
        "index_mib": round(peer.index_bytes() / 2**20, 2),
        "vectors_mib": round(base.nbytes / 2**20, 2),
        "runs": [],
    }
    log(f"{name}: built {base.shape[0]} x {base.shape[1]} in {build_s:.2f} s, "
        f"RSS +{after - before:.1f} MiB")
    nq = queries.shape[0]
    for ef in a.efs:
        peer.set_ef(ef)
        found, qps_b = timed(lambda: peer.search_batch(queries, a.k), nq, a.min_seconds, a.trials)
        rec = recall_at_k(found, truth)
        found1, qps_s = timed(lambda: peer.search_single(queries, a.k), nq, a.min_seconds, a.trials)
        rec1 = recall_at_k(found1, truth)
        run = {"ef": ef, "recall": round(rec, 5), "qps_batch": round(qps_b, 1),
               "qps_single": round(qps_s, 1)}
        if abs(rec1 - rec) > 1e-9:
            run["recall_single"] = round(rec1, 5)
        res["runs"].append(run)
        log(f"{name}: ef={ef} recall@{a.k}={rec:.4f} qps_batch={qps_b:.0f} qps_single={qps_s:.0f}")
    return res


def versions(libs):
    from importlib import metadata
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for name in libs:
        try:
            v[name] = metadata.version("faiss-cpu" if name == "faiss" else name)
        except metadata.PackageNotFoundError:
            v[name] = None
    return v


def child_args(a, lib):
    return [sys.executable, os.path.abspath(__file__), "--base", a.base, "--queries", a.queries,
            "--dim", str(a.dim), "--truth", a.truth, "--k", str(a.k), "--m", str(a.m),
            "--ef-construction", str(a.ef_construction), "--efs", ",".join(map(str, a.efs)),
            "--threads", str(a.threads), "--min-seconds", str(a.min_seconds), "--trials", str(a.trials), "--lib", lib]


def main():
    ap = argparse.ArgumentParser(description="hnswlib / faiss HNSW peers for the ANN benchmark")
    ap.add_argument("--base", required=True, help="raw little-endian float32 (N, dim)")
    ap.add_argument("--queries", required=True, help="raw little-endian float32 (Q, dim)")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--truth", required=True, help="raw little-endian uint32 (Q, >=k) exact neighbours")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--efs", default="16,32,64,128,256", help="comma-separated search ef values")
    ap.add_argument("--threads", type=int, default=2, help="build and batch-search threads")
    ap.add_argument("--min-seconds", type=float, default=0.2,
                    help="repeat each timed pass until this long (default 0.2)")
    ap.add_argument("--trials", type=int, default=1,
                    help="timed trials per figure; the median is reported (default 1)")
    ap.add_argument("--lib", choices=("hnswlib", "faiss", "both"), default="both")
    a = ap.parse_args()
    a.efs = [int(v) for v in a.efs.split(",") if v.strip()]
    params = {"dim": a.dim, "k": a.k, "m": a.m, "ef_construction": a.ef_construction,
              "threads": a.threads, "min_seconds": a.min_seconds,
              "trials": a.trials}

    if a.lib == "both":
        # Each lib in a fresh process: clean RSS deltas, no OpenMP/thread-pool crosstalk.
        out, failed = {}, False
        for lib in LIBS:
            p = subprocess.run(child_args(a, lib), stdout=subprocess.PIPE)
            try:
                sub = json.loads(p.stdout)
            except ValueError:
                sub = {}
            if p.returncode != 0 or lib not in sub:
                failed = True
                out[lib] = {"error": f"exit status {p.returncode}"}
                continue
            out[lib] = sub[lib]
            out.setdefault("versions", {}).update(sub["versions"])
            out["params"] = sub["params"]
        order = [*LIBS, "versions", "params"]
        print(json.dumps({key: out[key] for key in order if key in out}))
        sys.exit(1 if failed else 0)

    base, queries, truth = load_inputs(a)
    params.update(n=int(base.shape[0]), nq=int(queries.shape[0]))
    res = run_lib(a.lib, a, base, queries, truth)
    print(json.dumps({a.lib: res, "versions": versions([a.lib]), "params": params}))


if __name__ == "__main__":
    main()
