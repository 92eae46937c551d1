"""The ``plural`` command line: one entry point, thin subcommands.

Exit codes: 0 success, 1 a data or runtime error, 2 a usage error (bad option value, unknown
user). Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import time
import sys
from typing import Annotated, Optional

import typer

from agent.cli_common import (BaseUrlOpt, ColumnsOpt, ConfigOpt, DataDirOpt, DataOpt, DatasetOpt, ItemsOpt, JsonOpt,
                              LLMOpt, ModelOpt, RebuildOpt, TestOpt, TrainOpt, _backend, _config, _console,
                              _open_engine, _source)
from memory.errors import PluralError, UnknownUserError, UsageError

app = typer.Typer(name="plural", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plural: persona-based recommendation. Several personas per user, each recommendation "
                       "attributed to one, with its evidence.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect and build datasets.")
app.add_typer(data_app, name="data")

# command groups of their own modules (typer only at import; each command imports its backend)
from agent.batch_cli import batch_app  # noqa: E402  (ray, pyarrow)
from agent.data_build_cli import data_build  # noqa: E402
from agent.db_cli import db_app  # noqa: E402
from agent.web_cli import web as _web  # noqa: E402  (gradio)

app.add_typer(db_app, name="db")
app.add_typer(batch_app, name="batch")
app.command("web")(_web)
data_app.command("build")(data_build)

# ---- commands ---------------------------------------------------------------------------------
@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", "-u", help="User id.")],
    k: Annotated[int, typer.Option("--k", "-k", help="List length (> 0).")] = 10,
    mode: Annotated[str, typer.Option("--mode", "-m", help="Ranking mode (relevance, persona_fill, ...).")] = "relevance",
    category: Annotated[Optional[list[str]], typer.Option("--category", help="Keep items of this category; repeat it for several (an item needs one of them: they are ORed).")] = None,
    query: Annotated[Optional[str], typer.Option("--query", "-q", help="Free-text filter: semantic search on the catalog.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="LLM-written persona text and explanations.")] = False,
    request: Annotated[Optional[str], typer.Option("--request", "-r", help="A wish in words (\"a scary movie from the 80s\", \"like Star Wars\"), read by the chat's rules into filters and re-scoring.")] = None,
    selection: Annotated[str, typer.Option("--selection", help="Responsible persona by attention, llm or both.")] = "attention",
    llm: LLMOpt = None, model: ModelOpt = None, base_url: BaseUrlOpt = None,
    as_json: JsonOpt = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Recommend items for a user; each one names the persona it comes from and its evidence.

    --request reads a wish the way the chat does (genres, moods, periods, "like X", "not X"):
    hard constraints filter, the rest re-scores, no model needed. With --explain (or
    --selection llm|both) an LLM writes persona text and explanations: the packaged SmolLM2
    on CPU unless --llm/--model/--base-url say otherwise. --json prints an object with
    ``recommendations``, ``provenance`` (prompt names and hashes when an LLM wrote text) and
    ``meta`` (fallback counts, latency).
    """
    from personas.ranking import RANKING_MODES

    if k <= 0:
        raise UsageError("--k", k, "a positive integer")
    if mode not in RANKING_MODES:
        raise UsageError("--mode", mode, sorted(RANKING_MODES))
    if selection not in ("attention", "llm", "both"):
        raise UsageError("--selection", selection, ["attention", "llm", "both"])
    uses_llm = explain or selection != "attention" or (llm not in (None, "none"))
    backend = _backend(llm, model, base_url) if uses_llm else None  # unknown names fail before any build
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, rebuild, user)
    if category:  # the catalog's spelling; a name it lacks (or a catalog without categories) is a usage error
        from personas.request import check_categories

        category = check_categories(engine.catalog, category)
    parsed = None
    if request is not None:
        from agent.request_parser import parse_request

        parsed = parse_request(request, engine.parse_context(user))
        extra = {}
        if category:  # --category adds to the wanted categories (ORed, like the request's own)
            extra["wanted_categories"] = list(dict.fromkeys([*parsed.wanted_categories, *category]))
        if query and not parsed.content:
            extra["content"] = query
        parsed = parsed.model_copy(update=extra)
    t0 = time.perf_counter()
    # the engine's list first (milliseconds); the model's text, when asked for, follows it
    if parsed is not None:
        out = engine.recommend_request(user, parsed, k, mode)
    else:
        out = engine.recommend(user, k, mode, categories=category, query=query)
    out.meta["latency_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    if not as_json:
        if parsed is not None:
            from rich.text import Text

            said = parsed.describe(engine.catalog) or "nothing the catalog can check"
            _console().print(Text(f"Request read as: {said}" + "".join(f"; can't check {u}" for u in parsed.unsupported)))
        _print_recommendations(engine, out, explain=explain)
    if uses_llm:
        from agent.language import LanguageConfig, LanguageLayer

        if not as_json:
            _console(stderr=True).print(f"[dim]{backend.model_name} is writing its own text for these "
                                        f"{len(out.items)} picks; the list above already stands…[/]")
        t1 = time.perf_counter()
        before = {r.item_id: (r.explanation, r.persona.name if r.persona else None) for r in out.items}
        out = LanguageLayer(engine, backend, LanguageConfig(selection=selection)).improve(out, explain=explain)
        out.meta["llm_latency_ms"] = round(1000 * (time.perf_counter() - t1), 1)
        if not as_json:
            _print_model_text(out, before)
            _print_llm_summary(out)
    if as_json:
        typer.echo(json.dumps({"recommendations": [r.model_dump(mode="json") for r in out.items],
                               "provenance": out.provenance, "meta": out.meta}, indent=2, default=str))


def _print_model_text(out, before: dict) -> None:
    """What the model changed in a list already shown: its explanations, persona names."""
    from rich.text import Text

    con = _console()
    changed = [r for r in out.items if (r.explanation, r.persona.name if r.persona else None) != before.get(r.item_id)]
    if not changed:
        con.print(Text("The model added nothing that passed the checks; the template sentences above stand."))
        return
    con.print(Text("The model's take:", style="bold"))
    for r in changed:
        old_name = before.get(r.item_id, (None, None))[1]
        renamed = f" (your \u201c{old_name}\u201d taste is now \u201c{r.persona.name}\u201d)" \
            if r.persona and old_name and old_name != r.persona.name else ""
        con.print(Text(f"{r.rank:>2}. {r.title}{renamed}: {r.explanation}"))


def _print_llm_summary(out) -> None:
    from rich.text import Text

    meta = out.meta
    fb = meta.get("fallbacks", {})
    line = (f"LLM {meta.get('llm', {}).get('backend')} ({meta.get('llm', {}).get('model')}): "
            f"{fb.get('llm', 0) + fb.get('llm_retry', 0)} of {fb.get('total', 0)} texts by the model, "
            f"{fb.get('template', 0)} by the template")
    if fb.get("fallbacks"):
        line += f" (reasons: {fb['fallbacks']})"
    routed = meta.get("route_request", {}).get("persona_ids")
    if routed:
        line += f"; request routed to {', '.join(routed)}"
    sel = meta.get("select_personas")
    if sel and sel.get("disagreement_rate") is not None:
        line += f"; LLM vs attention disagreement {sel['disagreement_rate']:.0%}"
    if meta.get("llm_error"):
        line += f"; LLM error: {meta['llm_error']}"
    _console(stderr=True).print(Text(line))


def _print_recommendations(engine, out, explain: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    con = _console()
    pset = engine.persona_store.get(out.user_id)
    if out.cold_start:
        con.print(f"[bold]User {out.user_id}[/] has no liked items yet: popular titles instead (cold start).")
    elif pset:
        tastes = ", ".join(f"{p.persona_id} [bold]{escape(p.name)}[/] {round(100 * p.weight)}%" for p in pset.personas)
        con.print(f"[bold]User {out.user_id}[/] — {len(pset.personas)} personas: {tastes}")
    table = Table(title=f"Top {len(out.items)} ({out.mode})", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("Title", max_width=40)
    table.add_column("Score", justify="right")
    table.add_column("Persona", max_width=24)
    table.add_column("Attn", justify="right")
    table.add_column("Why" if explain else "Because you liked", max_width=70 if explain else 60)
    for r in out.items:
        share = r.attention.get(r.persona.id, 0.0) if r.persona else 0.0
        # data is Text, never markup: a title or an explanation with "[...]" prints as written
        why = Text(r.explanation) if explain else Text("; ".join(e.title for e in r.evidence))
        if explain and r.explanation_source == "template":
            why.append(" (template)", style="dim")
        table.add_row(str(r.rank), Text(r.title), f"{r.score:.3f}", Text(r.persona.name if r.persona else "(popular)"),
                      f"{round(100 * share)}%" if r.persona else "", why)
    con.print(table)


@app.command()
def personas(
    user: Annotated[str, typer.Option("--user", "-u", help="User id.")],
    as_json: JsonOpt = False,
    versions: Annotated[bool, typer.Option("--versions", help="Also list every stored version.")] = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
    rebuild: RebuildOpt = False,
) -> None:
    """Show a user's personas: name, description, weight and evidence."""
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, rebuild, user)
    pset = engine.recommender.persona_set(user)
    if as_json:
        doc = {"user_id": user, "personas": [p.model_dump(mode="json", exclude={"embedding"}) for p in pset.personas],
               "induction": pset.induction}
        if versions:
            doc["versions"] = [v.model_dump(mode="json", exclude={"persona": {"embedding"}})
                               for v in engine.persona_store.versions(user)]
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.table import Table
    from rich.text import Text

    con = _console()
    if not pset.personas:
        con.print(f"User {user} has no liked items yet, so no personas (recommendations fall back to popularity).")
        return
    table = Table(title=f"Personas of user {user}")
    for col in ("id", "name", "weight", "description", "evidence (first 5)", "v"):
        table.add_column(col, max_width=60 if col == "description" else 40)
    for p in pset.personas:
        ev = engine.catalog.titles(engine.catalog.indices(p.evidence[:5]))
        table.add_row(p.persona_id, Text(p.name), f"{p.weight:.2f}", Text(p.description), Text("; ".join(ev)),
                      str(p.version))
    con.print(table)
    trace = pset.induction.get("trace", {})
    if trace:
        con.print(f"Chosen K={trace.get('k')} by mean silhouette per K: {trace.get('silhouette')}")
    if versions:
        for v in engine.persona_store.versions(user):
            con.print(Text(f"{v.persona.persona_id} v{v.persona.version} [{v.reason}] {v.persona.name}: "
                           f"{v.persona.description}"))


@data_app.command("info")
def data_info(
    as_json: JsonOpt = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None,
) -> None:
    """Counts of users, items, interactions and categories of a dataset."""
    info = _source(dataset, data, train, test, items, columns).load().describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    con = _console()
    for key, v in info.items():
        con.print(f"[bold]{key:>18}[/]  {', '.join(v) if isinstance(v, list) else v}")


@app.command()
def chat(
    user: Annotated[str, typer.Option("--user", "-u", help="User id.")],
    thread: Annotated[Optional[str], typer.Option("--thread", "-t", help="Thread id to resume (default: a new one).")] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Send one message and exit (for scripts).")] = None,
    follow_up: Annotated[bool, typer.Option("--follow-up", help="With --message: also wait for what the LLM adds after the reply (its explanations, its rewrite after feedback).")] = False,
    as_json: JsonOpt = False,
    k: Annotated[int, typer.Option("--k", "-k", help="Items per list.")] = 5,
    mode: Annotated[str, typer.Option("--mode", help="Ranking mode.")] = "persona_calibrated",
    llm: LLMOpt = None, model: ModelOpt = None, base_url: BaseUrlOpt = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Conversational recommendation: ask, react ("not that one"), ask why, see your personas.

    Every reply comes from the exact engine at once (list, persona, evidence, a template
    explanation); the LLM (the packaged SmolLM2 unless --llm says otherwise; --llm none for
    templates only) adds its own explanations and persona rewrites afterwards, printed as
    "plural (model)>" lines while you go on. Interactive by default (/quit to leave; the same
    --thread resumes later); with --message it answers one message and exits (the LLM is not
    loaded unless --follow-up asks for its additions).
    """
    from agent.api import PluralAgent
    from agent.runtime import AgentConfig, AgentRuntime
    from personas.ranking import RANKING_MODES

    if mode not in RANKING_MODES:
        raise UsageError("--mode", mode, sorted(RANKING_MODES))
    if k <= 0 or k > 50:
        raise UsageError("--k", k, "an integer from 1 to 50")
    wants_llm = (llm or "transformers") != "none" and (message is None or follow_up)
    backend = _backend(llm, model, base_url) if wants_llm else None
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, False, user)
    agent = PluralAgent(AgentRuntime(engine, backend, AgentConfig(k=k, mode=mode)))
    if message is not None:
        reply = agent.chat(user, message, thread)
        later = agent.follow_up(reply) if follow_up else None
        if as_json:
            doc = reply.model_dump(mode="json")
            if later is not None:
                doc["follow_up"] = later.model_dump(mode="json")
            typer.echo(json.dumps(doc, indent=2))
        else:
            from rich.text import Text

            _console().print(Text(reply.response))
            for line in later.lines() if later is not None else []:
                _console().print(Text("(model) " + line))
            _console(stderr=True).print(f"[dim]thread {reply.thread_id}[/]")
        if reply.error and reply.intent is None:
            raise typer.Exit(1)
        return
    _interactive_chat(agent, user, thread)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    concurrent: Annotated[int, typer.Option("--concurrent", help="Requests computed at once.")] = 32,
    llm: LLMOpt = None, model: ModelOpt = None, base_url: BaseUrlOpt = None,
    postgres_url: Annotated[Optional[str], typer.Option("--postgres-url", help="Keep checkpoints (and the stores) in this Postgres (default: SQLite files in the data directory; also $PLURAL_POSTGRES_URL).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Items per chat list.")] = 5,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Serve the agent over HTTP for many users at once: POST /chat, /recommend, /feedback,
    /follow_up; GET /users/{id}/personas, /users/{id}/history, /threads/{id}, /health (see
    agent/server.py). The LLM defaults to none here: a server's turns never wait for a model;
    give --llm for /follow_up."""
    from agent.api import PluralAgent
    from agent.runtime import AgentConfig, AgentRuntime
    from agent.server import serve as run_server

    if not 1 <= port <= 65535:
        raise UsageError("--port", port, "1-65535")
    import os

    # many turns at once on few cores: one torch thread per turn (torch's own pool of one thread per
    # core per turn oversubscribes the CPU; measured: 22 -> 30 turns/s with 32 users on 2 cores)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    backend = _backend(llm, model, base_url) if llm not in (None, "none") else None
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, False)
    agent = PluralAgent(AgentRuntime(engine, backend, AgentConfig(k=k)), postgres_url=postgres_url)
    agent.runtime.warm_up()
    _console(stderr=True).print(f"Plural serving {engine.data_dir.name} on http://{host}:{port} "
                                f"({len(engine.history.user_ids)} users); Ctrl-C stops")
    try:
        run_server(agent, host, port, concurrent)
    finally:
        agent.close()


_HELP = ("Ask for something (\"something light and funny tonight\", \"a scary movie from the 80s\", \"like Heat\"), "
         "react (\"not that one, too violent\", \"loved the first\"), ask \"why the third?\", \"more like the "
         "second one\", \"more\", \"show my personas\". Commands: /personas, /versions, /rollback PERSONA VERSION, "
         "/history, /quit.")


class _ChatInput:
    """Reads the person's lines: prompt_toolkit on a terminal (the model's follow-ups print above
    the prompt while the person types), plain input otherwise."""

    def __init__(self, console):
        self.console = console
        self.session = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            try:
                from prompt_toolkit import PromptSession
                from prompt_toolkit.formatted_text import ANSI

                self.session, self._ansi = PromptSession(), ANSI
            except ImportError:  # pragma: no cover - prompt_toolkit is a dependency
                self.session = None

    @property
    def background_output(self) -> bool:
        """True when lines printed from another thread appear above the prompt."""
        return self.session is not None

    def read(self) -> str:
        if self.session is None:
            return self.console.input("[bold cyan]you> [/]")
        from prompt_toolkit.patch_stdout import patch_stdout

        with patch_stdout(raw=True):
            return self.session.prompt(self._ansi("\x1b[1;36myou> \x1b[0m"))


class _FollowUps:
    """Runs :meth:`PluralAgent.follow_up` after each reply, one at a time, and prints what the
    model added. On a terminal it runs in the background (the prompt comes back at once); when
    the output is not a terminal it runs right after the reply, so scripts see a stable order."""

    def __init__(self, agent, console, background: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.agent, self.console, self.background = agent, console, background
        self.turn = 0
        self._queued: list = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plural-follow-up")

    def submit(self, reply) -> None:
        self.turn += 1
        turn = self.turn
        # explanations of a list the person has moved on from are not worth the CPU: drop the
        # ones not started yet (a persona rewrite after feedback still runs)
        self._queued = [(f, r) for f, r in self._queued if not f.done()]
        for f, r in self._queued:
            if r.intent != "feedback":
                f.cancel()
        future = self._pool.submit(self.agent.follow_up, reply)
        self._queued.append((future, reply))
        if self.background:
            future.add_done_callback(lambda f: self._show(f, turn))
        else:
            self._show(future, turn)

    def _show(self, future, turn: int) -> None:
        from rich.text import Text

        if future.cancelled():
            return
        try:
            later = future.result()
        except Exception as e:  # noqa: BLE001 - the model's extras must never end the chat
            self.console.print(Text(f"(the model could not add anything: {type(e).__name__}: {e})", style="dim"))
            return
        lines = later.lines()
        if turn != self.turn:  # the person moved on: only a change to their personas is still news
            lines = [later.note] if later.note and later.persona is not None else []
        for line in lines:
            self.console.print(Text("plural (model)> ", style="magenta") + Text(line))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _interactive_chat(agent, user: str, thread: str | None) -> None:
    import uuid

    from rich.markup import escape
    from rich.text import Text

    con = _console()
    thread = thread or uuid.uuid4().hex[:12]
    try:
        past = agent.transcript(thread, user)
    except PluralError as e:
        con.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    con.print(f"[bold]Plural[/] — user {user}, thread [bold]{thread}[/] "
              f"(resume later with --thread {thread}). Type /quit to leave, /help for commands.")
    for turn in past[-6:]:
        who = "you" if turn.role == "user" else "plural"
        con.print(f"[dim]{who}: {escape(turn.content)}[/]")
    reader = _ChatInput(con)
    rt = agent.runtime
    with con.status("loading…"):
        rt.warm_up()
    follow = (_FollowUps(agent, con, reader.background_output)
              if rt.backend is not None and rt.config.llm_prose == "after" else None)
    try:
        while True:
            try:
                text = reader.read()
            except (EOFError, KeyboardInterrupt):
                con.print()
                break
            cmd = text.strip()
            if cmd in ("/quit", "/exit", "/q"):
                break
            if cmd == "/help":
                con.print(Text(_HELP))
                continue
            if cmd == "/personas":
                cmd = text = "show my personas"
            if cmd == "/versions":
                for v in agent.persona_versions(user):
                    con.print(Text(f"{v.persona.persona_id} v{v.persona.version} ({v.reason}) {v.persona.name}: "
                                   f"{v.persona.description}"))
                continue
            if cmd.startswith("/rollback"):
                parts = cmd.split()
                try:
                    p = agent.rollback(user, parts[1], int(parts[2]))
                    con.print(Text(f"{p.persona_id} is back to: {p.name} — {p.description} (now v{p.version})"))
                except (IndexError, ValueError):
                    con.print("usage: /rollback PERSONA_ID VERSION (see /versions)")
                except PluralError as e:
                    con.print(Text(str(e), style="red"))
                continue
            if cmd == "/history":
                for ev in reversed(agent.history(user, 15)):
                    con.print(Text(ev.kind, style="dim") + Text(f" {ev.text}"))
                continue
            if cmd.startswith("/"):
                con.print(Text(f"Unknown command {cmd.split()[0]!r}. {_HELP}"))
                continue
            with con.status("thinking…"):
                reply = agent.chat(user, text, thread)
            con.print(Text("plural> ", style="red" if reply.error else "green") + Text(reply.response))
            if follow is not None and not reply.error:
                follow.submit(reply)
    finally:
        if follow is not None:
            follow.close()


_LIST_OPTIONS = {("eval", "rec"): ("--k", "--models"), ("eval", "personas"): ("--seeds",),
                 ("eval", "chat"): ("--systems",)}


def _expand_list_options(argv: list[str]) -> list[str]:
    """Let ``--k 10 20`` mean ``--k 10 --k 20`` (and likewise ``--models a b``) for commands
    whose options take several values."""
    opts = next((o for cmd, o in _LIST_OPTIONS.items() if list(cmd) == argv[:len(cmd)]), ())
    if not opts:
        return argv
    out, current = [], None
    for tok in argv:
        if tok.startswith("-"):
            current = tok if tok in opts else None
            out.append(tok)
        elif current is not None and out[-1] != current:
            out += [current, tok]
        else:
            out.append(tok)
    return out


# ---- command modules of other packages (``plural eval`` comes from ``evals``) -------------------
def _register_command_modules() -> None:
    """Add the typer apps other packages register in the ``plural.commands`` entry-point group
    (name -> ``module:app``). ``agent`` imports no such module itself."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="plural.commands"):
        if ep.name not in {g.name for g in app.registered_groups}:
            app.add_typer(ep.load(), name=ep.name)


_register_command_modules()


# ---- entry point ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 error, 2 usage error)."""
    try:  # typer >= 0.20 vendors click; older releases use the click package
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        args = list(sys.argv[1:] if argv is None else argv)
        rv = app(args=_expand_list_options(args), standalone_mode=False, prog_name="plural")
        return rv if isinstance(rv, int) else 0  # click returns typer.Exit's code here
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        return 1
    except click_exc.ClickException as e:
        e.show()
        return 2 if isinstance(e, click_exc.UsageError) else 1
    except (UsageError, UnknownUserError) as e:
        typer.echo(f"Error: {e}", err=True)
        return 2
    except PluralError as e:
        typer.echo(f"Error: {e}", err=True)
        return 1


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
