"""A toy language model: deterministic answers, a chat template and a tokenizer, for the fakes.

It answers ``You said: <the last user turn>``; with ``temperature > 0`` it appends one word
drawn from a seeded generator; given a JSON schema it writes the smallest instance valid under
it. A token is a word or a punctuation mark with the whitespace before it, so detokenising is
concatenation and a cut at ``max_tokens`` is a prefix of the full answer.

Example:
    >>> prompt = render_chat([{"role": "user", "content": "Say OK."}])
    >>> reply(prompt)
    'You said: Say OK.'
    >>> tokenize("You said: Say OK.")
    ['You', ' said', ':', ' Say', ' OK', '.']
    >>> json_answer({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]})
    '{"a":"x"}'
"""

from __future__ import annotations

import json
import random
import re
import zlib
from typing import Any

EOS_TOKEN_ID = 2
"""The end-of-sequence token (counted in ``token_ids`` when the model ends on its own)."""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""The template :func:`render_chat` implements, in the Jinja form tokenizers carry."""

WORDS = ("amber", "blue", "coral", "dune", "ember", "fern", "gold", "heath", "indigo", "jade")
"""What a sampled answer may end with."""

_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
_USER_TURN = re.compile(r"<\|user\|>\n(.*?)<\|end\|>", re.DOTALL)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation as one prompt string, in :data:`CHAT_TEMPLATE`."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def tokenize(text: str) -> list[str]:
    """Tokens whose concatenation is ``text``."""
    return _TOKEN.findall(text)


def token_id(token: str) -> int:
    """A stable id for a token (never :data:`EOS_TOKEN_ID`)."""
    return 3 + zlib.crc32(token.encode()) % 49_997


def encode(text: str) -> list[int]:
    return [token_id(t) for t in tokenize(text)]


def reply(prompt: str, *, temperature: float = 0.0, rng: random.Random | None = None) -> str:
    """The full answer to a rendered prompt (or a raw one, without chat markup)."""
    turns = _USER_TURN.findall(prompt)
    said = (turns[-1] if turns else prompt).strip()
    text = f"You said: {said}"
    if temperature > 0:
        text += " " + (rng or random.Random()).choice(WORDS)
    return text


def minimal_instance(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """The smallest value valid under ``schema`` (first enum value, required keys only, ...).

    Raises ``ValueError`` for a ``$ref`` that does not resolve, as a grammar compiler would.
    """
    root = schema if root is None else root
    if "$ref" in schema:
        ref = schema["$ref"]
        node: Any = root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else [None]:
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"cannot resolve $ref {ref!r} in the JSON schema")
            node = node[part]
        return minimal_instance(node, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: minimal_instance(props.get(k, {}), root) for k in schema.get("required", [])}
    if kind == "array":
        return [minimal_instance(schema.get("items", {}), root) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * max(1, min(schema.get("minLength", 1), schema.get("maxLength", 1 << 30)))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        value = max(0, low)
        high = schema.get("maximum", schema.get("exclusiveMaximum", value + 1) - 1)
        value = min(value, high)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    return None  # "null", or an empty schema (anything goes)


def json_answer(schema: dict[str, Any] | str, compact: bool = True) -> str:
    """:func:`minimal_instance` as JSON text (``compact``: without whitespace, as vLLM's
    ``disable_any_whitespace`` decodes)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise TypeError(f"a JSON schema must be an object, got {type(schema).__name__}")
    value = minimal_instance(schema)
    return json.dumps(value, separators=(",", ":") if compact else (", ", ": "))
