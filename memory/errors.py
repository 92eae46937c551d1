"""Errors that name the bad value and what is allowed.

Every layer raises these (``memory`` is the lowest layer, so they live here). The CLI maps
:class:`UsageError` and :class:`UnknownUserError` to exit code 2 and every other
:class:`PluralError` to exit code 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class PluralError(Exception):
    """Base class of every error Plural raises on purpose."""


class UsageError(PluralError, ValueError):
    """A parameter has a value outside what is allowed (exit code 2 in the CLI)."""

    def __init__(self, parameter: str, value: object, allowed: str | Iterable[object]):
        if not isinstance(allowed, str):
            allowed = ", ".join(repr(a) if not isinstance(a, str) else a for a in allowed)
        self.parameter, self.value, self.allowed = parameter, value, allowed
        super().__init__(f"invalid {parameter} {value!r}; allowed: {allowed}")


def _examples(known: Iterable[str], limit: int = 5) -> tuple[int, str]:
    known = list(known)
    shown = ", ".join(repr(k) for k in known[:limit])
    return len(known), shown


class UnknownUserError(PluralError, KeyError):
    """A user id that has no history in the dataset (exit code 2 in the CLI)."""

    def __init__(self, user: str, known: Iterable[str]):
        n, shown = _examples(known)
        self.user = user
        super().__init__(f"unknown user {user!r}: no history in this dataset; known users: {n} (e.g. {shown})")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class UnknownItemError(PluralError, KeyError):
    """An item id that is not in the catalog."""

    def __init__(self, item: str, known: Iterable[str], where: str = "catalog"):
        n, shown = _examples(known)
        self.item = item
        super().__init__(f"unknown item {item!r}: not in the {where}; known items: {n} (e.g. {shown})")

    def __str__(self) -> str:
        return self.args[0]


class DataFormatError(PluralError, ValueError):
    """A data file is missing or malformed; names the file, and the line and column when known."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, column: str | None = None):
        self.path, self.line, self.column = str(path), line, column
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
