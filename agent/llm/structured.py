"""JSON schemas for constrained decoding, and tolerant parsing of what a model actually wrote.

Grammar engines (xgrammar, vLLM's structured outputs) and OpenAI's ``response_format`` all
prefer self-contained schemas, so :func:`json_schema_of` inlines pydantic's ``$defs`` and
closes objects (``additionalProperties: false``). :func:`parse_structured` accepts the JSON
object even when a model wraps it in a code fence or prose (servers that ignore
``response_format`` do that), then validates it with pydantic.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.llm.base import StructuredOutputError

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _inline(node: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    if depth > 32:  # a recursive model; grammar engines could not use it anyway
        raise ValueError("schema nests more than 32 levels (recursive model?)")
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs, depth + 1)
        out = {k: _inline(v, defs, depth + 1) for k, v in node.items() if k != "$defs"}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_inline(v, defs, depth + 1) for v in node]
    return node


def close_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with ``$defs`` inlined and every object closed to extra keys."""
    return _inline(schema, schema.get("$defs", {}))


def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The self-contained JSON schema of a pydantic model (for constrained decoding)."""
    return close_schema(model.model_json_schema())


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (inside a code fence or not).

    Raises ``ValueError`` when there is none.

    Example:
        >>> extract_json('Sure! ```json\\n{"a": 1}\\n``` hope it helps')
        {'a': 1}
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    dec = json.JSONDecoder()
    for cand in candidates:
        s = cand.strip()
        try:
            return json.loads(s)
        except ValueError:
            pass
        for i, ch in enumerate(s):
            if ch in "{[":
                try:
                    return dec.raw_decode(s, i)[0]
                except ValueError:
                    continue
    raise ValueError("no JSON object found")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_structured(text: str, model: type[T]) -> T:
    """Parse ``text`` as JSON and validate it as ``model``.

    Raises :class:`StructuredOutputError` with reason ``invalid_json`` or ``schema`` and a
    message short enough to show the model in a retry.
    """
    try:
        data = extract_json(text)
    except ValueError:
        raise StructuredOutputError(
            "invalid_json", f"the answer is not valid JSON: {_short(text)!r}"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise StructuredOutputError("schema", f"the JSON does not match the schema: {problems}") from None
