"""Prompt templates as files, and the small loader that renders them to chat messages.

Each prompt is two files in this folder:

* ``NAME.j2``: a Jinja2 template (strict: an undefined variable is an error). Lines
  ``=== system ===``, ``=== user ===`` and ``=== assistant ===`` start the chat turns.
* ``NAME.json``: ``{"description": ..., "inputs": {variable: what it is}, "output_schema": {...}}``
  and optionally ``"example_titles"`` (titles of a worked example inside the template).
  ``inputs`` must name exactly the template's variables (checked at load); ``output_schema`` is
  the JSON schema of the answer (``null`` for free text). Code narrows it per call (persona
  ids as an ``enum``, say) but never loosens it.

User and item text is untrusted: templates put it inside delimited data sections through the
``data`` filter, which writes every value as a one-line JSON literal (no raw newlines, no
``<``/``>``), so data can neither fake a chat turn nor close its section; the system turn tells
the model that data sections are not instructions.

``Prompt.sha256`` hashes both files; results carry it as the prompt's version.

Example:
    >>> p = load_prompt("select_persona")
    >>> msgs = p.render(personas=[{"label": "Noir (p1)", "description": "Dark crime films."}],
    ...                 item={"title": "Heat (1995)", "categories": ["Crime"]})
    >>> [m["role"] for m in msgs]
    ['system', 'user', 'assistant', 'user']
    >>> p.output_schema["required"]
    ['persona']
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from memory.errors import PluralError, UsageError

PROMPT_DIR = Path(__file__).resolve().parent
_ROLE_LINE = re.compile(r"^=== (system|user|assistant) ===[ \t]*\n?", re.MULTILINE)


class PromptSpecError(PluralError):
    """A prompt's files disagree (declared inputs differ from the template's variables, bad JSON...)."""


def _data(value: Any) -> str:
    """One-line JSON literal of ``value`` with ``<`` and ``>`` escaped (see the module docstring)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises the UndefinedError that names the missing attribute
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["data"] = _data
    return env


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: render it with exactly its declared inputs."""

    name: str
    description: str
    inputs: dict[str, str]
    """Variable name -> what it holds."""
    output_schema: dict[str, Any] | None
    """JSON schema of the answer, or ``None`` for free text."""
    sha256: str
    """Hash of the template and its spec: the prompt's version in provenance."""
    template: jinja2.Template = field(repr=False, compare=False)
    example_titles: tuple[str, ...] = ()
    """Titles used only in the prompt's worked example: an answer that mentions one copied the example."""

    def example_answers(self) -> list[str]:
        """The worked-example answers written into the template (its static assistant turns).

        An answer that repeats their wording copied the example instead of answering.
        """
        source = (PROMPT_DIR / f"{self.name}.j2").read_text(encoding="utf-8")
        turns = _split_turns(self.name, source)
        return [t["content"] for t in turns if t["role"] == "assistant" and "{{" not in t["content"]]

    @property
    def version(self) -> str:
        """``name@hash12``, short enough for logs."""
        return f"{self.name}@{self.sha256[:12]}"

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """The chat turns (``[{"role": ..., "content": ...}]``) for these variables.

        Raises :class:`UsageError` when a declared input is missing, an unknown one is given,
        or the template reaches for something the values do not have.
        """
        given, declared = set(variables), set(self.inputs)
        if given != declared:
            missing, extra = sorted(declared - given), sorted(given - declared)
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unexpected {', '.join(extra)}"] if extra else []
            )
            raise UsageError(
                f"variables for prompt {self.name!r}",
                sorted(given),
                f"exactly {sorted(declared)} ({'; '.join(parts)})",
            )
        try:
            text = self.template.render(**variables)
        except jinja2.UndefinedError as e:
            raise UsageError(
                f"variables for prompt {self.name!r}", sorted(given), f"values that have {e}"
            ) from None
        return _split_turns(self.name, text)


def _split_turns(name: str, text: str) -> list[dict[str, str]]:
    marks = list(_ROLE_LINE.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise PromptSpecError(f"prompt {name!r} must start with a '=== system ===' or '=== user ===' line")
    turns = []
    for m, nxt in zip(marks, marks[1:] + [None]):
        content = text[m.end() : nxt.start() if nxt else len(text)].strip()
        turns.append({"role": m.group(1), "content": content})
    return turns


def list_prompts() -> list[str]:
    """Names of the prompts in this folder."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.j2"))


@cache
def load_prompt(name: str) -> Prompt:
    """Load ``NAME.j2`` + ``NAME.json``; unknown names raise :class:`UsageError` listing the prompts."""
    tpl_path, spec_path = PROMPT_DIR / f"{name}.j2", PROMPT_DIR / f"{name}.json"
    if not re.fullmatch(r"[a-z0-9_]+", name) or not tpl_path.is_file():
        raise UsageError("prompt", name, list_prompts())
    if not spec_path.is_file():
        raise PromptSpecError(
            f"prompt {name!r} has no {spec_path.name} declaring its inputs and output schema"
        )
    source, spec_bytes = tpl_path.read_text(encoding="utf-8"), spec_path.read_bytes()
    try:
        spec = json.loads(spec_bytes)
    except ValueError as e:
        raise PromptSpecError(f"{spec_path}: not valid JSON: {e}") from None
    env = _environment()
    used = jinja2.meta.find_undeclared_variables(env.parse(source))
    declared = set(spec.get("inputs", {}))
    if used != declared:
        raise PromptSpecError(
            f"prompt {name!r}: {spec_path.name} declares inputs {sorted(declared)} "
            f"but the template uses {sorted(used)}"
        )
    digest = hashlib.sha256(source.encode("utf-8") + b"\0" + spec_bytes).hexdigest()
    return Prompt(
        name=name,
        description=spec.get("description", ""),
        inputs=dict(spec["inputs"]),
        output_schema=spec.get("output_schema"),
        sha256=digest,
        example_titles=tuple(spec.get("example_titles", ())),
        template=env.from_string(source),
    )
