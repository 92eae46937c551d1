"""``plural data build``: build (or open) a data directory and induce personas in bulk.

Personas are induced lazily on each user's first request unless the build induced them (at
most ``eager_max_users`` users, see :class:`agent.config.EngineConfig`); ``--induce all``
induces every user's now, in ``--workers`` processes, ``--induce USER...`` those users.
Registered by ``agent.cli`` (``data_app.command("build")(data_build)``).
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from agent.cli_common import (ColumnsOpt, ConfigOpt, DataDirOpt, DataOpt, DatasetOpt, ItemsOpt, JsonOpt, RebuildOpt,
                              TestOpt, TrainOpt, _config, _console, _open_engine, _source)
from memory.errors import UsageError


def data_build(
    induce: Annotated[Optional[list[str]], typer.Option(
        "--induce", help="Induce personas now: 'all' users, or user ids (repeat the option); default: none "
                         "beyond what the build induced (the rest on first request).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes for --induce.")] = 1,
    as_json: JsonOpt = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Build the data directory (when needed) and optionally induce personas in bulk.

    Example: ``plural data build --induce all --workers 2`` prints the scorer the build chose,
    how many users have personas, and how long the induction took.
    """
    if workers < 1:
        raise UsageError("--workers", workers, "a positive integer")
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, rebuild)
    try:
        report = {"data_dir": str(engine.data_dir), "scorer": engine.manifest.get("scorer", {"kind": engine.scorer.name}),
                  "personas_at_build": engine.manifest.get("personas_at_build", "all"),
                  "users": len(engine.history.user_ids)}
        if induce:
            users = None if [u.lower() for u in induce] == ["all"] else list(induce)
            report["induction"] = engine.induce_personas(users, workers=workers)
        report["users_with_personas"] = len(engine.persona_store.users())
    finally:
        engine.close()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    con = _console()
    for key, v in report.items():
        con.print(f"[bold]{key:>20}[/]  {json.dumps(v) if isinstance(v, dict) else v}")
