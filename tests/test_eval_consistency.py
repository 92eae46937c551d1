"""``plural eval consistency``: the three metrics of arXiv 2511.00222 on hand-built verdicts,
validated LLM outputs with counted fallbacks, the smoke mode and the CLI."""

from __future__ import annotations

import json

import pytest

from agent.llm import ScriptedLLM
from agent.llm.structured import json_schema_of
from evals.consistency import (
    OUTPUT_MODELS,
    ConsistencyConfig,
    _clean_title,
    heuristic_line_conflicts,
    run_consistency_eval,
    stances,
)
from memory.errors import UnknownUserError, UsageError
from prompts import load_prompt

CATEGORIES = ["Space", "Romance", "Horror", "War"]


def _prompt(req, tag: str) -> str:
    """The prompt's own user turn (a retry appends turns after it)."""
    return next(m.content for m in req.messages if m.role == "user" and f"<{tag}>" in m.content)


def _question(req) -> str:
    return json.loads(_prompt(req, "question").split("<question>")[1].split("</question>")[0])


def _judged_question(req) -> str:
    line = _prompt(req, "line").split("<line>")[1].split("</line>")[0]
    return json.loads(line.split("asked ", 1)[1].split(", said ")[0])


def scripted(contradicts_persona: str = "Why or why not", contradicts_earlier: str = "switch off",
             wrong_answers: int = 1, judge: str = "valid", record: list | None = None):
    """A scripted LLM for every consistency task, answering by the request's schema.

    The judge finds the line answering the question containing ``contradicts_persona`` against
    the persona, and the line answering ``contradicts_earlier`` in conflict with earlier line 1;
    the persona answers the first ``wrong_answers`` questions wrongly. ``judge`` = ``"invalid"``
    (not JSON), ``"out_of_range"`` (line 9 of fewer) or ``"mismatch"`` (inconsistent with no lines).
    """

    def answer(req) -> str:
        props = (req.json_schema or {}).get("properties", {})
        if record is not None:
            record.append(sorted(props))
        if "line" in props:
            return json.dumps({"line": f"Asked about {_question(req)[:40].rstrip('?')}, I keep to what I love."})
        if "questions" in props:
            arr = props["questions"]
            n, k = arr["minItems"], arr["items"]["properties"]["options"]["minItems"]
            return json.dumps({"questions": [{"question": f"Which pick number {q + 1} suits you?",
                                              "options": [f"Choice {q + 1}-{j + 1}" for j in range(k)],
                                              "answer": 2} for q in range(n)]})
        if "answers" in props:
            n = len(props["answers"]["prefixItems"])
            return json.dumps({"answers": [1] * wrong_answers + [2] * (n - wrong_answers)})
        if "consistent" in props:
            if judge == "invalid":
                return "The line is fine."
            to_persona = "against the persona text" in req.messages[0].content
            asked = _judged_question(req)
            if to_persona:
                bad = contradicts_persona in asked
                return json.dumps({"consistent": not bad, "conflicting_lines": [], "reason": "checked"})
            if judge == "out_of_range":
                return json.dumps({"consistent": False, "conflicting_lines": [9], "reason": "checked"})
            if judge == "mismatch":
                return json.dumps({"consistent": False, "conflicting_lines": [], "reason": "checked"})
            bad = contradicts_earlier in asked
            return json.dumps({"consistent": not bad, "conflicting_lines": [1] if bad else [], "reason": "checked"})
        raise AssertionError(f"unexpected request schema {sorted(props)}")

    return ScriptedLLM(answer)


def test_hand_built_verdicts_give_the_expected_scores(synthetic_engine):
    cfg = ConsistencyConfig(user_ids=["1", "2"], turns=5, questions=4, options=4)
    doc = run_consistency_eval(synthetic_engine, cfg, scripted())
    assert doc["mode"] == "measurement"
    n = sum(len(synthetic_engine.persona_store.get(u).personas) for u in ("1", "2"))
    assert doc["personas_evaluated"] == n
    for row in doc["personas"]:
        # one of five lines contradicts the persona: 4/5
        assert row["scores"]["prompt_to_line"] == pytest.approx(0.8)
        # turn 4 conflicts with line 1; earlier lines considered: 1 + 2 + 3 + 4 = 10, so 1 - 1/10
        assert row["scores"]["line_to_line"] == pytest.approx(0.9)
        # the first of four questions answered wrongly at every checkpoint
        assert row["scores"]["qa"] == pytest.approx(0.75)
        assert len(row["qa"]) == 5 and row["questions_source"] == "llm"
    m = doc["metrics"]
    assert m["prompt_to_line"]["mean"] == pytest.approx(0.8) and m["prompt_to_line"]["n"] == n
    assert m["line_to_line"]["mean"] == pytest.approx(0.9) and m["qa"]["mean"] == pytest.approx(0.75)
    assert m["qa"]["ci95"] == [pytest.approx(0.75), pytest.approx(0.75)]
    assert doc["fallbacks"]["total"]["template"] == 0 and doc["llm_error"] is None
    # planted contradictions: this judge never objects to the persona text, but flags the "switch off" line
    js = doc["judge_sensitivity"]
    assert js["planted"] == n and js["prompt_to_line"]["llm"] == {"caught": 0, "of": n, "rate": 0.0}
    assert js["line_to_line"]["llm"] == {"caught": n, "of": n, "rate": 1.0}


def test_qa_only_at_the_end_asks_once(synthetic_engine):
    doc = run_consistency_eval(synthetic_engine, ConsistencyConfig(user_ids=["3"], qa_every_turn=False, turns=3),
                               scripted(wrong_answers=0))
    assert all(len(r["qa"]) == 1 and r["qa"][0]["after_turn"] == 3 for r in doc["personas"])
    assert doc["metrics"]["qa"]["mean"] == 1.0 and [q["after_turn"] for q in doc["qa_by_turn"]] == [3]


@pytest.mark.parametrize("judge, reason", [("invalid", "invalid_json"), ("out_of_range", "index_range"),
                                           ("mismatch", "verdict_mismatch")])
def test_invalid_judge_output_falls_back_and_is_counted(synthetic_engine, judge, reason):
    doc = run_consistency_eval(synthetic_engine, ConsistencyConfig(user_ids=["4"], turns=4), scripted(judge=judge))
    l2l = doc["fallbacks"]["judge_line_to_line"]
    n_lines = 3 * doc["personas_evaluated"]  # turns 2..4 are judged against earlier lines
    assert l2l["total"] == n_lines and l2l["template"] == n_lines and l2l["fallbacks"] == {reason: n_lines}
    assert l2l["rejections"] == {reason: 2 * n_lines}  # the first answer and the one retry
    for row in doc["personas"]:
        assert all(t["line_to_line"]["source"] == "template" for t in row["dialogue"][1:])
        assert row["scores"]["line_to_line"] is not None  # the heuristic stood in
    if judge == "invalid":
        assert doc["fallbacks"]["judge_prompt_to_line"]["fallback_rate"] == 1.0


def test_speaker_and_judge_can_be_different_backends(synthetic_engine):
    spoke, judged = [], []
    run_consistency_eval(synthetic_engine, ConsistencyConfig(user_ids=["5"], turns=2),
                         scripted(record=spoke), scripted(record=judged))
    assert {tuple(p) for p in spoke} == {("line",), ("answers",)}
    assert {tuple(p) for p in judged} == {("questions",), ("conflicting_lines", "consistent", "reason")}


def test_smoke_mode_without_llm_is_deterministic_and_labelled(synthetic_engine):
    a = run_consistency_eval(synthetic_engine, ConsistencyConfig(users=2), None)
    b = run_consistency_eval(synthetic_engine, ConsistencyConfig(users=2), None)
    a.pop("timings_s"), b.pop("timings_s")
    assert a == b and a["mode"] == "smoke"
    assert a["fallbacks"]["total"]["fallback_rate"] == 1.0
    assert a["metrics"]["prompt_to_line"]["mean"] == 1.0  # the template speaker stays in character
    js = a["judge_sensitivity"]  # ... and the heuristic judge still catches every planted contradiction
    assert js["prompt_to_line"]["fallback"]["rate"] == 1.0 and js["line_to_line"]["fallback"]["rate"] == 1.0


def test_heuristic_reads_stances_clause_by_clause():
    st = stances("I love Space films; Horror is not for me.", CATEGORIES, [])
    assert st == {"category:Space": {1}, "category:Horror": {-1}}
    # a title with a negation word in it is not a negation
    assert stances("No Escape (1994) is great Space fun.", CATEGORIES, ["No Escape (1994)"]) == {
        "title:No Escape (1994)": {1}, "category:Space": {1}}
    assert _clean_title("Lion King, The (1994)") == "The Lion King"  # how a person says a MovieLens title
    earlier = ["I adore Romance.", "War films are fine.", "Space is my thing."]
    assert heuristic_line_conflicts("I never watch Romance or War.", earlier, CATEGORIES, []) == [1, 2]


def test_prompt_schemas_match_the_validating_models():
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in {"title", "description", "default"}}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    for name, model in OUTPUT_MODELS.items():
        assert strip(load_prompt(name).output_schema) == strip(json_schema_of(model)), name


def test_bad_input_is_named(synthetic_engine):
    with pytest.raises(UnknownUserError):
        run_consistency_eval(synthetic_engine, ConsistencyConfig(user_ids=["no-such-user"]), None)
    with pytest.raises(UsageError, match="--turns"):
        ConsistencyConfig.from_options(turns=9)


def test_cli_in_process(tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "consistency"
    base = ["eval", "consistency", "--dataset", "synthetic", "--embedder", "hash:128", "--llm", "none"]
    assert main([*base, "--users", "2", "--turns", "4", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "smoke" and doc["config"]["turns"] == 4
    assert set(doc["metrics"]) == {"prompt_to_line", "line_to_line", "qa"}
    assert "Smoke mode, not a measurement" in (out / "results.md").read_text()
    # a judge backend of its own: the scripted one answers {} to everything, so every verdict falls back
    assert main([*base, "--user", "7", "--judge-llm", "scripted", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "template_speaker" and doc["judge"]["backend"] == "scripted"
    assert doc["fallbacks"]["judge_prompt_to_line"]["fallbacks"] == {"schema": doc["personas_evaluated"] * 5}
    assert main([*base, "--user", "nobody", "--out", str(out)]) == 2
    assert main([*base, "--turns", "1", "--out", str(out)]) == 2
    assert "--turns" in capsys.readouterr().err
