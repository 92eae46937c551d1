"""LLM generation throughput for the explanation workload, per backend, as JSON.

Workload (issue 4, item 10): explanations of exactly 64 new tokens after a 256-token prompt,
for a random-weight model with the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads,
8 KV heads, intermediate 8192, vocabulary 128256, tied embeddings). EOS is ignored, so every
sequence produces exactly ``--new-tokens`` tokens. Three measurements per backend:

* ``sequential_10``: 10 explanations one ``generate`` call after another (batch 1);
* ``batched_10``: the same 10 in one batched call;
* ``batch_64``: 64 in one call (the throughput number the target is about).

Backends:

* ``transformers``: plain ``model.generate`` (dynamic KV cache, eager), the anchor's setting;
* ``transformers_optimised``: static KV cache + ``torch.compile(mode="reduce-overhead")``
  (CUDA graphs), the settings of ``TransformersBackend(optimise=True)``;
* ``vllm``: in-process ``vllm.LLM`` with dummy (random) weights, when vLLM is importable.

Each backend runs in its own subprocess (``--isolate``, the default) so that vLLM can take its
GPU memory share and compiled graphs of one backend do not leak into another. Every measured
run uses fresh random prompts (no prefix-cache hits); each shape is warmed up first, and the
warm-up (compilation, CUDA graph capture) is reported separately. tok/s counts generated
tokens only.

Anchor (H100, plain transformers ``generate``, bf16): 54.9 tok/s sequential, 156.8 batched by
10, 916 batched by 64. Target: at least 5x the anchor at batch 64 (4580 tok/s).

Usage:
    python benchmarks/llm_throughput.py --out benchmarks/results/llm_throughput_h100.json
    python benchmarks/llm_throughput.py --tiny --device cpu --backends transformers   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: the repo's packages come first
    sys.path.insert(0, str(ROOT))

ANCHOR_H100 = {"sequential_10": 54.9, "batched_10": 156.8, "batch_64": 916.0}
TARGET_FACTOR = 5.0
BACKENDS = ("transformers", "transformers_optimised", "vllm")

LLAMA_1B_SHAPE = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "head_dim": 64,
}
TINY_SHAPE = dict(
    LLAMA_1B_SHAPE,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=1024,
    head_dim=16,
)


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**(TINY_SHAPE if tiny else LLAMA_1B_SHAPE))
    # no EOS: every sequence runs the full --new-tokens, as the workload prescribes
    cfg.eos_token_id = None
    cfg.bos_token_id = None
    cfg.pad_token_id = 0
    return cfg


def random_prompts(rng, n: int, length: int, vocab: int) -> list[list[int]]:
    return [[int(x) for x in rng.integers(10, vocab, size=length)] for _ in range(n)]


# -- transformers ---------------------------------------------------------------------------
def bench_transformers(args, optimised: bool) -> dict:
    import numpy as np
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    cfg = llama_config(args.tiny)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    startup = time.perf_counter() - t0
    gen = GenerationConfig(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        bos_token_id=None,
    )
    extra = {}
    if optimised:
        from agent.llm.transformers_backend import optimised_generate_kwargs

        extra = optimised_generate_kwargs()
    rng = np.random.default_rng(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(batch: int) -> float:
        ids = torch.tensor(random_prompts(rng, batch, args.prompt_tokens, cfg.vocab_size), device=device)
        mask = torch.ones_like(ids)
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, **extra)
        sync()
        dt = time.perf_counter() - t
        new = out.shape[1] - ids.shape[1]
        if new != args.new_tokens:
            raise RuntimeError(f"generated {new} tokens, expected exactly {args.new_tokens}")
        return dt

    return measure(run, args, startup)


# -- vLLM -----------------------------------------------------------------------------------
def bench_vllm(args) -> dict:
    import numpy as np

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine errors surface here
    import vllm
    from vllm import LLM, SamplingParams

    cfg = llama_config(args.tiny)
    folder = Path(tempfile.mkdtemp(prefix="llama1b-shape-"))
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.torch_dtype = args.dtype
    cfg.save_pretrained(folder)
    t0 = time.perf_counter()
    # dummy weights: vLLM fills the tensors randomly, nothing to download or save
    llm = LLM(
        model=str(folder),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype=args.dtype,
        seed=0,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.prompt_tokens + args.new_tokens + 16,
        max_num_seqs=max(args.big_batch, 16),
    )
    startup = time.perf_counter() - t0
    sp = SamplingParams(
        temperature=0.0,
        max_tokens=args.new_tokens,
        min_tokens=args.new_tokens,
        ignore_eos=True,
        detokenize=False,
    )
    rng = np.random.default_rng(0)

    def run(batch: int) -> float:
        prompts = [
            {"prompt_token_ids": p} for p in random_prompts(rng, batch, args.prompt_tokens, cfg.vocab_size)
        ]
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        lens = {len(o.outputs[0].token_ids) for o in outs}
        if lens != {args.new_tokens}:
            raise RuntimeError(f"vLLM generated {lens} tokens, expected exactly {args.new_tokens}")
        return dt

    res = measure(run, args, startup)
    res["vllm_version"] = vllm.__version__
    return res


# -- shared measurement ---------------------------------------------------------------------
def measure(run, args, startup: float) -> dict:
    """Warm every shape up, then time each workload ``--repeats`` times; report medians."""
    n = args.n_explanations
    t = time.perf_counter()
    run(1), run(n), run(args.big_batch)
    warmup = time.perf_counter() - t

    def seq() -> float:
        return sum(run(1) for _ in range(n))

    out = {"startup_s": round(startup, 2), "warmup_s": round(warmup, 2)}
    for key, fn, tokens in (
        ("sequential_10", seq, n * args.new_tokens),
        ("batched_10", lambda: run(n), n * args.new_tokens),
        ("batch_64", lambda: run(args.big_batch), args.big_batch * args.new_tokens),
    ):
        times = [fn() for _ in range(args.repeats)]
        wall = statistics.median(times)
        out[key] = {
            "wall_s": round(wall, 4),
            "tok_s": round(tokens / wall, 1),
            "runs_s": [round(x, 4) for x in times],
            "new_tokens": tokens,
        }
    return out


def environment(args) -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def run_one(args, backend: str) -> dict:
    if backend == "transformers":
        return bench_transformers(args, optimised=False)
    if backend == "transformers_optimised":
        return bench_transformers(args, optimised=True)
    if backend == "vllm":
        return bench_vllm(args)
    raise SystemExit(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def run_isolated(args, backend: str) -> dict:
    """Run one backend in a child process; its JSON comes back through a temp file."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        tmp = fh.name
    cmd = [sys.executable, __file__, "--child", backend, "--child-out", tmp] + child_args(args)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {
            "error": f"exit code {proc.returncode}",
            "log_tail": tail,
            "elapsed_s": round(time.perf_counter() - t, 1),
        }
    return json.loads(Path(tmp).read_text())


def child_args(args) -> list[str]:
    out = []
    for k in (
        "device",
        "dtype",
        "prompt_tokens",
        "new_tokens",
        "n_explanations",
        "big_batch",
        "repeats",
        "gpu_memory_utilization",
    ):
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.tiny:
        out.append("--tiny")
    return out


def vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="auto", help=f"comma list of {', '.join(BACKENDS)} or 'auto'")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--n-explanations", type=int, default=10)
    p.add_argument("--big-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.6)
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy model (CPU smoke test)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false")
    p.add_argument("--timeout-s", type=float, default=900)
    p.add_argument("--out", default=None, help="write the JSON here (also printed)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        res = run_one(args, args.child)
        Path(args.child_out).write_text(json.dumps(res))
        return res

    if args.backends == "auto":
        names = ["transformers", "transformers_optimised"] + (["vllm"] if vllm_importable() else [])
    else:
        names = [b.strip() for b in args.backends.split(",") if b.strip()]
    report = {
        "benchmark": "llm_throughput",
        "workload": {
            "model": "random-weight Llama-3.2-1B shape"
            if not args.tiny
            else "tiny 2-layer Llama (smoke test)",
            "shape": TINY_SHAPE if args.tiny else LLAMA_1B_SHAPE,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "n_explanations": args.n_explanations,
            "big_batch": args.big_batch,
            "dtype": args.dtype,
            "device": args.device,
            "repeats": args.repeats,
            "ignore_eos": True,
        },
        "environment": environment(args),
        "anchor_h100_plain_transformers_tok_s": ANCHOR_H100,
        "target_batch_64_tok_s": ANCHOR_H100["batch_64"] * TARGET_FACTOR,
        "results": {},
    }
    if "vllm" in names and not vllm_importable():
        report["results"]["vllm"] = {"error": "vllm is not importable in this environment"}
        names.remove("vllm")
    for name in names:
        t = time.perf_counter()
        res = run_isolated(args, name) if args.isolate else run_one(args, name)
        res["elapsed_s"] = res.get("elapsed_s", round(time.perf_counter() - t, 1))
        if "batch_64" in res:
            tok = res["batch_64"]["tok_s"]
            res["batch_64_vs_anchor"] = round(tok / ANCHOR_H100["batch_64"], 2)
            res["meets_target"] = tok >= report["target_batch_64_tok_s"]
        report["results"][name] = res
        print(
            f"[{name}] "
            + json.dumps(
                {
                    k: (v["tok_s"] if isinstance(v, dict) and "tok_s" in v else v)
                    for k, v in res.items()
                    if k != "log_tail"
                }
            ),
            file=sys.stderr,
            flush=True,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
