"""What the web page shows, as HTML strings and plot tables: recommendation cards, the persona
panel, the summary of a persona change, the chat messages. Pure functions of the agent's typed
results (no Gradio, no agent calls), so they are tested without a browser.

Example:
    >>> from personas.recommendation import PersonaRef, Recommendation
    >>> rec = Recommendation(item_id="7", title="Alien (1979)", score=0.4, rank=1,
    ...                      persona=PersonaRef(id="p1", name="Space"), attention={"p1": 0.8, "p2": 0.2},
    ...                      explanation="For your Space taste.", categories=["Horror", "Sci-Fi"])
    >>> "Alien (1979)" in card_html(rec, {"p1": "Space", "p2": "Drama"})
    True
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the page's types, for annotations only
    import pandas as pd

    from agent.graph.builder import FeedbackAnswer, TranscriptTurn
    from personas.model import Persona, PersonaView
    from personas.recommendation import Recommendation

PALETTE = ("#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#65a30d")
"""One colour per persona, in the user's persona order (cards, panel and plots agree)."""

SOURCE_LABELS = {"template": "template", "llm": "model"}
"""How a card marks who wrote its explanation."""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def persona_colors(persona_ids: Sequence[str]) -> dict[str, str]:
    """Persona id -> colour, in the order given (the user's persona order)."""
    return {pid: PALETTE[k % len(PALETTE)] for k, pid in enumerate(persona_ids)}


# ---- cards -------------------------------------------------------------------------------------
def card_html(rec: Recommendation, persona_names: Mapping[str, str], reaction: str | None = None,
              colors: Mapping[str, str] | None = None) -> str:
    """One recommendation as a card: rank and title, categories, the responsible persona, an
    attention bar per persona, the evidence titles, and the explanation marked ``template`` or
    ``model``. ``reaction`` (``like``/``dislike``) marks a title the person already reacted to.
    ``persona_names`` maps persona ids to names (ids it lacks are shown as they are)."""
    colors = colors or persona_colors(list(rec.attention) or list(persona_names))
    resp = rec.persona.id if rec.persona is not None else None
    cats = "".join(f'<span class="pl-chip">{_e(c)}</span>' for c in rec.categories)
    if rec.persona is not None:
        who = (f'<div class="pl-persona">from your <b style="color:{colors.get(resp, "#444")}">'
               f'\u201c{_e(persona_names.get(resp, rec.persona.name))}\u201d</b> taste</div>')
    else:
        who = '<div class="pl-persona">popular pick (no personas yet)</div>'
    bars = []
    for pid, a in sorted(rec.attention.items(), key=lambda kv: -kv[1]):
        name = persona_names.get(pid, pid)
        mark = " pl-resp" if pid == resp else ""
        bars.append(f'<div class="pl-att{mark}" data-persona="{_e(pid)}"><span class="pl-att-name">{_e(name)}</span>'
                    f'<span class="pl-att-bar"><span style="width:{100 * max(0.0, min(1.0, a)):.1f}%;'
                    f'background:{colors.get(pid, "#888")}"></span></span>'
                    f'<span class="pl-att-val">{_pct(a)}</span></div>')
    att = f'<div class="pl-attention" title="attention per persona">{"".join(bars)}</div>' if bars else ""
    ev = ""
    if rec.evidence:
        titles = "".join(f"<li>{_e(e.title)}</li>" for e in rec.evidence)
        ev = f'<div class="pl-evidence"><span class="pl-label">because you liked</span><ul>{titles}</ul></div>'
    src = SOURCE_LABELS.get(rec.explanation_source, rec.explanation_source)
    badge = ""
    if reaction in ("like", "dislike"):
        badge = (f'<span class="pl-reacted pl-{reaction}">'
                 f'{"you liked this" if reaction == "like" else "you disliked this"}</span>')
    return (f'<div class="pl-card" data-item="{_e(rec.item_id)}" data-rank="{rec.rank}">'
            f'<div class="pl-card-head"><span class="pl-rank">#{rec.rank}</span> '
            f'<span class="pl-title">{_e(rec.title)}</span>{badge}</div>'
            f'<div class="pl-cats">{cats}</div>{who}{att}{ev}'
            f'<div class="pl-expl"><span class="pl-src pl-src-{_e(src)}">{_e(src)}</span> {_e(rec.explanation)}</div>'
            f'</div>')


def apply_model_explanations(items: Sequence[Recommendation], texts: Mapping[str, str]) -> list[Recommendation]:
    """The cards' items with the model's explanations (item id -> text) in place of the
    templates, marked ``llm``; items without one keep their template."""
    return [r.model_copy(update={"explanation": texts[r.item_id], "explanation_source": "llm"})
            if r.item_id in texts else r for r in items]


# ---- personas ----------------------------------------------------------------------------------
def persona_panel_html(personas: Sequence[Persona | PersonaView], highlight: str | None = None) -> str:
    """Every persona with its name, description, weight and version; ``highlight`` (a persona id)
    marks the one the last feedback concerned."""
    if not personas:
        return '<div class="pl-panel pl-empty">No personas yet: like a few titles and Plural learns your tastes.</div>'
    colors = persona_colors([p.persona_id for p in personas])
    rows = []
    for p in personas:
        mark = " pl-highlight" if p.persona_id == highlight else ""
        rows.append(f'<div class="pl-prow{mark}" data-persona="{_e(p.persona_id)}">'
                    f'<div class="pl-prow-head"><span class="pl-dot" style="background:{colors[p.persona_id]}"></span>'
                    f'<b class="pl-pname">{_e(p.name)}</b> <span class="pl-weight">{_pct(p.weight)}</span> '
                    f'<span class="pl-version">v{p.version}</span> '
                    f'<span class="pl-textsrc">{_e(p.text_source)}</span></div>'
                    f'<div class="pl-pdesc">{_e(p.description)}</div></div>')
    return f'<div class="pl-panel">{"".join(rows)}</div>'


def change_summary_html(answer: FeedbackAnswer, current: Persona | PersonaView | None = None,
                        note: str | None = None, note_source: str = "llm") -> str:
    """What a reaction changed: the persona it concerned, its weight before -> after, its version,
    the titles added to its evidence, and its text: rewritten (with the loss that said why),
    kept because it already predicted the reaction, or a rewrite the drift guard refused (with
    its scores). ``current`` is the persona now (a later rewrite by the model, or a rollback,
    shows as such); ``note`` is the follow-up's line, marked by who wrote the rewrite it speaks
    of (``note_source``: ``llm``, shown as ``model``, or ``template``)."""
    if answer.persona_id is None or answer.persona_before is None or answer.persona_after is None:
        verb = "liked" if answer.reaction == "like" else "disliked"
        return (f'<div class="pl-change">You {verb} <i>{_e(answer.title)}</i>; you have no personas yet, '
                f'so nothing else changed.</div>')
    before, after = answer.persona_before, answer.persona_after
    ref = answer.refinement or {}
    verb = "liked" if answer.reaction == "like" else "disliked"
    lines = [(f'<div class="pl-change-head">You {verb} <i>{_e(answer.title)}</i> \u2192 '
              f'\u201c{_e(before.name)}\u201d</div>')]
    version_after = current.version if current is not None else None
    vtxt = f"v{before.version} \u2192 v{version_after}" if version_after and version_after != before.version else \
        f"v{before.version}"
    lines.append(f'<div class="pl-change-weight">weight {_pct(before.weight)} \u2192 {_pct(after.weight)} '
                 f'<span class="pl-version">({vtxt})</span></div>')
    added = ref.get("evidence_added") or []
    if added:
        lines.append(f'<div>evidence: {len(added)} title{"s" if len(added) != 1 else ""} added</div>')
    guard = ref.get("guard") or {}
    why = ref.get("loss")
    if (before.name, before.description) != (after.name, after.description):
        lines.append(f'<div class="pl-change-text"><b>rewritten</b>: \u201c{_e(after.name)}\u201d \u2014 '
                     f'{_e(after.description)}</div>')
        if why:
            lines.append(f'<div class="pl-change-why">why: {_e(why)}</div>')
    elif ref.get("proposed"):
        prop = ref["proposed"]
        scores = ""
        if "old" in guard and "new" in guard:
            scores = (f" (the new text ranked your past titles at {guard['new']:.2f} against "
                      f"{guard['old']:.2f} for the current one)")
        lines.append(f'<div class="pl-change-guard"><b>drift guard refused</b> the rewrite \u201c{_e(prop.get("name", ""))}'
                     f'\u201d \u2014 {_e(prop.get("description", ""))}{_e(scores)}; the text stays.</div>')
        if why:
            lines.append(f'<div class="pl-change-why">why a rewrite was tried: {_e(why)}</div>')
    elif guard.get("reason"):
        lines.append(f'<div class="pl-change-kept">text kept: {_e(guard["reason"])}</div>')
    if current is not None and current.version != before.version and \
            (current.name, current.description) not in ((before.name, before.description),
                                                         (after.name, after.description)):
        lines.append(f'<div class="pl-change-now">now: \u201c{_e(current.name)}\u201d \u2014 {_e(current.description)} '
                     f'(v{current.version}, {_e(current.text_source)})</div>')
    if note:
        src = SOURCE_LABELS.get(note_source, note_source)
        lines.append(f'<div class="pl-change-note"><span class="pl-src pl-src-{_e(src)}">{_e(src)}</span> '
                     f'{_e(note)}</div>')
    return f'<div class="pl-change">{"".join(lines)}</div>'


# ---- plots -------------------------------------------------------------------------------------
def persona_weights_frame(personas: Sequence[Persona | PersonaView]) -> pd.DataFrame:
    """One row per persona: ``persona`` (its name) and ``weight`` (percent)."""
    import pandas as pd

    return pd.DataFrame({"persona": [p.name for p in personas],
                         "weight": [round(100 * p.weight, 1) for p in personas]})


def category_mix_frame(items: Sequence[Recommendation], user_shares: Mapping[str, float],
                       top: int = 8) -> pd.DataFrame:
    """The list's category mix against the user's: rows ``category``, ``share`` (percent) and
    ``source`` (``this list`` or ``your history``), on the ``top`` categories of the two. An item
    counts ``1/n`` for each of its ``n`` categories, as in the user's shares."""
    import pandas as pd

    mix: dict[str, float] = {}
    for r in items:
        cats = set(r.categories)
        for c in cats:
            mix[c] = mix.get(c, 0.0) + 1.0 / len(cats)
    total = sum(mix.values()) or 1.0
    mix = {c: v / total for c, v in mix.items()}
    cats = sorted(set(mix) | set(user_shares), key=lambda c: -max(mix.get(c, 0.0), user_shares.get(c, 0.0)))[:top]
    rows = [(c, round(100 * mix.get(c, 0.0), 1), "this list") for c in cats]
    rows += [(c, round(100 * user_shares.get(c, 0.0), 1), "your history") for c in cats]
    return pd.DataFrame(rows, columns=["category", "share", "source"])


# ---- chat --------------------------------------------------------------------------------------
def chat_messages(transcript: Sequence[TranscriptTurn]) -> list[dict]:
    """The thread's turns as chat messages (``{"role", "content"}``)."""
    return [{"role": t.role, "content": t.content} for t in transcript]


__all__ = ["PALETTE", "SOURCE_LABELS", "apply_model_explanations", "card_html", "category_mix_frame",
           "change_summary_html", "chat_messages", "persona_colors", "persona_panel_html", "persona_weights_frame"]
