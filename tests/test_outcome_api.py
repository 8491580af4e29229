"""The coordinator records what happened after a second opinion, and reads the ledger over a
period (GET /api/quality, /metrics), on both record stores."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient
from phantom import BREAST_REQUEST, PHANTOM_DEVICE, phantom_png

from server.dicom import deid
from server.web.keys import KEY_IMAGES, STORE

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

REPORT = {
    "findings": "Oval circumscribed anechoic lesion with posterior enhancement.",
    "recommendation": "As the category advises.",
    "technical_quality": {"grade": "adequate"},
}


async def signed(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    request: dict[str, Any],
    report: dict[str, Any],
    reader: str = "reader-1",
    accepted: bool = False,
) -> str:
    """A consultation whose report `reader` signed (with a token of the consultation, or
    `accepted` from their own queue: a join token whose sub is a participant id); its id."""
    created = await client.post("/api/consultations", json=request, headers=coordinator)
    assert created.status == 201, await created.text()
    cid = (await created.json())["id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub=reader, consultation=cid)}"}
    if accepted:
        own = {"Authorization": f"Bearer {token_for('expert', sub=reader)}"}
        joined = await client.post(f"/api/consultations/{cid}/accept", headers=own)
        assert joined.status == 201, await joined.text()
        expert = {"Authorization": f"Bearer {(await joined.json())['token']}"}
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(3),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201, await upload.text()
    body = {**REPORT, **report, "key_image_ids": [(await upload.json())["key_image_id"]]}
    url = f"/api/consultations/{cid}/report"
    assert (await client.put(url, json=body, headers=expert)).status == 200
    sign = await client.post(f"{url}/sign", headers=expert)
    assert sign.status == 200, await sign.text()
    return cid


def biopsy(pathology: str, day: str = "2026-11-02") -> dict[str, Any]:
    return {"breast": {"result": "biopsy", "pathology": pathology, "date": day}}


async def test_outcomes_are_recorded_amended_and_kept_with_the_record(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    created = await client.post("/api/consultations", json=BREAST_REQUEST, headers=coordinator)
    unsigned = (await created.json())["id"]
    # An outcome follows a signed second opinion.
    early = await client.post(
        f"/api/consultations/{unsigned}/outcome", json=biopsy("benign"), headers=coordinator
    )
    assert early.status == 409 and (await early.json())["error"]["code"] == "not_signed"

    cid = await signed(
        client, coordinator, token_for, BREAST_REQUEST, {"category": "4B", "concordance": "agree"}
    )
    url = f"/api/consultations/{cid}/outcome"
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}
    assert (await client.post(url, json=biopsy("benign"), headers=expert)).status == 403
    for body, field in (
        ({"breast": {"result": "biopsy", "date": "2026-11-02"}}, "breast.pathology"),
        (
            {"breast": {"result": "biopsy", "pathology": "cancer", "date": "2026-11-02"}},
            "breast.pathology",
        ),
        (biopsy("benign", "2026-02-30"), "breast.date"),
        (biopsy("benign", "2999-01-01"), "breast.date"),
        ({"dvt": {"anticoagulation": {"started": False}, "repeat_scan": "dvt"}}, "dvt"),
        ({"breast": {"result": "none_known", "verdict": "x"}}, "breast.verdict"),
    ):
        refused = await client.post(url, json=body, headers=coordinator)
        assert refused.status == 400, body
        assert (await refused.json())["error"]["field"] == field, body
    nothing = await (await client.get(url, headers=coordinator)).json()
    assert nothing == {"current": None, "history": []}

    first = await client.post(url, json=biopsy("high_risk"), headers=coordinator)
    assert first.status == 201, await first.text()
    # Amended: the excision found cancer; the first recording stays in the history.
    second = await client.post(url, json=biopsy("malignant", "2026-11-20"), headers=coordinator)
    assert second.status == 201
    view = await (await client.get(url, headers=coordinator)).json()
    assert view["current"]["version"] == 2
    assert view["current"]["breast"] == {
        "result": "biopsy",
        "pathology": "malignant",
        "date": "2026-11-20",
    }
    assert [v["breast"]["pathology"] for v in view["history"]] == ["high_risk", "malignant"]
    assert view["history"][0]["recorded_by"] == "coord-1"
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["outcome"] == view
    # The expert sees what became of their opinion, in the record and here.
    assert (await client.get(url, headers=expert)).status == 200

    store = client.app[STORE]
    actions = [e.facts.action for e in await store.audit_entries() if e.facts.object_id == cid]
    assert actions.count("outcome.record") == 2

    setup = await client.post(
        "/api/consultations",
        json={
            "kind": "device_setup",
            "clinical_question": "setup",
            "urgency": "routine",
            "device": {"manufacturer": "Acme Medical", "model": "Sonix"},
        },
        headers=coordinator,
    )
    sid = (await setup.json())["id"]
    refused = await client.post(
        f"/api/consultations/{sid}/outcome", json=biopsy("benign"), headers=coordinator
    )
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "no_outcome_kind"


async def test_the_ledger_over_a_period_per_reader_and_on_metrics(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    # Two breast second opinions on first reads of BI-RADS 4A by reader-1: one downgraded to 2
    # (biopsied anyway: benign), one kept at 4B (biopsy: malignant); reader-2 agrees on a DVT,
    # accepted from their own queue.
    registered = await client.put(
        "/api/experts/reader-2",
        json={"name": "Dr Two", "subspecialties": ["dvt"]},
        headers=coordinator,
    )
    assert registered.status == 200
    downgraded = await signed(
        client,
        coordinator,
        token_for,
        BREAST_REQUEST,
        {"category": "2", "concordance": "major_discrepancy"},
    )
    kept = await signed(
        client, coordinator, token_for, BREAST_REQUEST, {"category": "4B", "concordance": "agree"}
    )
    dvt_request = {
        "clinical_question": "Left calf pain: DVT?",
        "urgency": "urgent",
        "application": "dvt",
        "device": PHANTOM_DEVICE,
        "incomplete_reason": "scanning now",
        "dvt": {"first_read_segments": [{"segment": "popliteal", "thrombus": "acute"}]},
    }
    clot = await signed(
        client,
        coordinator,
        token_for,
        dvt_request,
        {"category": "acute_dvt", "concordance": "agree"},
        reader="reader-2",
        accepted=True,
    )
    for cid, body in (
        (downgraded, biopsy("benign")),
        (kept, biopsy("malignant")),
        (
            clot,
            {
                "dvt": {
                    "anticoagulation": {"started": True, "date": "2026-11-01"},
                    "repeat_scan": "dvt",
                    "repeat_scan_date": "2026-11-08",
                }
            },
        ),
    ):
        recorded = await client.post(
            f"/api/consultations/{cid}/outcome", json=body, headers=coordinator
        )
        assert recorded.status == 201, await recorded.text()

    quality = await client.get("/api/quality", headers=coordinator)
    assert quality.status == 200, await quality.text()
    ledger = await quality.json()
    breast = ledger["applications"]["breast"]
    assert breast["second_opinions"] == 2
    # Pairs (4, 2) and (4, 4): 50 %; first read all 4, so chance agreement is 0.5: kappa 0.
    assert breast["category_agreement"] == {"percent": 50.0, "kappa": 0.0, "agreed": 1, "n": 2}
    assert breast["discordance"]["major"] == {"rate": 0.5, "count": 1, "n": 2}
    assert breast["downgraded"] == {"rate": 0.5, "count": 1, "n": 2, "biopsied": 1, "malignant": 0}
    assert breast["ppv_biopsy"]["first_read"] == {
        "value": 0.5,
        "ci95": [0.0945, 0.9055],
        "n": 2,
        "positives": 1,
    }
    assert breast["ppv_biopsy"]["second_opinion"] == {
        "value": 1.0,
        "ci95": [0.2065, 1.0],
        "n": 1,
        "positives": 1,
    }
    dvt = ledger["applications"]["dvt"]
    assert dvt["category_agreement"]["percent"] == 100.0
    assert dvt["repeat_scan_confirmed"]["second_opinion"]["positives"] == 1

    # Readers by pseudonym (the SR's keyed pseudonym of the expert behind the signature: for
    # reader-2 their own sub, not the join link's participant id); never the sub itself.
    key = client.app[KEY_IMAGES].key
    one, two = deid.reader_pseudonym(key, "reader-1"), deid.reader_pseudonym(key, "reader-2")
    assert set(ledger["readers"]) == {one, two}
    # The SR names the reader by the same pseudonym, also when the expert accepted from the queue.
    for cid, pseudonym in ((clot, two), (kept, one)):
        (sr,) = await client.app[KEY_IMAGES].records.objects(cid, "report")
        data = await client.app[KEY_IMAGES].read(sr, "the report")
        signer = pydicom.dcmread(io.BytesIO(data)).VerifyingObserverSequence[0]
        assert str(signer.VerifyingObserverName) == f"{pseudonym}^"
    assert set(ledger["readers"][one]) == {"breast"}
    assert "reader-1" not in await quality.text()
    mine = await (
        await client.get(f"/api/quality?reader={one}&application=breast", headers=coordinator)
    ).json()
    assert set(mine["applications"]) == {"breast"}
    assert mine["applications"]["breast"]["second_opinions"] == 2

    requested = await (
        await client.get("/api/quality?basis=requested_at", headers=coordinator)
    ).json()
    assert requested["applications"]["breast"]["second_opinions"] == 2
    assert requested["period"]["basis"] == "requested_at"

    # A period before any of it: counts of zero and nulls.
    past = await (
        await client.get("/api/quality?from=2001-01-01&to=2001-02-01", headers=coordinator)
    ).json()
    assert past["period"] == {"from": "2001-01-01", "to": "2001-02-01", "basis": "signed_at"}
    assert past["applications"]["breast"]["second_opinions"] == 0
    assert past["applications"]["breast"]["category_agreement"]["kappa"] is None
    assert past["readers"] == {}

    for query, field in (
        ("from=2026-13-01", "from"),
        ("from=2026-12-01&to=2026-11-01", "to"),
        ("application=thyroid", "application"),
        ("reader=reader-1", "reader"),
        ("basis=updated_at", "basis"),
        ("since=2026-01-01", "since"),
        # A year before 2000: no record is that old, and such a period once crashed (the
        # default 'from' a year before 0001) or counted this year's reports (years under 1000
        # were compared as unpadded text).
        ("to=0001-01-01", "to"),
        ("from=0100-01-01&to=0999-01-01", "to"),
    ):
        refused = await client.get(f"/api/quality?{query}", headers=coordinator)
        assert refused.status == 400, query
        assert (await refused.json())["error"]["field"] == field, query
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1')}"}
    assert (await client.get("/api/quality", headers=expert)).status == 403

    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_second_opinions{application="breast"} 2.0' in metrics
    assert 'probelink_ppv_biopsy{application="breast",bound="value",read="first_read"} 0.5' in (
        metrics
    )
    assert 'probelink_downgraded_ratio{application="breast"} 0.5' in metrics
    assert one not in metrics and "reader" not in metrics.replace('read="', "")
