"""The expert writes, signs and amends the structured report; the signed report is a DICOM SR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import dciodvfy_errors, every_value, read
from live_client import Participant
from phantom import BREAST_REQUEST, PHANTOM_DEVICE, phantom_png

from server.config import Settings
from server.web.keys import KEY_IMAGES

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

BREAST = BREAST_REQUEST
SIGNABLE = {
    "findings": "Oval circumscribed anechoic lesion with posterior enhancement: a simple cyst.",
    "category": "2",
    "recommendation": "Routine screening.",
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "limited", "reasons": ["missing_landmarks"]},
}


async def consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any, body: dict[str, Any]
) -> tuple[str, dict[str, str], str]:
    """A consultation with one key image; the expert's headers; the key image's id."""
    created = await client.post("/api/consultations", json=body, headers=coordinator)
    assert created.status == 201, await created.text()
    cid = (await created.json())["id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(3),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201, await upload.text()
    return cid, expert, (await upload.json())["key_image_id"]


async def test_breast_report_is_drafted_signed_then_amended_by_addendum(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    cid, expert, key_image = await consultation(client, coordinator, token_for, BREAST)
    url = f"/api/consultations/{cid}/report"
    view = await (await client.get(url, headers=expert)).json()
    assert view["current"] is None and view["signed"] is False
    assert [c["value"] for c in view["categories"]][:2] == ["0", "1"]
    assert view["flags"][0]["code"] == "review_before_biopsy"

    # A partial draft is kept; the page is told what signing still needs, and why.
    draft = await client.put(url, json={"findings": "A complex cyst."}, headers=expert)
    assert draft.status == 200, await draft.text()
    view = await draft.json()
    missing = [m["field"] for m in view["missing_for_signing"]]
    assert missing == [
        "category",
        "recommendation",
        "concordance",
        "technical_quality",
        "key_image_ids",
    ]
    assert view["terminology"][0]["phrase"] == "complex cyst"
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "reported" and record["turnaround"]["reported_at"]

    # A category the application does not have is refused, naming the field.
    bad = await client.put(url, json={**SIGNABLE, "category": "acute_dvt"}, headers=expert)
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "category"
    refused = await client.post(f"{url}/sign", headers=expert)
    assert refused.status == 409
    assert (await refused.json())["error"]["code"] == "report_incomplete"

    await client.put(url, json={**SIGNABLE, "key_image_ids": [key_image]}, headers=expert)
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()
    view = await signed.json()
    assert view["signed"] is True and view["current"]["signed_by"] == "reader-1"

    # Immutable: a change is an addendum with its own signature and time.
    again = await client.put(url, json=SIGNABLE, headers=expert)
    assert again.status == 409 and (await again.json())["error"]["code"] == "report_signed"
    added = await client.post(f"{url}/addenda", json={"text": "Cyst aspirated."}, headers=expert)
    assert added.status == 201
    addenda = (await added.json())["addenda"]
    assert [a["text"] for a in addenda] == ["Cyst aspirated."] and addenda[0]["signed_at"]
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "signed" and record["turnaround"]["signed_at"]
    assert record["report"]["current"]["body"]["category"] == "2"

    # The signed report and its amended version are DICOM SRs in the key image's study.
    image = read(
        await (await client.get(f"/api/key-images/{key_image}/dicom", headers=expert)).read()
    )
    objects = await client.app[KEY_IMAGES].records.objects(cid, "report")
    assert len(objects) == 2  # signed, then amended
    archive = settings.data_dir / "archive"
    versions = [(archive / o.path).read_bytes() for o in objects]
    data = max(versions, key=lambda d: len(read(d).ContentSequence))
    newest = read(data)
    assert dciodvfy_errors(data, tmp_path) == []
    assert newest.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert newest.StudyInstanceUID == image.StudyInstanceUID
    assert newest.PatientID == image.PatientID and newest.VerificationFlag == "VERIFIED"
    text_values = " ".join(str(v) for v in every_value(newest))
    assert "simple cyst" in text_values and "Cyst aspirated." in text_values
    assert "reader-1" not in data.decode("latin-1")  # the reader is a pseudonym in DICOM
    # The amended version names the signed one it replaces.
    first = next(read(d) for d in versions if d is not data)
    predecessor = newest.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


async def test_dvt_report_uses_dvt_categories(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    body = {
        "clinical_question": "Left leg swelling: DVT?",
        "urgency": "emergency",
        "application": "dvt",
        "device": PHANTOM_DEVICE,
        "incomplete_reason": "scanning now",
    }
    cid, expert, key_image = await consultation(client, coordinator, token_for, body)
    url = f"/api/consultations/{cid}/report"
    report = {
        "findings": "Femoral vein non-compressible with echogenic chronic thrombus.",
        "category": "chronic_postthrombotic_change",
        "recommendation": "Compression stockings; no anticoagulation change.",
        "technical_quality": {"grade": "adequate"},
        "key_image_ids": [key_image],
    }
    view = await (await client.put(url, json=report, headers=expert)).json()
    assert {t["preferred"] for t in view["terminology"]} == {"chronic postthrombotic change"}
    assert view["missing_for_signing"] == []  # no first read: no concordance needed
    assert (await client.put(url, json={**report, "category": "4A"}, headers=expert)).status == 400
    assert (await client.post(f"{url}/sign", headers=expert)).status == 200
    summary = await (await client.get("/api/turnaround", headers=coordinator)).json()
    assert summary["stages"]["request_to_signed"]["count"] == 1


async def test_only_the_consultations_expert_writes_and_bad_bodies_change_nothing(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid, expert, _ = await consultation(client, coordinator, token_for, BREAST)
    url = f"/api/consultations/{cid}/report"
    operator = {"Authorization": f"Bearer {token_for('operator', consultation=cid)}"}
    other = await client.post("/api/consultations", json=BREAST, headers=coordinator)
    elsewhere = {
        "Authorization": f"Bearer {token_for('expert', consultation=(await other.json())['id'])}"
    }
    assert (await client.put(url, json=SIGNABLE, headers=operator)).status == 403
    assert (await client.put(url, json=SIGNABLE, headers=coordinator)).status == 403
    assert (await client.put(url, json=SIGNABLE, headers=elsewhere)).status == 403
    for body, field in (
        ({"findings": 5}, "findings"),
        ({"verdict": "x"}, None),
        ({"technical_quality": {"grade": "superb"}}, "technical_quality.grade"),
        ({"key_image_ids": ["../etc/passwd"]}, "key_image_ids.0"),
    ):
        response = await client.put(url, json=body, headers=expert)
        assert response.status == 400, body
        if field:
            assert (await response.json())["error"]["field"] == field
    empty = await client.post(f"{url}/addenda", json={"text": "late note"}, headers=expert)
    assert (await empty.json())["error"]["code"] == "report_not_signed"
    assert (await client.post(f"{url}/sign", headers=expert)).status == 409  # no report yet
    view = await (await client.get(url, headers=expert)).json()
    assert view["current"] is None
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "requested"


async def test_record_checklist_asks_for_labelled_landmarks_on_key_images(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid, expert, _ = await consultation(client, coordinator, token_for, BREAST)
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert "key_images.landmarks" in [m["field"] for m in record["checklist"]["missing"]]
    # A text label on screen at the next capture is a landmark.
    participant = await Participant(
        str(client.make_url("/")), expert["Authorization"][7:]
    ).connect()
    try:
        label = {"kind": "text", "points": [[0.2, 0.3]], "text": "L breast 2:00 radial"}
        assert "seq" in await participant.call("mark", label)
    finally:
        await participant.close()
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(4),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert "key_images.landmarks" not in [m["field"] for m in record["checklist"]["missing"]]


async def test_after_reassignment_only_the_assigned_expert_writes_the_report(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid, reader, key_image = await consultation(client, coordinator, token_for, BREAST)
    suffix = cid[:8]
    for sub in (f"dr-a-{suffix}", f"dr-b-{suffix}"):
        body = {"name": sub, "subspecialties": ["breast"]}
        assert (
            await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)
        ).status == 200
    reading_room = {"Authorization": f"Bearer {token_for('expert', sub=f'dr-a-{suffix}')}"}
    accepted = await client.post(f"/api/consultations/{cid}/accept", headers=reading_room)
    assert accepted.status == 201, await accepted.text()
    first = {"Authorization": f"Bearer {(await accepted.json())['token']}"}
    url = f"/api/consultations/{cid}/report"
    assert (await client.put(url, json={"findings": "cyst"}, headers=first)).status == 200
    # An expert's token that is not Dr A's link reads but does not write.
    refused = await client.put(url, json={"findings": "mine"}, headers=reader)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "assigned_to_another"
    # Reassigned to Dr B: Dr A's join link no longer writes or signs (nor opens anything).
    body = {"expert": f"dr-b-{suffix}"}
    assert (
        await client.post(f"/api/consultations/{cid}/assign", json=body, headers=coordinator)
    ).status == 200
    refused = await client.put(url, json={**SIGNABLE, "key_image_ids": [key_image]}, headers=first)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "expert_reassigned"
    assert (await client.post(f"{url}/sign", headers=first)).status == 403
    view = await (await client.get(url, headers=coordinator)).json()
    assert view["current"]["body"]["findings"] == "cyst" and view["signed"] is False
    reading_room_b = {"Authorization": f"Bearer {token_for('expert', sub=f'dr-b-{suffix}')}"}
    accepted_b = await client.post(f"/api/consultations/{cid}/accept", headers=reading_room_b)
    second = {"Authorization": f"Bearer {(await accepted_b.json())['token']}"}
    assert (
        await client.put(url, json={**SIGNABLE, "key_image_ids": [key_image]}, headers=second)
    ).status == 200
    assert (await client.post(f"{url}/sign", headers=second)).status == 200


async def test_contradictions_are_advised_while_writing_and_a_hard_one_refuses_signing(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid, expert, key_image = await consultation(client, coordinator, token_for, BREAST)
    url = f"/api/consultations/{cid}/report"
    # The case: BI-RADS 0 "agree" with a first read of 4A.
    contradicting = {
        **SIGNABLE,
        "category": "0",
        "concordance": "agree",
        "recommendation": "Diagnostic mammography.",
        "key_image_ids": [key_image],
    }
    # Checked as it is written, before anything is saved: nothing is stored.
    checked = await client.post(f"{url}/check", json=contradicting, headers=expert)
    assert checked.status == 200, await checked.text()
    advice = (await checked.json())["consistency"]
    assert [(a["field"], a["hard"]) for a in advice] == [("concordance", True)]
    assert "BI-RADS 4A" in advice[0]["message"]
    assert (await (await client.get(url, headers=expert)).json())["current"] is None
    # A body the application refuses is refused here too, naming the field.
    bad = await client.post(
        f"{url}/check", json={"segments_examined": ["popliteal"]}, headers=expert
    )
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "segments_examined"

    view = await (await client.put(url, json=contradicting, headers=expert)).json()
    assert [a["field"] for a in view["consistency"]] == ["concordance"]
    refused = await client.post(f"{url}/sign", headers=expert)
    assert refused.status == 409
    error = (await refused.json())["error"]
    assert error["code"] == "report_inconsistent" and "BI-RADS 4A" in error["message"]

    # Advice alone does not stop signing: the expert may know better.
    advised = {
        **contradicting,
        "category": "2",
        "concordance": "major_discrepancy",
        "recommendation": "Ultrasound-guided biopsy.",
    }
    view = await (await client.put(url, json=advised, headers=expert)).json()
    assert [(a["field"], a["hard"]) for a in view["consistency"]] == [("recommendation", False)]
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()
    assert (await signed.json())["consistency"] == []  # signed: nothing more to check


async def test_the_second_read_is_compared_field_by_field_with_a_structured_first_read(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    first_lesion = {"side": "left", "clock": "2", "shape": "oval", "margin": ["indistinct"]}
    request = {**BREAST, "breast": {**BREAST["breast"], "first_read_lesions": [first_lesion]}}
    cid, expert, key_image = await consultation(client, coordinator, token_for, request)
    url = f"/api/consultations/{cid}/report"
    # No structured findings in the report yet: nothing to compare.
    assert (await (await client.get(url, headers=expert)).json())["differences"] == []
    second = {**first_lesion, "margin": ["circumscribed"], "special_case": "simple_cyst"}
    report = {**SIGNABLE, "key_image_ids": [key_image], "lesions": [second]}
    checked = await client.post(f"{url}/check", json=report, headers=expert)
    assert checked.status == 200, await checked.text()
    expected = [
        {
            "field": "lesions.0.margin",
            "label": "Lesion 1: margin",
            "first": "indistinct",
            "second": "circumscribed",
        },
        {
            "field": "lesions.0.special_case",
            "label": "Lesion 1: special case",
            "first": None,
            "second": "simple cyst",
        },
    ]
    assert (await checked.json())["differences"] == expected
    assert (await client.put(url, json=report, headers=expert)).status == 200
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()
    # Once signed, the record of where the reads differ stays on the report.
    assert (await signed.json())["differences"] == expected
    assert (await (await client.get(url, headers=expert)).json())["differences"] == expected

    # A DVT request's first read per segment, compared segment by segment.
    dvt = {
        "clinical_question": "Left calf pain: DVT?",
        "urgency": "urgent",
        "application": "dvt",
        "device": PHANTOM_DEVICE,
        "incomplete_reason": "scanning now",
        "dvt": {"first_read_segments": [{"segment": "popliteal", "thrombus": "none"}]},
    }
    cid, expert, _ = await consultation(client, coordinator, token_for, dvt)
    findings = {"segment_findings": [{"segment": "popliteal", "thrombus": "acute"}]}
    checked = await client.post(
        f"/api/consultations/{cid}/report/check", json=findings, headers=expert
    )
    assert (await checked.json())["differences"] == [
        {
            "field": "segment_findings.popliteal.thrombus",
            "label": "Popliteal vein: thrombus",
            "first": "none",
            "second": "acute",
        }
    ]
