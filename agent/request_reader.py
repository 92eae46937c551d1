"""Reading a chat message into a :class:`~personas.request.Request`: the rules, or an LLM
validated against the catalog with the rules as the fallback.

The rules (:func:`agent.request_parser.parse_request`) are fast, deterministic and always
available; they are what a turn uses by default. With a backend (``intent_parser="llm"``), the
model fills the same typed object through the ``read_request`` prompt, constrained by a JSON
schema whose genre values are the catalog's own, and every field is then checked:

* a title it names (``like_title``, ``not_titles``) must be a catalog title that the message
  itself contains (word for word, as the rules' title index finds it);
* a list position must exist in the last list; years must be ordered and inside the catalog's
  range;
* ``about`` may only use words of the message (nothing invented).

A rejected answer is retried once, then the rules' reading stands. The thread's context (items
shown and refused, "more" repeating the previous request) always comes from the rules' side,
so the model cannot un-refuse an item.

Example:
    >>> from agent.request_parser import ParseContext
    >>> ctx = ParseContext(categories=("Comedy", "Horror"), titles=(), item_ids=())
    >>> read_request("a scary movie", ctx)[0].wanted_categories
    ['Horror']
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.validated import FallbackCounter, Job, Rejected, run_validated
from agent.request_parser import ParseContext, activated_personas, parse_request, repeats_previous
from personas.request import Period, Request
from prompts import load_prompt


class _Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wanted_categories: list[str]
    unwanted_categories: list[str]
    like_title: str | None
    not_titles: list[str]
    list_position: int | None
    from_year: int | None
    to_year: int | None
    about: str | None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def read_request(message: str, ctx: ParseContext, backend: LLMBackend | None = None,
                 counter: FallbackCounter | None = None) -> tuple[Request, dict]:
    """``(request, meta)``: the rules' reading of ``message``, or the LLM's when ``backend`` is
    given and its answer passes the checks (see the module docstring). ``meta`` says who read
    it (``source``) and carries the LLM's fallback counts and error."""
    rules = parse_request(message, ctx)
    if backend is None:
        return rules, {"source": "rules"}
    if repeats_previous(message, ctx):  # "more", "other ones": the thread's own request, no reading needed
        return rules, {"source": "rules"}
    counter = counter or FallbackCounter()
    prompt = load_prompt("read_request")
    index = ctx.title_index
    if index is None:
        from agent.llm.tasks import title_index

        index = ctx.title_index = title_index(tuple(ctx.titles))
    in_message = {pos for pos, _ in index.find(message)} if ctx.titles else set()
    known = {c.lower(): c for c in ctx.categories}
    msg_words = _words(message)

    def title_pos(title: str, field: str) -> int:
        hits = [pos for pos, _ in index.find(title)] if ctx.titles else []
        hits = [p for p in hits if p in in_message]
        if not hits:
            raise Rejected("unknown_title", f"{field} {title!r} is not a catalog title the message names")
        return max(hits, key=lambda p: len(ctx.titles[p]))

    def check(out: _Reading) -> Request:
        wanted, unwanted = [], []
        for src, dst in ((out.wanted_categories, wanted), (out.unwanted_categories, unwanted)):
            for c in src:
                if c.lower() not in known:
                    raise Rejected("unknown_category", f"{c!r} is not a catalog category")
                if known[c.lower()] not in dst:
                    dst.append(known[c.lower()])
        if set(wanted) & set(unwanted):
            raise Rejected("contradiction", f"{sorted(set(wanted) & set(unwanted))} both wanted and ruled out")
        reference = label = None
        if out.list_position is not None:
            if not 1 <= out.list_position <= len(ctx.last_list):
                raise Rejected("reference", f"position {out.list_position} is not in a list of {len(ctx.last_list)}")
            reference, label = ctx.last_list[out.list_position - 1], f"#{out.list_position}"
        elif out.like_title:
            pos = title_pos(out.like_title, "like_title")
            reference, label = ctx.item_ids[pos], out.like_title
        exclude = list(rules.exclude_items)
        for t in out.not_titles:
            exclude.append(ctx.item_ids[title_pos(t, "not_titles")])
        period = None
        if out.from_year is not None or out.to_year is not None:
            lo, hi = (ctx.min_year or 1800) - 1, (ctx.max_year or 2100) + 1
            for y in (out.from_year, out.to_year):
                if y is not None and not lo <= y <= hi:
                    raise Rejected("period", f"year {y} is outside the catalog's years ({lo + 1}-{hi - 1})")
            try:
                period = Period(start=out.from_year, end=out.to_year)
            except ValueError as e:
                raise Rejected("period", str(e)) from None
        about = " ".join(out.about.split()) if out.about else None
        if about:
            invented = _words(about) - msg_words
            if invented:
                raise Rejected("invented_content", f"'about' adds words the message lacks: {sorted(invented)[:3]}")
        if reference is not None:
            exclude.append(reference)
        return Request(text=message.strip(), wanted_categories=wanted, unwanted_categories=unwanted,
                       content=about if reference is None else None, reference_item=reference,
                       reference_label=label, period=period, exclude_items=list(dict.fromkeys(exclude)),
                       personas=activated_personas(wanted, ctx.persona_categories),
                       unsupported=rules.unsupported, source="llm")

    job = Job(variables={"message": message, "categories": [c for c in ctx.categories if c.lower() != "unknown"],
                         "list_length": len(ctx.last_list)},
              schema=_schema(prompt.output_schema, ctx), check=check)
    outcomes, err = run_validated(backend, prompt, [job], _Reading, SamplingConfig(max_tokens=120), counter,
                                  task="read_request")
    o = outcomes[0]
    counter.record(o.source if o.value is not None else "template", o.reason)
    meta = {"source": o.source if o.value is not None else "rules", "fallbacks": counter.as_dict(),
            "llm_error": err}
    if o.value is None:
        return rules, meta
    return o.value.model_copy(update={"source": o.source}), meta


def _schema(base: dict, ctx: ParseContext) -> dict:
    """The prompt's schema with the genre values narrowed to the catalog's categories."""
    import copy

    schema = copy.deepcopy(base)
    cats = [c for c in ctx.categories if c.lower() != "unknown"]
    if cats:
        for key in ("wanted_categories", "unwanted_categories"):
            schema["properties"][key]["items"] = {"type": "string", "enum": cats}
    return schema


__all__ = ["read_request"]
