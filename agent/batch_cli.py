"""``plural batch``: batch work over every user (register ``batch_app`` under the name ``batch``).

``plural batch recommend --out recs.parquet [--users 1,2 | --users-file ids.txt] [--k 10]
[--mode relevance] [--ray [--ray-address ray://head:10001]]`` writes every user's top-k, one
row per (user, rank) with persona, attention and evidence (:func:`agent.batch.batch_recommend`),
in-process or on Ray. Ray and pyarrow load only inside the command.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from agent.cli_common import (ColumnsOpt, ConfigOpt, DataDirOpt, DataOpt, DatasetOpt, ItemsOpt, JsonOpt, RebuildOpt,
                              TestOpt, TrainOpt, _config, _console, _open_engine, _source)
from memory.errors import UsageError

batch_app = typer.Typer(no_args_is_help=True, help="Batch work over many users, in-process or on Ray.")


@batch_app.callback()
def _batch() -> None:
    """Batch work over many users, in-process or on Ray."""  # a group even with one command


def _read_users(users: list[str] | None, users_file: Path | None) -> list[str] | None:
    """Ids from ``--users`` (repeatable, comma-separated) and ``--users-file`` (one per line);
    None when neither is given (every user)."""
    if users is None and users_file is None:
        return None
    out: list[str] = []
    for value in users or []:
        out += [u.strip() for u in value.split(",") if u.strip()]
    if users_file is not None:
        if not users_file.is_file():
            raise UsageError("--users-file", str(users_file), "a readable text file with one user id per line")
        out += [line.strip() for line in users_file.read_text().splitlines() if line.strip()]
    if not out:
        raise UsageError("--users", users or str(users_file), "at least one user id")
    return list(dict.fromkeys(out))


@batch_app.command("recommend")
def batch_recommend_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write (one row per user and rank).")],
    users: Annotated[Optional[list[str]], typer.Option("--users", help="User ids (comma-separated or repeated; default: every user).")] = None,
    users_file: Annotated[Optional[Path], typer.Option("--users-file", help="A text file of user ids, one per line.")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="List length (> 0).")] = 10,
    mode: Annotated[str, typer.Option("--mode", "-m", help="Ranking mode (relevance, persona_fill, persona_calibrated, ...).")] = "relevance",
    use_ray: Annotated[bool, typer.Option("--ray", help="Run on Ray (Ray Data map_batches over user shards): a local Ray unless --ray-address or $RAY_ADDRESS names a cluster.")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Run on this Ray cluster (implies --ray): ray://head:10001, or auto on a node of the cluster. Without it --ray uses $RAY_ADDRESS, else a local Ray.")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Users per shard (one Ray Data batch).")] = 1000,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Ray actors (default: one per cluster CPU, at most one per shard).")] = None,
    as_json: JsonOpt = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Every user's top-k to a Parquet file, in-process or on Ray; identical either way.

    Reads the data directory only: no exposure, memory or persona version is written; modes
    that read exposure counts read a snapshot taken at the start (docs/ray.md). Prints the
    users, rows, seconds and users per second (--json: as an object).
    """
    from agent.batch import batch_recommend, write_parquet
    from personas.ranking import RANKING_MODES

    if k <= 0:
        raise UsageError("--k", k, "a positive integer")
    if mode not in RANKING_MODES:
        raise UsageError("--mode", mode, sorted(RANKING_MODES))
    if shard_size <= 0:
        raise UsageError("--shard-size", shard_size, "a positive integer")
    if workers is not None and workers <= 0:
        raise UsageError("--workers", workers, "a positive integer")
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise UsageError("--out", str(out), "a file name ending in .parquet")
    wanted = _read_users(users, users_file)
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, rebuild)
    ddir = engine.data_dir
    engine.close()
    use_ray = use_ray or ray_address is not None
    ray: bool | str = (ray_address or True) if use_ray else False
    t0 = time.perf_counter()
    table = batch_recommend(ddir, wanted, k, mode, ray=ray, shard_size=shard_size, workers=workers)
    seconds = time.perf_counter() - t0
    write_parquet(table, out)
    n_users = len(set(table.column("user_id").to_pylist())) if table.num_rows else 0
    summary = {"out": str(out), "users": n_users, "rows": table.num_rows, "k": k, "mode": mode,
               "where": f"ray ({ray_address or os.environ.get('RAY_ADDRESS') or 'local'})" if use_ray else "in-process",
               "seconds": round(seconds, 3), "users_per_s": round(n_users / seconds, 1) if seconds > 0 else None,
               "data_dir": str(ddir)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _console().print(f"Wrote {summary['rows']} rows ({n_users} users x top {k}, {mode}) to {out} in "
                         f"{summary['seconds']} s ({summary['users_per_s']} users/s, {summary['where']}).")
