"""``plural db``: maintenance of the chat's stored state (register ``db_app`` under the name ``db``).

``plural db prune-checkpoints --data-dir DIR --keep-last 5 --older-than-days 30 [--dry-run]``
deletes old LangGraph checkpoints of the data directory's threads, in its
``checkpoints.sqlite`` or, with ``--postgres-url`` (default ``$PLURAL_POSTGRES_URL``), in its
Postgres schema. The policy is :func:`agent.checkpoints.prune_checkpoints`'s: the newest
checkpoint of every thread is always kept; with both options a checkpoint goes only when it is
beyond the newest K of its thread and older than N days.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memory.errors import UsageError

db_app = typer.Typer(no_args_is_help=True, help="Maintain stored chat state (checkpoints).")


@db_app.callback()
def _db() -> None:
    """Maintain stored chat state (checkpoints)."""  # a group even with one command

_FLAGS = {"keep_last": "--keep-last", "older_than_days": "--older-than-days", "data_dir": "--data-dir",
          "older_than_days / keep_last": "--older-than-days / --keep-last", "postgres schema": "--schema"}


@db_app.command("prune-checkpoints")
def prune_checkpoints_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The data directory whose chat threads to prune.")],
    older_than_days: Annotated[float | None, typer.Option("--older-than-days", help="Delete checkpoints older than this many days (the newest of each thread is always kept).")] = None,
    keep_last: Annotated[int | None, typer.Option("--keep-last", help="Keep this many newest checkpoints per thread (>= 1).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    postgres_url: Annotated[str | None, typer.Option("--postgres-url", envvar="PLURAL_POSTGRES_URL", help="Prune the Postgres checkpoints (default $PLURAL_POSTGRES_URL); without it, <data dir>/checkpoints.sqlite.")] = None,
    schema: Annotated[str | None, typer.Option("--schema", envvar="PLURAL_POSTGRES_SCHEMA", help="Postgres schema (default $PLURAL_POSTGRES_SCHEMA, else the data directory's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Delete old checkpoints of the chat threads (and their pending writes)."""
    from agent.checkpoints import prune_checkpoints

    try:
        report = prune_checkpoints(data_dir, postgres_url=postgres_url or None, schema=schema,
                                   older_than_days=older_than_days, keep_last=keep_last, dry_run=dry_run)
    except UsageError as e:  # the library names its parameters; say which option it was
        raise typer.BadParameter(str(e).replace(f"invalid {e.parameter}", f"invalid {_FLAGS.get(e.parameter, e.parameter)}"),
                                 param_hint=_FLAGS.get(e.parameter)) from e
    if as_json:
        typer.echo(json.dumps({**report.model_dump(), "kept": report.kept}))
        return
    verb = "Would delete" if report.dry_run else "Deleted"
    extra = f", {report.deleted_blobs} channel values" if report.backend == "postgres" else ""
    typer.echo(f"{verb} {report.deleted_checkpoints} of {report.checkpoints} checkpoints "
               f"({report.deleted_writes} pending writes{extra}) in {report.threads} threads; "
               f"{report.kept} kept. [{report.backend}: {report.target}]")


__all__ = ["db_app"]
