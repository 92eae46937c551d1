"""Benchmark: per-user `recommend` latency without an LLM on MovieLens-100K, persona induction
time for all users, and the wall time of a warm `plural recommend` CLI call.

Targets (issue 2): p50 <= 2 ms per user on a 2-core machine; later CLI runs under 2 s.

    python benchmarks/recommend_latency.py [--out benchmarks/results/recommend_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p95_ms": round(float(np.percentile(a, 95)), 4),
            "mean_ms": round(float(a.mean()), 4), "max_ms": round(float(a.max()), 4), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/recommend_latency.json"))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="passes over all users per mode")
    args = ap.parse_args()

    from agent.engine import Engine
    from memory.history import HistoryIndex  # noqa: F401
    from personas.induction import PersonaInducer

    t = time.perf_counter()
    engine = Engine.open(progress=True)
    open_s = time.perf_counter() - t
    rec = engine.recommender
    users = rec.history.user_ids
    for u in users[:100]:  # warm caches and code paths
        rec.recommend(u, k=args.k)

    latency = {}
    for mode in ("relevance", "persona_fill"):
        times = []
        for _ in range(args.repeats):
            for u in users:
                t = time.perf_counter()
                rec.recommend(u, k=args.k, mode=mode)
                times.append(time.perf_counter() - t)
        latency[mode] = percentiles(times)

    # EASE full scoring alone, for reference (the issue quotes ~0.3 ms a user)
    times = []
    for u in users:
        h = rec.history.positives(u)
        t = time.perf_counter()
        rec.scorer.score(h)
        times.append(time.perf_counter() - t)
    latency["ease_scoring_only"] = percentiles(times)

    # persona induction for every user, from the item space already built
    space = np.load(engine.data_dir / "item_space.npy")
    text = np.load(engine.data_dir / "item_text.npy")
    inducer = PersonaInducer(engine.catalog, space, text, engine.config.induction)
    t = time.perf_counter()
    sets = [inducer.induce(u, rec.history.positives(u)) for u in users]
    induction_s = time.perf_counter() - t
    counts = np.bincount([len(s.personas) for s in sets])

    # a warm CLI call, as a person would run it (process start and imports included)
    cli = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "agent.cli", "recommend", "--user", "1", "--json"], check=True,
                       capture_output=True, cwd=ROOT, env={**os.environ})
        cli.append(time.perf_counter() - t)

    result = {
        "benchmark": "recommend_latency",
        "dataset": engine.manifest["dataset"]["name"],
        "users": len(users), "items": len(engine.catalog), "k": args.k,
        "recommend": latency,
        "target_p50_ms": 2.0,
        "meets_target": latency["relevance"]["p50_ms"] <= 2.0 and latency["persona_fill"]["p50_ms"] <= 2.0,
        "induction": {"all_users_s": round(induction_s, 3), "per_user_ms": round(1000 * induction_s / len(users), 3),
                      "personas_per_user": {str(k): int(c) for k, c in enumerate(counts) if c},
                      "space": engine.config.induction.space},
        "engine_open_s": round(open_s, 3),
        "build_timings_s": engine.manifest.get("timings_s", {}),
        "cli_warm_wall_s": {"min": round(min(cli), 3), "median": round(float(np.median(cli)), 3)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
