"""The one parsing layer: untrusted input becomes typed messages here, or a clear error.

Models are strict (no type coercion, no unknown fields, no NaN, no control
characters in text); a failure is reported as `BadRequest` naming the first
offending field and why. The input value itself is never echoed back: it may
hold patient data (an unknown key is named only when it looks like a field name).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Strict,
    StringConstraints,
    ValidationError,
)

from server.errors import BadRequest, PayloadTooLarge

SHORT_TEXT_MAX_CHARS = 200
LONG_TEXT_MAX_CHARS = 4000
LIST_MAX_ITEMS = 50
# A person's display name: invites store it and join tokens carry it (auth checks the same limit).
NAME_MAX_CHARS = 128
# An unknown key is echoed in an error only if it looks like this (else it may be patient data).
FIELD_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
# C0 control characters except tab, line feed and carriage return (NUL breaks PostgreSQL text),
# DEL and C1 controls, and the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
# U+2066-U+2069) that make text read differently from what it holds ("Trojan Source").
CONTROL_CHARS_PATTERN = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
)

M = TypeVar("M", bound=BaseModel)


def _no_control_chars(value: str) -> str:
    if CONTROL_CHARS_PATTERN.search(value):
        raise ValueError(
            "must not contain control characters or bidirectional overrides"
            " (only tab and line breaks)"
        )
    return value


# Trimmed, non-empty strings of bounded length, without control characters.
NoControlChars = AfterValidator(_no_control_chars)
ShortText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=SHORT_TEXT_MAX_CHARS),
    NoControlChars,
]
LongText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=LONG_TEXT_MAX_CHARS),
    NoControlChars,
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX_CHARS),
    NoControlChars,
]
# Enum fields accept their string values (strict mode would demand enum instances).
E = TypeVar("E")
Choice = Annotated[E, Strict(False)]


class StrictModel(BaseModel):
    """Base of every message: strict types, unknown fields refused, immutable."""

    model_config = ConfigDict(
        strict=True, extra="forbid", allow_inf_nan=False, frozen=True, str_max_length=20000
    )


def parse(model: type[M], data: Any) -> M:
    """Validate already-decoded data (a Socket.IO event, a query) into `model`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _bad_request(exc) from None


def parse_json(model: type[M], body: bytes, *, max_bytes: int) -> M:
    """Decode a JSON body and validate it into `model`."""
    return parse(model, decode_json(body, max_bytes=max_bytes))


def decode_json(body: bytes, *, max_bytes: int) -> dict[str, Any]:
    """Decode a JSON body that must be an object (not yet validated)."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    if not body.strip():
        raise BadRequest("the body is empty; a JSON object is expected", code="invalid_json")
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid UTF-8 JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _bad_request(exc: ValidationError) -> BadRequest:
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        *parents, key = first["loc"]
        if isinstance(key, str) and FIELD_NAME_PATTERN.fullmatch(key):
            return BadRequest(f"unknown field '{field}'", code="unknown_field", field=field)
        parent = ".".join(str(part) for part in parents) or None
        message = f"unknown field in '{parent}'" if parent else "unknown field"
        return BadRequest(message, code="unknown_field", field=parent)
    if kind == "missing":
        return BadRequest(f"'{field}' is required", code="missing_field", field=field)
    where = f"'{field}': " if field else ""
    message = first["msg"].removeprefix("Value error, ")
    return BadRequest(f"{where}{message}", code="invalid_field", field=field)
