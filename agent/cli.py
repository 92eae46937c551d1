"""The ``plural`` command line: one entry point, thin subcommands.

Exit codes: 0 success, 1 a data or runtime error, 2 a usage error (bad option value, unknown
user). Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import time
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memory.errors import PluralError, UnknownUserError, UsageError

app = typer.Typer(name="plural", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plural: persona-based recommendation. Several personas per user, each recommendation "
                       "attributed to one, with its evidence.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets.")
app.add_typer(data_app, name="data")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluation runs: accuracy, crowding out, persona quality.")
app.add_typer(eval_app, name="eval")

# ---- options shared by every command that reads data --------------------------------------
DatasetOpt = Annotated[str, typer.Option("--dataset", help="Packaged dataset: ml-100k or synthetic.")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="A MovieLens folder, or an interactions CSV/Parquet file.")]
TrainOpt = Annotated[Optional[str], typer.Option("--train", help="Predefined split: training interactions file.")]
TestOpt = Annotated[Optional[str], typer.Option("--test", help="Predefined split: test interactions file.")]
ItemsOpt = Annotated[Optional[str], typer.Option("--items", help="Items file for --data tables and predefined splits.")]
ColumnsOpt = Annotated[Optional[str], typer.Option("--columns", help="Column names, when not the usual ones (user/user_id/userId, item/item_id/movieId, rating, timestamp, title, genres/categories): e.g. user=uid,item=movie,rating=stars; items.KEY=COLUMN for the items file (items.item=movie_id,items.title=name).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Engine settings file (.json or .toml).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the built data lives (default: a cache folder per dataset and settings).")]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the data directory even if it is current.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LLMOpt = Annotated[Optional[str], typer.Option("--llm", help="LLM backend: transformers (embedded), vllm, openai or none.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model alias, folder, GGUF file or served model name.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible server URL (…/v1).")]


def _source(dataset: str, data: str | None, train: str | None, test: str | None, items: str | None,
            columns: str | None):
    from memory.loaders import ColumnMapping, DataSource

    pairs = [p for p in (columns or "").split(",") if p.strip()]
    item_pairs = [p.strip()[len("items."):] for p in pairs if p.strip().startswith("items.")]
    log_pairs = [p for p in pairs if not p.strip().startswith("items.")]
    return DataSource(dataset=dataset, data=data, train=train, test=test, items=items,
                      columns=ColumnMapping.parse(",".join(log_pairs)),
                      item_columns=ColumnMapping.parse(",".join(item_pairs)))


def _config(path: Path | None):
    from agent.config import EngineConfig

    return EngineConfig.from_file(path) if path else EngineConfig()


def _open_engine(source, config, data_dir, rebuild: bool, user: str | None = None):
    from agent.engine import Engine

    def check(history):
        if user is not None and user not in history:
            raise UnknownUserError(user, history.user_ids)

    return Engine.open(source, config, data_dir, progress=sys.stderr.isatty(), rebuild=rebuild, validate=check)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


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


def _backend(llm: str | None, model: str | None, base_url: str | None):
    """The LLM backend the options name (default: the packaged SmolLM2 through transformers)."""
    from agent.llm import LLMConfig, make_backend

    return make_backend(LLMConfig(backend=llm or "transformers", model=model, base_url=base_url))


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


@eval_app.command("rec")
def eval_rec(
    k: Annotated[Optional[list[int]], typer.Option("--k", help="List lengths (repeatable: --k 10 20).")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Models to run (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Split seed.")] = 0,
    split: Annotated[str, typer.Option("--split", help="random (per-user 80/20) or temporal (leave-last).")] = "random",
    exclude: Annotated[str, typer.Option("--exclude", help="Never rank training 'positives' (reference) or all 'seen'.")] = "positives",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/rec-<dataset>).")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    multvae_epochs: Annotated[Optional[int], typer.Option("--multvae-epochs", help="Mult-VAE epochs.")] = None,
    no_tradeoff: Annotated[bool, typer.Option("--no-tradeoff", help="Skip scoring every variant on test for the plot.")] = False,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None,
) -> None:
    """Accuracy and crowding out: Plural's ranking modes beside the strongest baselines."""
    from evals.harness import EvalConfig, RecEvaluation
    from evals.report import write_reports
    from evals.splits import SplitConfig

    if split not in ("random", "temporal"):
        raise UsageError("--split", split, ["random", "temporal"])
    if exclude not in ("positives", "seen"):
        raise UsageError("--exclude", exclude, ["positives", "seen"])
    overrides = {"ks": k or [10, 20], "models": models or None, "split": SplitConfig(seed=seed, strategy=split),
                 "exclude": exclude, "embedder": embedder, "tradeoff_on_test": not no_tradeoff}
    if multvae_epochs:
        from evals.baselines import MultVAEConfig

        overrides["multvae"] = MultVAEConfig(epochs=multvae_epochs)
    cfg = EvalConfig(**overrides)
    cfg.selected_models()  # unknown names fail before any work
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = RecEvaluation(ds, cfg, progress=bar.task).run()
    paths = write_reports(doc, out or Path("runs") / f"rec-{ds.name}")
    from evals.report import markdown_table

    con = _console()
    con.print(markdown_table(doc, min(cfg.ks)))
    rb = doc.get("research_bar", {}).get("b_persona_calibrated_vs_steck")
    if rb:
        con.print(f"persona_calibrated vs EASE: NDCG x{rb['ndcg_ratio']}, C_KL x{rb['c_kl_ratio']}, minority recall "
                  f"x{rb['minority_recall_ratio']}, coverage x{rb['coverage_ratio']} (Steck: x{rb['steck_ndcg_ratio']}, "
                  f"x{rb['steck_c_kl_ratio']}, x{rb['steck_minority_recall_ratio']}, x{rb['steck_coverage_ratio']}); "
                  f"research bar {'passed' if rb['passed'] else 'not passed'}")
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))


@eval_app.command("personas")
def eval_personas(
    seeds: Annotated[Optional[list[int]], typer.Option("--seeds", help="Induction seeds to rerun (repeatable).")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Attention share that counts as explained.")] = 0.5,
    max_users: Annotated[Optional[int], typer.Option("--max-users", help="Only the first N users.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/personas-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None, data_dir: DataDirOpt = None,
) -> None:
    """Persona separation, run-to-run stability and coverage of each user's history."""
    import json as _json

    from evals.persona_quality import PersonaEvalConfig, markdown_persona_report, run_persona_eval
    from memory.persistence import atomic_write_text

    cfg = PersonaEvalConfig(seeds=seeds or [1, 2, 3], coverage_threshold=threshold, max_users=max_users)
    engine = _open_engine(_source(dataset, data, train, test, items, columns), _config(config), data_dir, False)
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_persona_eval(engine, cfg, progress=bar.task)
    folder = out or Path("runs") / f"personas-{doc['dataset']}"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "personas.json", _json.dumps(doc, indent=2))
    md = markdown_persona_report(doc)
    atomic_write_text(folder / "personas.md", md)
    _console().print(md)
    _console().print(f"wrote {folder / 'personas.json'}, {folder / 'personas.md'}")


@eval_app.command("refine")
def eval_refine(
    users: Annotated[int, typer.Option("--users", help="Held-out users to evaluate (seeded sample).")] = 50,
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="Evaluate this user (repeatable) instead of a sample.")] = None,
    reveal: Annotated[int, typer.Option("--reveal", help="Held-out positives revealed as likes per user.")] = 3,
    reveal_negatives: Annotated[int, typer.Option("--reveal-negatives", help="Negatives revealed as dislikes per user.")] = 2,
    eval_items: Annotated[int, typer.Option("--eval-items", help="Reaction prediction: at most N remaining positives and N negatives per user.")] = 10,
    mode: Annotated[Optional[list[str]], typer.Option("--mode", help="Ranking mode measured (repeatable; default relevance and persona_calibrated).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the users and the revealed items.")] = 0,
    llm: Annotated[str, typer.Option("--llm", help="LLM backend for the textual gradient: none (templates, fast), transformers, vllm or openai.")] = "none",
    model: ModelOpt = None, base_url: BaseUrlOpt = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/refine-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
) -> None:
    """Test-time refinement: reveal feedback on a few held-out items, refine the personas, and compare
    ranking quality and reaction prediction on the remaining items before and after."""
    from evals.refine_eval import RefineEvalConfig, run_refine_eval, write_refine_reports

    options = {"users": users, "reveal": reveal, "reveal_negatives": reveal_negatives, "eval_items": eval_items,
               "seed": seed}
    if user:
        options["user_ids"] = list(user)
    if mode:
        options["modes"] = list(mode)
    cfg = RefineEvalConfig.from_options(**options)
    backend = _backend(llm, model, base_url) if llm != "none" else None  # unknown names fail before any work
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_refine_eval(ds, cfg, engine_config, backend, progress=bar.task)
    paths = write_refine_reports(doc, out or Path("runs") / f"refine-{ds.name}")
    con = _console()
    for name, m in doc["metrics"].items():
        con.print(f"{name}: {m['before']} -> {m['after']} (after - before {m['difference']}, 95% CI {m['ci95']})")
    g = doc["guard"]
    con.print(f"drift guard: {g['accepted']} rewrites accepted, {g['rejected']} rejected, {g['aligned']} not needed, "
              f"{g['no_valid_rewrite']} without a valid rewrite; LLM fallback rate {doc['fallbacks']['fallback_rate']:.0%}")
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))


@eval_app.command("consistency")
def eval_consistency(
    users: Annotated[int, typer.Option("--users", help="Users to sample (seeded).")] = 3,
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="Evaluate this user (repeatable) instead of a sample.")] = None,
    max_personas: Annotated[Optional[int], typer.Option("--max-personas", help="At most N personas per user (heaviest first).")] = None,
    turns: Annotated[int, typer.Option("--turns", help="Interview questions per persona (2-6).")] = 5,
    questions: Annotated[int, typer.Option("--questions", help="Multiple-choice questions per persona.")] = 4,
    qa_at_end: Annotated[bool, typer.Option("--qa-at-end", help="Take the Q&A test after the last turn only (faster).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the user sample and the probe titles.")] = 0,
    llm: Annotated[str, typer.Option("--llm", help="Speaker LLM: transformers (packaged SmolLM2), vllm, openai, or none (smoke mode).")] = "transformers",
    model: ModelOpt = None, base_url: BaseUrlOpt = None,
    judge_llm: Annotated[Optional[str], typer.Option("--judge-llm", help="Judge LLM backend (default: the speaker's).")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Judge model (default: the speaker's).")] = None,
    judge_base_url: Annotated[Optional[str], typer.Option("--judge-base-url", help="Judge server URL (default: the speaker's).")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder of a fresh build (all-MiniLM-L6-v2, or hash).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/consistency-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Evaluate the personas of this data directory as they are now (default: a fresh build, so runs are reproducible).")] = None,
) -> None:
    """Persona consistency (arXiv 2511.00222): prompt-to-line, line-to-line and Q&A over simulated
    interviews in which the agent speaks as each persona, scored by an LLM judge."""
    from evals.consistency import (
        ConsistencyConfig,
        evaluation_engine,
        run_consistency_eval,
        write_consistency_reports,
    )

    options = {"users": users, "max_personas": max_personas, "turns": turns, "questions": questions,
               "qa_every_turn": not qa_at_end, "seed": seed}
    if user:
        options["user_ids"] = list(user)
    cfg = ConsistencyConfig.from_options(**options)
    speaker = _backend(llm, model, base_url) if llm != "none" else None
    if judge_llm is None and judge_model is None and judge_base_url is None:
        judge = speaker  # one model plays both roles unless told otherwise
    else:
        name = judge_llm or llm
        judge = _backend(name, judge_model or model, judge_base_url or base_url) if name != "none" else None
    source = _source(dataset, data, train, test, items, columns)
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    with evaluation_engine(source, engine_config, data_dir, progress=sys.stderr.isatty()) as engine, \
            _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_consistency_eval(engine, cfg, speaker, judge, progress=bar.task)
    paths = write_consistency_reports(doc, out or Path("runs") / f"consistency-{doc['dataset']}")
    con = _console()
    if doc["mode"] != "measurement":
        con.print(f"[bold yellow]{doc['mode']} mode[/]: deterministic fallbacks stand in for the LLM; not a measurement.")
    for name, m in doc["metrics"].items():
        con.print(f"{name:>15}: {m['mean']}  95% CI {m['ci95']}  ({m['n']} personas)")
    js = doc["judge_sensitivity"]
    con.print("planted contradictions caught (judge model / fallback): " + ", ".join(
        f"{k} {js[k]['llm']['caught']}/{js[k]['llm']['of']} / {js[k]['fallback']['caught']}/{js[k]['fallback']['of']}"
        for k in ("prompt_to_line", "line_to_line")))
    con.print(f"LLM fallback rate {doc['fallbacks']['total']['fallback_rate']:.0%}; {doc['timings_s']['total']:.1f} s; "
              f"wrote " + ", ".join(paths.values()))


@eval_app.command("chat")
def eval_chat(
    users: Annotated[int, typer.Option("--users", help="Simulated users on test (seeded sample).")] = 200,
    tune_users: Annotated[int, typer.Option("--tune-users", help="Simulated users on the validation split.")] = 150,
    no_tune: Annotated[bool, typer.Option("--no-tune", help="Keep the configured request mix (no validation search).")] = False,
    systems: Annotated[Optional[list[str]], typer.Option("--systems", help="Systems to compare (default: all four).")] = None,
    k: Annotated[int, typer.Option("--k", help="List length.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the users and their requests.")] = 0,
    embedder: Annotated[str, typer.Option("--embedder", help="Text embedder (all-MiniLM-L6-v2, or hash for a quick run).")] = "all-MiniLM-L6-v2",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default runs/chat-<dataset>).")] = None,
    dataset: DatasetOpt = "ml-100k", data: DataOpt = None, train: TrainOpt = None, test: TestOpt = None,
    items: ItemsOpt = None, columns: ColumnsOpt = None, config: ConfigOpt = None,
) -> None:
    """Conversational evaluation: simulated users from the held-out split ask for a category, a
    category and period, "something like X" and a free-text description of a held-out liked
    item, then refuse and ask for "more like #k"; request satisfaction, hit rate, NDCG,
    personalisation and turn latency of Plural's chat beside its old self and two baselines."""
    from evals.chat_eval import ChatEvalConfig, run_chat_eval, write_chat_reports

    options = {"users": users, "tune_users": tune_users, "tune": not no_tune, "k": k, "seed": seed}
    if systems:
        options["systems"] = list(systems)
    cfg = ChatEvalConfig.from_options(**options)
    engine_config = _config(config).model_copy(update={"embedder": embedder})
    ds = _source(dataset, data, train, test, items, columns).load()
    with _RichProgress(sys.stderr.isatty()) as bar:
        doc = run_chat_eval(ds, cfg, engine_config, progress=bar.task)
    paths = write_chat_reports(doc, out or Path("runs") / f"chat-{ds.name}")
    con = _console()
    from rich.text import Text

    for t, by_system in doc["results"].items():
        cells = ", ".join(f"{s} {m.get('satisfaction', {}).get('mean')}/{m.get(f'hr@{k}', {}).get('mean', '-')}"
                          for s, m in by_system.items())
        con.print(Text(f"{t:>16} (satisfied/HR@{k}): {cells}"))
    for name, t in doc["targets"].items():
        con.print(Text(f"target {name}: {'met' if t['met'] else 'NOT met'}"))
    con.print(f"{doc['timings_s']['total']:.1f} s; wrote " + ", ".join(paths.values()))


class _RichProgress:
    """A progress bar per stage on a terminal; silent otherwise."""

    def __init__(self, enabled: bool):
        from agent.engine import Progress

        self._p = Progress(enabled)

    def __enter__(self):
        self._p.__enter__()
        return self

    def __exit__(self, *exc):
        return self._p.__exit__(*exc)

    def task(self, description: str, total: int):
        return self._p.task(description, total)


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
