"""Key images reach a real PACS (Orthanc + DICOMweb) through the durable outbox."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import read
from orthanc_server import OrthancServer
from phantom import BANNER_HEIGHT, BREAST_REQUEST, PHANTOM_DEVICE, phantom_png
from pydicom.dataset import Dataset
from scanner_files import scanner_file

from server.config import Settings, load_settings
from server.imaging.pacs import stored_uids, stow_body
from server.keyring import load_or_create


@pytest.fixture
def settings(tmp_path: Path, orthanc: OrthancServer) -> Settings:
    load_or_create(tmp_path / "var")
    return load_settings(data_dir=tmp_path / "var", dicomweb_url=orthanc.dicomweb_url)


async def setup(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> tuple[str, dict[str, str]]:
    body = {
        "clinical_question": "q",
        "urgency": "routine",
        "incomplete_reason": "test request",
        "device": PHANTOM_DEVICE,
    }
    created = await client.post("/api/consultations", json=body, headers=coordinator)
    cid = (await created.json())["id"]
    operator = {"Authorization": f"Bearer {token_for('operator', sub='op', consultation=cid)}"}
    return cid, operator


async def upload(client: TestClient[Any, Any], cid: str, headers: dict[str, str]) -> str:
    response = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(5),
        headers={**headers, "Content-Type": "image/png"},
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["key_image_id"])


async def wait_for_state(
    client: TestClient[Any, Any], cid: str, headers: dict[str, str], done: Any, within: float = 30
) -> dict[str, Any]:
    for _ in range(int(within / 0.2)):
        listing = await (
            await client.get(f"/api/consultations/{cid}/key-images", headers=headers)
        ).json()
        if done(listing):
            return listing  # type: ignore[no-any-return]
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached: {listing}")


async def archived(
    client: TestClient[Any, Any], key_image_id: str, headers: dict[str, str]
) -> Dataset:
    """Our archived DICOM of a key image, as the API serves it."""
    return read(
        await (await client.get(f"/api/key-images/{key_image_id}/dicom", headers=headers)).read()
    )


def qido_instances(orthanc: OrthancServer, study: str) -> list[dict[str, Any]]:
    """QIDO-RS: the instances the PACS holds in a study (DICOM JSON)."""
    found: list[dict[str, Any]] = json.loads(orthanc.get(f"/dicom-web/studies/{study}/instances"))
    return found


def wado_instance(orthanc: OrthancServer, study: str, series: str, sop: str) -> bytes:
    """WADO-RS retrieve of one instance (multipart/related), the DICOM part's bytes."""
    raw = orthanc.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        accept='multipart/related; type="application/dicom"',
    )
    # Orthanc's answer starts at the first boundary; give the parser the header it needs.
    boundary = raw.split(b"\r\n", 1)[0][2:].decode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f'Content-Type: multipart/related; boundary="{boundary}"\r\n\r\n'.encode() + raw
    )
    parts = [p.get_payload(decode=True) for p in message.iter_parts()]
    assert len(parts) == 1
    return bytes(parts[0])


async def test_key_image_is_pushed_and_reads_back_identical(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
) -> None:
    cid, operator = await setup(client, coordinator, token_for)
    key_image_id = await upload(client, cid, operator)
    # The image, then the key object selection written just after it.
    listing = await wait_for_state(
        client,
        cid,
        operator,
        lambda r: r["key_images"][0]["pacs_state"] == "sent" and r["pacs"]["sent"] == 2,
    )
    assert listing["pacs"]["pending"] == 0
    ours = await archived(client, key_image_id, operator)
    study, series, sop = ours.StudyInstanceUID, ours.SeriesInstanceUID, ours.SOPInstanceUID
    # QIDO-RS finds it in the study; WADO-RS returns the same pixels.
    found = qido_instances(orthanc, study)
    assert sop in {i["00080018"]["Value"][0] for i in found}
    theirs = read(wado_instance(orthanc, study, series, sop))
    assert np.array_equal(theirs.pixel_array, ours.pixel_array)
    assert not theirs.pixel_array[:BANNER_HEIGHT].any()
    # The record shows the PACS state too.
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["key_images"][0]["pacs_state"] == "sent"


async def test_capture_succeeds_while_the_pacs_is_down_and_arrives_when_it_is_back(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
) -> None:
    cid, operator = await setup(client, coordinator, token_for)
    orthanc.stop()
    key_image_id = await upload(client, cid, operator)
    listing = await wait_for_state(client, cid, operator, lambda r: r["pacs"]["last_error"])
    assert listing["key_images"][0]["pacs_state"] == "pending"
    assert "unreachable" in listing["pacs"]["last_error"]
    orthanc.start()
    await wait_for_state(
        client,
        cid,
        operator,
        lambda r: r["key_images"][0]["pacs_state"] == "sent" and r["pacs"]["sent"] == 2,
        within=40,
    )
    ours = await archived(client, key_image_id, operator)
    found = qido_instances(orthanc, ours.StudyInstanceUID)
    assert ours.SOPInstanceUID in {i["00080018"]["Value"][0] for i in found}
    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_pacs_pushes_total{outcome="sent"} 2.0' in metrics
    assert 'probelink_pacs_pushes_total{outcome="failed"}' in metrics
    assert 'probelink_key_images_total{kind="still",source="upload"} 1.0' in metrics


def test_stow_answer_is_read_strictly() -> None:
    body, content_type = stow_body([b"A", b"B"])
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert body.count(b"Content-Type: application/dicom") == 2
    ok = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2"]}}]}}
    assert stored_uids(ok) == ({"1.2"}, set())
    failed = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.3"]}}]}}
    assert stored_uids(failed) == (set(), {"1.3"})
    for nonsense in (
        {"00081199": {"Value": "nonsense"}},
        {"00081199": []},
        {"00081199": {"Value": [1, None, {"00081155": "x"}, {"00081155": {"Value": [2]}}]}},
        {"00081198": None},
    ):
        assert stored_uids(nonsense) == (set(), set())


async def test_signed_report_reaches_the_pacs_as_a_structured_report(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
) -> None:
    cid, operator = await setup(client, coordinator, token_for)
    key_image_id = await upload(client, cid, operator)
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader', consultation=cid)}"}
    report = {
        "findings": "Simple cyst at 2 o'clock.",
        "recommendation": "No follow-up needed.",
        "technical_quality": {"grade": "adequate"},
        "key_image_ids": [key_image_id],
    }
    url = f"/api/consultations/{cid}/report"
    assert (await client.put(url, json=report, headers=expert)).status == 200
    assert (await client.post(f"{url}/sign", headers=expert)).status == 200
    # Image, key object selection, report and its PDF: all four confirmed by the PACS (the
    # bedside's access ended with the signature: the coordinator looks).
    await wait_for_state(client, cid, coordinator, lambda r: r["pacs"]["sent"] == 4)
    ours = await archived(client, key_image_id, coordinator)
    found = qido_instances(orthanc, ours.StudyInstanceUID)
    classes = {i["00080016"]["Value"][0]: i for i in found}
    assert "1.2.840.10008.5.1.4.1.1.88.33" in classes  # Comprehensive SR
    sr = classes["1.2.840.10008.5.1.4.1.1.88.33"]
    theirs = read(
        wado_instance(
            orthanc,
            ours.StudyInstanceUID,
            sr["0020000E"]["Value"][0],
            sr["00080018"]["Value"][0],
        )
    )
    assert theirs.VerificationFlag == "VERIFIED" and theirs.PatientID == ours.PatientID
    assert "Simple cyst at 2 o'clock." in str(
        [
            item.get("TextValue")
            for section in theirs.ContentSequence
            for item in section.get("ContentSequence", [])
        ]
    )


async def test_a_scanners_clip_and_its_measurements_reach_the_pacs(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
) -> None:
    """A scanner's multi-frame file, uploaded, is pushed with its regions and timing; the
    presentation state of its measurements follows it."""
    cid, operator = await setup(client, coordinator, token_for)
    response = await client.post(
        f"/api/consultations/{cid}/captures",
        data=io.BytesIO(scanner_file(frames=5)),
        headers={**operator, "Content-Type": "application/dicom"},
    )
    assert response.status == 201, await response.text()
    key_image_id = (await response.json())["key_image_id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader', consultation=cid)}"}
    calipers = {"calipers": [{"points": [[400, 300], [400, 450]]}]}
    measured = await client.put(
        f"/api/key-images/{key_image_id}/measurements", json=calipers, headers=expert
    )
    assert measured.status == 200, await measured.text()
    # The clip, its key object selection and the presentation state.
    await wait_for_state(client, cid, operator, lambda r: r["pacs"]["sent"] == 3)
    ours = await archived(client, key_image_id, operator)
    study, series, sop = ours.StudyInstanceUID, ours.SeriesInstanceUID, ours.SOPInstanceUID
    theirs = read(wado_instance(orthanc, study, series, sop))
    assert int(theirs.NumberOfFrames) == 5 and theirs.FrameTime == ours.FrameTime
    assert theirs.SequenceOfUltrasoundRegions[0].PhysicalDeltaX == pytest.approx(0.01)
    assert "ST ELSEWHERE" not in str(theirs) and theirs.PatientID == ours.PatientID
    state = (await measured.json())["presentation_state"]
    assert state in {i["00080018"]["Value"][0] for i in qido_instances(orthanc, study)}


def coded(ds: Dataset) -> list[list[tuple[str, str, str]]]:
    """Each container of the findings: its CODE items as (name code, value scheme, value code)."""
    findings = next(s for s in ds.ContentSequence if s.get("ValueType") == "CONTAINER")
    return [
        [
            (
                i.ConceptNameCodeSequence[0].CodeValue,
                i.ConceptCodeSequence[0].CodingSchemeDesignator,
                i.ConceptCodeSequence[0].CodeValue,
            )
            for i in item.ContentSequence
            if i.ValueType == "CODE"
        ]
        for item in findings.ContentSequence
        if item.ValueType == "CONTAINER"
    ]


async def signed_sr_in_pacs(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
    request: dict[str, Any],
    report: dict[str, Any],
) -> Dataset:
    """Sign `report` on a new consultation; the SR as the PACS gives it back (WADO-RS)."""
    created = await client.post("/api/consultations", json=request, headers=coordinator)
    cid = (await created.json())["id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader', consultation=cid)}"}
    key_image_id = await upload(client, cid, expert)
    url = f"/api/consultations/{cid}/report"
    body = {**report, "key_image_ids": [key_image_id]}
    assert (await client.put(url, json=body, headers=expert)).status == 200
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()
    await wait_for_state(client, cid, coordinator, lambda r: r["pacs"]["sent"] == 4)
    ours = await archived(client, key_image_id, coordinator)
    found = qido_instances(orthanc, ours.StudyInstanceUID)
    sr = next(i for i in found if i["00080016"]["Value"][0] == "1.2.840.10008.5.1.4.1.1.88.33")
    return read(
        wado_instance(
            orthanc, ours.StudyInstanceUID, sr["0020000E"]["Value"][0], sr["00080018"]["Value"][0]
        )
    )


async def test_the_structured_findings_reach_the_pacs_coded(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    orthanc: OrthancServer,
) -> None:
    lesion = {
        "side": "left",
        "clock": "2",
        "distance_from_nipple_cm": 3,
        "size_mm": [12, 8],
        "shape": "irregular",
        "orientation": "not_parallel",
        "margin": ["spiculated"],
        "echo_pattern": "hypoechoic",
        "posterior_features": "shadowing",
        "category": "4C",
    }
    breast = {
        "findings": "Irregular spiculated hypoechoic mass.",
        "category": "4C",
        "recommendation": "Ultrasound-guided core biopsy.",
        "concordance": "minor_discrepancy",
        "technical_quality": {"grade": "adequate"},
        "lesions": [lesion, {"side": "right", "clock": "10:30", "special_case": "simple_cyst"}],
    }
    theirs = await signed_sr_in_pacs(
        client, coordinator, token_for, orthanc, BREAST_REQUEST, breast
    )
    assert coded(theirs) == [
        [
            ("363698007", "SCT", "80248007"),  # finding site: left breast
            ("111014", "SCT", "129773009"),  # 2 o'clock position
            ("300842002", "SCT", "49608001"),  # shape: irregular
            ("111354", "DCM", "111356"),  # orientation: not parallel
            ("111037", "SCT", "129742005"),  # margin: spiculated
            ("111360", "DCM", "111364"),  # echo pattern: hypoechoic
            ("111366", "DCM", "111369"),  # posterior acoustic shadowing
            ("111005", "99PROBELINK", "BIRADS4C"),  # its category
        ],
        [
            ("363698007", "SCT", "73056007"),  # right breast
            ("111014", "99PROBELINK", "CLOCK1030"),
            ("121071", "SCT", "399294002"),  # cyst of breast
        ],
    ]
    # The size in mm, as numbers.
    findings = next(s for s in theirs.ContentSequence if s.get("ValueType") == "CONTAINER")
    first = next(i for i in findings.ContentSequence if i.ValueType == "CONTAINER")
    sizes = [
        (i.ConceptNameCodeSequence[0].CodeValue, float(i.MeasuredValueSequence[0].NumericValue))
        for i in first.ContentSequence
        if i.ValueType == "NUM"
    ]
    assert sizes == [("121242", 3.0), ("81827009", 12.0), ("81827009", 8.0)]

    dvt_request = {
        "clinical_question": "Left leg swelling: DVT?",
        "urgency": "urgent",
        "application": "dvt",
        "device": PHANTOM_DEVICE,
        "incomplete_reason": "test request",
    }
    dvt = {
        "findings": "Occlusive acute thrombus in the popliteal vein.",
        "category": "acute_dvt",
        "recommendation": "Start anticoagulation.",
        "technical_quality": {"grade": "adequate"},
        "segment_findings": [
            {
                "segment": "femoral_distal",
                "compressibility": "compressible",
                "thrombus": "none",
                "flow": ["phasic", "augmentation"],
            },
            {
                "segment": "popliteal",
                "compressibility": "non_compressible",
                "thrombus": "acute",
                "extent": "occlusive",
            },
        ],
    }
    theirs = await signed_sr_in_pacs(client, coordinator, token_for, orthanc, dvt_request, dvt)
    assert coded(theirs) == [
        [
            ("363698007", "SCT", "83419000"),  # femoral vein (its distal third: a modifier)
            ("COMPRESSIBILITY", "99PROBELINK", "COMPRESSIBLE"),
            ("396339007", "SCT", "272519000"),  # thrombus: absent
            ("VENFLOW", "99PROBELINK", "PHASICFLOW"),
            ("VENFLOW", "99PROBELINK", "AUGMENTATION"),
        ],
        [
            ("363698007", "SCT", "56849005"),  # popliteal vein
            ("COMPRESSIBILITY", "99PROBELINK", "NONCOMPRESSIBLE"),
            ("396339007", "SCT", "385315009"),  # acute
            ("THROMBEXTENT", "99PROBELINK", "OCCLUSIVE"),
        ],
    ]
