"""The real `langgraph dev` server on the graph langgraph.json names: it starts, builds the engine
without blocking its event loop (no --allow-blocking), and answers two turns on one thread.

The server runs from a temp folder (it writes its in-memory persistence to ``.langgraph_api/``
in its working directory) with a copy of langgraph.json whose paths point back to this checkout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
READY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 120


def _langgraph_cli() -> Path:
    cli = Path(sys.executable).parent / "langgraph"
    if not cli.exists() or importlib.util.find_spec("langgraph_cli") is None:
        pytest.skip(f"the langgraph CLI is not installed next to {sys.executable} "
                    "(pip install -e '.[agent]', which brings langgraph-cli[inmem])")
    if importlib.util.find_spec("langgraph_api") is None:
        pytest.skip("langgraph-api is not installed (pip install 'langgraph-cli[inmem]')")
    return cli


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_config(folder: Path) -> Path:
    """langgraph.json as the repository has it, with its relative paths made absolute."""
    spec = json.loads((ROOT / "langgraph.json").read_text())
    spec["dependencies"] = [str((ROOT / d).resolve()) for d in spec.get("dependencies", [])]
    graphs = {}
    for name, target in spec["graphs"].items():
        path, func = target.rsplit(":", 1)
        graphs[name] = f"{(ROOT / path).resolve()}:{func}"
    spec["graphs"] = graphs
    out = folder / "langgraph.json"
    out.write_text(json.dumps(spec))
    return out


def _log(path: Path) -> str:
    """The end of the server's log, without its colour codes."""
    if not path.exists():
        return "(no log)"
    return re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))[-12000:]


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"langgraph dev exited with {proc.returncode} before it was ready; its log:\n{_log(log)}")
        try:
            if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"langgraph dev was not ready at {url}/ok within {READY_TIMEOUT_S} s; its log:\n{_log(log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and anything it started
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


def _served_factory():
    """A fresh copy of the factory langgraph.json names (its own per-process cache)."""
    path, func = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["plural"].rsplit(":", 1)
    return runpy.run_path(str(ROOT / path))[func]


def test_the_factory_builds_once_off_the_event_loop(tmp_path, monkeypatch):
    """What the server does, in process: call the factory on a running event loop with
    blockbuster raising on any blocking call there, await what it returns, run the graph."""
    blockbuster = pytest.importorskip("blockbuster", reason="blockbuster comes with langgraph-cli[inmem]")
    cfg = tmp_path / "engine.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    for k in ("PLURAL_DATA", "PLURAL_MODEL", "PLURAL_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PLURAL_DATASET", "synthetic")
    monkeypatch.setenv("PLURAL_LLM", "none")
    monkeypatch.setenv("PLURAL_CONFIG", str(cfg))
    monkeypatch.setenv("PLURAL_DATA_DIR", str(tmp_path / "data"))
    make_graph = _served_factory()

    async def serve():
        bb = blockbuster.BlockBuster(excluded_modules=[])
        bb.activate()
        try:
            pending = [make_graph({}), make_graph({})]  # two first runs at once
            assert all(asyncio.iscoroutine(p) for p in pending)
            built = await asyncio.gather(*pending)
            cached = make_graph({})  # a later run: the built graph itself, no I/O
            state = await cached.ainvoke({"user_id": "3", "thread_id": "t", "message": "a western"})
        finally:
            bb.deactivate()
        return built, cached, state

    (first, second), cached, state = asyncio.run(serve())
    assert first is second is cached  # one engine, one embedder load
    assert make_graph() is cached  # plain synchronous callers get the same graph
    assert state["recommendation"].items
    assert all("Western" in it.categories for it in state["recommendation"].items)


@pytest.mark.server
@pytest.mark.timeout(300)
def test_langgraph_dev_serves_the_graph_without_blocking_calls(tmp_path):
    cli = _langgraph_cli()
    from langgraph_sdk import get_sync_client

    cfg = tmp_path / "engine.json"
    cfg.write_text(json.dumps({"embedder": "hash:128"}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PLURAL_DATA", "PLURAL_MODEL", "PLURAL_BASE_URL")}
    env.update(PLURAL_DATASET="synthetic", PLURAL_LLM="none", PLURAL_CONFIG=str(cfg),
               PLURAL_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1",
               LANGGRAPH_CLI_NO_ANALYTICS="1",  # the CLI otherwise posts usage analytics on every command
               LANGSMITH_TRACING="false", PATH=f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(cli), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
                                 "--port", str(port), "--config", str(_served_config(tmp_path))],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_ready(proc, url, log)
        client = get_sync_client(url=url, api_key=None, timeout=RUN_TIMEOUT_S)
        thread = client.threads.create()["thread_id"]

        def turn(message: str) -> dict:
            state = client.runs.wait(thread, "plural", input={"user_id": "3", "thread_id": "srv", "message": message},
                                     raise_error=False)
            assert isinstance(state, dict) and "__error__" not in state, \
                f"the run of {message!r} failed: {state}; the server's log:\n{_log(log)}"
            assert state.get("error") is None, state["error"]
            return state

        first = turn("a western")
        items = first["recommendation"]["items"]
        assert items and all("Western" in it["categories"] for it in items), items
        assert first["understanding"]["intent"] == "recommend" and first["response"]

        second = turn("why the first?")
        assert second["understanding"]["intent"] == "why" and second["understanding"]["reference"] == 1
        assert second["answer"]["item_id"] == items[0]["item_id"] and second["answer"]["position"] == 1
        assert items[0]["title"] in second["response"]

        # another user on that server thread is refused, and the owner's conversation goes on
        intruder = client.runs.wait(thread, "plural", input={"user_id": "4", "thread_id": "x", "message": "why the "
                                                             "first?"}, raise_error=False)
        assert "another user" in (intruder.get("error") or ""), intruder
        third = turn("not the first one")
        assert third["understanding"]["intent"] == "feedback" and third["answer"]["item_id"] == items[0]["item_id"]
        assert len(third["transcript"]) == 6  # the refused turn left no trace in the thread

        text = _log(log)
        assert "BlockingError" not in text and "Blocking call" not in text, text
    finally:
        _stop(proc)
