"""How often the LLM's output passes validation, per task, on MovieLens-100K.

Runs the real language layer (persona text, routing, explanations) for a few users with the
chosen backend and writes the fallback counters per task and reason. The packaged SmolLM2-135M
on CPU is the default; a larger served model (``--llm openai --base-url ...``) should fall
back far less.

    python benchmarks/llm_fallback_rates.py [--users 1 2 3 4] [--k 5] [--llm transformers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUESTS = ("something light and funny tonight", "a tense thriller", "an old classic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", nargs="+", default=["1", "2", "3", "4"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--llm", default="transformers")
    ap.add_argument("--model", default=None)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/llm_fallback_rates.json"))
    args = ap.parse_args()

    import shutil

    from agent.engine import Engine
    from agent.language import LanguageLayer
    from agent.llm import LLMConfig, make_backend
    from agent.llm.validated import FallbackCounter

    base = Engine.open(progress=True)
    with tempfile.TemporaryDirectory() as tmp:  # a private copy: persona text gets rewritten
        shutil.copytree(base.data_dir, Path(tmp) / "dd")
        engine = Engine.open(None, base.config, Path(tmp) / "dd")
        t0 = time.perf_counter()
        backend = make_backend(LLMConfig(backend=args.llm, model=args.model, base_url=args.base_url))
        load_s = time.perf_counter() - t0
        lang = LanguageLayer(engine, backend)
        per_task: dict[str, FallbackCounter] = {}
        examples, errors = [], []
        t0 = time.perf_counter()
        for n, user in enumerate(args.users):
            out = lang.recommend(user, args.k, "persona_calibrated", request=REQUESTS[n % len(REQUESTS)],
                                 explain=True)
            for task in ("describe_personas", "route_request", "explain_recommendations"):
                m = out.meta.get(task)
                if m and "fallbacks" in m:
                    c = FallbackCounter.model_validate({k: v for k, v in m["fallbacks"].items() if k != "fallback_rate"})
                    per_task[task] = per_task.get(task, FallbackCounter()).merge(c)
            if out.meta.get("llm_error"):
                errors.append(out.meta["llm_error"])
            examples += [{"user": user, "title": r.title, "persona": r.persona.name, "source": r.explanation_source,
                          "explanation": r.explanation} for r in out.items[:2]]
            pset = engine.persona_store.get(user)
            examples += [{"user": user, "persona": p.name, "description": p.description, "source": p.text_source}
                         for p in pset.personas[:2]]
        run_s = time.perf_counter() - t0
    result = {"benchmark": "llm_fallback_rates", "backend": args.llm,
              "model": backend.model_name if backend else None, "users": args.users, "k": args.k,
              "per_task": {t: c.as_dict() for t, c in per_task.items()},
              "llm_errors": errors, "examples": examples, "model_load_s": round(load_s, 1),
              "run_s": round(run_s, 1), "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
