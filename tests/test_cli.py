"""The ``plural`` CLI, run in-process: output shapes, exit codes, and nothing written on failure."""

from __future__ import annotations

import json

import pytest

from agent.cli import main


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "plural.json"
    p.write_text(json.dumps({"embedder": "hash:128"}))
    return str(p)


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_recommend_json_shape(capsys, cfg):
    code, out, err = run(capsys, "recommend", "--user", "3", "--k", "5", "--json", "--dataset", "synthetic",
                         "--config", cfg)
    assert code == 0, err
    recs = json.loads(out)["recommendations"]
    assert [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    for r in recs:
        assert {"item_id", "title", "score", "rank", "persona", "attention", "evidence", "explanation"} <= set(r)
        assert set(r["persona"]) == {"id", "name"} and r["persona"]["id"] in r["attention"]
        assert abs(sum(r["attention"].values()) - 1) < 1e-5
        assert r["evidence"] and set(r["evidence"][0]) == {"item_id", "title", "weight"}
        assert r["persona"]["name"] in r["explanation"] and r["evidence"][0]["title"] in r["explanation"]
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)


def test_recommend_table_and_modes(capsys, cfg):
    code, out, _ = run(capsys, "recommend", "--user", "3", "--mode", "persona_fill", "--dataset", "synthetic",
                       "--config", cfg)
    assert code == 0 and "personas" in out and "persona_fill" in out


def test_second_run_reuses_the_built_data(capsys, cfg):
    from agent.config import EngineConfig
    from agent.engine import default_data_dir
    from memory.loaders import DataSource

    run(capsys, "recommend", "--user", "1", "--dataset", "synthetic", "--config", cfg)
    d = default_data_dir(DataSource(dataset="synthetic"), EngineConfig.from_file(cfg))
    built = json.loads((d / "manifest.json").read_text())["built_at"]
    run(capsys, "recommend", "--user", "2", "--dataset", "synthetic", "--config", cfg)
    assert json.loads((d / "manifest.json").read_text())["built_at"] == built


def test_unknown_user_exit_2_and_nothing_written(capsys, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("PLURAL_DATA_DIR", str(tmp_path / "fresh"))
    code, out, err = run(capsys, "recommend", "--user", "nobody", "--dataset", "synthetic", "--config", cfg)
    assert code == 2
    assert "'nobody'" in err and "known users: 120" in err and "'1'" in err
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())


@pytest.mark.parametrize("args,needle", [(["--k", "0"], "positive integer"),
                                         (["--k", "-3"], "positive integer"),
                                         (["--mode", "best"], "persona_fill, relevance")])
def test_usage_errors_list_what_is_allowed(capsys, cfg, args, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("PLURAL_DATA_DIR", str(tmp_path / "fresh"))
    code, _, err = run(capsys, "recommend", "--user", "1", *args, "--dataset", "synthetic", "--config", cfg)
    assert code == 2 and needle in err
    assert not (tmp_path / "fresh").exists()


def test_malformed_file_names_file_line_column(capsys, tmp_path, cfg):
    bad = tmp_path / "events.csv"
    bad.write_text("user,item,rating,timestamp\n1,a,5,1\n1,b,oops,2\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title\na,A\nb,B\n")
    code, _, err = run(capsys, "recommend", "--user", "1", "--data", str(bad), "--items", str(items),
                       "--config", cfg)
    assert code == 1 and "events.csv" in err and "line 3" in err and "'rating'" in err


def test_cold_start_user_gets_flagged_popularity(capsys, tmp_path, cfg):
    rows = ["user,item,rating,timestamp"]
    for u in range(1, 8):
        rows += [f"{u},a,5,1", f"{u},b,5,2", f"{u},c,4,3", f"{u},d,5,4"]
    rows += ["grumpy,a,1,5"]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "items.csv").write_text("item,title,categories\n" + "".join(f"{i},{i.upper()},X\n" for i in "abcdefg"))
    code, out, err = run(capsys, "recommend", "--user", "grumpy", "--json", "--k", "3", "--data",
                         str(tmp_path / "events.csv"), "--items", str(tmp_path / "items.csv"), "--config", cfg)
    assert code == 0, err
    recs = json.loads(out)["recommendations"]
    assert all(r["cold_start"] for r in recs) and recs[0]["item_id"] != "a" and recs[0]["persona"] is None


def test_query_filter(capsys, cfg):
    code, out, err = run(capsys, "recommend", "--user", "4", "--json", "--query", "haunted ghost curse",
                         "--dataset", "synthetic", "--config", cfg)
    assert code == 0, err
    assert sum("Horror" in r.get("categories", []) for r in json.loads(out)["recommendations"]) >= 7


def test_personas_and_data_info(capsys, cfg):
    code, out, _ = run(capsys, "personas", "--user", "5", "--json", "--dataset", "synthetic", "--config", cfg)
    doc = json.loads(out)
    assert code == 0 and doc["personas"] and "embedding" not in doc["personas"][0]
    assert abs(sum(p["weight"] for p in doc["personas"]) - 1) < 1e-6
    code, out, _ = run(capsys, "data", "info", "--json", "--dataset", "synthetic")
    assert code == 0 and json.loads(out)["users"] == 120
    code, out, _ = run(capsys, "personas", "--user", "5", "--dataset", "synthetic", "--config", cfg)
    assert code == 0 and "Personas of user 5" in out


def test_unknown_option_is_a_usage_error(capsys):
    code, _, err = run(capsys, "recommend", "--user", "1", "--bogus")
    assert code == 2 and "bogus" in err


def test_importing_the_packages_does_not_import_torch_or_faiss():
    import subprocess
    import sys

    code = ("import sys, agent, agent.cli, agent.engine, agent.llm, personas.recommender, memory.loaders, evals; "
            "heavy = [m for m in ('torch', 'transformers', 'vllm', 'faiss', 'langgraph') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_titles_with_brackets_print_as_written_not_as_markup(capsys, tmp_path, cfg):
    rows = ["user,item,rating,timestamp"]
    for u in range(1, 8):
        rows += [f"{u},a,5,1", f"{u},b,5,2", f"{u},c,4,3"] + ([f"{u},d,5,4"] if u > 1 else [])
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    titles = {"a": "Alpha [bold]", "b": "Beta [red]x[/red]", "c": "Gamma", "d": "Delta [template]", "e": "Eps"}
    (tmp_path / "items.csv").write_text("item,title,categories\n" + "".join(f'{i},"{t}",X\n' for i, t in titles.items()))
    code, out, err = run(capsys, "recommend", "--user", "1", "--k", "2", "--data", str(tmp_path / "events.csv"),
                         "--items", str(tmp_path / "items.csv"), "--config", cfg)
    assert code == 0, err
    assert "Delta [template]" in out and "Alpha [bold]" in out  # the title and its evidence, verbatim


def test_data_build_reports_the_scorer_and_induces_on_request(capsys, cfg, tmp_path):
    ddir = str(tmp_path / "built")
    code, out, err = run(capsys, "data", "build", "--dataset", "synthetic", "--config", cfg, "--data-dir", ddir,
                         "--induce", "3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["scorer"]["kind"] == "ease" and doc["users"] > 0 and doc["users_with_personas"] >= 1
    code, out, err = run(capsys, "data", "build", "--dataset", "synthetic", "--config", cfg, "--data-dir", ddir,
                         "--workers", "0")
    assert code == 2 and "--workers" in err
