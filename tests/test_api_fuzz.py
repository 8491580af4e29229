"""Random bodies, queries, ids and headers at every endpoint: always a clear 4xx, never a change."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext
from server.web.keys import STORE

# The app runs on each records store.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CONTEXT_FIELDS = sorted(ClinicalContext.model_fields)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["routine", "urgent", "emergency", "breast", "linear", "b_mode", "expert"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
plausible = st.text(min_size=1, max_size=50) | json_values
context_like = st.fixed_dictionaries(
    {"clinical_question": plausible, "urgency": plausible},
    optional={f: plausible for f in CONTEXT_FIELDS if f not in {"clinical_question", "urgency"}},
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    context_like.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from([*CONTEXT_FIELDS, "mrn", "name"]), json_values, max_size=8).map(
        lambda v: json.dumps(v).encode()
    ),
    st.binary(max_size=300),
)

names = st.one_of(
    st.text(min_size=1, max_size=40),
    # Text with a control character somewhere in it.
    st.tuples(st.text(max_size=10), st.characters(max_codepoint=0x1F), st.text(max_size=10)).map(
        "".join
    ),
    st.text(min_size=120, max_size=260),
    st.sampled_from(["Dr Lee", "Søren Ørsted", "李医生", "  ", "a\u0000", "x" * 128, "x" * 129]),
    json_values,
)
# Mostly the invitable roles, so the 201 path is exercised; some junk.
ROLES_AND_JUNK = ["operator", "expert", "observer"] * 3 + ["coordinator", "Expert", "", 1, None]
invite_like = st.fixed_dictionaries({"role": st.sampled_from(ROLES_AND_JUNK), "name": names})
invite_with_extra = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES_AND_JUNK), "name": names},
    optional={"mrn": json_values, "consultation": json_values},
)


def invite_or_any_body(kind: int) -> st.SearchStrategy[bytes]:
    """Mostly invite-shaped bodies, so that the 201 path is exercised; any body otherwise."""
    if kind == 0:
        return bodies
    shape = invite_with_extra if kind == 1 else invite_like
    return shape.map(lambda v: json.dumps(v).encode())


invite_bodies = st.integers(0, 3).flatmap(invite_or_any_body)


def random_encoding(text: str) -> str:
    """latin-1 for some texts, UTF-8 for others (both reach servers in the wild)."""
    return "latin-1" if len(text) % 2 else "utf-8"


def assert_error_shape(status: int, body: Any) -> None:
    assert 400 <= status < 500, (status, body)
    error = body["error"]
    assert set(error) == {"code", "message", "field"}
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in error["message"]


async def count_records(client: TestClient[Any, Any]) -> tuple[int, int]:
    store = client.app[STORE]
    consultations = await store.list_consultations(set(State))
    participants = sum([len(await store.participants(c.id)) for c in consultations])
    return len(consultations), participants


@FUZZ
@given(body=bodies)
async def test_random_consultation_bodies(
    client: TestClient[Any, Any], coordinator: dict[str, str], body: bytes
) -> None:
    before = await count_records(client)
    response = await client.post("/api/consultations", data=body, headers=coordinator)
    payload = await response.json()
    if response.status == 201:
        assert (await count_records(client))[0] == before[0] + 1
        again = await client.get(f"/api/consultations/{payload['id']}", headers=coordinator)
        assert (await again.json())["context"] == payload["context"]
    else:
        assert_error_shape(response.status, payload)
        assert await count_records(client) == before


@FUZZ
@given(body=invite_bodies)
async def test_random_invite_bodies(
    client: TestClient[Any, Any], coordinator: dict[str, str], body: bytes
) -> None:
    queue = (await (await client.get("/api/consultations", headers=coordinator)).json())[
        "consultations"
    ]
    if not queue:
        created = await client.post(
            "/api/consultations",
            json={
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
            },
            headers=coordinator,
        )
        queue = [await created.json()]
    before = await count_records(client)
    response = await client.post(
        f"/api/consultations/{queue[0]['id']}/invites", data=body, headers=coordinator
    )
    payload = await response.json()
    if response.status == 201:
        assert payload["participant"]["role"] in {"operator", "expert", "observer"}
        assert (await count_records(client))[1] == before[1] + 1
        joined = await client.get(
            f"/api/consultations/{queue[0]['id']}",
            headers={"Authorization": f"Bearer {payload['token']}"},
        )
        assert joined.status == 200, await joined.text()
    else:
        assert_error_shape(response.status, payload)
        assert await count_records(client) == before


@FUZZ
@given(
    query=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
    consultation_id=st.text(max_size=40),
)
async def test_random_queries_and_ids(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    query: dict[str, str],
    consultation_id: str,
) -> None:
    response = await client.get("/api/consultations", params=query, headers=coordinator)
    if response.status != 200:
        assert_error_shape(response.status, await response.json())
    response = await client.get(f"/api/consultations/{consultation_id}", headers=coordinator)
    assert response.status in {404, 405} or (response.status == 200 and consultation_id == "")
    if response.status == 404:
        assert_error_shape(404, await response.json())


# Header bytes an HTTP parser lets through: visible ASCII, space, tab and obs-text (0x80-0xFF).
header_bytes = st.binary(max_size=200).map(
    lambda b: bytes(c for c in b if c in (0x09, 0x20) or 0x21 <= c <= 0x7E or c >= 0x80)
)
token_parts = st.text(st.characters(min_codepoint=0x2D, max_codepoint=0x7A), max_size=60)


@FUZZ
@given(
    header=st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(
            str.encode
        ),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300).map(
            lambda t: f"Bearer {t}".encode()
        ),
        st.lists(token_parts, min_size=3, max_size=3).map(
            lambda parts: ("Bearer " + ".".join(parts)).encode()
        ),
        # Non-ASCII: raw bytes (invalid UTF-8 included) and latin-1 / UTF-8 text.
        header_bytes.map(lambda b: b"Bearer " + b),
        st.lists(header_bytes, min_size=3, max_size=3).map(lambda p: b"Bearer " + b".".join(p)),
        st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
            max_size=100,
        ).map(lambda t: ("Bearer " + t).encode(random_encoding(t))),
    )
)
async def test_random_authorization_headers_are_refused(
    client: TestClient[Any, Any],
    raw_request: Callable[..., Awaitable[tuple[int, Any]]],
    header: bytes,
) -> None:
    before = await count_records(client)
    body = json.dumps(
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"}
    ).encode()
    status, payload = await raw_request(
        "POST",
        "/api/consultations",
        headers={"Authorization": header, "Content-Type": b"application/json"},
        body=body,
    )
    assert status == 401, (header, payload)
    assert_error_shape(401, payload)
    assert await count_records(client) == before


# Uploads: random bytes, truncated and bit-flipped PNGs and DICOM files.
def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


VALID_PNG = _png()


def _dicom() -> bytes:
    from test_priors import hospital_file

    return hospital_file()


VALID_DICOM = _dicom()
uploads = st.one_of(
    st.lists(st.tuples(st.integers(0, 1200), st.integers(1, 255)), min_size=1, max_size=3).map(
        lambda flips: bytes(b ^ dict(flips).get(i, 0) for i, b in enumerate(VALID_DICOM))
    ),
    st.binary(max_size=400),
    st.integers(0, len(VALID_PNG)).map(lambda n: VALID_PNG[:n]),
    st.tuples(st.integers(0, len(VALID_PNG) - 1), st.integers(1, 255)).map(
        lambda t: VALID_PNG[: t[0]] + bytes([VALID_PNG[t[0]] ^ t[1]]) + VALID_PNG[t[0] + 1 :]
    ),
    st.binary(max_size=300).map(lambda b: b"\0" * 128 + b"DICM" + b),
)


async def count_objects(client: TestClient[Any, Any], cid: str) -> int:
    from server.web.keys import KEY_IMAGES

    log = client.app[KEY_IMAGES].records
    return len(await log.images(cid)) + len(await log.objects(cid, "prior"))


@FUZZ
@given(body=uploads, path=st.sampled_from(["captures", "priors"]))
async def test_random_uploads_are_refused_cleanly(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Callable[..., str],
    body: bytes,
    path: str,
) -> None:
    created = await client.post(
        "/api/consultations",
        json={
            "clinical_question": "q",
            "urgency": "routine",
            "incomplete_reason": "test request",
            "device": {"manufacturer": "Acme", "model": "X", "burned_in_text": False},
        },
        headers=coordinator,
    )
    cid = (await created.json())["id"]
    operator = {"Authorization": f"Bearer {token_for('operator', consultation=cid)}"}
    response = await client.post(f"/api/consultations/{cid}/{path}", data=body, headers=operator)
    payload = await response.json()
    if response.status == 201:  # a flipped byte in an unimportant place can leave a file readable
        assert await count_objects(client, cid) == 1
    else:
        assert_error_shape(response.status, payload)
        assert await count_objects(client, cid) == 0
