"""Benchmark: what Plural costs as users and items grow (synthetic data with planted personas).

For each size ``USERSxITEMS`` (e.g. ``1Mx20k``), in fresh processes so that peak memory is
honest:

1. **build** (one process): :func:`memory.synthetic.generate_synthetic_large`, then
   :func:`agent.engine.build_from_history` with the ``hash:384`` text embedder (MiniLM on 100k
   item texts alone takes ~5 min on 2 cores and is the same at every user count) and the
   default :class:`~agent.config.EngineConfig` otherwise: the scorer the ``auto`` rule picks,
   personas lazily above ``eager_max_users``. Reports generation and build seconds per step,
   the data directory's size and the process's peak RSS.
2. **serve** (another process): open the data directory; ``first_request_ms``: ``recommend``
   for users without personas yet (their induction included); ``recommend_ms``: the same users
   again, warm (``relevance`` and ``persona_fill``, no LLM); ``induce_users_per_s`` of
   :meth:`~agent.engine.Engine.induce_personas` in process and with ``--workers`` processes;
   **batch** throughput of :func:`agent.batch.batch_recommend` over warm users in process and
   on a local Ray (``--ray``); peak RSS.
3. **memory at scale** (``--memory-events``): :func:`benchmarks.scale_memory.run_memory_scale`
   (episodic memory, FAISS + SQLite) in its own process.

    python benchmarks/scale.py --sizes 10kx5k 100kx20k 1Mx20k [--ray] [--workers 2]
        [--memory-events 1000000] [--out benchmarks/results/scale.json] [--plot docs/img/scale.png]
    python benchmarks/scale.py --quick        # seconds: 2k users x 600 items, sparse EASE, lazy personas
    python benchmarks/scale.py --accuracy     # sparse vs dense EASE: ML-100K (eval protocol), synthetic

Timings depend on the machine: the figures in ``benchmarks/results/scale.json`` were taken on
a shared 2-core machine (other jobs running), so they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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


def parse_size(text: str) -> tuple[int, int]:
    """``"1Mx20k"`` -> (1_000_000, 20_000); k and M suffixes, case-insensitive."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)([kKmM]?)\s*[xX]\s*(\d+(?:\.\d+)?)([kKmM]?)\s*", text)
    if not m:
        raise ValueError(f"size {text!r} is not USERSxITEMS, e.g. 100kx20k or 1Mx20k")
    mult = {"": 1, "k": 1_000, "m": 1_000_000}
    return (int(float(m.group(1)) * mult[m.group(2).lower()]), int(float(m.group(3)) * mult[m.group(4).lower()]))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except OSError:
        return None


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "n": int(len(a))}


def _dir_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _config(dense_max_items: int | None = None, eager_max_users: int | None = None, embedder: str = "hash:384"):
    from agent.config import EngineConfig

    kw: dict = {"embedder": embedder}
    if dense_max_items is not None:
        kw["dense_max_items"] = dense_max_items
    if eager_max_users is not None:
        kw["eager_max_users"] = eager_max_users
    return EngineConfig(**kw)


# ---- the three steps (each meant for a fresh process) ------------------------------------------
def build_step(n_users: int, n_items: int, ddir: Path, *, seed: int = 0, dense_max_items: int | None = None,
               eager_max_users: int | None = None, embedder: str = "hash:384") -> dict:
    """Generate and build one size into ``ddir``; returns the figures."""
    from agent.engine import build_from_history
    from memory.loaders import DataSource
    from memory.synthetic import generate_synthetic_large

    t0 = time.perf_counter()
    data = generate_synthetic_large(n_users, n_items, seed=seed)
    gen_s = time.perf_counter() - t0
    desc = data.describe()
    cfg = _config(dense_max_items, eager_max_users, embedder)
    t = time.perf_counter()
    # the manifest's source names the generator's seed: Engine.open_data_dir reopens the folder as built
    manifest = build_from_history(ddir, DataSource(dataset="synthetic", synthetic_seed=10_000_000 + seed), cfg,
                                  data.catalog, data.history, desc)
    build_s = time.perf_counter() - t
    return {"users": n_users, "items": n_items, "interactions": desc["interactions"],
            "generate_s": round(gen_s, 2), "build_s": round(build_s, 2), "build_steps_s": manifest["timings_s"],
            "scorer": manifest["scorer"], "personas_at_build": manifest["personas_at_build"],
            "data_dir_mb": _dir_mb(ddir), "build_peak_rss_mb": _peak_rss_mb()}


def serve_step(ddir: Path, *, requests: int = 200, batch_users: int = 2_000, induce_users: int = 1_000,
               workers: int = 2, ray: bool = False, seed: int = 0) -> dict:
    """Open a built directory and time the serving paths; returns the figures."""
    from agent.engine import Engine

    t = time.perf_counter()
    engine = Engine.open_data_dir(ddir, storage="sqlite")
    open_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    users = list(engine.history.user_ids)
    pick = [users[i] for i in rng.choice(len(users), size=min(len(users), requests + batch_users + 2 * induce_users),
                                         replace=False)]
    first_users, rest = pick[:requests], pick[requests:]
    have = set(engine.persona_store.users())
    cold = [u for u in first_users if u not in have]
    first = []
    for u in first_users:
        t = time.perf_counter()
        engine.recommend(u, k=10, mode="relevance")
        first.append(1000 * (time.perf_counter() - t))
    warm: dict[str, list[float]] = {"relevance": [], "persona_fill": []}
    for mode, xs in warm.items():
        for u in first_users:
            t = time.perf_counter()
            engine.recommend(u, k=10, mode=mode)
            xs.append(1000 * (time.perf_counter() - t))
    out = {"open_s": round(open_s, 3), "first_request_ms": _pct(first), "first_request_users_without_personas": len(cold),
           "recommend_ms": {m: _pct(xs) for m, xs in warm.items()}}
    # bulk induction, in process and in worker processes
    induce_a, rest = rest[:induce_users], rest[induce_users:]
    induce_b, batch = rest[:induce_users], rest[induce_users:]
    r1 = engine.induce_personas(induce_a, workers=1)
    out["induce_in_process"] = {**r1, "users_per_s": round(r1["induced"] / max(r1["seconds"], 1e-9), 1)}
    if workers > 1:
        rw = engine.induce_personas(induce_b, workers=workers)
        out["induce_workers"] = {**rw, "users_per_s": round(rw["induced"] / max(rw["seconds"], 1e-9), 1)}
    # batch throughput over warm users (personas induced first, so this is recommendation only)
    engine.induce_personas(batch, workers=max(1, workers))
    engine.close()
    out["batch"] = batch_throughput(ddir, batch, ray=ray, workers=workers)
    out["serve_peak_rss_mb"] = _peak_rss_mb()
    return out


def batch_throughput(ddir: Path, users: list[str], *, ray: bool, workers: int, k: int = 10,
                     mode: str = "relevance") -> dict:
    """Users per second of :func:`agent.batch.batch_recommend`, in process and (``ray``) on a
    local Ray with ``workers`` actors; the two tables must be equal row for row."""
    try:
        from agent.batch import batch_recommend
    except ImportError as e:  # pragma: no cover - agent.batch ships with the project
        return {"error": f"agent.batch unavailable: {e}"}
    out: dict = {"users": len(users), "k": k, "mode": mode}
    t = time.perf_counter()
    local = batch_recommend(ddir, users, k, mode, ray=False, shard_size=500)
    s = time.perf_counter() - t
    out["in_process"] = {"seconds": round(s, 2), "users_per_s": round(len(users) / s, 1), "rows": local.num_rows}
    if ray:
        t = time.perf_counter()
        remote = batch_recommend(ddir, users, k, mode, ray=True, shard_size=max(100, len(users) // (4 * workers)),
                                 workers=workers)
        s = time.perf_counter() - t
        same = remote.drop_columns(["explanation"]).equals(local.drop_columns(["explanation"]))
        out["ray"] = {"seconds": round(s, 2), "users_per_s": round(len(users) / s, 1), "workers": workers,
                      "rows": remote.num_rows, "equal_to_in_process": bool(same),
                      "note": "includes starting a local Ray and one engine per actor"}
    return out


def memory_step(n_events: int, n_users: int) -> dict:
    """Episodic memory at scale: :func:`benchmarks.scale_memory.run_memory_scale` (the memory
    benchmark's own function; None when that file is absent)."""
    try:
        from benchmarks.scale_memory import run_memory_scale
    except ImportError as e:
        return {"error": f"benchmarks/scale_memory.py unavailable: {e}"}
    return run_memory_scale(n_events, n_users)


# ---- scorer accuracy: sparse against dense EASE ------------------------------------------------
def _scores_in_chunks(model, H, chunk: int = 4_096):
    for s in range(0, H.shape[0], chunk):
        yield s, model.score_batch(H[s:s + chunk])


def _ndcg_recall(model, history, test, k: int = 10) -> dict:
    """Mean NDCG@k / Recall@k ranking every item outside ``history`` (the repo's reference
    protocol: training positives excluded), scored in chunks of users."""
    from evals.metrics import hit_matrix, ndcg_at_k, recall_at_k
    from evals.splits import rank_unseen

    nd, rc = [], []
    for s, sc in _scores_in_chunks(model, history):
        top = rank_unseen(sc, history[s:s + len(sc)], k)
        T = test[s:s + len(sc)]
        hits = hit_matrix(top, T, test.shape[1])
        n_truth = np.diff(T.indptr)
        nd.append(ndcg_at_k(hits, n_truth, k))
        rc.append(recall_at_k(hits, n_truth, k))
    nd, rc = np.concatenate(nd), np.concatenate(rc)
    return {f"NDCG@{k}": round(float(np.nanmean(nd)), 4), f"Recall@{k}": round(float(np.nanmean(rc)), 4)}


def _fit_and_score(kind: str, settings: dict, train, history, test) -> dict:
    from personas.scorers import make_scorer

    t = time.perf_counter()
    m = make_scorer(kind, **settings).fit(train)
    fit_s = time.perf_counter() - t
    nnz = int(m.B.nnz) if hasattr(m.B, "nnz") else int(m.B.size)
    return {"scorer": kind, **settings, **_ndcg_recall(m, history, test), "fit_s": round(fit_s, 2),
            "B_nnz": nnz, "B_mb": round((nnz * 8 if hasattr(m.B, "nnz") else nnz * 4) / 2**20, 1)}


def accuracy_ml100k(neighbours=(100, 200), l2_grid=(100.0, 200.0, 400.0, 800.0)) -> dict:
    """ML-100K with ``plural eval rec``'s split (evals.splits, reference protocol): lambda of
    each scorer chosen on the validation split, then NDCG@10 / Recall@10 on test."""
    from evals.splits import split_dataset, validation_split
    from memory.loaders import DataSource

    ds = DataSource(dataset="ml-100k").load()
    split = split_dataset(ds)
    te, va = split.arrays(ds.catalog), validation_split(split).arrays(ds.catalog)
    rows = []
    for kind, variants in (("ease", [{}]), ("sparse_ease", [{"neighbours": m} for m in neighbours])):
        for v in variants:
            val = {l2: _fit_and_score(kind, {**v, "l2": l2}, va.train_matrix, va.history, va.test)["NDCG@10"]
                   for l2 in l2_grid}
            best = max(val, key=lambda l2: (val[l2], -l2))
            row = _fit_and_score(kind, {**v, "l2": best}, te.train_matrix, te.history, te.test)
            rows.append({**row, "validation_ndcg@10_by_l2": val})
    dense = rows[0]
    for r in rows:
        r["ndcg_ratio_to_dense"] = round(r["NDCG@10"] / dense["NDCG@10"], 4)
        r["recall_ratio_to_dense"] = round(r["Recall@10"] / dense["Recall@10"], 4)
    return {"dataset": "ml-100k", "protocol": "evals.splits default split, training positives excluded, "
                                               "lambda per scorer chosen on the validation split", "rows": rows}


def accuracy_synthetic(n_users: int = 50_000, n_items: int = 5_000, neighbours=(100, 200), l2: float = 200.0,
                       holdout: float = 0.2, seed: int = 0) -> dict:
    """Planted-persona synthetic data: ``holdout`` of each user's positives held out at random;
    dense EASE (still feasible at this size) against sparse EASE, the same lambda."""
    import scipy.sparse as sp

    from memory.synthetic import generate_synthetic_large

    data = generate_synthetic_large(n_users, n_items, seed=seed)
    X = data.history.positive_matrix(n_items).tocoo()
    rng = np.random.default_rng(seed + 1)
    test_mask = rng.random(X.nnz) < holdout
    mk = lambda m: sp.csr_matrix((X.data[m], (X.row[m], X.col[m])), shape=X.shape)  # noqa: E731
    train, test = mk(~test_mask), mk(test_mask)
    rows = [_fit_and_score("ease", {"l2": l2}, train, train, test)]
    rows += [_fit_and_score("sparse_ease", {"neighbours": m, "l2": l2}, train, train, test) for m in neighbours]
    for r in rows:
        r["ndcg_ratio_to_dense"] = round(r["NDCG@10"] / rows[0]["NDCG@10"], 4)
        r["recall_ratio_to_dense"] = round(r["Recall@10"] / rows[0]["Recall@10"], 4)
    return {"dataset": f"generate_synthetic_large({n_users}, {n_items}, seed={seed})",
            "protocol": f"{holdout:.0%} of each user's positives held out at random; training positives excluded",
            "rows": rows}


def sparse_fit_at(n_users: int, n_items: int, seed: int = 0) -> dict:
    """Sparse EASE alone at a large catalogue (fit time, sizes, peak RSS of this process)."""
    from memory.synthetic import generate_synthetic_large
    from personas.scorers import SparseEASE

    data = generate_synthetic_large(n_users, n_items, seed=seed)
    X = data.history.positive_matrix(n_items)
    del data
    t = time.perf_counter()
    m = SparseEASE().fit(X)
    return {"users": n_users, "items": n_items, "fit_s": round(time.perf_counter() - t, 1), **m.fit_stats,
            "B_mb": round(m.B.nnz * 8 / 2**20, 1), "peak_rss_mb": _peak_rss_mb()}


# ---- driving ---------------------------------------------------------------------------------
def _in_subprocess(step: str, payload: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_step", step, json.dumps(payload)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if p.returncode != 0:
        return {"error": f"{step} failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_size(n_users: int, n_items: int, *, workdir: Path, ray: bool = False, workers: int = 2,
             requests: int = 200, batch_users: int = 2_000, induce_users: int = 1_000,
             dense_max_items: int | None = None, eager_max_users: int | None = None, seed: int = 0,
             timeout: float = 3_600,
             keep: bool = False) -> dict:
    """Build and measure one size, each step in a fresh process."""
    ddir = workdir / f"u{n_users}-i{n_items}"
    shutil.rmtree(ddir, ignore_errors=True)
    row = {"size": f"{n_users}x{n_items}"}
    row["build"] = _in_subprocess("build", {"n_users": n_users, "n_items": n_items, "ddir": str(ddir), "seed": seed,
                                            "dense_max_items": dense_max_items,
                                            "eager_max_users": eager_max_users}, timeout)
    if "error" not in row["build"]:
        row["serve"] = _in_subprocess("serve", {"ddir": str(ddir), "requests": requests, "batch_users": batch_users,
                                                "induce_users": induce_users, "workers": workers, "ray": ray,
                                                "seed": seed}, timeout)
    if not keep:
        shutil.rmtree(ddir, ignore_errors=True)
    return row


def summary_rows(results: list[dict]) -> list[dict]:
    """One flat row per size (the README table)."""
    rows = []
    for r in results:
        b, s = r.get("build", {}), r.get("serve", {})
        if "error" in b:
            rows.append({"size": r["size"], "error": b["error"][:200]})
            continue
        batch = s.get("batch", {})
        rows.append({
            "users": b["users"], "items": b["items"], "interactions": b["interactions"],
            "scorer": b["scorer"]["kind"], "B_nnz": b["scorer"].get("B_nnz"),
            "build_s": b["build_s"], "scorer_s": b["build_steps_s"].get("scorer"),
            "build_peak_rss_gb": round(b["build_peak_rss_mb"] / 1024, 2), "data_dir_mb": b["data_dir_mb"],
            "recommend_p50_ms": s.get("recommend_ms", {}).get("relevance", {}).get("p50"),
            "recommend_p95_ms": s.get("recommend_ms", {}).get("relevance", {}).get("p95"),
            "persona_fill_p50_ms": s.get("recommend_ms", {}).get("persona_fill", {}).get("p50"),
            "first_request_p50_ms": s.get("first_request_ms", {}).get("p50"),
            "induce_users_per_s": s.get("induce_in_process", {}).get("users_per_s"),
            "induce_users_per_s_workers": s.get("induce_workers", {}).get("users_per_s"),
            "batch_users_per_s": batch.get("in_process", {}).get("users_per_s"),
            "batch_users_per_s_ray": batch.get("ray", {}).get("users_per_s"),
            "serve_peak_rss_gb": round(s["serve_peak_rss_mb"] / 1024, 2) if "serve_peak_rss_mb" in s else None,
            "open_s": s.get("open_s")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The summary as a markdown table (what the README and docs/scale.md show)."""
    def f(v, fmt="{:,}"):
        return "–" if v is None else fmt.format(v)

    head = ("| users | items | interactions | scorer | build | build peak RSS | recommend p50 / p95 | "
            "first request p50 | induction users/s (1 / 2 procs) | batch users/s (in process / Ray) | serve RSS |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['size']} | failed: {r['error'][:80]} |" + " |" * 9)
            continue
        out.append(f"| {f(r['users'])} | {f(r['items'])} | {f(r['interactions'])} | {r['scorer']} | "
                   f"{f(r['build_s'], '{:.0f}')} s | {f(r['build_peak_rss_gb'], '{:.1f}')} GB | "
                   f"{f(r['recommend_p50_ms'], '{:.2f}')} / {f(r['recommend_p95_ms'], '{:.2f}')} ms | "
                   f"{f(r['first_request_p50_ms'], '{:.1f}')} ms | {f(r['induce_users_per_s'], '{:.0f}')} / "
                   f"{f(r['induce_users_per_s_workers'], '{:.0f}')} | {f(r['batch_users_per_s'], '{:.0f}')} / "
                   f"{f(r['batch_users_per_s_ray'], '{:.0f}')} | {f(r['serve_peak_rss_gb'], '{:.1f}')} GB |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Build time, peak memory and latencies against users, one line per catalogue size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for n_items in sorted({r["items"] for r in ok}):
        rs = sorted((r for r in ok if r["items"] == n_items), key=lambda r: r["users"])
        x = [r["users"] for r in rs]
        lab = f"{n_items:,} items ({rs[0]['scorer']})"
        axes[0].plot(x, [r["build_s"] for r in rs], "o-", label=lab)
        axes[1].plot(x, [r["build_peak_rss_gb"] for r in rs], "o-", label=lab)
        axes[2].plot(x, [r["recommend_p50_ms"] for r in rs], "o-", label=f"warm p50, {n_items:,} items")
        axes[2].plot(x, [r["first_request_p50_ms"] for r in rs], "s--", label=f"first request p50, {n_items:,} items")
    for ax, title, unit in ((axes[0], "Build time", "seconds"), (axes[1], "Build peak memory (RSS)", "GiB"),
                            (axes[2], "recommend latency (no LLM)", "ms")):
        ax.set_xscale("log")
        ax.set_xlabel("users")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].axhline(2.0, color="#cc0000", lw=0.8, ls=":")
    fig.suptitle("Plural on synthetic planted-persona data (hash:384 text vectors; shared 2-core machine)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["10kx5k", "100kx20k", "1Mx20k"], help="USERSxITEMS, e.g. 1Mx20k")
    ap.add_argument("--quick", action="store_true", help="a smoke test of a few seconds (2k users x 600 items)")
    ap.add_argument("--ray", action="store_true", help="also time batch_recommend on a local Ray")
    ap.add_argument("--workers", type=int, default=2, help="processes for induction and Ray actors")
    ap.add_argument("--requests", type=int, default=200, help="users timed for first and warm requests")
    ap.add_argument("--batch-users", type=int, default=2_000, help="users per batch throughput run")
    ap.add_argument("--induce-users", type=int, default=1_000, help="users per bulk induction run")
    ap.add_argument("--memory-events", type=int, nargs="*", default=[], help="episodic memory events (scale_memory)")
    ap.add_argument("--memory-users", type=int, default=1_000, help="namespaces for --memory-events")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/img/scale.png")
    ap.add_argument("--workdir", type=Path, default=None, help="where data directories are built (default: a temp dir)")
    ap.add_argument("--append", action="store_true",
                    help="merge into --out: sizes measured now replace the same sizes there, the others are kept")
    ap.add_argument("--accuracy", action="store_true",
                    help="sparse vs dense EASE on ML-100K and on synthetic data (benchmarks/results/scale_scorer_accuracy.json)")
    ap.add_argument("--fit-sizes", nargs="*", default=["100kx20k", "100kx100k"],
                    help="with --accuracy: sizes at which sparse EASE's fit alone is timed")
    ap.add_argument("--table", action="store_true", help="print --out's summary as a markdown table and exit")
    ap.add_argument("--_step", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.table:
        print(markdown_table(json.loads(a.out.read_text())["summary"]))
        return 0
    if a.accuracy and not a._step:
        doc = {"benchmark": "scale_scorer_accuracy", "note": "timings on a shared 2-core machine",
               "ml_100k": accuracy_ml100k(), "synthetic": accuracy_synthetic(),
               "sparse_fit": [_in_subprocess("sparse_fit", dict(zip(("n_users", "n_items"), parse_size(z))), 3_600)
                              for z in a.fit_sizes]}
        out = ROOT / "benchmarks/results/scale_scorer_accuracy.json" if a.out == ap.get_default("out") else a.out
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
        return 0
    if a._step:
        step, payload = a._step[0], json.loads(a._step[1])
        if step == "build":
            res = build_step(payload["n_users"], payload["n_items"], Path(payload["ddir"]), seed=payload["seed"],
                             dense_max_items=payload.get("dense_max_items"),
                             eager_max_users=payload.get("eager_max_users"))
        elif step == "serve":
            res = serve_step(Path(payload.pop("ddir")), **payload)
        elif step == "sparse_fit":
            res = sparse_fit_at(payload["n_users"], payload["n_items"])
        else:
            res = {"memory": memory_step(payload["n_events"], payload["n_users"]),
                   "peak_rss_mb": _peak_rss_mb()}
        print(json.dumps(res))
        return 0
    sizes = ["2kx600"] if a.quick else a.sizes
    parsed = [parse_size(s) for s in sizes]
    work = a.workdir or Path(tempfile.mkdtemp(prefix="plural-scale-"))
    results = []
    for n_users, n_items in parsed:
        t = time.perf_counter()
        kw = dict(requests=20, batch_users=100, induce_users=50, dense_max_items=300, eager_max_users=0) if a.quick else \
            dict(requests=a.requests, batch_users=a.batch_users, induce_users=a.induce_users)
        r = run_size(n_users, n_items, workdir=work, ray=a.ray, workers=a.workers, **kw)
        r["wall_s"] = round(time.perf_counter() - t, 1)
        r["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        r["commit"] = _commit()
        results.append(r)
        print(json.dumps(summary_rows([r])[0]), flush=True)
    memory = [_in_subprocess("memory", {"n_events": n, "n_users": a.memory_users}, 3_600) for n in a.memory_events]
    runs = [{"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "sizes": sizes, "commit": _commit()}]
    if a.append and a.out.exists():
        old = json.loads(a.out.read_text())
        done = {r["size"] for r in results}
        results = [r for r in old.get("sizes", []) if r["size"] not in done] + results
        results.sort(key=lambda r: tuple(int(x) for x in r["size"].split("x")))
        runs = old.get("runs", []) + runs
        memory = memory or old.get("memory_at_scale", [])
    doc = {"benchmark": "scale", "runs": runs, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                             "python": platform.python_version(),
                                             "note": "shared machine: other jobs ran meanwhile; timings are upper bounds"},
           "embedder": "hash:384", "quick": a.quick, "summary": summary_rows(results), "sizes": results,
           "memory_at_scale": memory}
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if not a.quick or a.out != ap.get_default("out"):
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=2) + "\n")
        if not a.quick:
            plot(doc["summary"], a.plot)
    else:
        print(json.dumps(doc["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
