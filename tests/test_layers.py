"""The one-way flow of DESIGN.md section 4: memory knows nothing of personas, agent or evals;
personas nothing of agent or evals; agent nothing of evals (``plural eval`` is mounted through
the ``plural.commands`` entry point); prompts holds templates only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FORBIDDEN = {"memory": {"personas", "agent", "evals"}, "personas": {"agent", "evals"}, "agent": {"evals"},
             "prompts": {"personas", "agent", "evals"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up_the_layers(package):
    bad = [(str(f.relative_to(ROOT)), sorted(_imports(f) & FORBIDDEN[package]))
           for f in sorted((ROOT / package).rglob("*.py")) if _imports(f) & FORBIDDEN[package]]
    assert bad == []


def test_plural_eval_is_mounted_from_the_entry_point():
    from importlib.metadata import entry_points

    from agent.cli import app

    assert [ep.value for ep in entry_points(group="plural.commands") if ep.name == "eval"] == ["evals.cli:eval_app"]
    assert "eval" in {g.name for g in app.registered_groups}
