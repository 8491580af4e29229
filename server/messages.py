"""The one parsing layer: untrusted input becomes typed messages here, or a clear error.

Models are strict (no type coercion, no unknown fields, no NaN); a failure is
reported as `BadRequest` naming the first offending field and why. The input
value itself is never echoed back: it may hold patient data.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Strict, StringConstraints, ValidationError

from server.errors import BadRequest, PayloadTooLarge

SHORT_TEXT_MAX_CHARS = 200
LONG_TEXT_MAX_CHARS = 4000
LIST_MAX_ITEMS = 50

M = TypeVar("M", bound=BaseModel)

# A trimmed, non-empty string of bounded length.
ShortText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=SHORT_TEXT_MAX_CHARS)
]
LongText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LONG_TEXT_MAX_CHARS)
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
    return parse(model, data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _bad_request(exc: ValidationError) -> BadRequest:
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        return BadRequest(f"unknown field '{field}'", code="unknown_field", field=field)
    if kind == "missing":
        return BadRequest(f"'{field}' is required", code="missing_field", field=field)
    where = f"'{field}': " if field else ""
    message = first["msg"].removeprefix("Value error, ")
    return BadRequest(f"{where}{message}", code="invalid_field", field=field)
