"""What every ``plural`` command module shares: the data and LLM options, opening the data and
the engine, a console, progress bars. ``agent.cli`` (the entry point) and the command modules
registered through the ``plural.commands`` entry-point group (``evals.cli``: ``plural eval``)
import from here, so that ``agent`` never imports ``evals``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memory.errors import UnknownUserError

# ---- options shared by every command that reads data --------------------------------------
DatasetOpt = Annotated[str, typer.Option("--dataset", help="Packaged dataset: ml-100k or synthetic.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="A MovieLens folder, or an interactions CSV/Parquet file.")]
TrainOpt = Annotated[Optional[str], typer.Option("--train", help="Predefined split: training interactions file.")]
TestOpt = Annotated[Optional[str], typer.Option("--test", help="Predefined split: test interactions file.")]
ItemsOpt = Annotated[Optional[str], typer.Option("--items", help="Items file for --data tables and predefined splits.")]
ColumnsOpt = Annotated[Optional[str], typer.Option("--columns", help="Column names, when not the usual ones (user/user_id/userId, item/item_id/movieId, rating, timestamp, title, genres/categories): e.g. user=uid,item=movie,rating=stars; items.KEY=COLUMN for the items file (items.item=movie_id,items.title=name).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Engine settings file (.json or .toml).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the built data lives (default: a cache folder per dataset and settings).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the data directory even if it is current.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LLMOpt = Annotated[Optional[str], typer.Option("--llm", help="LLM backend: transformers (embedded), vllm, openai or none.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model alias, folder, GGUF file or served model name.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible server URL (…/v1).")]


def _source(dataset: str, data: str | None, train: str | None, test: str | None, items: str | None,
            columns: str | None):
    from memory.loaders import ColumnMapping, DataSource

    pairs = [p for p in (columns or "").split(",") if p.strip()]
    item_pairs = [p.strip()[len("items."):] for p in pairs if p.strip().startswith("items.")]
    log_pairs = [p for p in pairs if not p.strip().startswith("items.")]
    return DataSource(dataset=dataset, data=data, train=train, test=test, items=items,
                      columns=ColumnMapping.parse(",".join(log_pairs)),
                      item_columns=ColumnMapping.parse(",".join(item_pairs)))


def _config(path: Path | None):
    from agent.config import EngineConfig

    return EngineConfig.from_file(path) if path else EngineConfig()


def _open_engine(source, config, data_dir, rebuild: bool, user: str | None = None):
    from agent.engine import Engine

    def check(history):
        if user is not None and user not in history:
            raise UnknownUserError(user, history.user_ids)

    return Engine.open(source, config, data_dir, progress=sys.stderr.isatty(), rebuild=rebuild, validate=check)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _backend(llm: str | None, model: str | None, base_url: str | None):
    """The LLM backend the options name (default: the packaged SmolLM2 through transformers)."""
    from agent.llm import LLMConfig, make_backend

    return make_backend(LLMConfig(backend=llm or "transformers", model=model, base_url=base_url))


class _RichProgress:
    """A progress bar per stage on a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        from agent.engine import Progress

        self._p = Progress(enabled)

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def task(self, description: str, total: int):
        return self._p.task(description, total)
