"""One request path everywhere: the same message gives the same list through `plural recommend
--request`, `plural chat --message --json`, the interactive `plural chat`, `PluralAgent.chat` and
the graph that langgraph.json serves."""

from __future__ import annotations

import io
import json
import re
import runpy
from pathlib import Path

from agent.cli import main

ROOT = Path(__file__).parents[1]
MESSAGE = "a western from the 90s"


def _titles_in(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\d+\. (.+?) \[", text, re.M)]


def _fresh_exposure(folder):
    """Every surface answers from the same state: no item shown yet (the exposure bonus of
    persona_calibrated would otherwise, rightly, move the next list)."""
    from agent.engine import Engine

    e = Engine.open_data_dir(folder)
    e.exposure_store().reset()
    e.close()


def test_every_surface_gives_the_same_list_for_the_same_request(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    common = ["--dataset", "synthetic", "--config", str(cfg), "--data-dir", str(tmp_path / "dd")]

    assert main(["recommend", "--user", "3", "--k", "5", "--mode", "persona_calibrated", "--request", MESSAGE,
                 "--json", *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    reference = [r["title"] for r in doc["recommendations"]]
    assert len(reference) == 5 and doc["provenance"]["request"]["wanted_categories"] == ["Western"]
    assert all("Western" in r["categories"] for r in doc["recommendations"])

    _fresh_exposure(tmp_path / "dd")
    assert main(["chat", "--user", "3", "--thread", "one", "--message", MESSAGE, "--json", "--llm", "none",
                 *common]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert [i["title"] for i in reply["items"]] == reference
    assert reply["meta"]["recommendation"]["provenance"]["request"]["period"] == {"start": 1990, "end": 1999}

    _fresh_exposure(tmp_path / "dd")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{MESSAGE}\n/quit\n"))
    assert main(["chat", "--user", "3", "--thread", "two", "--llm", "none", *common]) == 0
    assert _titles_in(capsys.readouterr().out) == reference

    from agent.api import PluralAgent

    _fresh_exposure(tmp_path / "dd")
    agent = PluralAgent.from_data_dir(tmp_path / "dd", llm="none")
    assert [i.title for i in agent.chat("3", MESSAGE, "three").items] == reference
    agent.close()

    # the graph `langgraph dev` builds from langgraph.json, on the same data and settings
    path, func = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["plural"].split(":")
    monkeypatch.setenv("PLURAL_DATASET", "synthetic")
    monkeypatch.setenv("PLURAL_LLM", "none")
    monkeypatch.setenv("PLURAL_CONFIG", str(cfg))
    monkeypatch.setenv("PLURAL_DATA_DIR", str(tmp_path / "served"))
    graph = runpy.run_path(str(ROOT / path))[func]()
    state = graph.invoke({"user_id": "3", "thread_id": "four", "message": MESSAGE},
                         {"configurable": {"thread_id": "four"}})
    assert [i.title for i in state["recommendation"].items] == reference


def test_the_interactive_chat_lists_personas_and_versions_and_refuses_unknown_commands(tmp_path, capsys,
                                                                                      monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    script = "a western\nnot the first one\nshow my personas\n/versions\n/history\n/bogus\n/help\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", "--user", "3", "--llm", "none", "--dataset", "synthetic", "--config", str(cfg),
                 "--data-dir", str(tmp_path / "dd")]) == 0
    out = capsys.readouterr().out
    assert "Your personas:" in out and re.search(r"- .+ \(\d+%, v\d+\):", out)  # weights and versions
    assert re.search(r"p\d v\d \((induction|refinement)\)", out)  # /versions
    assert "feedback" in out and "disliked" in out  # /history shows the refusal
    assert "Unknown command '/bogus'" in out and "show my personas" in out  # /help
    assert "drift" not in out.lower() and "0.3333" not in out  # no internal jargon
