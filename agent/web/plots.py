"""The page's two plots as matplotlib figures: the persona weights, and the list's category mix
against the user's. Built with ``matplotlib.figure.Figure`` (no pyplot: no global state, safe
from the server's threads); the tables come from :mod:`agent.web.views`.

Example:
    >>> import pandas as pd
    >>> fig = persona_weights_figure(pd.DataFrame({"persona": ["Space"], "weight": [100.0]}), ["#2563eb"])
    >>> fig.axes[0].get_xlim()[0]
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

LIST_COLOR, USER_COLOR = "#d97706", "#9ca3af"


def _figure(rows: int) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, max(1.6, 0.42 * rows + 0.9)), dpi=100, layout="constrained")
    fig.patch.set_alpha(0.0)
    return fig


def _style(ax, xlabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(labelsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _empty(ax, text: str) -> None:
    """An empty plot that says why."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#6b7280")
    ax.set_yticks([])


def persona_weights_figure(frame: pd.DataFrame, colors: Sequence[str] = ()) -> Figure:
    """Horizontal bars, one per persona (``frame``: ``persona``, ``weight`` in percent), in the
    personas' colours; the axis starts at 0."""
    fig = _figure(len(frame))
    ax = fig.add_subplot()
    names, values = list(frame["persona"])[::-1], list(frame["weight"])[::-1]
    cols = (list(colors) or [LIST_COLOR] * len(names))[: len(names)][::-1]
    bars = ax.barh(names, values, color=cols)
    ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=2)
    # room for twice an even share, never past 100%
    ax.set_xlim(0, min(100.0, max([100.0 / max(len(names), 1) * 2, *values, 1.0])) * 1.15)
    ax.set_title("Persona weights", fontsize=10, loc="left")
    _style(ax, "share of your taste (%)")
    if not names:
        _empty(ax, "no personas yet")
    return fig


def category_mix_figure(frame: pd.DataFrame) -> Figure:
    """Grouped horizontal bars per category: this list's share next to the user's history's
    (``frame``: ``category``, ``share`` in percent, ``source``)."""
    import numpy as np

    cats = list(dict.fromkeys(frame["category"]))[::-1]
    fig = _figure(len(cats))
    ax = fig.add_subplot()
    ax.set_title("Category mix: this list against your history", fontsize=10, loc="left")
    _style(ax, "share (%)")
    if not cats:
        _empty(ax, "no list yet")
        return fig
    y = np.arange(len(cats))
    h = 0.38
    for off, source, color in ((h / 2, "this list", LIST_COLOR), (-h / 2, "your history", USER_COLOR)):
        part = frame[frame["source"] == source].set_index("category")["share"]
        ax.barh(y + off, [float(part.get(c, 0.0)) for c in cats], height=h, color=color, label=source)
    ax.set_yticks(y, cats)
    ax.set_xlim(0, max(float(frame["share"].max()), 1.0) * 1.1)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return fig


def warm_up() -> None:
    """Draw a figure once (matplotlib's import and font cache take seconds the first time), so
    that the first page does not wait for it."""
    import io

    import pandas as pd

    fig = persona_weights_figure(pd.DataFrame({"persona": ["a"], "weight": [100.0]}))
    fig.savefig(io.BytesIO(), format="png")


__all__ = ["category_mix_figure", "persona_weights_figure", "warm_up"]
