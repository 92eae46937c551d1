"""``plural web``: a local web page over the chat agent (Gradio Blocks), showing the personas at work.

* :mod:`agent.web.views`: what the page shows (cards, persona panel, change summary, plot tables),
  as pure functions of the agent's results.
* :mod:`agent.web.session`: the page's operations over :class:`~agent.api.PluralAgent`; every
  message, and every like/dislike button, is a chat turn on a thread.
* :mod:`agent.web.app`: the Gradio page and its events (imports ``gradio``: the ``web`` extra).

Example:
    >>> from agent.web import serve                                          # doctest: +SKIP
    >>> serve(PluralAgent.from_dataset("synthetic", llm="none"), port=7860)   # doctest: +SKIP

Nothing here is imported by ``import agent``; ``gradio`` only when the page is built.
"""

from __future__ import annotations


def serve(agent, *, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True, quiet: bool = False):
    """Build the page over ``agent`` and serve it (see :func:`agent.web.app.launch`); returns the
    Gradio ``Blocks`` (with ``block=False`` the server runs in a thread: ``demo.close()`` stops it)."""
    from agent.web.app import build_app, launch
    from agent.web.session import WebChat

    demo = build_app(WebChat(agent))
    launch(demo, host=host, port=port, block=block, quiet=quiet)
    return demo


__all__ = ["serve"]
