"""Benchmark: a chat turn's latency without an LLM on MovieLens-100K, through the whole agent
(`PluralAgent.chat`: understand, recall, read the request, rank, respond, write memory and the
checkpoint), and the one-off start-up (engine open, agent, model warm-up).

Target (issue 11): p50 <= 1 s per turn on a 2-core machine, after the first load.

    python benchmarks/chat_latency.py [--users 40] [--out benchmarks/results/chat_latency.json]

It works on a copy of the cached ML-100K data directory, so the shared cache's personas and
memory are not touched.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPT = ["something light and funny tonight", "a scary movie from the 80s", "more like the second one",
          "why the third?", "not the first one, too violent", "something like Heat", "show my personas",
          "an animated film for children", "more", "a drama about war and redemption"]


def percentiles(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "max_ms": round(float(a.max()), 2), "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=40, help="users, each sending the 10-turn script in a new thread")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/chat_latency.json"))
    args = ap.parse_args()

    from agent.api import PluralAgent
    from agent.engine import Engine
    from agent.runtime import AgentConfig, AgentRuntime
    from memory.loaders import DataSource

    cached = Engine.open(DataSource(dataset="ml-100k"), progress=sys.stderr.isatty())
    with tempfile.TemporaryDirectory(prefix="plural-chat-bench-") as tmp:
        folder = Path(tmp) / "data"
        shutil.copytree(cached.data_dir, folder)
        cached.close()
        t0 = time.perf_counter()
        engine = Engine.open_data_dir(folder)
        agent = PluralAgent(AgentRuntime(engine, None, AgentConfig(llm_prose="off")))
        t1 = time.perf_counter()
        agent.runtime.warm_up()
        t2 = time.perf_counter()
        by_message: dict[str, list[float]] = {m: [] for m in SCRIPT}
        every: list[float] = []
        errors = 0
        users = engine.history.user_ids[: args.users]
        for u in users:
            for m in SCRIPT:
                s = time.perf_counter()
                reply = agent.chat(u, m, f"bench-{u}")
                dt = time.perf_counter() - s
                errors += reply.error is not None and reply.intent is None
                by_message[m].append(dt)
                every.append(dt)
        agent.close()
    doc = {"benchmark": "chat_latency", "dataset": "ml-100k", "llm": "none", "machine": platform.machine(),
           "python": platform.python_version(), "users": len(users), "turns": len(every), "failed_turns": int(errors),
           "startup_s": {"open_engine_and_agent": round(t1 - t0, 2), "warm_up_models": round(t2 - t1, 2)},
           "turn": percentiles(every), "by_message": {m: percentiles(v) for m, v in by_message.items()},
           "target": {"p50_ms": 1000, "met": bool(np.percentile(every, 50) * 1000 <= 1000)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: doc[k] for k in ("turns", "failed_turns", "startup_s", "turn", "target")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
