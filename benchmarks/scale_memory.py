"""Benchmark: episodic memory at millions of events (``FaissMemoryStore``, SQLite + FAISS).

``n_events`` random unit vectors (seeded Gaussian, normalised: *not* text embeddings, so recall
here is a lower bound on structured data) spread evenly over ``n_users`` namespaces
``("user", u, "episodic")``, a quarter of them of kind ``feedback``, the rest ``interaction``.
Ingestion is bulk: one ``put`` of up to 500 events per call, inside one transaction per 20 users,
index files written at ``flush`` (``save_on_commit=False``); a live turn writes a few events per
commit instead. Then: a reopen (SQLite open only; indexes load lazily), ``queries`` searches of a
random user's namespace (a query is one of that user's vectors plus noise), unfiltered and
filtered to ``kind="feedback"``, timed one by one, and recall@k of each against an exact numpy
search over that user's vectors (filtered searches must return exactly ``min(k, n of that kind)``
of the user's own records: counted as ``short_filtered``). ``peak_rss_mb`` is the process's peak
resident memory (run each size in a fresh process: the CLI does).

    python benchmarks/scale_memory.py --events 100000 1000000 [--users 1000] [--dim 384]
        [--approximate-above 20000] [--out benchmarks/results/scale_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` vectors around random ``centres`` (unit, then normalised): events about a catalog's
    items embed near their item's text, so real memory is clustered like this, not uniform."""
    pick = rng.integers(len(centres), size=n)
    v = centres[pick] + spread * _unit(rng, n, centres.shape[1])
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def run_memory_scale(n_events: int, n_users: int, dim: int = 384, k: int = 10, *, queries: int = 200,
                     approximate_above: int | None = None, max_cached_indexes: int | None = None,
                     folder: str | Path | None = None, seed: int = 0, vectors: str = "clustered",
                     topics: int = 2000, spread: float = 0.5) -> dict:
    """Insert ``n_events`` over ``n_users`` namespaces, reopen, search; returns the figures.

    Keys: ``insert_s``, ``insert_events_per_s``, ``flush_s``, ``reopen_s``, ``first_search_ms``
    (a namespace's index loaded from its file), ``search_ms`` / ``search_filtered_ms``
    (``p50``, ``p95``), ``recall_at_k`` / ``recall_at_k_filtered`` (mean over queries),
    ``short_filtered`` (filtered searches with fewer than ``min(k, n)`` of the user's own
    hits: must be 0), ``disk_mb``, ``peak_rss_mb``, ``index_kinds`` (FAISS index types of the
    namespaces searched) and the settings. ``approximate_above`` and ``max_cached_indexes``
    go to :class:`~memory.vector_index.VectorIndexConfig` and :class:`~memory.store.FaissMemoryStore`
    (None: their defaults).

    ``vectors``: ``clustered`` (default): each event near one of ``topics`` shared random unit
    centres (``spread`` is the noise's norm), as events about a catalog's items are; ``random``:
    uniform random unit vectors, the worst case for an approximate index (beyond the nearest
    one, a uniform vector's neighbours are all at cosine ~0, a tie no index can break).

    Example:
        >>> run_memory_scale(2_000, 20, dim=32, queries=20)["short_filtered"]   # doctest: +SKIP
        0
    """
    from memory.store import FaissMemoryStore, MemoryRecord
    from memory.vector_index import VectorIndexConfig

    if vectors not in ("clustered", "random"):
        raise ValueError(f"vectors must be 'clustered' or 'random', got {vectors!r}")
    if n_events <= 0 or n_users <= 0 or n_users > n_events:
        raise ValueError(f"need 0 < n_users <= n_events, got n_events={n_events}, n_users={n_users}")
    cfg_kw = {"use_gpu": False}
    if approximate_above is not None:
        cfg_kw["approximate_above"] = approximate_above
    config = VectorIndexConfig(kind="auto", **cfg_kw)
    store_kw = {} if max_cached_indexes is None else {"max_cached_indexes": max_cached_indexes}
    own = folder is None
    root = Path(tempfile.mkdtemp(prefix="plural-mem-scale-")) if own else Path(folder)
    rng = np.random.default_rng(seed)
    per_user = np.full(n_users, n_events // n_users)
    per_user[: n_events % n_users] += 1
    users = [f"u{j}" for j in range(n_users)]
    centres = _unit(np.random.default_rng(seed + 7), topics, dim)

    def make(g: np.random.Generator, n: int) -> np.ndarray:
        return _clustered(g, centres, n, spread) if vectors == "clustered" else _unit(g, n, dim)

    try:
        store = FaissMemoryStore(root / "mem", dim, config, save_on_commit=False, **store_kw)
        t0 = time.perf_counter()
        for g in range(0, n_users, 20):
            with store.transaction():
                for j in range(g, min(g + 20, n_users)):
                    ns = ("user", users[j], "episodic")
                    for s in range(0, int(per_user[j]), 500):
                        n = min(500, int(per_user[j]) - s)
                        recs = [MemoryRecord(kind="feedback" if (s + i) % 4 == 0 else "interaction",
                                             text=f"event {s + i}", timestamp=float(s + i)) for i in range(n)]
                        store.put(ns, recs, make(rng, n))
        insert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.close()  # writes every index file
        flush_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        store = FaissMemoryStore(root / "mem", dim, config, save_on_commit=False, **store_kw)
        reopen_s = time.perf_counter() - t0
        qrng = np.random.default_rng(seed + 1)
        lat, lat_f, rec, rec_f, first = [], [], [], [], []
        short = 0
        kinds: dict[str, int] = {}
        loaded: set[str] = set()
        for _ in range(queries):
            j = int(qrng.integers(n_users))
            ns = ("user", users[j], "episodic")
            # the exact reference: every vector of the namespace, from SQLite (the source of truth)
            rows = store._db.execute("SELECT record_id, kind, vector FROM records WHERE ns=?",
                                     ("/".join(ns),)).fetchall()
            ids = np.array([r[0] for r in rows], np.int64)
            vecs = np.stack([np.frombuffer(r[2], np.float32) for r in rows])
            fb = np.array([r[1] == "feedback" for r in rows])
            if vectors == "clustered":  # a query about one of the topics
                q = make(qrng, 1)[0]
            else:  # one of the user's vectors, plus noise
                q = vecs[int(qrng.integers(len(ids)))] + 0.5 * _unit(qrng, 1, dim)[0]
                q = (q / np.linalg.norm(q)).astype(np.float32)
            t0 = time.perf_counter()
            hits = store.search(ns, q, k)
            dt = 1000 * (time.perf_counter() - t0)
            (first if users[j] not in loaded else lat).append(dt)
            loaded.add(users[j])
            t0 = time.perf_counter()
            hits_f = store.search(ns, q, k, kind="feedback")
            lat_f.append(1000 * (time.perf_counter() - t0))
            truth = set(ids[np.argsort(-(vecs @ q), kind="stable")[:k]].tolist())
            truth_f = set(ids[fb][np.argsort(-(vecs[fb] @ q), kind="stable")[:k]].tolist())
            rec.append(len(truth & {r.record_id for r, _ in hits}) / min(k, len(ids)))
            got_f = [r for r, _ in hits_f]
            if len(got_f) != min(k, int(fb.sum())) or any(r.kind != "feedback" or r.namespace != ns for r in got_f):
                short += 1
            rec_f.append(len(truth_f & {r.record_id for r in got_f}) / max(1, min(k, int(fb.sum()))))
            kind = type(store._index(ns)._index).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
        store.close()
        disk = sum(p.stat().st_size for p in (root / "mem").rglob("*") if p.is_file())
        lat = lat or first

        def pct(xs, p):
            return round(float(np.percentile(xs, p)), 3)

        return {"n_events": n_events, "n_users": n_users, "events_per_user": int(per_user.max()), "dim": dim,
                "k": k, "queries": queries, "vectors": (f"clustered: {topics} random unit centres, noise of norm {spread}" if vectors == "clustered"
                            else "seeded uniform random unit vectors (not text embeddings)"),
                "index_config": config.model_dump(mode="json"),
                "max_cached_indexes": store.max_cached_indexes,
                "insert_s": round(insert_s, 2), "insert_events_per_s": round(n_events / insert_s),
                "flush_s": round(flush_s, 2), "reopen_s": round(reopen_s, 4),
                "first_search_ms": {"p50": pct(first, 50), "p95": pct(first, 95)} if first else None,
                "search_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95)},
                "search_filtered_ms": {"p50": pct(lat_f, 50), "p95": pct(lat_f, 95)},
                "recall_at_k": round(float(np.mean(rec)), 4), "recall_at_k_filtered": round(float(np.mean(rec_f)), 4),
                "short_filtered": short, "index_kinds": kinds,
                "disk_mb": round(disk / 2**20, 1), "peak_rss_mb": _peak_rss_mb()}
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--users", type=int, nargs="+", default=[1000], help="users per run (each size x each)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--approximate-above", type=int, default=None)
    ap.add_argument("--max-cached-indexes", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scale_memory.json"))
    ap.add_argument("--vectors", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: print one result
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_memory_scale(args.events[0], args.users[0], args.dim, args.k, queries=args.queries,
                                          approximate_above=args.approximate_above,
                                          max_cached_indexes=args.max_cached_indexes, vectors=args.vectors)))
        return
    runs = []
    for n in args.events:
        for u in args.users:
            cmd = [sys.executable, __file__, "--one", "--events", str(n), "--users", str(u), "--dim", str(args.dim),
                   "--k", str(args.k), "--queries", str(args.queries), "--vectors", args.vectors]
            if args.approximate_above is not None:
                cmd += ["--approximate-above", str(args.approximate_above)]
            if args.max_cached_indexes is not None:
                cmd += ["--max-cached-indexes", str(args.max_cached_indexes)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"run with {n} events, {u} users failed:\n{out.stderr}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    result = {"benchmark": "scale_memory", "runs": runs,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "faiss_threads": os.environ.get("PLURAL_FAISS_THREADS", "1")},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
