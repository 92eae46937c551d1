"""Benchmark: wall time of the whole ``plural eval rec`` on ML-100K without an LLM (all baselines,
K = 10 and 20, all users, validation tuning, the trade-off variants on test). Target: <= 60 s on
a 2-core machine (issue 3).

    python benchmarks/eval_rec_speed.py [--runs 3] [--out benchmarks/results/eval_rec_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/eval_rec_speed.json"))
    args = ap.parse_args()
    walls, stages = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "agent.cli", "eval", "rec", "--k", "10", "20", "--out", out],
                           check=True, capture_output=True, cwd=ROOT, env={**os.environ})
            walls.append(time.perf_counter() - t)
            stages.append(json.loads((Path(out) / "results.json").read_text())["timings_s"])
    walls.sort()
    result = {"benchmark": "eval_rec_speed", "dataset": "ml-100k", "runs": args.runs,
              "wall_s": {"min": round(walls[0], 2), "median": round(walls[len(walls) // 2], 2),
                         "max": round(walls[-1], 2)},
              "target_s": 60, "meets_target": walls[len(walls) // 2] <= 60,
              "stages_s_per_run": stages,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
