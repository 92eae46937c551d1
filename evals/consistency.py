"""``plural eval consistency``: do the personas stay in character when the agent speaks as them?

The three persona-consistency metrics of arXiv 2511.00222 (code: ``abdulhaim/consistency_LLMs``,
``consistency_eval.py``), over a simulated interview in which the agent speaks as each persona:

* **Interview.** For each sampled user and each of their personas, a scripted interviewer asks
  ``turns`` questions about tastes (what did you enjoy lately, would you watch <a title from the
  persona's evidence>, would you watch <a title far from it>, what would you switch off, your
  taste in one sentence, one or the other tonight). The speaker LLM answers as the persona,
  given the persona text and the interview so far (``speak_as_persona`` prompt).
* **Prompt-to-line** (their ``eval_prompt_consistency``): the judge reads each of the persona's
  lines against the persona text; score = share of lines that do not contradict it.
* **Line-to-line** (their ``eval_index_consistency``): the judge reads line ``t`` against the
  persona's own earlier lines ``1..t-1`` and lists the ones it contradicts; score =
  ``1 - sum_t |conflicting_t| / sum_t (t - 1)`` over ``t = 2..T`` (the interviewer's lines are
  scripted, so only the persona's own lines count, as their code filters to same-speaker
  indices).
* **Q&A** (their ``eval_survey_consistency``): the judge writes ``questions`` multiple-choice
  questions from the persona text (``write_persona_questions``: question, options, the right
  option's number); after every persona turn (or only after the last, ``qa_every_turn=False``)
  the persona answers the whole test given its text and the interview so far
  (``answer_persona_questions``); score = share of right answers over every checkpoint and
  question. (The paper's code reports the mean number right out of 5; a share is comparable
  across test lengths.)

Every LLM output goes through :func:`~agent.llm.validated.run_validated`: the schema is narrowed
per call (option numbers and earlier-line numbers as ``enum``\\ s, exact counts), answers are
checked for meaning (distinct options, verdicts that agree with their line lists, no repeated
lines), one retry, then a deterministic fallback, counted per task and reason:

* speaker fallback: a template line built from the persona text;
* judge fallback: a keyword heuristic (a line contradicts the persona when it speaks negatively of
  one of the persona's main categories or titles; two lines conflict when one speaks positively and
  the other negatively of the same category or title);
* question fallback: template questions from the persona text (its main category, its name
  among the user's other persona names, a title it mentions among far-away titles);
* answer fallback: the option sharing most words with the persona text and the persona's lines.

With no LLM at all (``--llm none``) every part is the deterministic fallback: a **smoke mode**
that exercises the pipeline and is labelled as such in the report, never a measurement.

Example:
    >>> from agent.engine import Engine
    >>> doc = run_consistency_eval(Engine.open(), ConsistencyConfig(users=2), speaker=None)  # doctest: +SKIP
    >>> doc["mode"], doc["metrics"]["prompt_to_line"]["mean"]                              # doctest: +SKIP
    ('smoke', 1.0)
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.llm.base import LLMBackend, SamplingConfig
from agent.llm.tasks import _check_prose, _mentions, _names_category, _title_keys
from agent.llm.validated import FallbackCounter, Job, Rejected, run_validated
from evals.report import config_from_options, fmt_cell
from evals.report import json_number as _num
from evals.stats import bootstrap_ci
from memory.errors import UnknownUserError, UsageError
from personas.model import Persona
from prompts import load_prompt

SCHEMA_VERSION = 1

INTERVIEW: tuple[tuple[str, str], ...] = (
    ("recent", "What have you enjoyed watching lately?"),
    ("liked", "Would you watch {liked}? Why or why not?"),
    ("far", "What about {far}? Would you watch that?"),
    ("avoid", "What kind of film would you switch off halfway through?"),
    ("summary", "Describe your taste in one sentence, as you would to a friend."),
    ("choice", "If you could see only one tonight, {liked} or {far}, which would it be?"),
)
"""The interviewer's script: (kind, question); ``{liked}`` is a title from the persona's evidence,
``{far}`` a popular title sharing no category with the persona."""

TASKS = ("speak", "write_questions", "answer_questions", "judge_prompt_to_line", "judge_line_to_line",
         "judge_controls")
"""Fallback counters are kept per task (``judge_controls``: the planted contradictions)."""


class ConsistencyConfig(BaseModel):
    """Settings of ``plural eval consistency``."""

    model_config = ConfigDict(extra="forbid")

    users: int = Field(3, gt=0)
    """Users sampled (seeded) when ``user_ids`` is not given."""
    user_ids: list[str] | None = None
    """Evaluate exactly these users (unknown ids are an error)."""
    max_personas: int | None = Field(None, gt=0)
    """At most this many personas per user (the heaviest first); None: all."""
    turns: int = Field(5, ge=2, le=len(INTERVIEW))
    """Interviewer questions per persona (the first ``turns`` of :data:`INTERVIEW`)."""
    questions: int = Field(4, ge=1, le=8)
    """Multiple-choice questions the judge writes per persona."""
    options: int = Field(4, ge=2, le=6)
    """Options per question."""
    qa_every_turn: bool = True
    """Take the Q&A test after every persona turn (the paper) or only after the last."""
    max_line_chars: int = Field(240, ge=40, le=400)
    """Bound on a spoken line."""
    seed: int = 0
    """Seed of the user sample, the far-away titles and the template questions' option order."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples (over personas) of each metric's confidence interval."""

    @classmethod
    def from_options(cls, **options: Any) -> ConsistencyConfig:
        """Build from CLI options; a bad value is a :class:`UsageError` naming the option."""
        return config_from_options(cls, options)


# ---- what the LLMs must answer ------------------------------------------------------------
class _LineOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: str = Field(min_length=1, max_length=400)


class _QuestionOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=5, max_length=200)
    options: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(min_length=2, max_length=6)
    answer: int = Field(ge=1, le=6)


class _QuestionsOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[_QuestionOut] = Field(min_length=1, max_length=8)


class _AnswersOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answers: list[Annotated[int, Field(ge=1, le=6)]] = Field(min_length=1, max_length=8)


class _VerdictOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    consistent: bool
    conflicting_lines: list[Annotated[int, Field(ge=1)]]
    reason: str = Field(min_length=1, max_length=300)


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "speak_as_persona": _LineOut,
    "write_persona_questions": _QuestionsOut,
    "answer_persona_questions": _AnswersOut,
    "judge_consistency": _VerdictOut,
}
"""Prompt name -> the pydantic model that validates its answers (a test matches it to the prompt's schema)."""


# ---- the cases ----------------------------------------------------------------------------
@dataclass
class Question:
    """One multiple-choice question about a persona; ``answer`` is the right option's number (1-based)."""

    question: str
    options: list[str]
    answer: int


@dataclass
class Case:
    """One persona's interview, its test, and every verdict."""

    user_id: str
    persona: Persona
    liked: dict
    """``{item_id, title, categories}``: a title from the persona's evidence."""
    far: dict
    """A popular title sharing no category with the persona."""
    stance_categories: list[str]
    """The persona's main categories (what the heuristic judge counts as its likes)."""
    text_titles: list[str]
    """Titles the persona text mentions."""
    other_names: list[str]
    """Names of the user's other personas (distractors of the template name question)."""
    lines: list[dict] = field(default_factory=list)
    """``{kind, question, line, source}`` per turn."""
    questions: list[Question] = field(default_factory=list)
    questions_source: str = "template"
    qa: list[dict] = field(default_factory=list)
    """``{after_turn, answers, correct, source}`` per checkpoint."""
    p2l: list[dict] = field(default_factory=list)
    """``{consistent, reason, source}`` per line."""
    l2l: list[dict] = field(default_factory=list)
    """``{turn, conflicting, considered, reason, source}`` per line from the second on."""

    @property
    def text(self) -> dict:
        return {"name": self.persona.name, "description": self.persona.description}

    def conversation(self) -> list[dict]:
        return [{"question": t["question"], "line": t["line"]} for t in self.lines]

    def terms_titles(self) -> list[str]:
        return list(dict.fromkeys([self.liked["title"], self.far["title"], *self.text_titles]))

    # ---- scores (None when undefined) ------------------------------------------------------
    def prompt_to_line(self) -> float | None:
        return float(np.mean([v["consistent"] for v in self.p2l])) if self.p2l else None

    def line_to_line(self) -> float | None:
        considered = sum(v["considered"] for v in self.l2l)
        return 1.0 - sum(len(v["conflicting"]) for v in self.l2l) / considered if considered else None

    def qa_score(self) -> float | None:
        total = sum(len(c["correct"]) for c in self.qa)
        return sum(sum(c["correct"]) for c in self.qa) / total if total else None


# ---- the heuristic judge and the template speaker (smoke mode and fallbacks) ----------------
_NEGATION = re.compile(r"\b(?:not|no|never|avoid|avoids|dislike|dislikes|hate|hates|skip|nothing|neither|nor|"
                       r"none)\b|n't\b|\bswitch(?:ed)? off\b", re.IGNORECASE)
_CLAUSE = re.compile(r"[.;!?]+(?:\s|$)|\bbut\b|\bhowever\b", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(["a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "is", "are", "i", "you", "my", "your", "me", "it", "this", "that", "these", "those", "what", "which", "do", "does", "would", "most", "best", "as", "at", "by", "from", "be", "like", "films", "film", "titles", "movies"])


def _strip_titles(text: str, titles: Sequence[str]) -> str:
    """``text`` (lower-cased) with the titles cut out: "No Escape" must not read as a negation."""
    low = text.lower()
    for t in titles:
        for key in _title_keys(t):
            if len(key) >= 3:
                low = low.replace(key, " ")
    return low


def stances(line: str, categories: Sequence[str], titles: Sequence[str]) -> dict[str, set[int]]:
    """Term -> polarities (+1, -1) a line expresses, clause by clause: a clause with a negation
    word speaks negatively of the categories and titles it names."""
    out: dict[str, set[int]] = {}
    for clause in _CLAUSE.split(line):
        if not clause or not clause.strip():
            continue
        found = [f"title:{t}" for t in _mentions(clause, titles)]
        bare = _strip_titles(clause, titles)
        found += [f"category:{c}" for c in categories if _names_category(bare, {c: 1.0})]
        polarity = -1 if _NEGATION.search(bare) else 1
        for term in found:
            out.setdefault(term, set()).add(polarity)
    return out


def heuristic_prompt_verdict(case: Case, line: str, categories: Sequence[str]) -> tuple[bool, str]:
    """(consistent, reason): inconsistent when the line speaks only negatively of one of the
    persona's main categories or of a title its text mentions."""
    likes = {f"category:{c}" for c in case.stance_categories} | {f"title:{t}" for t in case.text_titles}
    st = stances(line, categories, case.terms_titles())
    bad = sorted(t for t in likes if st.get(t) == {-1})
    if bad:
        return False, f"speaks against {bad[0].split(':', 1)[1]}, which the persona likes"
    return True, "no negative mention of the persona's tastes"


def heuristic_line_conflicts(line: str, earlier: Sequence[str], categories: Sequence[str],
                             titles: Sequence[str]) -> list[int]:
    """Numbers (1-based) of earlier lines that speak of a category or title with the opposite
    polarity (a term a line speaks of both ways is ambiguous and ignored)."""
    now = {t: next(iter(p)) for t, p in stances(line, categories, titles).items() if len(p) == 1}
    out = []
    for n, before in enumerate(earlier, start=1):
        then = {t: next(iter(p)) for t, p in stances(before, categories, titles).items() if len(p) == 1}
        if any(then.get(t, pol) != pol for t, pol in now.items()):
            out.append(n)
    return out


_ARTICLE_LAST = re.compile(r"^(.*), (The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los)$")


def _clean_title(title: str) -> str:
    """``"Lion King, The (1994)"`` -> ``"The Lion King"``: how a person says a MovieLens title."""
    t = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()
    m = _ARTICLE_LAST.match(t)
    return f"{m.group(2)} {m.group(1)}" if m else t


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if not words:
        return ""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def template_line(case: Case, kind: str) -> str:
    """A deterministic line, built from the persona text and categories, for one interview question."""
    cats = _join(case.stance_categories[:2]) or "all kinds of"
    liked, far = _clean_title(case.liked["title"]), _clean_title(case.far["title"])
    far_cats = _join([c for c in case.far["categories"] if c not in case.persona.categories][:2])
    if kind == "recent":
        titles = [_clean_title(t) for t in case.text_titles[:2]]
        return f"Lately I have enjoyed {cats} films" + (f", such as {_join(titles)}." if titles else ".")
    if kind == "liked":
        shared = [c for c in case.liked["categories"] if c in case.stance_categories]
        if shared or case.liked["title"] in case.text_titles:
            return f"Yes, {liked} is exactly my kind of {shared[0] if shared else cats} film."
        return f"Maybe, since {liked} comes from the same shelf as the {cats} films I pick."
    if kind == "far":
        return f"Probably not; {far} is " + (f"{far_cats}, " if far_cats else "") + "which is not what I pick."
    if kind == "avoid":
        return (f"I would switch off a {far_cats} film" if far_cats else "I would switch off a film that drags") \
            + f"; give me {cats} instead."
    if kind == "summary":
        return f"In short, I am a {cats} viewer: {case.persona.description}"
    if kind == "choice":
        return f"{liked}, for sure; {far} is not for me."
    raise UsageError("interview question kind", kind, [k for k, _ in INTERVIEW])


def template_questions(case: Case, categories: Sequence[str], far_titles: Sequence[str], n_questions: int,
                       n_options: int, rng: np.random.Generator) -> list[Question]:
    """Up to three questions answerable from the persona text: its main category, its name among
    other names, a title it mentions (or its first evidence title) among far-away titles."""
    drafts: list[tuple[str, str, list[str]]] = []
    if case.stance_categories:
        wrong = [c for c in categories if c not in case.persona.categories]
        drafts.append(("Which kind of film is most your taste?", case.stance_categories[0], wrong))
    names = [n for n in dict.fromkeys(case.other_names) if n.lower() != case.persona.name.lower()]
    drafts.append(("Which of these names fits your taste best?", case.persona.name, names))
    right_title = (case.text_titles or [case.liked["title"]])[0]
    drafts.append(("Which of these titles would you most likely pick?", _clean_title(right_title),
                   [_clean_title(t) for t in far_titles if t != right_title]))
    out = []
    for question, right, wrong in drafts[:n_questions]:
        wrong = [w for w in dict.fromkeys(wrong) if w.lower() != right.lower()]
        if not wrong:
            continue
        pick = [wrong[k] for k in rng.permutation(len(wrong))[: n_options - 1]]
        options = [right, *pick]
        order = rng.permutation(len(options))
        options = [options[k] for k in order]
        out.append(Question(question, options, int(np.flatnonzero(order == 0)[0]) + 1))
    return out


def overlap_answer(question: Question, context: str) -> int:
    """The option (1-based) whose words the context holds most of (the first on ties)."""
    ctx = set(_TOKEN.findall(context.lower())) - _STOPWORDS
    best, best_score = 1, -1.0
    for k, opt in enumerate(question.options, start=1):
        words = set(_TOKEN.findall(opt.lower())) - _STOPWORDS
        score = len(words & ctx) / len(words) if words else 0.0
        if score > best_score:
            best, best_score = k, score
    return best


# ---- the evaluation ----------------------------------------------------------------------
class ConsistencyEvaluation:
    """One run over an engine's personas (see the module docstring).

    ``speaker`` plays the personas and takes the Q&A test; ``judge`` writes the test and judges
    the lines (default: the speaker). ``None`` means the deterministic fallback for that role.
    """

    def __init__(self, engine, config: ConsistencyConfig | None = None, speaker: LLMBackend | None = None,
                 judge: LLMBackend | None | str = "speaker",
                 progress: Callable[[str, int], Callable[..., None]] | None = None):
        self.engine = engine
        self.config = config or ConsistencyConfig()
        self.speaker = speaker
        self.judge = speaker if isinstance(judge, str) and judge == "speaker" else judge
        self.counters = {t: FallbackCounter() for t in TASKS}
        self.errors: list[str] = []
        self._progress = progress or (lambda desc, total: (lambda n=1: None))
        self.catalog = engine.catalog
        self.categories = list(self.catalog.categories)
        self._popular: list[int] | None = None

    # ---- choosing users and personas -------------------------------------------------------
    def _users(self) -> list[str]:
        cfg, history = self.config, self.engine.history
        if cfg.user_ids:
            for u in cfg.user_ids:
                if str(u) not in history:
                    raise UnknownUserError(str(u), history.user_ids)
            return [str(u) for u in dict.fromkeys(cfg.user_ids)]
        with_personas = [u for u in history.user_ids if len(history.positives(u)) > 0]
        if not with_personas:
            raise UsageError("dataset", "no user with liked items", "a dataset with positives (personas)")
        rng = np.random.default_rng(cfg.seed)
        picked = rng.choice(len(with_personas), size=min(cfg.users, len(with_personas)), replace=False)
        return [with_personas[k] for k in sorted(picked)]

    def _far_pool(self, exclude: set[int]) -> list[int]:
        """Popular items (most liked first), the pool far-away titles are drawn from."""
        if self._popular is None:  # the catalog and histories do not change during a run
            pop = self.engine.history.item_popularity(len(self.catalog))
            self._popular = [int(i) for i in np.lexsort((np.arange(len(pop)), -pop))[:300]]
        return [i for i in self._popular if i not in exclude]

    def _cases(self) -> list[Case]:
        cases = []
        for u in self._users():
            pset = self.engine.recommender.persona_set(u)
            personas = sorted(pset.personas, key=lambda p: -p.weight)[: self.config.max_personas]
            seen = {int(i) for i in self.engine.history.seen(u)}
            pool = self._far_pool(seen)
            for p in personas:
                rng = self._rng(u, p.persona_id)
                ev = [e for e in p.evidence if e in self.catalog]
                liked = self.catalog.get(ev[min(3, len(ev) - 1)]) if ev else self.catalog.item(pool[0])
                own = set(p.categories)
                far_pos = [i for i in pool if not own & set(self.catalog.item(i).categories)] or pool
                far = self.catalog.item(far_pos[int(rng.integers(min(len(far_pos), 50)))])
                main = [c for c, s in sorted(p.categories.items(), key=lambda kv: (-kv[1], kv[0])) if s >= 0.2]
                main = main or [c for c, _ in sorted(p.categories.items(), key=lambda kv: (-kv[1], kv[0]))][:1]
                ev_titles = self.catalog.titles(self.catalog.indices(ev[:40]))
                cases.append(Case(
                    user_id=u, persona=p,
                    liked={"item_id": liked.item_id, "title": liked.title, "categories": list(liked.categories)},
                    far={"item_id": far.item_id, "title": far.title, "categories": list(far.categories)},
                    stance_categories=main[:3],
                    text_titles=_mentions(f"{p.name}. {p.description}", ev_titles),
                    other_names=[q.name for q in pset.personas if q.persona_id != p.persona_id]))
        if not cases:
            raise UsageError("users", self.config.user_ids or self.config.users, "users who have personas")
        for c in cases:  # other users' names widen the pool of name distractors
            c.other_names += [d.persona.name for d in cases if d.user_id != c.user_id]
        return cases

    def _rng(self, *keys: str) -> np.random.Generator:
        # crc32, not hash(): str hashes change with every process
        return np.random.default_rng([self.config.seed, *(zlib.crc32(k.encode()) for k in keys)])

    # ---- LLM steps ---------------------------------------------------------------------------
    def _run(self, backend, prompt_name: str, jobs: list[Job], model: type[BaseModel], max_tokens: int,
             task: str):
        outcomes, err = run_validated(backend, load_prompt(prompt_name), jobs, model,
                                      SamplingConfig(max_tokens=max_tokens, frequency_penalty=0.3),
                                      self.counters[task], task=task)
        if err:
            self.errors.append(err)
        return outcomes

    def _record(self, task: str, outcome) -> str:
        if outcome.value is not None:
            self.counters[task].record(outcome.source)
            return outcome.source
        self.counters[task].record("template", outcome.reason)
        return "template"

    def _write_questions(self, cases: list[Case]) -> None:
        cfg = self.config
        prompt = load_prompt("write_persona_questions")
        schema = json.loads(json.dumps(prompt.output_schema))
        arr = schema["properties"]["questions"]
        arr.update(minItems=cfg.questions, maxItems=cfg.questions)
        item = arr["items"]["properties"]
        item["options"].update(minItems=cfg.options, maxItems=cfg.options)
        item["answer"] = {"type": "integer", "enum": list(range(1, cfg.options + 1))}

        def check(out: _QuestionsOut) -> list[Question]:
            if len(out.questions) != cfg.questions:
                raise Rejected("count", f"{len(out.questions)} questions instead of {cfg.questions}")
            seen_q: set[str] = set()
            qs = []
            for q in out.questions:
                text = " ".join(q.question.split())
                _check_prose(text, "question", 3)
                if text.lower() in seen_q:
                    raise Rejected("duplicate_question", f"the question {text!r} is asked twice")
                seen_q.add(text.lower())
                opts = [" ".join(o.split()) for o in q.options]
                if len(opts) != cfg.options:
                    raise Rejected("count", f"{text!r} has {len(opts)} options instead of {cfg.options}")
                if len({o.lower() for o in opts}) != len(opts) or not all(opts):
                    raise Rejected("duplicate_option", f"the options of {text!r} are not all different")
                if not 1 <= q.answer <= len(opts):
                    raise Rejected("answer_range", f"answer {q.answer} is not an option number 1..{len(opts)}")
                qs.append(Question(text, opts, q.answer))
            return qs

        jobs = [Job(variables={"persona": c.text, "n_questions": cfg.questions, "n_options": cfg.options},
                    schema=schema, check=check) for c in cases]
        outcomes = self._run(self.judge, "write_persona_questions", jobs, _QuestionsOut, 90 * cfg.questions,
                             "write_questions")
        for c, o in zip(cases, outcomes):
            c.questions_source = self._record("write_questions", o)
            if o.value is not None:
                c.questions = o.value
            else:
                c.questions = template_questions(c, self.categories, self._far_titles(c), cfg.questions,
                                                 cfg.options,
                                                 self._rng(c.user_id, c.persona.persona_id, "questions"))

    def _far_titles(self, case: Case) -> list[str]:
        own = set(case.persona.categories)
        return [self.catalog.title(i) for i in self._far_pool(set())
                if not own & set(self.catalog.item(i).categories)][:100]

    def _speak(self, cases: list[Case], turn: int) -> None:
        cfg = self.config
        kind, template = INTERVIEW[turn]
        prompt = load_prompt("speak_as_persona")
        schema = json.loads(json.dumps(prompt.output_schema))
        schema["properties"]["line"]["maxLength"] = cfg.max_line_chars
        jobs = []
        for c in cases:
            question = template.format(liked=_clean_title(c.liked["title"]), far=_clean_title(c.far["title"]))
            earlier = {t["line"].lower() for t in c.lines}

            def check(out: _LineOut, earlier=earlier) -> str:
                text = " ".join(out.line.split())
                _check_prose(text, "line", 2)
                if len(text) > cfg.max_line_chars:
                    raise Rejected("length", f"the line has {len(text)} characters (at most {cfg.max_line_chars})")
                if text.lower() in earlier:
                    raise Rejected("repeated_line", "the line repeats an earlier answer word for word")
                return text

            jobs.append(Job(variables={"persona": c.text, "conversation": c.conversation(), "question": question,
                                       "max_chars": cfg.max_line_chars},
                            schema=schema, check=check))
        outcomes = self._run(self.speaker, "speak_as_persona", jobs, _LineOut, 96, "speak")
        for c, job, o in zip(cases, jobs, outcomes):
            source = self._record("speak", o)
            line = o.value if o.value is not None else template_line(c, kind)
            c.lines.append({"turn": turn + 1, "kind": kind, "question": job.variables["question"], "line": line,
                            "source": source})

    def _answer(self, cases: list[Case]) -> None:
        prompt = load_prompt("answer_persona_questions")
        todo = [c for c in cases if c.questions]
        jobs = []
        for c in todo:
            schema = json.loads(json.dumps(prompt.output_schema))
            arr = schema["properties"]["answers"]
            prefix = [{"type": "integer", "enum": list(range(1, len(q.options) + 1))} for q in c.questions]
            arr.pop("items", None)
            arr.update(prefixItems=prefix, items=False, minItems=len(prefix), maxItems=len(prefix))

            def check(out: _AnswersOut, qs=c.questions) -> list[int]:
                if len(out.answers) != len(qs):
                    raise Rejected("count", f"{len(out.answers)} answers for {len(qs)} questions")
                for k, (a, q) in enumerate(zip(out.answers, qs), start=1):
                    if not 1 <= a <= len(q.options):
                        raise Rejected("answer_range", f"answer {a} to question {k} is not 1..{len(q.options)}")
                return list(out.answers)

            jobs.append(Job(variables={"persona": c.text, "conversation": c.conversation(),
                                       "questions": [{"question": q.question, "options": q.options}
                                                     for q in c.questions]},
                            schema=schema, check=check))
        outcomes = self._run(self.speaker, "answer_persona_questions", jobs, _AnswersOut, 8 + 4 * self.config.questions,
                             "answer_questions")
        for c, o in zip(todo, outcomes):
            source = self._record("answer_questions", o)
            if o.value is not None:
                answers = o.value
            else:
                # what the persona said against something (clauses with a negation) is not its taste
                said = [cl for t in c.lines for cl in _CLAUSE.split(t["line"]) if cl and not _NEGATION.search(cl)]
                context = " ".join([c.persona.name, c.persona.description, *c.stance_categories, *said])
                answers = [overlap_answer(q, context) for q in c.questions]
            c.qa.append({"after_turn": len(c.lines), "answers": answers,
                         "correct": [a == q.answer for a, q in zip(answers, c.questions)], "source": source})

    def _verdicts_against_persona(self, items: list[tuple[Case, str, str]], task: str) -> list[dict]:
        """Prompt-to-line verdicts for (case, question, line) items: ``{consistent, reason, source}``."""
        prompt = load_prompt("judge_consistency")
        schema = json.loads(json.dumps(prompt.output_schema))
        schema["properties"]["conflicting_lines"] = {"type": "array", "items": {"type": "integer", "enum": [1]},
                                                     "maxItems": 0}

        def check(out: _VerdictOut) -> tuple[bool, str]:
            if out.conflicting_lines:
                raise Rejected("verdict_mismatch", "conflicting_lines must be empty when judging against the persona")
            return out.consistent, " ".join(out.reason.split())

        jobs = [Job(variables={"mode": "prompt_to_line", "persona": c.text, "earlier_lines": [], "question": q,
                               "line": line}, schema=schema, check=check) for c, q, line in items]
        out = []
        for (c, _, line), o in zip(items, self._run(self.judge, "judge_consistency", jobs, _VerdictOut, 96, task)):
            source = self._record(task, o)
            consistent, reason = o.value if o.value is not None else heuristic_prompt_verdict(c, line,
                                                                                               self.categories)
            out.append({"consistent": bool(consistent), "reason": reason, "source": source})
        return out

    def _verdicts_against_earlier(self, items: list[tuple[Case, list[dict], str, str]], task: str) -> list[dict]:
        """Line-to-line verdicts for (case, earlier lines, question, line) items:
        ``{conflicting, considered, reason, source}``."""
        prompt = load_prompt("judge_consistency")
        jobs = []
        for c, earlier, question, line in items:
            k = len(earlier)
            schema = json.loads(json.dumps(prompt.output_schema))
            schema["properties"]["conflicting_lines"] = {
                "type": "array", "items": {"type": "integer", "enum": list(range(1, k + 1))}, "maxItems": k}

            def check(out: _VerdictOut, n=k) -> tuple[list[int], str]:
                bad = [i for i in out.conflicting_lines if not 1 <= i <= n]
                if bad:
                    raise Rejected("index_range", f"line {bad[0]} is not one of the earlier lines 1..{n}")
                lines = sorted(set(out.conflicting_lines))
                if out.consistent == bool(lines):
                    raise Rejected("verdict_mismatch", "consistent must be false exactly when lines conflict")
                return lines, " ".join(out.reason.split())

            jobs.append(Job(variables={"mode": "line_to_line", "persona": c.text,
                                       "earlier_lines": [{"question": t["question"], "line": t["line"]}
                                                         for t in earlier],
                                       "question": question, "line": line}, schema=schema, check=check))
        out = []
        outcomes = self._run(self.judge, "judge_consistency", jobs, _VerdictOut, 96, task)
        for (c, earlier, _, line), o in zip(items, outcomes):
            source = self._record(task, o)
            if o.value is not None:
                conflicting, reason = o.value
            else:
                conflicting = heuristic_line_conflicts(line, [t["line"] for t in earlier], self.categories,
                                                       c.terms_titles())
                reason = "heuristic: opposite stances on " + ("the same category or title" if conflicting
                                                              else "nothing")
            out.append({"conflicting": conflicting, "considered": len(earlier), "reason": reason, "source": source})
        return out

    def _judge_prompt_to_line(self, cases: list[Case]) -> None:
        pairs = [(c, t) for c in cases for t in c.lines]
        verdicts = self._verdicts_against_persona([(c, t["question"], t["line"]) for c, t in pairs],
                                                  "judge_prompt_to_line")
        for (c, t), v in zip(pairs, verdicts):
            c.p2l.append({"turn": t["turn"], **v})

    def _judge_line_to_line(self, cases: list[Case]) -> None:
        pairs = [(c, k) for c in cases for k in range(1, len(c.lines))]
        verdicts = self._verdicts_against_earlier(
            [(c, c.lines[:k], c.lines[k]["question"], c.lines[k]["line"]) for c, k in pairs], "judge_line_to_line")
        for (c, k), v in zip(pairs, verdicts):
            c.l2l.append({"turn": k + 1, **v})

    def _judge_controls(self, cases: list[Case]) -> dict:
        """Planted contradictions, one per persona and metric, scored by the same judge but never
        counted in the metrics: how many the judge catches tells whether a high score means
        consistent lines or a judge that never objects."""
        avoid_q, recent_q = INTERVIEW[3][1], INTERVIEW[0][1]
        todo = [c for c in cases if c.stance_categories]
        p2l = self._verdicts_against_persona(
            [(c, avoid_q, f"Honestly, I can't stand {c.stance_categories[0]} films.") for c in todo],
            "judge_controls")
        l2l = self._verdicts_against_earlier(
            [(c, [{"question": recent_q, "line": f"I love {c.stance_categories[0]} films more than anything."},
                  {"question": "How often do you watch films?", "line": "Most weekends, usually at home."}],
              avoid_q, f"I would switch off any {c.stance_categories[0]} film at once.") for c in todo],
            "judge_controls")

        def rate(found: list[bool], sources: list[str], by_llm: bool) -> dict:
            keep = [f for f, src in zip(found, sources) if (src != "template") == by_llm]
            return {"caught": sum(keep), "of": len(keep), "rate": _num(np.mean(keep)) if keep else None}

        caught_p = [not v["consistent"] for v in p2l]
        caught_l = [1 in v["conflicting"] for v in l2l]
        return {"planted": len(todo),
                "prompt_to_line": {"llm": rate(caught_p, [v["source"] for v in p2l], True),
                                   "fallback": rate(caught_p, [v["source"] for v in p2l], False)},
                "line_to_line": {"llm": rate(caught_l, [v["source"] for v in l2l], True),
                                 "fallback": rate(caught_l, [v["source"] for v in l2l], False)}}

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Interview, test, judge; returns the result document."""
        cfg = self.config
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        def timed(name: str, fn: Callable[[], None]) -> None:
            t = time.perf_counter()
            fn()
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t, 3)

        cases = self._cases()
        tick = self._progress("Persona interviews", cfg.turns + 3)  # questions, turns, two judge steps
        timed("write_questions", lambda: self._write_questions(cases))
        tick()
        for turn in range(cfg.turns):
            timed("speak", lambda turn=turn: self._speak(cases, turn))
            if cfg.qa_every_turn or turn == cfg.turns - 1:
                timed("answer_questions", lambda: self._answer(cases))
            tick()
        timed("judge_prompt_to_line", lambda: self._judge_prompt_to_line(cases))
        tick()
        timed("judge_line_to_line", lambda: self._judge_line_to_line(cases))
        t = time.perf_counter()
        controls = self._judge_controls(cases)
        timings["judge_controls"] = round(time.perf_counter() - t, 3)
        tick()
        timings["total"] = round(time.perf_counter() - t0, 3)
        return self._document(cases, timings, controls)

    def _mode(self) -> str:
        if self.speaker is None and self.judge is None:
            return "smoke"
        if self.judge is None:
            return "heuristic_judge"
        if self.speaker is None:
            return "template_speaker"
        return "measurement"

    def _document(self, cases: list[Case], timings: dict, controls: dict) -> dict:
        cfg = self.config
        metrics = {}
        for name, fn in (("prompt_to_line", Case.prompt_to_line), ("line_to_line", Case.line_to_line),
                         ("qa", Case.qa_score)):
            values = np.array([np.nan if (v := fn(c)) is None else v for c in cases], dtype=np.float64)
            ci = bootstrap_ci(values, n_resamples=cfg.bootstrap, seed=cfg.seed)
            metrics[name] = {"mean": _num(ci.mean), "ci95": [_num(ci.low), _num(ci.high)], "n": ci.n}
        checkpoints = sorted({q["after_turn"] for c in cases for q in c.qa})
        qa_by_turn = []
        for t in checkpoints:
            right = [x for c in cases for q in c.qa if q["after_turn"] == t for x in q["correct"]]
            qa_by_turn.append({"after_turn": t, "accuracy": _num(np.mean(right)) if right else None,
                               "answers": len(right)})
        total = FallbackCounter()
        for counter in self.counters.values():
            total = total.merge(counter)

        def describe(backend) -> dict:
            return {"backend": backend.name, "model": backend.model_name} if backend is not None else \
                {"backend": "none", "model": None}

        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "consistency",
            "dataset": self.engine.manifest["dataset"]["name"],
            "mode": self._mode(),
            "speaker": describe(self.speaker),
            "judge": describe(self.judge),
            "config": cfg.model_dump(mode="json"),
            "interview": [q for _, q in INTERVIEW[: cfg.turns]],
            "users": sorted({c.user_id for c in cases}, key=lambda u: (not u.isdigit(), int(u) if u.isdigit() else 0, u)),
            "personas_evaluated": len(cases),
            "metrics": metrics,
            "qa_by_turn": qa_by_turn,
            "judge_sensitivity": controls,
            "fallbacks": {**{t: c.as_dict() for t, c in self.counters.items()}, "total": total.as_dict()},
            "llm_error": self.errors[0] if self.errors else None,
            "prompts": {n: load_prompt(n).sha256[:12] for n in OUTPUT_MODELS},
            "personas": [self._row(c) for c in cases],
            "timings_s": timings,
        }

    @staticmethod
    def _row(c: Case) -> dict:
        return {
            "user_id": c.user_id, "persona_id": c.persona.persona_id, "name": c.persona.name,
            "description": c.persona.description, "text_source": c.persona.text_source,
            "version": c.persona.version,
            "scores": {"prompt_to_line": _num(c.prompt_to_line()), "line_to_line": _num(c.line_to_line()),
                       "qa": _num(c.qa_score())},
            "probes": {"liked": c.liked["title"], "far": c.far["title"]},
            "dialogue": [{**t, "prompt_to_line": p, "line_to_line": next((x for x in c.l2l if x["turn"] == t["turn"]),
                                                                          None)}
                         for t, p in zip(c.lines, c.p2l)],
            "questions": [{"question": q.question, "options": q.options, "answer": q.answer} for q in c.questions],
            "questions_source": c.questions_source,
            "qa": c.qa,
        }


@contextmanager
def evaluation_engine(source, engine_config=None, data_dir: str | Path | None = None, *, progress: bool = False
                      ) -> Iterator:
    """The engine whose personas are interviewed, closed on exit.

    ``data_dir``: an existing data directory, opened with the source and settings it was built
    with, personas as they are now (after chats and refinements). Otherwise a fresh build of
    ``source`` in a temporary folder, so that a run does not depend on what earlier sessions
    did to the cached personas.
    """
    from agent.engine import Engine

    if data_dir is not None:
        engine = Engine.open_data_dir(data_dir)
        try:
            yield engine
        finally:
            engine.close()
        return
    with tempfile.TemporaryDirectory(prefix="plural-eval-consistency-") as tmp:
        engine = Engine.open(source, engine_config, Path(tmp) / "data", progress=progress)
        try:
            yield engine
        finally:
            engine.close()


def run_consistency_eval(engine, config: ConsistencyConfig | None = None, speaker: LLMBackend | None = None,
                         judge: LLMBackend | None | str = "speaker", progress=None) -> dict:
    """Run :class:`ConsistencyEvaluation`; returns the result document."""
    return ConsistencyEvaluation(engine, config, speaker, judge, progress).run()


# ---- reports ----------------------------------------------------------------------------------
_fmt = functools.partial(fmt_cell, digits=3)
_MODE_NOTES = {
    "smoke": "**Smoke mode, not a measurement.** No LLM was configured: the speaker is a deterministic template "
             "built from the persona text, the judge a keyword heuristic, the test template questions answered by "
             "word overlap. These numbers show that the pipeline runs; they say nothing about persona consistency.",
    "heuristic_judge": "**Heuristic judge.** The lines come from the speaker LLM but the verdicts, the test and "
                       "its grading come from deterministic fallbacks: an indication, not the paper's measurement.",
    "template_speaker": "**Template speaker.** The judge is an LLM but the lines are deterministic templates: "
                        "this measures the judge, not the agent.",
    "measurement": "Speaker and judge are LLMs; every template fallback is counted below.",
}


def markdown_consistency_report(doc: dict) -> str:
    """The run as Markdown: the mode, the three metrics with CIs, Q&A by turn, fallbacks, per persona rows."""
    m = doc["metrics"]
    out = [f"# Persona consistency: {doc['dataset']}", "", _MODE_NOTES[doc["mode"]], "",
           (f"Speaker: `{doc['speaker']['backend']}` ({doc['speaker']['model']}); judge: "
            f"`{doc['judge']['backend']}` ({doc['judge']['model']}). {doc['personas_evaluated']} personas of users "
            f"{', '.join(doc['users'])}; {doc['config']['turns']} interview turns, {doc['config']['questions']} "
            f"questions of {doc['config']['options']} options, Q&A "
            f"{'after every turn' if doc['config']['qa_every_turn'] else 'at the end'}. "
            f"Run time {doc['timings_s']['total']:.1f} s."), "",
           "| metric (arXiv 2511.00222) | mean | 95% CI (bootstrap over personas) | personas |", "|---|---|---|---|"]
    names = {"prompt_to_line": "prompt-to-line", "line_to_line": "line-to-line", "qa": "Q&A"}
    for key, label in names.items():
        d = m[key]
        out.append(f"| {label} | {_fmt(d['mean'])} | [{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}] | {d['n']} |")
    js = doc["judge_sensitivity"]

    def caught(d: dict) -> str:
        parts = [f"{who} caught {d[who]['caught']} of {d[who]['of']}" for who in ("llm", "fallback") if d[who]["of"]]
        return "; ".join(parts) or "none judged"

    out += ["", (f"Judge sensitivity ({js['planted']} planted contradictions per metric, one per persona, not "
                 f"counted above): prompt-to-line: {caught(js['prompt_to_line'])}; line-to-line: "
                 f"{caught(js['line_to_line'])} (`llm`: verdicts of the judge model; `fallback`: the heuristic, "
                 f"where the model's verdict was invalid). A judge that misses planted contradictions cannot make a "
                 f"high score mean much.")]
    out += ["", "Q&A accuracy after each turn: " + ", ".join(
        f"turn {q['after_turn']}: {_fmt(q['accuracy'])}" for q in doc["qa_by_turn"]), "",
        "## LLM outputs: model or fallback", "",
        "| task | results | from the LLM (first + retry) | fallback | reasons |", "|---|---|---|---|---|"]
    for task in (*TASKS, "total"):
        f = doc["fallbacks"][task]
        out.append(f"| {task} | {f['total']} | {f['llm']} + {f['llm_retry']} | {f['template']} "
                   f"({100 * f['fallback_rate']:.0f}%) | {f['fallbacks'] or '–'} |")
    if doc.get("llm_error"):
        out += ["", f"LLM error: `{doc['llm_error']}`"]
    out += ["", "## Per persona", "", "| user | persona | name | prompt-to-line | line-to-line | Q&A | questions |",
            "|---|---|---|---|---|---|---|"]
    for r in doc["personas"]:
        s = r["scores"]
        out.append(f"| {r['user_id']} | {r['persona_id']} | {r['name']} | {_fmt(s['prompt_to_line'])} | "
                   f"{_fmt(s['line_to_line'])} | {_fmt(s['qa'])} | {r['questions_source']} |")
    if doc["personas"]:
        r = doc["personas"][0]
        out += ["", f"## Example interview: user {r['user_id']}, {r['persona_id']} ({r['name']})", "",
                f"> {r['description']}", ""]
        for t in r["dialogue"]:
            verdict = "consistent" if t["prompt_to_line"]["consistent"] else "CONTRADICTS the persona"
            l2l = t["line_to_line"]
            conflicts = f"; conflicts with lines {l2l['conflicting']}" if l2l and l2l["conflicting"] else ""
            out.append(f"- **Q{t['turn']}** {t['question']}  \n  **A** {t['line']} _({t['source']}; "
                       f"{verdict}{conflicts})_")
    out += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in doc["timings_s"].items()), ""]
    return "\n".join(out)


def write_consistency_reports(doc: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``results.json`` and ``results.md``; returns their paths."""
    from evals.report import write_json_and_markdown

    return {k: str(v) for k, v in write_json_and_markdown(doc, out_dir, markdown_consistency_report(doc)).items()}
