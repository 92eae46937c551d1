"""Load test: many simulated users chatting at once with the real `plural serve` and its storage.

Starts `plural serve` on a free loopback port over a private copy of the ML-100K data directory
(no LLM), then 32 simulated users (one thread each) send a 10-turn conversation each, with
reactions ("not the first one", "loved #2"...), all at once. It reports throughput and turn
latency (p50/p95, overall and per kind of turn), then checks the storage:

* every reaction that was answered is an episodic ``feedback`` event of that user;
* every persona version chain is gap-free (versions 1..n, each recorded once);
* nobody else was touched: users outside the test have exactly the personas and memory they had
  before, and each test user's events all belong to their own threads.

    python benchmarks/load_test.py [--users 32] [--turns 10] [--storage sqlite|postgres]

``--storage postgres`` starts a PostgreSQL with pgvector from PyPI ``pgserver`` in a temporary
folder and runs the same test against it (checkpoints and stores). Results:
``benchmarks/results/load_test_<storage>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPT = ["something light and funny tonight", "not the first one, too silly", "a scary movie from the 80s",
          "loved the second one", "more like the third one", "why the first?", "not #2", "a western",
          "show my personas", "something like Heat"]
REACTIONS = {1: "dislike", 3: "like", 6: "dislike"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=np.float64) * 1000
    if not len(a):
        return {"n": 0}
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "max_ms": round(float(a.max()), 1), "n": len(a)}


def _snapshot(engine, users: list[str]) -> dict:
    """Personas (with versions) and memory events of ``users``, as stored."""
    from memory.memories import episodic_namespace

    out = {}
    store = engine.memory_store()
    for u in users:
        pset = engine.persona_store.get(u)
        out[u] = {"personas": [(p.persona_id, p.version, p.weight, tuple(p.evidence)) for p in pset.personas]
                  if pset else [],
                  "events": len(store.list(episodic_namespace(u)))}
    return out


def run(users: int, turns: int, storage: str, out_path: Path) -> dict:
    import httpx

    from agent.engine import Engine
    from memory.loaders import DataSource

    cached = Engine.open(DataSource(dataset="ml-100k"), progress=sys.stderr.isatty())
    tmp = Path(tempfile.mkdtemp(prefix="plural-load-"))
    folder = tmp / "data"
    shutil.copytree(cached.data_dir, folder)
    cached.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pg = None
    if storage == "postgres":
        import pgserver

        pg = pgserver.get_server(str(tmp / "pg"), cleanup_mode="stop")
        env["PLURAL_POSTGRES_URL"] = pg.get_uri()
    port = _free_port()
    exe = Path(sys.executable).with_name("plural")
    server = subprocess.Popen([str(exe), "serve", "--port", str(port), "--data-dir", str(folder), "--llm", "none",
                               "--concurrent", str(users)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() - t0 > 180:
                raise RuntimeError(f"plural serve did not start: {server.stdout.read() if server.stdout else ''}")
            time.sleep(0.5)
        startup = time.time() - t0
        engine = Engine.open_data_dir(folder, storage=env.get("PLURAL_POSTGRES_URL") or "sqlite")
        all_users = engine.history.user_ids
        test_users = all_users[:users]
        bystanders = all_users[users:users + 50]
        before = _snapshot(engine, bystanders)
        engine.close()

        latencies: dict[str, list[float]] = {"recommend": [], "feedback": [], "other": []}
        errors: list[str] = []
        answered: dict[str, list[tuple[str, str]]] = {u: [] for u in test_users}  # (item, reaction) per user
        lock = threading.Lock()
        barrier = threading.Barrier(len(test_users))

        def person(u: str) -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                barrier.wait()
                thread = None
                for n, msg in enumerate(SCRIPT[:turns]):
                    t = time.perf_counter()
                    r = client.post("/chat", json={"user_id": u, "message": msg, "thread_id": thread})
                    dt = time.perf_counter() - t
                    if r.status_code != 200:
                        with lock:
                            errors.append(f"user {u} turn {n}: HTTP {r.status_code} {r.text[:200]}")
                        continue
                    reply = r.json()
                    thread = reply["thread_id"]
                    kind = "feedback" if reply["intent"] == "feedback" else \
                        "recommend" if reply["intent"] in ("recommend", "refine") else "other"
                    with lock:
                        latencies[kind].append(dt)
                        if reply.get("error"):
                            errors.append(f"user {u} turn {n} ({msg!r}): {reply['error']}")
                        elif kind == "feedback" and reply["answer"]:
                            answered[u].append((reply["answer"]["item_id"], reply["answer"]["reaction"]))

        wall0, started = time.perf_counter(), time.time()
        workers = [threading.Thread(target=person, args=(u,)) for u in test_users]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - wall0
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

    # ---- verification, on the stored data ----
    from agent.api import PluralAgent

    # the state the server wrote: its Postgres schema (personas, memory, threads, checkpoints), or the files
    agent = PluralAgent.from_data_dir(folder, llm="none", postgres_url=env.get("PLURAL_POSTGRES_URL"),
                                      storage=env.get("PLURAL_POSTGRES_URL") or "sqlite")
    missing, gaps, foreign = [], [], []
    for u in test_users:
        events = [e for e in agent.history(u, 100_000) if e.timestamp >= started]  # this run's events
        fb = [(e.payload["item_id"], e.payload["reaction"]) for e in events if e.kind == "feedback"]
        for pair in answered[u]:
            if pair not in fb:
                missing.append((u, pair))
        threads = {e.payload.get("thread_id") for e in events}
        owners = {agent.threads.owner(t) for t in threads if t}
        if owners - {u}:
            foreign.append((u, sorted(owners - {u})))
        by_persona: dict[str, list[int]] = {}
        for v in agent.persona_versions(u):
            by_persona.setdefault(v.persona.persona_id, []).append(v.persona.version)
        for pid, chain in by_persona.items():
            if chain != list(range(1, len(chain) + 1)):
                gaps.append((u, pid, chain))
    after = _snapshot(agent.engine, bystanders)
    touched = [u for u in bystanders if after[u] != before[u]]
    agent.close()
    if pg is not None:
        pg.cleanup()
    shutil.rmtree(tmp, ignore_errors=True)
    every = [x for v in latencies.values() for x in v]
    doc = {"benchmark": "load_test", "storage": storage, "dataset": "ml-100k", "llm": "none",
           "machine": platform.machine(), "cpus": os.cpu_count(), "users": len(test_users), "turns_per_user": turns,
           "turns": len(every), "wall_s": round(wall, 2), "throughput_turns_per_s": round(len(every) / wall, 2),
           "server_startup_s": round(startup, 1), "latency": {"all": _pct(every), **{k: _pct(v) for k, v in
                                                                                     latencies.items()}},
           "errors": errors[:20], "n_errors": len(errors),
           "checks": {"feedback_answered": sum(len(v) for v in answered.values()),
                      "feedback_missing_from_memory": missing[:10], "version_chains_with_gaps": gaps[:10],
                      "threads_of_other_users": foreign[:10], "bystanders_touched": touched[:10],
                      "passed": not (missing or gaps or foreign or touched or errors)}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--turns", type=int, default=len(SCRIPT), help=f"turns per user (at most {len(SCRIPT)})")
    ap.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or ROOT / f"benchmarks/results/load_test_{args.storage}.json")
    doc = run(args.users, min(args.turns, len(SCRIPT)), args.storage, out)
    print(json.dumps({k: doc[k] for k in ("storage", "users", "turns", "wall_s", "throughput_turns_per_s",
                                          "latency", "n_errors", "checks")}, indent=2))
    print(f"wrote {out}")
    sys.exit(0 if doc["checks"]["passed"] else 1)


if __name__ == "__main__":
    main()
