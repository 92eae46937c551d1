"""Test-time persona refinement: PersonaAgent's textual gradient, guarded against drift.

On feedback about an item, for the persona responsible for it:

1. **Numbers.** A like adds the item to the persona's evidence (so its contributions, and the
   recommendations, change at once); a dislike lowers the persona's weight by
   ``dislike_penalty``. Weights are renormalised to sum to 1.
2. **Alignment batch.** The latest ``alignment_batch`` (n = 3) feedback events concerning the
   persona, this one included.
3. **Simulate.** The current persona text predicts the user's reaction to each of them.
4. **Textual loss.** The LLM compares simulated and actual reactions and writes what the text
   gets wrong or misses (a deterministic sentence when it cannot).
5. **Rewrite.** The LLM rewrites the persona from the loss (name 2-5 words, bounded
   description, titles only from the evidence, the user's own words never copied in).
6. **Drift guard.** The new text must predict the persona's own evidence (and reject items
   far from it) at least as well as the old one, measured by the same simulation; otherwise
   the old text stays. Every accepted change is a new persona version carrying the feedback,
   the loss and the guard's scores, and can be rolled back.

The simulator is the LLM (``simulate_reaction`` prompt) or, without one, text-embedding
similarity between the persona and the item (a pairwise ranking score for the guard).
"""

from __future__ import annotations

import copy
import logging
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.claims import ClaimFacts, check_claims, check_genres, without_titles
from agent.llm.tasks import _check_prose, _foreign_titles, _is_title, _mentions, _names_category, _only_titles
from agent.llm.validated import FallbackCounter, Job, Rejected, run_validated
from personas.model import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, Persona, PersonaSet, utcnow
from prompts import load_prompt

log = logging.getLogger("plural.refine")


class RefineConfig(BaseModel):
    """Settings of test-time refinement."""

    model_config = ConfigDict(extra="forbid")

    alignment_batch: int = Field(3, ge=1, le=10)
    """n: the latest interactions the textual loss is computed on (PersonaAgent: 3)."""
    guard_items: int = Field(4, ge=1, le=20)
    """Evidence items (and as many far-away items) the drift guard simulates."""
    dislike_penalty: float = Field(0.85, gt=0, le=1)
    """Weight multiplier of a persona whose item was disliked."""
    max_description_chars: int = Field(300, ge=40, le=MAX_DESCRIPTION_CHARS)
    """Bound on a rewritten description."""
    simulator: Literal["auto", "llm", "embedding"] = "auto"
    """``auto``: the LLM when one is configured, else embedding similarity."""
    seed: int = 0
    """Seed of the far-away items the guard uses as negatives."""


@dataclass
class ItemView:
    """What a simulation shows of an item."""

    item_id: str
    title: str
    categories: list[str]
    text: str = ""


@dataclass
class Interaction:
    """One alignment-batch entry: an item and the user's actual reaction."""

    item: ItemView
    reaction: Literal["like", "dislike"]
    text: str | None = None


class ReactionSimulator(ABC):
    """Predicts, from a persona's text alone, whether the user would accept each item."""

    name: str

    @abstractmethod
    def predict(self, persona: Persona, items: Sequence[ItemView]) -> list[bool]:
        """True where the persona text says the user accepts the item."""

    def guard_score(self, persona: Persona, positives: Sequence[ItemView], negatives: Sequence[ItemView]) -> float:
        """How well the text tells its own evidence from far-away items (higher is better, 0..1)."""
        pred = self.predict(persona, list(positives) + list(negatives))
        truth = [True] * len(positives) + [False] * len(negatives)
        return float(np.mean([p == t for p, t in zip(pred, truth)])) if truth else 0.0


class EmbeddingSimulator(ReactionSimulator):
    """Accepts an item when its text is closer to the persona text than the median catalog item.

    ``guard_score`` is the pairwise ranking accuracy (AUC) of positives over negatives, which is
    smoother than thresholded accuracy.
    """

    name = "embedding"

    def __init__(self, embedder, reference_texts: Sequence[str]):
        self.embedder = embedder
        self._ref_texts = list(reference_texts)[:400]
        self._ref: np.ndarray | None = None  # embedded on the first prediction, not when the agent starts

    def _persona_vec(self, persona: Persona) -> np.ndarray:
        return self.embedder.embed([f"{persona.name}. {persona.description}"])[0]

    def _sims(self, v: np.ndarray, items: Sequence[ItemView]) -> np.ndarray:
        return self.embedder.embed([it.text or it.title for it in items]) @ v

    def predict(self, persona: Persona, items: Sequence[ItemView]) -> list[bool]:
        if not items:
            return []
        v = self._persona_vec(persona)
        if self._ref is None and self._ref_texts:
            self._ref = self.embedder.embed(self._ref_texts)
        cut = float(np.median(self._ref @ v)) if self._ref is not None and len(self._ref) else 0.0
        return [bool(s > cut) for s in self._sims(v, items)]

    def guard_score(self, persona: Persona, positives: Sequence[ItemView], negatives: Sequence[ItemView]) -> float:
        if not positives or not negatives:
            return 0.0
        sims = self._sims(self._persona_vec(persona), list(positives) + list(negatives))
        pos, neg = sims[: len(positives)], sims[len(positives):]
        return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


class _Reaction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reaction: Literal["accept", "reject"]
    rating: int
    reason: str


class LLMSimulator(ReactionSimulator):
    """The LLM plays the persona (``simulate_reaction`` prompt); invalid answers fall back to
    ``fallback`` per item, counted."""

    name = "llm"

    def __init__(self, backend: LLMBackend, fallback: ReactionSimulator):
        self.backend, self.fallback = backend, fallback
        self.fallbacks = FallbackCounter()
        self.llm_error: str | None = None

    def predict(self, persona: Persona, items: Sequence[ItemView]) -> list[bool]:
        if not items:
            return []
        prompt = load_prompt("simulate_reaction")
        jobs = [Job(variables={"persona": {"name": persona.name, "description": persona.description},
                               "history": [], "item": {"title": it.title, "categories": it.categories},
                               "max_chars": 120}, schema=prompt.output_schema) for it in items]
        outcomes, err = run_validated(self.backend, prompt, jobs, _Reaction, SamplingConfig(max_tokens=64),
                                      self.fallbacks, task="simulate_reaction")
        self.llm_error = self.llm_error or err
        missing = [k for k, o in enumerate(outcomes) if o.value is None]
        backup = self.fallback.predict(persona, [items[k] for k in missing]) if missing else []
        out, b = [], iter(backup)
        for o in outcomes:
            if o.value is None:
                self.fallbacks.record("template", o.reason)
                out.append(next(b))
            else:
                self.fallbacks.record(o.source)
                out.append(o.value.reaction == "accept")
        return out


class _Loss(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: str
    missing: list[str]
    wrong: list[str]


class _Rewrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    changes: str


@dataclass
class RefinementResult:
    """What one refinement did to one persona."""

    persona_id: str
    before: Persona
    after: Persona
    """The persona to store (numbers always updated; text only when the guard accepted it)."""
    loss: str | None = None
    loss_source: str = "none"
    rewrite_source: str = "none"
    proposed: dict | None = None
    """The rewritten name and description, accepted or not."""
    guard: dict = field(default_factory=dict)
    """``old``/``new`` guard scores, ``accepted``."""
    alignment: list[dict] = field(default_factory=list)
    fallbacks: dict = field(default_factory=dict)
    llm_error: str | None = None

    @property
    def text_changed(self) -> bool:
        return (self.before.name, self.before.description) != (self.after.name, self.after.description)

    def summary(self) -> dict:
        return {"persona_id": self.persona_id, "text_changed": self.text_changed, "loss": self.loss,
                "loss_source": self.loss_source, "rewrite_source": self.rewrite_source, "proposed": self.proposed,
                "guard": self.guard, "alignment": self.alignment,
                "weight": {"before": self.before.weight, "after": self.after.weight},
                "evidence_added": [e for e in self.after.evidence if e not in self.before.evidence],
                "fallbacks": self.fallbacks, "llm_error": self.llm_error}


_INSTRUCTION_WORDS = re.compile(r"\b(ignore|instruction|system prompt|you are|set my persona|disregard)\b", re.I)


class PersonaRefiner:
    """Refines one persona from feedback (see the module docstring)."""

    def __init__(self, catalog, embedder, backend: LLMBackend | None, config: RefineConfig | None = None):
        self.catalog, self.embedder, self.backend = catalog, embedder, backend
        self.config = config or RefineConfig()
        texts = catalog.texts()
        rng = np.random.default_rng(self.config.seed)
        ref = [texts[i] for i in rng.choice(len(texts), size=min(300, len(texts)), replace=False)]
        self._embedding_sim = EmbeddingSimulator(embedder, ref)

    def with_backend(self, backend: LLMBackend | None) -> "PersonaRefiner":
        """The same refiner (same settings, same embedding simulator) writing with ``backend``
        (None: the deterministic templates and the embedding simulator only)."""
        other = copy.copy(self)
        other.backend = backend
        return other

    def view(self, item_id: str) -> ItemView:
        it = self.catalog.get(item_id)
        return ItemView(item_id=it.item_id, title=it.title, categories=list(it.categories), text=it.text)

    def simulator(self) -> ReactionSimulator:
        use_llm = self.config.simulator == "llm" or (self.config.simulator == "auto" and self.backend is not None)
        if use_llm and self.backend is not None:
            return LLMSimulator(self.backend, self._embedding_sim)
        return self._embedding_sim

    # ---- numbers -----------------------------------------------------------------------
    def numeric_update(self, pset: PersonaSet, persona_id: str, item_id: str, reaction: str) -> PersonaSet:
        """Evidence and weights after one reaction (weights renormalised to sum to 1)."""
        personas = []
        for p in pset.personas:
            if p.persona_id == persona_id:
                if reaction == "like" and item_id not in p.evidence:
                    p = p.model_copy(update={"evidence": [item_id, *p.evidence]})
                w = p.weight * (self.config.dislike_penalty if reaction == "dislike" else 1.0)
                if reaction == "like":  # one more item behind this taste
                    n = max(1, len(p.evidence) - 1)
                    w = p.weight * (n + 1) / n
                p = p.model_copy(update={"weight": w})
            personas.append(p)
        total = sum(p.weight for p in personas) or 1.0
        personas = [p.model_copy(update={"weight": round(p.weight / total, 6)}) for p in personas]
        rest = sum(p.weight for p in personas[:-1])
        personas[-1] = personas[-1].model_copy(update={"weight": round(max(0.0, 1.0 - rest), 6)})
        return pset.model_copy(update={"personas": personas})

    # ---- the textual gradient ----------------------------------------------------------
    def refine(self, pset: PersonaSet, persona_id: str, batch: Sequence[Interaction],
               negatives: Sequence[str] = ()) -> RefinementResult:
        """Refine ``persona_id`` of ``pset`` (already numerically updated) from ``batch``
        (newest first); ``negatives`` are item ids the user rejected (guard negatives)."""
        cfg = self.config
        before = pset.get(persona_id)
        batch = list(batch)[: cfg.alignment_batch]
        sim = self.simulator()
        predicted = sim.predict(before, [b.item for b in batch])
        alignment = [{"title": b.item.title, "simulated": "accept" if p else "reject",
                      "actual": ("accept" if b.reaction == "like" else "reject") + (f" ({b.text})" if b.text else "")}
                     for b, p in zip(batch, predicted)]
        result = RefinementResult(persona_id, before, before, alignment=alignment)
        mismatches = [a for a, b, p in zip(alignment, batch, predicted) if p != (b.reaction == "like")]
        counter = FallbackCounter()
        if not mismatches:
            result.loss, result.loss_source = None, "aligned"
            result.guard = {"accepted": False, "reason": "the persona already predicts the latest reactions"}
            result.fallbacks = self._fallbacks(sim, counter)
            return result
        loss, loss_source, err1 = self._loss(before, alignment, counter)
        result.loss, result.loss_source = loss, loss_source
        proposal, rewrite_source, err2 = self._rewrite(before, pset, loss, batch, counter)
        result.rewrite_source = rewrite_source
        result.llm_error = err1 or err2 or getattr(sim, "llm_error", None)
        if proposal is None:
            result.guard = {"accepted": False, "reason": "no valid rewrite"}
            result.fallbacks = self._fallbacks(sim, counter)
            return result
        candidate = before.model_copy(update={"name": proposal[0], "description": proposal[1]})
        result.proposed = {"name": proposal[0], "description": proposal[1]}
        positives = [self.view(i) for i in before.evidence[: cfg.guard_items]]
        negs = [self.view(i) for i in self._negatives(pset, negatives)]
        old_score = sim.guard_score(before, positives, negs)
        new_score = sim.guard_score(candidate, positives, negs)
        accepted = new_score >= old_score
        result.guard = {"old": round(old_score, 4), "new": round(new_score, 4), "accepted": accepted,
                        "simulator": sim.name, "items": len(positives) + len(negs)}
        if accepted:
            result.after = candidate.model_copy(update={
                "text_source": "refinement" if rewrite_source != "template" else before.text_source,
                "updated_at": utcnow()})
        result.fallbacks = self._fallbacks(sim, counter)
        return result

    @staticmethod
    def _fallbacks(sim, counter: FallbackCounter) -> dict:
        if isinstance(sim, LLMSimulator):
            counter = counter.merge(sim.fallbacks)
        return counter.as_dict()

    def _negatives(self, pset: PersonaSet, rejected: Sequence[str]) -> list[str]:
        """Rejected items, then items of the catalog no persona of the user holds (seeded)."""
        owned = {i for p in pset.personas for i in p.evidence}
        out = [i for i in rejected if i in self.catalog][: self.config.guard_items]
        # a stable per-user seed (str hash() changes with every process)
        rng = np.random.default_rng(self.config.seed + zlib.crc32(pset.user_id.encode()) % 1000)
        ids = self.catalog.item_ids
        for k in rng.permutation(len(ids)):
            if len(out) >= 2 * self.config.guard_items:
                break
            if ids[k] not in owned and ids[k] not in out:
                out.append(ids[k])
        return out

    def _loss(self, persona: Persona, alignment: list[dict], counter: FallbackCounter) -> tuple[str, str, str | None]:
        template = "; ".join(f"predicted {a['simulated']} for {a['title']} but the user chose {a['actual']}"
                             for a in alignment if a["simulated"] != a["actual"].split(" ")[0])
        if self.backend is None:
            counter.record("template", "no_llm")
            return template, "template", None
        prompt = load_prompt("textual_loss")
        titles = [a["title"] for a in alignment]

        def check(out: _Loss) -> str:
            text = " ".join(out.loss.split())
            _check_prose(text, "loss", 5)
            if not _mentions(text, titles) and not any(_mentions(m, titles) for m in out.missing + out.wrong):
                raise Rejected("ungrounded", "the loss names none of the items compared")
            return text

        job = Job(variables={"persona": {"name": persona.name, "description": persona.description},
                             "comparisons": alignment, "max_chars": 300}, schema=prompt.output_schema, check=check)
        outcomes, err = run_validated(self.backend, prompt, [job], _Loss,
                                      SamplingConfig(max_tokens=128, frequency_penalty=0.5), counter,
                                      task="textual_loss")
        o = outcomes[0]
        counter.record(o.source if o.value is not None else "template", o.reason)
        return (o.value, o.source, err) if o.value is not None else (template, "template", err)

    def _rewrite(self, persona: Persona, pset: PersonaSet, loss: str, batch: Sequence[Interaction],
                 counter: FallbackCounter) -> tuple[tuple[str, str] | None, str, str | None]:
        cfg = self.config
        evidence_titles = self.catalog.titles(self.catalog.indices(persona.evidence[:10]))
        liked = [b.item.title for b in batch if b.reaction == "like"]
        disliked = [b.item.title for b in batch if b.reaction == "dislike"]
        user_words = [b.text for b in batch if b.text]
        others = {p.name.lower() for p in pset.personas if p.persona_id != persona.persona_id}
        known = self.catalog.all_titles()
        # genres the text may claim: the persona's, and those of the titles it reacted to
        tastes = set(persona.categories) | {c for b in batch for c in b.item.categories}

        def valid(name: str, desc: str) -> tuple[str, str]:
            name, desc = " ".join(name.split()), " ".join(desc.split())
            if not (1 <= len(name.split()) <= 6) or len(name) > MAX_NAME_CHARS:
                raise Rejected("name", f"the name {name!r} is not 1-6 words")
            if len(desc) > cfg.max_description_chars:
                raise Rejected("length", f"the description has {len(desc)} characters")
            _check_prose(desc, "description", 5)
            if name.lower() in others:
                raise Rejected("duplicate_name", f"{name!r} names another taste of this user")
            allowed = evidence_titles + liked + disliked
            if _is_title(name, allowed):
                raise Rejected("title_as_name", f"the name {name!r} is a title, not a taste")
            if _only_titles(desc, allowed):
                raise Rejected("only_titles", "the description lists titles instead of describing a taste")
            foreign = _foreign_titles(f"{name} {desc}", allowed, known)
            if foreign:
                raise Rejected("foreign_title", f"mentions {foreign[0]!r}, not in the evidence")
            if _INSTRUCTION_WORDS.search(f"{name} {desc}"):
                raise Rejected("instructions", "the text reads as instructions, not a taste")
            for w in user_words:  # the user's words are data: never pasted into the persona
                if w and len(w) >= 12 and w.lower() in desc.lower():
                    raise Rejected("copied_input", "the description copies the user's message")
            if not (_mentions(desc, allowed) or _names_category(desc, persona.categories)):
                raise Rejected("ungrounded", "the description names none of the persona's titles or categories")
            facts = ClaimFacts(titles=allowed, categories=tastes, tastes=tastes, names=[name, persona.name],
                               known_categories=self.catalog.categories)
            check_claims(desc, facts)
            check_genres(without_titles(name, allowed), facts)
            return name, desc

        if self.backend is not None:
            prompt = load_prompt("rewrite_persona")

            def check(out: _Rewrite) -> tuple[str, str]:
                return valid(out.name, out.description)

            schema = dict(prompt.output_schema)
            job = Job(variables={"persona": {"name": persona.name, "description": persona.description},
                                 "losses": [loss], "evidence_titles": evidence_titles + liked,
                                 "max_description_chars": cfg.max_description_chars}, schema=schema, check=check)
            outcomes, err = run_validated(self.backend, prompt, [job], _Rewrite,
                                          SamplingConfig(max_tokens=160, frequency_penalty=0.5), counter,
                                          task="rewrite_persona")
            o = outcomes[0]
            if o.value is not None:
                counter.record(o.source)
                return o.value, o.source, err
            counter.record("template", o.reason)
        else:
            err = None
            counter.record("template", "no_llm")
        # deterministic rewrite: the same name, the description amended with the reactions
        desc = persona.description.rstrip(".")
        if liked:
            desc += f"; now also {', '.join(t.split(' (')[0] for t in liked[:2])}"
        if disliked:
            desc += f"; but not titles like {', '.join(t.split(' (')[0] for t in disliked[:2])}"
        desc = (desc + ".")[: cfg.max_description_chars]
        try:
            return valid(persona.name, desc), "template", err
        except Rejected:
            return None, "template", err

