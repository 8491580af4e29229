"""Random bodies at the second-opinion workflow: report, checklist, experts, assignment.

Every answer is a 2xx or a 4xx in the documented error format (never a 500), a refused
request changes nothing (report view, versions, state, SR objects, audit log), and no error
message echoes the input. Targeted tests pin the rules the workflow's state machine, grants
and races must keep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from live_client import Participant
from phantom import BREAST_REQUEST, PHANTOM_DEVICE, phantom_png
from sqlalchemy import text

from server.consultations.applications import Application
from server.consultations.lifecycle import State
from server.web.keys import KEY_IMAGES, REPORT_LOG, SETTINGS, STORE

Client = TestClient[Any, Any]
Headers = dict[str, str]

FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# The fuzzed endpoints run on each records store.
both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
# A patient-looking marker: it may be stored and shown, never echoed in an error message.
PHI = "Jane Q Patient MRN 884422"
OWN, FOREIGN = "$own", "$foreign"  # placeholders for this / another consultation's key image

BREAST = BREAST_REQUEST
GENERIC = {
    "clinical_question": "Is there free fluid?",
    "urgency": "routine",
    "application": "abdominal",
    "device": PHANTOM_DEVICE,
    "incomplete_reason": "bedside request",
}
SIGNABLE = {
    "findings": "Oval circumscribed anechoic lesion with posterior enhancement.",
    "category": "2",
    "recommendation": "Routine screening.",
    # The first read is BI-RADS 4A: "agree" with 2 would be refused as a contradiction.
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "adequate"},
    "key_image_ids": [OWN],
}

# Strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([PHI, "", "   ", "2", "4A", "acute_dvt", "agree", "limited", "breast"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | st.just(PHI), inner)
    ),
    max_leaves=10,
)
good_texts = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=60
).filter(str.strip)
odd_texts = st.sampled_from(
    [
        PHI,
        "Complex cyst, rule out malignancy.",
        "Søren: 李医生 ✓ 🩻 \u200f\u2028 \\ back\\slash",
        "tab\tand\nnew line\r\n",
        "x" * 4000,
        "🩻" * 4000,
        "x" * 4001,
        "a\x00b",
        "\x7f\u0085\u009f",
    ]
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values three times out of four, so the accepting path is exercised too.

    (`one_of(good, good, good, bad)` would not do: it picks among distinct strategies.)
    """
    return st.integers(0, 3).flatmap(lambda n: bad if n == 0 else good)


texts = mostly(good_texts, odd_texts | json_values)


categories = st.sampled_from(["0", "2", "4A", " 4B ", "4a", "7", "no_dvt", "acute_dvt", PHI])
key_ids = mostly(st.just(OWN), st.sampled_from([FOREIGN, "0" * 32, "A" * 32, PHI, "", 5]))
quality = st.fixed_dictionaries(
    {
        "grade": mostly(
            st.sampled_from(["adequate", "limited", "non_diagnostic"]), st.sampled_from(["ok", 1])
        )
    },
    optional={
        "reasons": mostly(
            st.lists(
                st.sampled_from(["missing_landmarks", "poor_image_quality", "incomplete_protocol"]),
                max_size=3,
            ),
            st.lists(st.sampled_from(["blurry", PHI, 1]), min_size=1, max_size=2) | json_values,
        ),
        "note": texts,
    },
)
report_fields = {
    "findings": texts,
    "category": mostly(categories, json_values),
    "recommendation": texts,
    "concordance": mostly(
        st.sampled_from(["agree", "minor_discrepancy", "major_discrepancy"]),
        st.sampled_from(["disagree", PHI]) | json_values,
    ),
    "technical_quality": mostly(quality, json_values),
    "key_image_ids": mostly(st.lists(key_ids, max_size=3), st.lists(key_ids, min_size=51)),
}
report_like = mostly(
    st.fixed_dictionaries({}, optional=report_fields),
    st.fixed_dictionaries({}, optional={**report_fields, "signed": json_values, PHI: json_values}),
)
signable_variants = st.fixed_dictionaries(
    {},
    optional={"category": categories, "findings": texts, "technical_quality": quality},
).map(lambda extra: {**SIGNABLE, **extra})


def as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


report_bodies = mostly(
    st.one_of(report_like, signable_variants).map(as_bytes),
    st.one_of(
        json_values.map(as_bytes),
        st.binary(max_size=200),
        st.sampled_from([b"", b"[]", b'"x"', b"null", b"1e999", b"NaN", b'{"findings": NaN}']),
    ),
)


def substitute(body: bytes, own: str, foreign: str) -> bytes:
    return body.replace(OWN.encode(), own.encode()).replace(FOREIGN.encode(), foreign.encode())


# Helpers


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def assert_refusal(status: int, payload: Any) -> None:
    """A 4xx in the documented format, whose message does not echo the input."""
    assert 400 <= status < 500, (status, payload)
    error = payload["error"]
    assert set(error) == {"code", "message", "field"}, payload
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in error["message"]
    assert PHI not in error["message"] and PHI not in str(error["field"]), payload


def note(status: int, payload: Any) -> None:
    """For --hypothesis-show-statistics: how often each answer came."""
    error = payload.get("error") if isinstance(payload, dict) else None
    event(f"{status} {error['code']}" if isinstance(error, dict) else str(status))


async def answer(response: Any) -> Any:
    try:
        return await response.json()
    except Exception:
        pytest.fail(f"not JSON ({response.status}): {await response.text()}")


async def create(client: Client, coordinator: Headers, body: dict[str, Any]) -> str:
    created = await client.post("/api/consultations", json=body, headers=coordinator)
    assert created.status == 201, await created.text()
    return str((await created.json())["id"])


class Case:
    """A consultation with one key image and its expert's join token."""

    def __init__(self, cid: str, expert: Headers, key_image: str):
        self.cid = cid
        self.expert = expert
        self.key_image = key_image
        self.url = f"/api/consultations/{cid}/report"


async def case(
    client: Client, coordinator: Headers, token_for: Any, body: dict[str, Any] = BREAST
) -> Case:
    cid = await create(client, coordinator, body)
    expert = bearer(token_for("expert", sub=f"reader-{secrets.token_hex(3)}", consultation=cid))
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(len(cid) + secrets.randbelow(50)),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201, await upload.text()
    return Case(cid, expert, (await upload.json())["key_image_id"])


async def snapshot(client: Client, c: Case, coordinator: Headers) -> Any:
    """Everything a report request may change."""
    view = await (await client.get(c.url, headers=coordinator)).json()
    row = await client.app[STORE].get_consultation(c.cid)
    versions = await client.app[REPORT_LOG].versions(c.cid)
    objects = await client.app[KEY_IMAGES].records.objects(c.cid, "report")
    return (
        view,
        row.state,
        row.reported_at,
        row.signed_at,
        len(versions),
        len(objects),
        await audit_count(client),
    )


async def audit_count(client: Client) -> int:
    """Audited writes and refusals (reads left out: looking at the report is not a change)."""
    count, after = 0, 0
    while entries := await client.app[STORE].audit_entries(after_seq=after):
        count += sum(1 for e in entries if "read" not in e.facts.action)
        after = entries[-1].seq
    return count


async def set_state(client: Client, cid: str, state: str) -> None:
    async with client.app[STORE].transaction() as conn:
        await conn.execute(
            text("UPDATE consultations SET state = :s WHERE id = :id"), {"s": state, "id": cid}
        )


async def sign_ready(client: Client, c: Case) -> Any:
    body = {**SIGNABLE, "key_image_ids": [c.key_image]}
    put = await client.put(c.url, json=body, headers=c.expert)
    assert put.status == 200, await put.text()
    return body


async def signed_case(client: Client, coordinator: Headers, token_for: Any) -> Case:
    c = await case(client, coordinator, token_for)
    await sign_ready(client, c)
    signed = await client.post(f"{c.url}/sign", headers=c.expert)
    assert signed.status == 200, await signed.text()
    return c


@pytest.fixture(autouse=True)
def no_patient_data_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever was sent, the patient-looking marker never reaches a log line or traceback."""
    caplog.set_level(logging.DEBUG)
    yield
    assert PHI not in caplog.text


# Per test: the cases made once and reused by every example (the app lives as long as the test;
# its data directory, a fresh tmp_path, tells one test's app from another's).
_cases: dict[tuple[str, str], Case] = {}


def slot_of(client: Client, key: str) -> tuple[str, str]:
    return str(client.app[SETTINGS].data_dir), key


async def cached(key: str, client: Client, make: Any) -> Case:
    slot = slot_of(client, key)
    if slot not in _cases:
        _cases[slot] = await make()
    return _cases[slot]


# Fuzz: the report


@both_backends
@FUZZ
@given(body=report_bodies, which=st.sampled_from(["breast", "generic"]))
async def test_random_report_drafts(
    client: Client, coordinator: Headers, token_for: Any, body: bytes, which: str
) -> None:
    template = BREAST if which == "breast" else GENERIC
    c = await cached(which, client, lambda: case(client, coordinator, token_for, template))
    other = await cached("other", client, lambda: case(client, coordinator, token_for))
    body = substitute(body, c.key_image, other.key_image)
    before = await snapshot(client, c, coordinator)
    response = await client.put(c.url, data=body, headers=c.expert)
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 200:
        after = await snapshot(client, c, coordinator)
        assert after[0] == payload  # the answer is the stored view
        assert after[1] is State.REPORTED and after[4] == before[4] + 1
        assert after[6] == before[6] + 1  # audited
        assert payload["signed"] is False and payload["current"]["body"] is not None
        if which == "generic":
            assert payload["current"]["body"]["category"] is None
    else:
        assert_refusal(response.status, payload)
        assert await snapshot(client, c, coordinator) == before


@both_backends
@FUZZ
@given(
    draft=mostly(signable_variants.map(as_bytes), report_bodies),
    sign_body=st.binary(max_size=40) | json_values.map(as_bytes),
)
async def test_random_drafts_then_sign(
    client: Client, coordinator: Headers, token_for: Any, draft: bytes, sign_body: bytes
) -> None:
    c = await cached("sign", client, lambda: case(client, coordinator, token_for))
    if (await client.app[STORE].get_consultation(c.cid)).state is State.SIGNED:
        c = _cases[slot_of(client, "sign")] = await case(client, coordinator, token_for)
    other = await cached("other", client, lambda: case(client, coordinator, token_for))
    await client.put(c.url, data=substitute(draft, c.key_image, other.key_image), headers=c.expert)
    before = await snapshot(client, c, coordinator)
    response = await client.post(f"{c.url}/sign", data=sign_body, headers=c.expert)
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 200:
        after = await snapshot(client, c, coordinator)
        assert payload["signed"] is True and after[0] == payload
        assert after[1] is State.SIGNED and after[3] is not None
        assert after[5] == before[5] + 1  # the SR
        cited = set(payload["current"]["body"]["key_image_ids"])
        assert cited and cited <= {c.key_image}
    else:
        assert_refusal(response.status, payload)
        assert response.status == 409, payload
        assert await snapshot(client, c, coordinator) == before


@both_backends
@FUZZ
@given(
    body=mostly(
        st.fixed_dictionaries({"text": texts}).map(as_bytes),
        st.one_of(
            st.fixed_dictionaries({"text": texts, "signed_by": json_values}).map(as_bytes),
            json_values.map(as_bytes),
            st.binary(max_size=100),
        ),
    ),
    signed=st.booleans(),
)
async def test_random_addenda(
    client: Client, coordinator: Headers, token_for: Any, body: bytes, signed: bool
) -> None:
    if signed:
        c = await cached("signed", client, lambda: signed_case(client, coordinator, token_for))
    else:
        c = await cached("draft", client, lambda: case(client, coordinator, token_for))
    before = await snapshot(client, c, coordinator)
    response = await client.post(f"{c.url}/addenda", data=body, headers=c.expert)
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 201:
        assert signed
        after = await snapshot(client, c, coordinator)
        assert after[0] == payload and len(payload["addenda"]) == len(before[0]["addenda"]) + 1
        assert after[5] == before[5] + 1  # a new SR version
        assert after[1] is State.SIGNED
    else:
        assert_refusal(response.status, payload)
        assert await snapshot(client, c, coordinator) == before


# Fuzz: the draft checklist


CONTEXT_KEYS = [
    "clinical_question",
    "urgency",
    "application",
    "first_read",
    "breast",
    "dvt",
    "incomplete_reason",
    "imaging_modes",
    "comparison_studies",
]
segments = ["popliteal", "peroneal", "common_femoral"]
template_like = st.fixed_dictionaries(
    {},
    optional={
        "application": mostly(st.sampled_from(["breast", "dvt", "thyroid"]), st.just("bone")),
        "breast": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "lesion_clock": mostly(
                        st.sampled_from(["2", "12:30", "9:00"]), st.sampled_from(["13", PHI])
                    ),
                    "distance_from_nipple_cm": mostly(
                        st.sampled_from([0.5, 3, 30]), st.sampled_from([0, 31, -1, "3"])
                    ),
                    "first_read_birads": mostly(
                        st.sampled_from(["0", "4A", "2"]), st.sampled_from(["4a", 4])
                    ),
                    "additional_imaging": mostly(good_texts, texts),
                },
            ),
            json_values,
        ),
        "dvt": mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "segments_examined": mostly(
                        st.lists(st.sampled_from(segments), max_size=3),
                        st.lists(st.sampled_from(["femur", PHI]), min_size=1, max_size=2),
                    ),
                    "compressibility": mostly(
                        st.dictionaries(
                            st.sampled_from(segments),
                            st.sampled_from(["compressible", "non_compressible"]),
                            max_size=3,
                        ),
                        st.dictionaries(
                            st.sampled_from([PHI, "femur", "popliteal"]),
                            st.sampled_from(["squishy", 1, "compressible"]),
                            min_size=1,
                            max_size=2,
                        ),
                    ),
                    "symptoms_persist_after_negative": mostly(
                        st.sampled_from([True, False, None]), st.just("yes")
                    ),
                    "prior_scan": mostly(good_texts, texts),
                },
            ),
            json_values,
        ),
        "incomplete_reason": mostly(good_texts, texts),
        "clinical_question": mostly(good_texts, texts),
        "urgency": mostly(
            st.sampled_from(["routine", "urgent", "emergency"]),
            st.sampled_from([" urgent ", "soon", 1, "", "  "]) | json_values,
        ),
    },
)
checklist_bodies = mostly(
    template_like.map(as_bytes),
    st.one_of(
        st.dictionaries(st.sampled_from([*CONTEXT_KEYS, PHI, "mrn"]), json_values, max_size=5).map(
            as_bytes
        ),
        json_values.map(as_bytes),
        st.binary(max_size=120),
    ),
)


async def consultation_count(client: Client) -> int:
    return len(await client.app[STORE].list_consultations(set(State)))


@both_backends
@FUZZ
@given(body=checklist_bodies)
async def test_random_draft_checklists(client: Client, coordinator: Headers, body: bytes) -> None:
    before = (await consultation_count(client), await audit_count(client))
    response = await client.post("/api/consultations/checklist", data=body, headers=coordinator)
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 200:
        assert set(payload) == {"flags", "complete", "required_missing", "missing"}
        assert payload["complete"] is (not payload["required_missing"] and not payload["missing"])
    else:
        assert_refusal(response.status, payload)
    # Nothing is stored, either way.
    assert (await consultation_count(client), await audit_count(client)) == before


@both_backends
@FUZZ
@given(draft=template_like)
@example(draft={"application": "dvt", "clinical_question": 5})  # found by the search
@example(draft={"urgency": 1})
@example(draft={"breast": {}, "application": "bone", "urgency": ""})  # found by the search
@example(draft={"application": "bone", "urgency": None})  # found by the search: null is blank
async def test_a_draft_checklist_validates_what_a_request_would(
    client: Client, coordinator: Headers, draft: dict[str, Any]
) -> None:
    """ "Every given field is validated as for a real request": a draft the checklist takes,
    completed only where it named a required item absent or blank, is a request the server
    takes too."""
    response = await client.post("/api/consultations/checklist", json=draft, headers=coordinator)
    if response.status != 200:
        # What the checklist refuses, the request refuses too, naming the same field.
        refusal = await answer(response)
        assert_refusal(response.status, refusal)
        # Blank required items are what a draft may leave (the checklist names them): fill them.
        request = dict(draft)
        for field, value in (("clinical_question", "q"), ("urgency", "routine")):
            given_value = draft.get(field)
            if given_value is None or (isinstance(given_value, str) and not given_value.strip()):
                request[field] = value
        request.setdefault("incomplete_reason", "draft under test")
        created = await client.post("/api/consultations", json=request, headers=coordinator)
        refused = await answer(created)
        assert created.status == response.status, (draft, refused)
        assert refused["error"]["field"] == refusal["error"]["field"], (draft, refused)
        return
    check = await response.json()
    request = dict(draft)
    for item in check["required_missing"]:
        given_value = draft.get(item["field"])
        if given_value is None or (isinstance(given_value, str) and not given_value.strip()):
            request[item["field"]] = {"clinical_question": "q", "urgency": "routine"}[item["field"]]
    if request.get("incomplete_reason") is None:
        request["incomplete_reason"] = "draft under test"
    created = await client.post("/api/consultations", json=request, headers=coordinator)
    assert created.status == 201, (draft, await created.text())


# Fuzz: experts and assignment


subs = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["dr lee", "x" * 128, "x" * 129, "dr-lee\n", "é", PHI, "a/b", "%2e"]),
)
expert_bodies = mostly(
    st.fixed_dictionaries(
        {
            "name": mostly(good_texts, texts),
            "subspecialties": mostly(
                st.lists(st.sampled_from([a.value for a in Application]), min_size=1, max_size=9),
                st.lists(st.sampled_from(["cardiac", PHI, 3, "breast"]), max_size=11) | json_values,
            ),
        },
        optional={"active": mostly(st.booleans(), st.sampled_from(["true", 1, None]))},
    ).map(as_bytes),
    st.one_of(
        st.fixed_dictionaries({"name": texts, "subspecialties": json_values, PHI: json_values}).map(
            as_bytes
        ),
        json_values.map(as_bytes),
        st.binary(max_size=80),
    ),
)


async def experts_listed(client: Client, coordinator: Headers) -> Any:
    return (await (await client.get("/api/experts", headers=coordinator)).json())["experts"]


@both_backends
@FUZZ
@given(
    sub=mostly(st.from_regex(r"[A-Za-z0-9._@-]{1,20}", fullmatch=True), subs), body=expert_bodies
)
async def test_random_expert_registrations(
    client: Client, coordinator: Headers, sub: str, body: bytes
) -> None:
    before = (await experts_listed(client, coordinator), await audit_count(client))
    response = await client.put(
        f"/api/experts/{quote(sub, safe='')}", data=body, headers=coordinator
    )
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 200:
        sent = json.loads(body)
        assert payload["sub"] == sub and payload["name"] == sent["name"].strip()
        order = [a.value for a in Application]
        assert payload["subspecialties"] == [a for a in order if a in sent["subspecialties"]]
        assert payload in await experts_listed(client, coordinator)
        assert await audit_count(client) == before[1] + 1
    else:
        assert_refusal(response.status, payload)
        assert (await experts_listed(client, coordinator), await audit_count(client)) == before


async def assign_setup(client: Client, coordinator: Headers) -> Case:
    cid = await create(client, coordinator, BREAST)
    for sub, specialties, active in (
        ("breast-reader", ["breast"], True),
        ("dvt-reader", ["dvt"], True),
        ("retired-reader", ["breast"], False),
    ):
        body = {"name": f"Dr {sub}", "subspecialties": specialties, "active": active}
        put = await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)
        assert put.status == 200, await put.text()
    return Case(cid, coordinator, "")


assign_bodies = mostly(
    st.fixed_dictionaries(
        {"expert": st.sampled_from(["breast-reader", "dvt-reader", "retired-reader", None])}
    ).map(as_bytes),
    st.one_of(
        st.fixed_dictionaries(
            {"expert": st.sampled_from(["nobody", "", PHI, 7, "breast-reader\n"]) | json_values}
        ).map(as_bytes),
        st.fixed_dictionaries(
            {"expert": st.sampled_from(["breast-reader", None])},
            optional={PHI: json_values, "state": json_values},
        ).map(as_bytes),
        json_values.map(as_bytes),
        st.binary(max_size=60),
    ),
)


@both_backends
@FUZZ
@given(body=assign_bodies, signed=st.booleans())
async def test_random_assignments(
    client: Client, coordinator: Headers, body: bytes, signed: bool
) -> None:
    c = await cached("assign", client, lambda: assign_setup(client, coordinator))
    await set_state(client, c.cid, "signed" if signed else "requested")
    url = f"/api/consultations/{c.cid}/assign"
    before = (await client.app[STORE].get_consultation(c.cid), await audit_count(client))
    response = await client.post(url, data=body, headers=coordinator)
    payload = await answer(response)
    note(response.status, payload)
    if response.status == 200:
        expert = json.loads(body)["expert"]
        assert not signed and expert in {None, "breast-reader"}
        assert payload["assigned_expert"] == expert
        assert await audit_count(client) == before[1] + 1
    else:
        assert_refusal(response.status, payload)
        after = (await client.app[STORE].get_consultation(c.cid), await audit_count(client))
        assert after == before


# Grants: who may write what


async def test_only_the_consultations_expert_writes_its_report(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    a = await case(client, coordinator, token_for)
    b = await case(client, coordinator, token_for)
    await client.put(
        "/api/experts/dr-room",
        json={"name": "Dr Room", "subspecialties": ["breast"]},
        headers=coordinator,
    )
    others = {
        "expert of another consultation": b.expert,
        "operator": bearer(token_for("operator", sub="op", consultation=a.cid)),
        "observer": bearer(token_for("observer", sub="obs", consultation=a.cid)),
        "coordinator": coordinator,
        "reading-room token": bearer(token_for("expert", sub="dr-room")),
    }
    before = await snapshot(client, a, coordinator)
    for who, headers in others.items():
        for method, path, body in (
            ("PUT", a.url, {**SIGNABLE, "key_image_ids": [a.key_image]}),
            ("POST", f"{a.url}/sign", None),
            ("POST", f"{a.url}/addenda", {"text": "late change"}),
        ):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status == 403, (who, method, path, await response.text())
    # The refusals are audited; the report and the consultation are untouched.
    after = await snapshot(client, a, coordinator)
    assert after[:6] == before[:6]


async def test_coordinator_endpoints_refuse_other_roles(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for)
    tokens = [
        c.expert,
        bearer(token_for("operator", sub="op", consultation=c.cid)),
        bearer(token_for("observer", sub="obs", consultation=c.cid)),
        bearer(token_for("expert", sub="dr-room")),
    ]
    for headers in tokens:
        for method, path, body in (
            ("GET", "/api/experts", None),
            ("PUT", "/api/experts/dr-x", {"name": "Dr X", "subspecialties": ["breast"]}),
            ("POST", f"/api/consultations/{c.cid}/assign", {"expert": None}),
            ("POST", "/api/consultations/checklist", {"urgency": "routine"}),
            ("GET", "/api/turnaround", None),
        ):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status == 403, (method, path, await response.text())
    assert await experts_listed(client, coordinator) == []


async def test_a_reading_room_token_reaches_no_consultation_data(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for)
    put = await client.put(
        "/api/experts/dr-room",
        json={"name": "Dr Room", "subspecialties": ["breast"]},
        headers=coordinator,
    )
    assert put.status == 200
    room = bearer(token_for("expert", sub="dr-room"))
    for path in (
        f"/api/consultations/{c.cid}",
        f"/api/consultations/{c.cid}/report",
        f"/api/consultations/{c.cid}/key-images",
        f"/api/key-images/{c.key_image}/dicom",
        f"/api/key-images/{c.key_image}/preview",
    ):
        response = await client.get(path, headers=room)
        assert response.status == 403, (path, await response.text())
        assert (await response.json())["error"]["code"] == "consultation_not_granted"


async def test_accept_with_another_roles_token_asks_for_a_reading_room_token(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    """protocol.md: `403 reading_room_token_required` (a join token *or another role*)."""
    c = await case(client, coordinator, token_for)
    for headers in (
        coordinator,
        bearer(token_for("operator", sub="op", consultation=c.cid)),
        bearer(token_for("observer", sub="obs", consultation=c.cid)),
        c.expert,
    ):
        response = await client.post(f"/api/consultations/{c.cid}/accept", headers=headers)
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "reading_room_token_required"


# The report's rules and state machine


async def test_a_category_for_an_application_without_categories_is_refused(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for, GENERIC)
    before = await snapshot(client, c, coordinator)
    response = await client.put(c.url, json={"findings": "x", "category": "2"}, headers=c.expert)
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "category"
    assert await snapshot(client, c, coordinator) == before


async def test_another_consultations_key_image_is_never_signed(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    a = await case(client, coordinator, token_for)
    b = await case(client, coordinator, token_for)
    put = await client.put(
        a.url, json={**SIGNABLE, "key_image_ids": [b.key_image]}, headers=a.expert
    )
    assert put.status == 200
    view = await put.json()
    assert "key_image_ids" in [m["field"] for m in view["missing_for_signing"]]
    before = await snapshot(client, a, coordinator)
    sign = await client.post(f"{a.url}/sign", headers=a.expert)
    assert sign.status == 409 and (await sign.json())["error"]["code"] == "report_incomplete"
    assert await snapshot(client, a, coordinator) == before


async def test_no_draft_after_signing_and_the_state_stays_signed(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await signed_case(client, coordinator, token_for)
    before = await snapshot(client, c, coordinator)
    again = await client.put(c.url, json={"findings": "changed"}, headers=c.expert)
    assert again.status == 409 and (await again.json())["error"]["code"] == "report_signed"
    resign = await client.post(f"{c.url}/sign", headers=c.expert)
    assert resign.status == 409
    after = await snapshot(client, c, coordinator)
    assert after == before and after[1] is State.SIGNED


async def test_a_cancelled_consultation_takes_no_report(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for)
    await sign_ready(client, c)
    cancelled = await client.post(
        f"/api/consultations/{c.cid}/cancel", json={"reason": "duplicate"}, headers=coordinator
    )
    assert cancelled.status == 200, await cancelled.text()
    before = await snapshot(client, c, coordinator)
    for method, path, body in (
        ("PUT", c.url, {"findings": "more"}),
        ("POST", f"{c.url}/sign", None),
        ("POST", f"{c.url}/addenda", {"text": "late"}),
    ):
        response = await client.request(method, path, json=body, headers=c.expert)
        assert response.status == 403, (method, path, await response.text())
        assert (await response.json())["error"]["code"] == "consultation_cancelled"
    after = await snapshot(client, c, coordinator)
    # Nothing changed; the three refusals are audited, as every refusal is.
    assert after[:-1] == before[:-1] and after[-1] == before[-1] + 3


# Races


@both_backends
async def test_two_signatures_at_once_sign_once(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for)
    await sign_ready(client, c)
    other = bearer(token_for("expert", sub="second-reader", consultation=c.cid))
    responses = await asyncio.gather(
        *(client.post(f"{c.url}/sign", headers=h) for h in (c.expert, other, c.expert))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200, 409, 409], statuses
    versions = await client.app[REPORT_LOG].versions(c.cid)
    assert sum(1 for v in versions if v.signed_at is not None) == 1
    assert len(await client.app[KEY_IMAGES].records.objects(c.cid, "report")) == 1


@both_backends
async def test_a_draft_racing_a_signature_never_unsigns(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    c = await case(client, coordinator, token_for)
    await sign_ready(client, c)
    sign, draft = await asyncio.gather(
        client.post(f"{c.url}/sign", headers=c.expert),
        client.put(c.url, json={"findings": "second thoughts"}, headers=c.expert),
    )
    row = await client.app[STORE].get_consultation(c.cid)
    if sign.status == 200:
        assert draft.status == 409 and row.state is State.SIGNED
    else:
        assert draft.status == 200 and row.state is State.REPORTED


@both_backends
async def test_two_experts_accepting_at_once_one_gets_it(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    cid = await create(client, coordinator, BREAST)
    tokens = []
    for n in range(4):
        sub = f"racer-{n}"
        body = {"name": f"Dr {n}", "subspecialties": ["breast"]}
        assert (await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)).ok
        tokens.append(bearer(token_for("expert", sub=sub)))
    responses = await asyncio.gather(
        *(client.post(f"/api/consultations/{cid}/accept", headers=h) for h in tokens)
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201, 409, 409, 409], statuses
    participants = await client.app[STORE].participants(cid)
    assert len(participants) == 1


# Turnaround


async def test_joining_after_signing_does_not_make_turnaround_negative(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    """The report can be signed before any expert joined the room (the report API needs no
    room); an expert opening the room afterwards must not give a first join after the
    signature, which makes `first_join_to_signed` negative."""
    c = await signed_case(client, coordinator, token_for)
    participant = Participant(str(client.make_url("/")), c.expert["Authorization"][7:])
    await participant.connect()
    await participant.close()
    record = await (await client.get(f"/api/consultations/{c.cid}", headers=coordinator)).json()
    times = record["turnaround"]
    if times["first_joined_at"] is not None:
        assert times["first_joined_at"] <= times["signed_at"], times
    turnaround = await (await client.get("/api/turnaround", headers=coordinator)).json()
    for stage in turnaround["stages"].values():
        assert stage["median_seconds"] is None or stage["median_seconds"] >= 0, turnaround


async def test_a_draft_checklist_refuses_a_clinical_question_that_is_not_text(
    client: Client, coordinator: Headers
) -> None:
    """protocol.md: every given field is validated as for a real request (400 naming it).
    A number or list given as the question or urgency is silently replaced by a stand-in."""
    for field, value in (("clinical_question", 5), ("clinical_question", ["q"]), ("urgency", 1)):
        response = await client.post(
            "/api/consultations/checklist", json={field: value}, headers=coordinator
        )
        assert response.status == 400, (field, value, await response.text())
        assert (await response.json())["error"]["field"] == field


async def test_reading_the_report_is_audited_like_reading_the_record(
    client: Client, coordinator: Headers, token_for: Any
) -> None:
    """The report view is the record's `report`; reading the record is audited
    (`consultation.read`), so reading the same clinical content through GET .../report
    must leave an audit entry too (who read which report)."""
    c = await signed_case(client, coordinator, token_for)
    # A second reader: an observer's access ended with the signature (tests/test_revocation.py).
    reader = bearer(token_for("expert", sub="reader-2", consultation=c.cid))
    for headers, actor in ((coordinator, "coord-1"), (reader, "reader-2")):
        before = await client.app[STORE].audit_entries()
        response = await client.get(c.url, headers=headers)
        assert response.status == 200
        assert (await response.json())["current"]["body"]["findings"]
        new = (await client.app[STORE].audit_entries())[len(before) :]
        assert [(e.facts.actor, e.facts.object_id) for e in new] == [(actor, c.cid)], new
