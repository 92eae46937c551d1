"""``plural eval ...``: the evaluation runs, registered into the ``plural`` command line through
the ``plural.commands`` entry point (pyproject.toml), so that the ``agent`` package never imports
``evals`` (the one-way flow: evals reads every layer, nothing reads it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from agent.cli_common import (BaseUrlOpt, ColumnsOpt, ConfigOpt, DataDirOpt, DataOpt, DatasetOpt, ItemsOpt,
                              ModelOpt, TestOpt, TrainOpt, _backend, _config, _console, _open_engine, _RichProgress,
                              _source)
from memory.errors import UsageError

eval_app = typer.Typer(no_args_is_help=True, help="Evaluation runs: accuracy, crowding out, persona quality, the chat, "
                                                  "the agent.")


@eval_app.command("rec")
def eval_rec(
    k: Annotated[Optional[list[int]], typer.Option("--k", help="List lengths (repeatable: --k 10 20).")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Models to run (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split seed.")] = 0,
    split: Annotated[str, typer.Option("--split", help="random (per-user 80/20) or temporal (leave-last).")] = "random",
    exclude: Annotated[str, typer.Option("--exclude", help="Never rank training 'positives' (reference) or all 'seen'.")] = "positives",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/rec-<dataset>).")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    multvae_epochs: Annotated[Optional[int], typer.Option("--multvae-epochs", help="Mult-VAE epochs.")] = None,
    no_tradeoff: Annotated[bool, typer.Option("--no-tradeoff", help="Skip scoring every variant on test for the plot.")] = False,
    use_ray: Annotated[bool, typer.Option("--ray", help="Run the per-user persona induction of both splits on Ray, in user shards (same results; docs/ray.md): a local Ray unless --ray-address or $RAY_ADDRESS names a cluster.")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to run on (implies --ray): ray://head:10001, or auto on a node of the cluster.")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", help="With --ray: users per Ray task.")] = 100,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None,
) -> None:
    """Accuracy and crowding out: Plural's ranking modes beside the strongest baselines.

    With --ray the per-user persona induction runs on Ray; the replay (sequential: each list
    reads the exposure every earlier one added), the model fits and the metrics stay here."""
    from evals.harness import EvalConfig, RecEvaluation
    from evals.report import write_reports
    from evals.splits import SplitConfig

    if split not in ("random", "temporal"):
        raise UsageError("--split", split, ["random", "temporal"])
    if exclude not in ("positives", "seen"):
        raise UsageError("--exclude", exclude, ["positives", "seen"])
    overrides = {"ks": k or [10, 20], "models": models or None, "split": SplitConfig(seed=seed, strategy=split),
                 "exclude": exclude, "embedder": embedder, "tradeoff_on_test": not no_tradeoff}
    if multvae_epochs:
        from evals.baselines import MultVAEConfig

        overrides["multvae"] = MultVAEConfig(epochs=multvae_epochs)
    if shard_size <= 0:
        raise UsageError("--shard-size", shard_size, "a positive integer")
    cfg = EvalConfig(**overrides)
    cfg.selected_models()  # unknown names fail before any work
    ray: bool | str = (ray_address or True) if (use_ray or ray_address is not None) else False
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = RecEvaluation(ds, cfg, progress=bar.task, ray=ray, shard_size=shard_size).run()
    paths = write_reports(doc, out or Path("runs") / f"rec-{ds.name}")
    from evals.report import markdown_table

    con = _console()
    con.print(markdown_table(doc, min(cfg.ks)))
    rb = doc.get("research_bar", {}).get("b_persona_calibrated_vs_steck")
    if rb:
        con.print(f"persona_calibrated vs EASE: NDCG x{rb['ndcg_ratio']}, C_KL x{rb['c_kl_ratio']}, minority recall "
                  f"x{rb['minority_recall_ratio']}, coverage x{rb['coverage_ratio']} (Steck: x{rb['steck_ndcg_ratio']}, "
                  f"x{rb['steck_c_kl_ratio']}, x{rb['steck_minority_recall_ratio']}, x{rb['steck_coverage_ratio']}); "
                  f"research bar {'passed' if rb['passed'] else 'not passed'}")
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))


@eval_app.command("personas")
def eval_personas(
    seeds: Annotated[Optional[list[int]], typer.Option("--seeds", help="Induction seeds to rerun (repeatable).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Attention share that counts as explained.")] = 0.5,
    max_users: Annotated[Optional[int], typer.Option("--max-users", help="Only the first N users.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/personas-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Persona separation, run-to-run stability and coverage of each user's history."""
    import json as _json

    from evals.persona_quality import PersonaEvalConfig, markdown_persona_report, run_persona_eval
    from memory.persistence import atomic_write_text

    cfg = PersonaEvalConfig(seeds=seeds or [1, 2, 3], coverage_threshold=threshold, max_users=max_users)
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, False)
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_persona_eval(engine, cfg, progress=bar.task)
    folder = out or Path("runs") / f"personas-{doc['dataset']}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "personas.json", _json.dumps(doc, indent=2))
    md = markdown_persona_report(doc)
    atomic_write_text(folder / "personas.md", md)
    _console().print(md)
    _console().print(f"wrote {folder / 'personas.json'}, {folder / 'personas.md'}")


@eval_app.command("refine")
def eval_refine(
    users: Annotated[int, typer.Option("--users", help="Held-out users to evaluate (seeded sample).")] = 50,
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="Evaluate this user (repeatable) instead of a sample.")] = None,
    reveal: Annotated[int, typer.Option("--reveal", help="Held-out positives revealed as likes per user.")] = 3,
    reveal_negatives: Annotated[int, typer.Option("--reveal-negatives", help="Negatives revealed as dislikes per user.")] = 2,
    eval_items: Annotated[int, typer.Option("--eval-items", help="Reaction prediction: at most N remaining positives and N negatives per user.")] = 10,
    mode: Annotated[Optional[list[str]], typer.Option("--mode", help="Ranking mode measured (repeatable; default relevance and persona_calibrated).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the users and the revealed items.")] = 0,
    llm: Annotated[str, typer.Option("--llm", help="LLM backend for the textual gradient: none (templates, fast), transformers, vllm or openai.")] = "none",
    model: ModelOpt = None, base_url: BaseUrlOpt = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/refine-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
) -> None:
    """Test-time refinement: reveal feedback on a few held-out items, refine the personas, and compare
    ranking quality and reaction prediction on the remaining items before and after."""
    from evals.refine_eval import RefineEvalConfig, run_refine_eval, write_refine_reports

    options = {"users": users, "reveal": reveal, "reveal_negatives": reveal_negatives, "eval_items": eval_items,
               "seed": seed}
    if user:
        options["user_ids"] = list(user)
    if mode:
        options["modes"] = list(mode)
    cfg = RefineEvalConfig.from_options(**options)
    backend = _backend(llm, model, base_url) if llm != "none" else None  # unknown names fail before any work
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_refine_eval(ds, cfg, engine_config, backend, progress=bar.task)
    paths = write_refine_reports(doc, out or Path("runs") / f"refine-{ds.name}")
    con = _console()
    for name, m in doc["metrics"].items():
        con.print(f"{name}: {m['before']} -> {m['after']} (after - before {m['difference']}, 95% CI {m['ci95']})")
    g = doc["guard"]
    con.print(f"drift guard: {g['accepted']} rewrites accepted, {g['rejected']} rejected, {g['aligned']} not needed, "
              f"{g['no_valid_rewrite']} without a valid rewrite; LLM fallback rate {doc['fallbacks']['fallback_rate']:.0%}")
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))


@eval_app.command("consistency")
def eval_consistency(
    users: Annotated[int, typer.Option("--users", help="Users to sample (seeded).")] = 3,
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="Evaluate this user (repeatable) instead of a sample.")] = None,
    max_personas: Annotated[Optional[int], typer.Option("--max-personas", help="At most N personas per user (heaviest first).")] = None,
    turns: Annotated[int, typer.Option("--turns", help="Interview questions per persona (2-6).")] = 5,
    questions: Annotated[int, typer.Option("--questions", help="Multiple-choice questions per persona.")] = 4,
    qa_at_end: Annotated[bool, typer.Option("--qa-at-end", help="Take the Q&A test after the last turn only (faster).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the user sample and the probe titles.")] = 0,
    llm: Annotated[str, typer.Option("--llm", help="Speaker LLM: transformers (packaged SmolLM2), vllm, openai, or none (smoke mode).")] = "transformers",
    model: ModelOpt = None, base_url: BaseUrlOpt = None,
    judge_llm: Annotated[Optional[str], typer.Option("--judge-llm", help="Judge LLM backend (default: the speaker's).")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Judge model (default: the speaker's).")] = None,
    judge_base_url: Annotated[Optional[str], typer.Option("--judge-base-url", help="Judge server URL (default: the speaker's).")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder of a fresh build (all-MiniLM-L6-v2, or hash).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/consistency-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Evaluate the personas of this data directory as they are now (default: a fresh build, so runs are reproducible).")] = None,
) -> None:
    """Persona consistency (arXiv 2511.00222): prompt-to-line, line-to-line and Q&A over simulated
    interviews in which the agent speaks as each persona, scored by an LLM judge."""
    from evals.consistency import (
        ConsistencyConfig,
        evaluation_engine,
        run_consistency_eval,
        write_consistency_reports,
    )

    options = {"users": users, "max_personas": max_personas, "turns": turns, "questions": questions,
               "qa_every_turn": not qa_at_end, "seed": seed}
    if user:
        options["user_ids"] = list(user)
    cfg = ConsistencyConfig.from_options(**options)
    speaker = _backend(llm, model, base_url) if llm != "none" else None
    if judge_llm is None and judge_model is None and judge_base_url is None:
        judge = speaker  # one model plays both roles unless told otherwise
    else:
        name = judge_llm or llm
        judge = _backend(name, judge_model or model, judge_base_url or base_url) if name != "none" else None
    source = _source(dataset, data, train, test, items, columns)
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    with evaluation_engine(source, engine_config, data_dir, progress=sys.stderr.isatty()) as engine, \
            _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_consistency_eval(engine, cfg, speaker, judge, progress=bar.task)
    paths = write_consistency_reports(doc, out or Path("runs") / f"consistency-{doc['dataset']}")
    con = _console()
    if doc["mode"] != "measurement":
        con.print(f"[bold yellow]{doc['mode']} mode[/]: deterministic fallbacks stand in for the LLM; not a measurement.")
    for name, m in doc["metrics"].items():
        con.print(f"{name:>15}: {m['mean']}  95% CI {m['ci95']}  ({m['n']} personas)")
    js = doc["judge_sensitivity"]
    con.print("planted contradictions caught (judge model / fallback): " + ", ".join(
        f"{k} {js[k]['llm']['caught']}/{js[k]['llm']['of']} / {js[k]['fallback']['caught']}/{js[k]['fallback']['of']}"
        for k in ("prompt_to_line", "line_to_line")))
    con.print(f"LLM fallback rate {doc['fallbacks']['total']['fallback_rate']:.0%}; {doc['timings_s']['total']:.1f} s; "
              f"wrote " + ", ".join(paths.values()))


@eval_app.command("chat")
def eval_chat(
    users: Annotated[int, typer.Option("--users", help="Simulated users on test (seeded sample).")] = 200,
    tune_users: Annotated[int, typer.Option("--tune-users", help="Simulated users on the validation split.")] = 150,
    no_tune: Annotated[bool, typer.Option("--no-tune", help="Keep the configured request mix (no validation search).")] = False,
    systems: Annotated[Optional[list[str]], typer.Option("--systems", help="Systems to compare (default: all four).")] = None,
    k: Annotated[int, typer.Option("--k", help="List length.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the users and their requests.")] = 0,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/chat-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
) -> None:
    """Conversational evaluation: simulated users from the held-out split ask for a category, a
    category and period, "something like X" and a free-text description of a held-out liked
    item, then refuse and ask for "more like #k"; request satisfaction, hit rate, NDCG,
    personalisation and turn latency of Plural's chat beside its old self and two baselines."""
    from evals.chat_eval import ChatEvalConfig, run_chat_eval, write_chat_reports

    options = {"users": users, "tune_users": tune_users, "tune": not no_tune, "k": k, "seed": seed}
    if systems:
        options["systems"] = list(systems)
    cfg = ChatEvalConfig.from_options(**options)
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_chat_eval(ds, cfg, engine_config, progress=bar.task)
    paths = write_chat_reports(doc, out or Path("runs") / f"chat-{ds.name}")
    con = _console()
    from rich.text import Text

    for t, by_system in doc["results"].items():
        cells = ", ".join(f"{s} {m.get('satisfaction', {}).get('mean')}/{m.get(f'hr@{k}', {}).get('mean', '-')}"
                          for s, m in by_system.items())
        con.print(Text(f"{t:>16} (satisfied/HR@{k}): {cells}"))
    for name, t in doc["targets"].items():
        con.print(Text(f"target {name}: {'met' if t['met'] else 'NOT met'}"))
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))
