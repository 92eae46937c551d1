"""Batch recommendation: every user's top-k from a data directory, in-process or on Ray.

:func:`batch_recommend` cuts the users into shards of ``shard_size`` and gives each shard to a
:class:`ShardRecommender`, which opens the engine once (``Engine.open_data_dir``) and calls
``Engine.recommend`` user by user: the product's own path, so every row carries its persona,
attention and evidence. In-process, one ``ShardRecommender`` takes the shards in turn; on Ray
(``ray=True`` or an address), Ray Data's ``map_batches`` runs a pool of them as actors, one
engine per actor. Both give the same table, row for row (sorted by the order of ``users``, then
rank), and ``tests/test_batch.py`` checks it on a local Ray.

A batch commits no exposure counts, no memory and no feedback. The one write it can make is
the one any first request makes: in a data directory built with lazy personas (more users than
``eager_max_users``), a user without personas yet gets them induced and stored (deterministic:
the same sets in any process, order or shard, stored once; ``plural data build --induce all``
beforehand makes the batch purely read-only). Modes whose ranking reads the exposure counts (``persona_calibrated``) read
a **frozen snapshot** taken once, before the first shard, and shipped to every worker. The
live product's sequential semantics (each list shown adds to the counts the next user's
ranking reads) cannot be sharded: user *i*'s list would depend on every list before it. With a
snapshot each user's list depends only on that user and the snapshot, so the result does not
depend on the user order, the shard size or the number of workers, and it equals
``Engine.recommend`` with the exposure store holding the snapshot's counts.

Ray and pyarrow are imported inside the functions that need them. See ``docs/ray.md`` for
pointing a run at an existing cluster.

Example:
    >>> table = batch_recommend(Path("data/ml-100k-..."), ["1", "2"], k=10, mode="relevance")  # doctest: +SKIP
    >>> table.num_rows, table.column_names[:4]                                                  # doctest: +SKIP
    (20, ['user_id', 'rank', 'item_id', 'title'])
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memory.errors import UnknownUserError, UsageError
from personas.exposure import ExposureStore

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow

COLUMNS = ("user_id", "rank", "item_id", "title", "score", "persona_id", "persona_name", "persona_version",
           "attention", "attention_by_persona", "evidence_ids", "evidence_titles", "evidence_weights",
           "categories", "explanation", "cold_start", "mode")
"""Columns of :func:`batch_recommend`'s table, in order (see :func:`result_schema` for types)."""


def result_schema() -> "pyarrow.Schema":
    """The Arrow schema of a batch's rows: one row per (user, rank).

    ``attention`` is the responsible persona's share of the match (null for the popularity
    fallback of a user without personas); ``attention_by_persona`` every persona's share;
    ``evidence_*`` the history items behind the pick, aligned lists; ``persona_version`` the
    version of the responsible persona the list was computed from.
    """
    import pyarrow as pa

    return pa.schema([
        ("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("title", pa.string()),
        ("score", pa.float64()), ("persona_id", pa.string()), ("persona_name", pa.string()),
        ("persona_version", pa.int32()), ("attention", pa.float64()),
        ("attention_by_persona", pa.map_(pa.string(), pa.float64())),
        ("evidence_ids", pa.list_(pa.string())), ("evidence_titles", pa.list_(pa.string())),
        ("evidence_weights", pa.list_(pa.float64())), ("categories", pa.list_(pa.string())),
        ("explanation", pa.string()), ("cold_start", pa.bool_()), ("mode", pa.string()),
    ])


class FrozenExposure(ExposureStore):
    """Exposure counts fixed at one moment: what a batch's rankings read (see the module
    docstring). Read-only: a batch shows nothing to anyone, so it counts nothing.

    Example:
        >>> FrozenExposure({"10": 2}).counts(["10", "11"]).tolist()
        [2, 0]
    """

    def __init__(self, counts: dict[str, int]):
        self._counts = {str(k): int(v) for k, v in counts.items() if v}

    def counts(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._counts.get(str(i), 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def add(self, item_ids: Sequence[str]) -> None:
        raise UsageError("exposure", "add() on a batch's frozen exposure snapshot",
                         "read-only counts: a batch commits no exposure (use the live store)")

    @contextlib.contextmanager
    def transaction(self):
        yield self  # nothing can be written, so there is nothing to undo

    def reset(self) -> None:
        raise UsageError("exposure", "reset() on a batch's frozen exposure snapshot", "read-only counts")

    def total(self) -> int:
        return int(sum(self._counts.values()))

    def snapshot(self) -> dict[str, int]:
        """The counts, as ``{item_id: n}`` for every id shown at least once."""
        return dict(self._counts)


def exposure_snapshot(engine) -> dict[str, int]:
    """The engine's exposure counts now, as ``{item_id: n}`` (ids never shown are left out)."""
    ids = engine.catalog.item_ids
    counts = engine.exposure_store().counts(ids)
    return {i: int(n) for i, n in zip(ids, counts) if n}


class ShardRecommender:
    """Recommends for one shard of users at a time; opens the engine once, in its constructor.

    This is the Ray Data actor class (``map_batches(ShardRecommender, ...)``) and also what the
    in-process path calls, so both run the same code. A shard is an Arrow table with columns
    ``user_id`` (string) and ``_pos`` (int64, the user's position in the request, kept so the
    driver can restore the order); the result has :func:`result_schema`'s columns plus ``_pos``.
    """

    def __init__(self, data_dir: str, k: int, mode: str, exposure: dict[str, int] | None = None,
                 storage: str | None = None):
        from agent.engine import Engine

        self.engine = Engine.open_data_dir(data_dir, storage=storage)
        self.k, self.mode = int(k), mode
        if exposure is not None:
            self.engine.recommender.exposure = FrozenExposure(exposure)

    def __call__(self, shard: "pyarrow.Table") -> "pyarrow.Table":
        import pyarrow as pa

        cols: dict[str, list] = {c: [] for c in (*COLUMNS, "_pos")}
        users = shard.column("user_id").to_pylist()
        positions = shard.column("_pos").to_pylist()
        for user, pos in zip(users, positions):
            out = self.engine.recommend(user, self.k, self.mode)
            versions = out.provenance.get("personas", {})
            for r in out.items:
                pid = r.persona.id if r.persona else None
                cols["user_id"].append(out.user_id)
                cols["rank"].append(r.rank)
                cols["item_id"].append(r.item_id)
                cols["title"].append(r.title)
                cols["score"].append(r.score)
                cols["persona_id"].append(pid)
                cols["persona_name"].append(r.persona.name if r.persona else None)
                cols["persona_version"].append(versions.get(pid) if pid else None)
                cols["attention"].append(r.attention.get(pid) if pid else None)
                cols["attention_by_persona"].append(list(r.attention.items()))
                cols["evidence_ids"].append([e.item_id for e in r.evidence])
                cols["evidence_titles"].append([e.title for e in r.evidence])
                cols["evidence_weights"].append([e.weight for e in r.evidence])
                cols["categories"].append(list(r.categories))
                cols["explanation"].append(r.explanation)
                cols["cold_start"].append(r.cold_start)
                cols["mode"].append(out.mode)
                cols["_pos"].append(pos)
        schema = result_schema().append(pa.field("_pos", pa.int64()))
        return pa.table(cols, schema=schema)

    def close(self) -> None:
        """Close the engine's stores."""
        self.engine.close()


# ---- Ray -------------------------------------------------------------------------------------
def resolve_ray_address(ray: bool | str) -> str | None:
    """The address ``ray`` names: a string as given, ``True`` -> ``$RAY_ADDRESS`` or None (a
    local Ray started for the call). ``False`` is not a Ray run and is refused here."""
    if ray is False or ray is None:
        raise UsageError("ray", ray, "True (local Ray or $RAY_ADDRESS) or an address such as 'ray://host:10001'")
    if ray is True:
        return os.environ.get("RAY_ADDRESS") or None
    if not isinstance(ray, str) or not ray.strip():
        raise UsageError("ray", ray, "True or a non-empty address such as 'auto' or 'ray://host:10001'")
    return ray.strip()


@contextlib.contextmanager
def ray_session(ray: bool | str) -> Iterator[Any]:
    """The ``ray`` module, initialised: a Ray already initialised in this process is used as is
    and left running; otherwise one is connected to (an address) or started locally for the
    block and shut down after it."""
    import ray as ray_mod

    if ray_mod.is_initialized():
        yield ray_mod
        return
    address = resolve_ray_address(ray)
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
    if address is None:
        kwargs["include_dashboard"] = False
    ray_mod.init(**kwargs)
    try:
        yield ray_mod
    finally:
        ray_mod.shutdown()


def _cluster_cpus(ray_mod) -> int:
    return max(1, int(ray_mod.cluster_resources().get("CPU", 1)))


# ---- the entry point -------------------------------------------------------------------------
def _check_args(k: Any, shard_size: Any, workers: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise UsageError("k", k, "a positive integer")
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size <= 0:
        raise UsageError("shard_size", shard_size, "a positive integer (users per shard)")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers <= 0):
        raise UsageError("workers", workers, "None (one per CPU of the Ray cluster) or a positive integer")


def _resolve_users(engine, users: Sequence[str] | None) -> list[str]:
    if users is None:
        return list(engine.history.user_ids)
    if isinstance(users, str):
        raise UsageError("users", users, "a list of user ids (not one string), or None for every user")
    out = [str(u) for u in users]
    for u in out:
        if u not in engine.history:
            raise UnknownUserError(u, engine.history.user_ids)
    return out


def batch_recommend(data_dir: Path, users: list[str] | None, k: int, mode: str, *, ray: bool | str = False,
                    shard_size: int = 1000, workers: int | None = None,
                    storage: str | None = None) -> "pyarrow.Table":
    """Top-``k`` lists of ``users`` (None: every user of the data directory) in ``mode``, one row
    per (user, rank) with :func:`result_schema`'s columns, sorted by the order of ``users`` then rank.

    ``ray``: False runs in this process; True runs on Ray (a Ray already initialised here, else
    ``$RAY_ADDRESS``, else a local Ray started for the call); a string is the address to connect
    to (``"auto"``, ``"ray://head:10001"``). Every Ray node must read ``data_dir`` at the same
    path (a shared filesystem). ``shard_size``: users per shard (a Ray Data batch); ``workers``:
    actors on Ray (default: one per cluster CPU, at most one per shard); ``storage``: as
    :meth:`agent.engine.Engine.open`. Exposure-reading modes read a snapshot taken before the
    first shard (module docstring). The table's schema metadata ``plural.provenance`` holds the
    dataset, scorer and configuration key (JSON).

    Raises :class:`~memory.errors.UnknownUserError` for a user the data directory lacks and
    :class:`~memory.errors.UsageError` for a bad ``k``, ``mode``, ``shard_size`` or ``workers``.

    Example:
        >>> t = batch_recommend(ddir, None, 10, "persona_calibrated", ray=True)   # doctest: +SKIP
        >>> t.to_pandas().groupby("user_id").size().max()                         # doctest: +SKIP
        10
    """
    import pyarrow as pa

    from agent.engine import Engine
    from personas.ranking import get_mode

    _check_args(k, shard_size, workers)
    ranking = get_mode(mode)  # an unknown mode fails before anything opens
    data_dir = Path(data_dir)
    engine = Engine.open_data_dir(data_dir, storage=storage)
    try:
        user_list = _resolve_users(engine, users)
        exposure = exposure_snapshot(engine) if ranking.uses_exposure else None
        provenance = dict(engine.recommender.provenance)
    finally:
        engine.close()
    shards = pa.table({"user_id": pa.array(user_list, pa.string()),
                       "_pos": pa.array(np.arange(len(user_list), dtype=np.int64))})
    ctor = {"data_dir": str(data_dir.resolve()), "k": int(k), "mode": mode, "exposure": exposure,
            "storage": storage}
    if len(user_list) == 0:
        parts = [result_schema().append(pa.field("_pos", pa.int64())).empty_table()]
    elif ray is False or ray is None:
        worker = ShardRecommender(**ctor)
        try:
            parts = [worker(shards.slice(s, shard_size)) for s in range(0, len(user_list), shard_size)]
        finally:
            worker.close()
    else:
        parts = _run_on_ray(ray, shards, ctor, shard_size, workers)
    table = pa.concat_tables(parts).sort_by([("_pos", "ascending"), ("rank", "ascending")]).drop_columns(["_pos"])
    meta = {"plural.provenance": json.dumps({**provenance, "mode": mode, "k": int(k),
                                             "exposure": "frozen snapshot" if exposure is not None else "unused",
                                             "exposure_showings": sum(exposure.values()) if exposure else 0},
                                            sort_keys=True, default=str)}
    return table.replace_schema_metadata(meta)


def _run_on_ray(ray: bool | str, shards: "pyarrow.Table", ctor: dict, shard_size: int,
                workers: int | None) -> list["pyarrow.Table"]:
    """``map_batches(ShardRecommender)`` over the shards on a pool of actors; the Arrow blocks."""
    n_shards = math.ceil(shards.num_rows / shard_size)
    with ray_session(ray) as ray_mod:
        from ray import data as ray_data
        from ray.data import ActorPoolStrategy

        ctx = ray_data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        pool = min(n_shards, workers or _cluster_cpus(ray_mod))
        ds = ray_data.from_arrow([shards.slice(s, shard_size) for s in range(0, shards.num_rows, shard_size)])
        out = ds.map_batches(ShardRecommender, batch_size=shard_size, batch_format="pyarrow",
                             fn_constructor_kwargs=ctor, compute=ActorPoolStrategy(size=pool), num_cpus=1)
        return [t for t in ray_mod.get(out.to_arrow_refs()) if t.num_rows]


def write_parquet(table: "pyarrow.Table", path: Path) -> Path:
    """Write a batch's table to one Parquet file (atomically: a temporary file renamed into place)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise UsageError("--out", str(path), "a file name ending in .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["COLUMNS", "FrozenExposure", "ShardRecommender", "batch_recommend", "exposure_snapshot",
           "ray_session", "resolve_ray_address", "result_schema", "write_parquet"]
