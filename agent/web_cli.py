"""``plural web``: the chat as a local web page (Gradio; the ``web`` extra).

The command function :func:`web` takes the same data and LLM options as ``plural chat``
(``agent.cli_common``) and serves :mod:`agent.web` on the loopback interface. ``agent.cli``
registers it; this module imports nothing heavy until the command runs.

Example:
    plural web --user 1 --llm none        # then open http://127.0.0.1:7860/?user=1
"""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli_common import (
    BaseUrlOpt,
    ColumnsOpt,
    ConfigOpt,
    DataDirOpt,
    DataOpt,
    DatasetOpt,
    ItemsOpt,
    LLMOpt,
    ModelOpt,
    TestOpt,
    TrainOpt,
    _backend,
    _config,
    _console,
    _open_engine,
    _source,
)
from memory.errors import PluralError, UsageError


def web(
    user: Annotated[str | None, typer.Option("--user", "-u", help="User to open the page on (any user can be picked on the page).")] = None,
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    k: Annotated[int, typer.Option("--k", "-k", help="Items per list (one card each).")] = 5,
    mode: Annotated[str, typer.Option("--mode", help="Ranking mode.")] = "persona_calibrated",
    llm: LLMOpt = None, model: ModelOpt = None, base_url: BaseUrlOpt = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """A web page over the chat: cards with each pick's persona, attention and evidence,
    like/dislike buttons, the persona panel with what feedback changed and rollback, plots.

    Every message (and every like/dislike button) is a chat turn on a thread, the same path as
    plural chat; the thread id is in the page's URL (?user=1&thread=...), so a reload resumes
    the conversation. Cards come from the engine at once; the LLM (the packaged SmolLM2 unless
    --llm says otherwise; --llm none for templates only) adds its explanations and persona
    rewrites afterwards, marked "model". Needs the web extra (gradio). Ctrl-C stops.
    """
    from personas.ranking import RANKING_MODES

    if mode not in RANKING_MODES:
        raise UsageError("--mode", mode, sorted(RANKING_MODES))
    if k <= 0 or k > 20:
        raise UsageError("--k", k, "an integer from 1 to 20")
    if not 1 <= port <= 65535:
        raise UsageError("--port", port, "1-65535")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise PluralError("plural web needs gradio, which is not installed: install the web extra "
                          "(pip install 'plural[web]')") from None
    from agent.api import PluralAgent
    from agent.runtime import AgentConfig, AgentRuntime
    from agent.web import serve

    backend = _backend(llm, model, base_url) if (llm or "transformers") != "none" else None
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, False, user)
    agent = PluralAgent(AgentRuntime(engine, backend, AgentConfig(k=k, mode=mode)))
    con = _console(stderr=True)
    with con.status("loading…"):
        agent.runtime.warm_up()
    url = f"http://{host}:{port}/" + (f"?user={user}" if user else "")
    con.print(f"Plural web on [bold]{url}[/] ({len(engine.history.user_ids)} users, "
              f"LLM: {backend.name if backend is not None else 'none'}); Ctrl-C stops")
    try:
        serve(agent, host=host, port=port, block=True, quiet=True)
    finally:
        agent.close()


__all__ = ["web"]
