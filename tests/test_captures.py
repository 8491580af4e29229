"""Captures through a live aiortc session become de-identified, valid DICOM key images."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from aiortc.mediastreams import AudioStreamTrack
from dicom_checks import dciodvfy_errors, every_value, ocr, read
from live_client import Participant
from media_bots import Bot, expert_bot
from phantom import (
    BANNER_HEIGHT,
    PATIENT_DOB,
    PATIENT_MRN,
    PATIENT_NAME,
    PHANTOM_DEVICE,
    PhantomTrack,
    phantom_frame,
    phantom_png,
)

from server.app import create_app
from server.config import Settings
from server.web.keys import KEY_IMAGES, STORE

# Every form the fake patient's data could take in a file.
PHI = [
    PATIENT_NAME,
    *PATIENT_NAME.split(),
    PATIENT_MRN,
    PATIENT_MRN.split()[1],
    PATIENT_DOB,
    PATIENT_DOB.split()[1],
    PATIENT_DOB.split()[1].replace("-", ""),
]

Room = Callable[[str], Awaitable[Participant]]


async def create(client: TestClient[Any, Any], coordinator: dict[str, str], **context: Any) -> str:
    body = {
        "clinical_question": "solid or cystic?",
        "urgency": "urgent",
        "incomplete_reason": "test request",
        **context,
    }
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


def joiner(client: TestClient[Any, Any], coordinator: dict[str, str], cid: str) -> Room:
    async def join(role: str) -> Participant:
        response = await client.post(
            f"/api/consultations/{cid}/invites",
            json={"role": role, "name": role},
            headers=coordinator,
        )
        token = (await response.json())["token"]
        return await Participant(str(client.make_url("/")), token).connect()

    return join


@pytest.fixture
async def session(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> AsyncIterator[tuple[str, Bot, Bot]]:
    """A breast consultation from the phantom device: operator publishing, expert watching."""
    cid = await create(
        client,
        coordinator,
        application="breast",
        laterality="left",
        device=PHANTOM_DEVICE,
        transducer={"model": "L12-5", "type": "linear"},
    )
    join = joiner(client, coordinator, cid)
    operator = Bot(await join("operator"))
    operator.pc.addTransceiver(PhantomTrack(), direction="sendonly")
    operator.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    expert = await expert_bot(await join("expert"))
    try:
        assert "sdp" in await operator.negotiate()
        assert "sdp" in await expert.negotiate()
        await expert.wait_packets("video", 20)
        yield cid, operator, expert
    finally:
        await expert.close()
        await operator.close()


def decoded_pictures(packets: list[Any]) -> list[np.ndarray]:
    decoder = av.CodecContext.create("vp8", "r")
    pictures = []
    for packet in packets:
        try:
            frames = decoder.decode(av.Packet(bytes(packet)))
        except av.FFmpegError:
            continue
        pictures.extend(f.to_ndarray(format="rgb24") for f in frames)
    return pictures


async def dicom_of(
    client: TestClient[Any, Any], headers: dict[str, str], key_image_id: str
) -> bytes:
    response = await client.get(f"/api/key-images/{key_image_id}/dicom", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/dicom"
    return await response.read()


def assert_no_patient_data(data: bytes) -> None:
    lowered = data.lower()
    for text in PHI:
        assert text.encode().lower() not in lowered, "patient data in the file's bytes"
    for value in every_value(read(data)):
        shown = str(value).lower()
        for text in PHI:
            assert text.lower() not in shown, "patient data in a header element"


async def test_capture_masks_banner_text_before_archiving(
    session: tuple[str, Bot, Bot],
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    cid, operator, expert = session
    # Before: the picture the bedside sends shows the patient's name, MRN and date of birth
    # (read from the sent frame: the live picture is lossy and rate-adapted, and on a busy
    # machine too blurred for OCR, which said nothing about the capture).
    assert decoded_pictures(expert.received["video"]), "the expert sees the live picture"
    seen = ocr(phantom_frame(1, 640, 480))
    assert (
        PATIENT_NAME in seen and PATIENT_MRN.split()[1] in seen and PATIENT_DOB.split()[1] in seen
    )

    mark = await expert.participant.call(
        "mark", {"kind": "circle", "points": [[0.5, 0.5], [0.6, 0.5]]}
    )
    assert "seq" in mark
    ack = await expert.participant.call("capture", {"kind": "still"})
    assert "key_image_id" in ack, ack
    # Everyone is told, in the room's sequence.
    told = await operator.participant.wait_for("key_image")
    assert told[-1]["id"] == ack["key_image_id"] and told[-1]["seq"] == ack["seq"]

    data = await dicom_of(client, coordinator, ack["key_image_id"])
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    pixels = ds.pixel_array
    assert pixels.shape == (480, 640, 3)
    assert not pixels[:BANNER_HEIGHT].any(), "the banner is not blank"
    assert pixels[BANNER_HEIGHT:].any(), "the picture below the banner is gone"
    after = ocr(pixels)
    for text in PHI:
        assert text.lower() not in after.lower()
    assert_no_patient_data(data)

    # PS3.15 Annex E, basic profile with the clean pixel data option.
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.BurnedInAnnotation == "NO"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113101"} <= codes
    assert (
        ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109104"
    )
    for type2 in (
        "PatientBirthDate",
        "PatientSex",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    ):
        assert type2 in ds and ds[type2].value in ("", None), type2
    assert str(ds.PatientID).startswith("PL-")
    assert not any(element.tag.is_private for element in ds.iterall())
    for absent in ("OperatorsName", "InstitutionName", "PerformingPhysicianName"):
        assert absent not in ds
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.6.1"
    assert ds.Manufacturer == "probelink" and ds.ManufacturerModelName == "Synthetic phantom"
    assert ds.TransducerData == "L12-5" and ds.BodyPartExamined == "BREAST"
    assert ds.ImageLaterality == "L"

    # The record holds the marks that were on screen, and the file's hash.
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=coordinator)
    images = (await listing.json())["key_images"]
    assert [i["id"] for i in images] == [ack["key_image_id"]]
    assert images[0]["marks"][0]["kind"] == "circle"
    assert images[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert images[0]["pacs_state"] == "not_configured"

    # Archive: named by hash under pseudonymous UIDs; no file or directory name holds PHI.
    archive = settings.data_dir / "archive"
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert hashlib.sha256(data).hexdigest() + ".dcm" in {p.name for p in files}
    for path in archive.rglob("*"):
        for text in PHI:
            assert text.lower() not in str(path.relative_to(archive)).lower()
    # Every object written with it (presentation state with the mark, and the key object
    # selection, written just after the acknowledgement) is valid and clean too.
    await client.app[KEY_IMAGES].selections.settled()
    files = [p for p in archive.rglob("*") if p.is_file()]
    others = [p.read_bytes() for p in files if p.name != hashlib.sha256(data).hexdigest() + ".dcm"]
    kinds = {read(o).SOPClassUID for o in others}
    assert kinds == {"1.2.840.10008.5.1.4.1.1.11.2", "1.2.840.10008.5.1.4.1.1.88.59"}
    for other in others:
        assert dciodvfy_errors(other, tmp_path) == []
        assert_no_patient_data(other)
        assert read(other).StudyInstanceUID == ds.StudyInstanceUID


async def test_key_object_selection_lists_every_key_image_after_a_burst(
    session: tuple[str, Bot, Bot],
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    _cid, operator, expert = session
    acks = await asyncio.gather(
        expert.participant.call("capture", {"kind": "still"}),
        operator.participant.call("capture", {"kind": "still"}),
        expert.participant.call("capture", {"kind": "still"}),
    )
    assert all("key_image_id" in ack for ack in acks), acks
    sops = {
        read(await dicom_of(client, coordinator, a["key_image_id"])).SOPInstanceUID for a in acks
    }
    await client.app[KEY_IMAGES].selections.settled()
    files = [p.read_bytes() for p in (settings.data_dir / "archive").rglob("*.dcm")]
    selections = [d for d in files if read(d).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"]
    # Coalesced: fewer versions than captures is fine; the newest lists all three.
    assert 1 <= len(selections) <= 3
    data = max(selections, key=lambda d: int(read(d).InstanceNumber))
    newest = read(data)
    listed = {
        sop.ReferencedSOPInstanceUID
        for study in newest.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert listed == sops
    assert dciodvfy_errors(data, tmp_path) == []


async def test_clip_saves_the_last_seconds_masked_on_every_frame(
    session: tuple[str, Bot, Bot],
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    tmp_path: Path,
) -> None:
    _cid, _operator, expert = session
    # More than a second of video since the first keyframe, however slowly a busy machine
    # started the stream (a clip starts on a keyframe: with 1.2 s of sleep it once held 13).
    await expert.wait_packets("video", 50)
    ack = await expert.participant.call("capture", {"kind": "clip", "seconds": 1})
    sent = len(expert.received["video"])  # about what the bedside had sent by then
    assert "key_image_id" in ack, ack
    data = await dicom_of(client, coordinator, ack["key_image_id"])
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
    frames = ds.pixel_array
    # At least the second asked for; it starts on the keyframe before that second, so it may
    # hold more, never more than was sent.
    assert 20 <= frames.shape[0] <= sent + 5, (frames.shape, sent)
    assert float(ds.FrameTime) == pytest.approx(33.3, abs=3)
    for frame in frames:
        # JPEG may leave faint ringing at the banner's edge; the text itself must be gone.
        assert frame[: BANNER_HEIGHT - 8].max() < 24
    after = ocr(frames[len(frames) // 2])
    for text in PHI:
        assert text.lower() not in after.lower()
    assert_no_patient_data(data)
    # A second capture of the same consultation lands in the same study.
    still = await expert.participant.call("capture", {"kind": "still"})
    other = read(await dicom_of(client, coordinator, still["key_image_id"]))
    assert other.StudyInstanceUID == ds.StudyInstanceUID
    assert other.PatientID == ds.PatientID


async def test_recorded_clip_spans_start_to_stop(
    session: tuple[str, Bot, Bot], client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    _cid, _operator, expert = session
    assert await expert.participant.call("capture", {"kind": "clip", "record": "start"}) == {
        "recording": True
    }
    again = await expert.participant.call("capture", {"kind": "clip", "record": "start"})
    assert again["error"]["code"] == "recording_active"
    await asyncio.sleep(1.0)
    ack = await expert.participant.call("capture", {"kind": "clip", "record": "stop"})
    assert ack.get("truncated") is False, ack
    ds = read(await dicom_of(client, coordinator, ack["key_image_id"]))
    assert 20 <= int(ds.NumberOfFrames) <= 45
    stop = await expert.participant.call("capture", {"kind": "clip", "record": "stop"})
    assert stop["error"]["code"] == "no_recording"


async def test_capture_is_refused_without_a_device_profile(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    unnamed = await create(client, coordinator)
    unknown = await create(client, coordinator, device={"manufacturer": "Acme", "model": "US-1"})
    for cid, code in ((unnamed, "device_unknown"), (unknown, "no_device_profile")):
        expert = await joiner(client, coordinator, cid)("expert")
        try:
            answer = await expert.call("capture", {"kind": "still"})
            assert answer["error"]["code"] == code
            # The clinician is told what to do in plain words, nothing for IT.
            message = answer["error"]["message"]
            assert message.startswith("This scanner is not set up for captures yet; ask your")
            assert "PROBELINK" not in message
        finally:
            await expert.close()
    archive = settings.data_dir / "archive"
    assert not [p for p in archive.rglob("*") if p.is_file()]


async def test_capture_needs_video_a_role_and_a_valid_request(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    cid = await create(client, coordinator, device=PHANTOM_DEVICE)
    join = joiner(client, coordinator, cid)
    expert, observer = await join("expert"), await join("observer")
    try:
        assert (await expert.call("capture", {"kind": "still"}))["error"]["code"] == "no_video"
        denied = await observer.call("capture", {"kind": "still"})
        assert denied["error"]["code"] == "not_allowed_capture"
        for bad, field in (
            ({"kind": "movie"}, "kind"),
            ({"kind": "still", "seconds": 3}, None),
            ({"kind": "clip", "seconds": 0}, "seconds"),
            ({"kind": "clip", "seconds": 1, "record": "start"}, None),
            ({"kind": "clip", "record": "pause"}, "record"),
        ):
            answer = await expert.call("capture", bad)
            assert answer["error"]["code"] in ("invalid_field", "unknown_field"), bad
            assert answer["error"]["field"] == field, bad
    finally:
        await expert.close()
        await observer.close()


async def clean_source_still(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    width: int,
    height: int,
    banner: bool = False,
) -> dict[str, Any]:
    """The answer to a still captured from a declared clean source's video of that size (with
    the phantom's patient banner on it, or not)."""
    cid = await create(
        client,
        coordinator,
        device={"manufacturer": "Acme", "model": "US-1", "burned_in_text": False},
    )
    operator = Bot(await joiner(client, coordinator, cid)("operator"))
    operator.pc.addTransceiver(PhantomTrack(width, height, banner), direction="sendonly")
    operator.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    try:
        assert "sdp" in await operator.negotiate()
        for _ in range(100):
            ack: dict[str, Any] = await operator.participant.call("capture", {"kind": "still"})
            if ack.get("error", {}).get("code") != "no_picture":
                break
            await asyncio.sleep(0.1)
        return ack
    finally:
        await operator.close()


async def test_declared_clean_source_is_archived_without_masking(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    ack = await clean_source_still(client, coordinator, 320, 240)
    assert "key_image_id" in ack, ack
    ds = read(await dicom_of(client, coordinator, ack["key_image_id"]))
    assert ds.BurnedInAnnotation == "NO"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert "113100" in codes and "113101" not in codes  # nothing was cleaned
    assert ds.pixel_array[: BANNER_HEIGHT // 2].any()  # not masked


async def test_a_declared_clean_source_showing_a_patient_banner_is_stopped_by_the_text_check(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    """The declaration is wrong: the safety net under the masks reads the banner, nothing is
    stored, the refusal is counted and audited (what kind of text and where, never the text)."""
    ack = await clean_source_still(client, coordinator, 1280, 720, banner=True)
    assert ack.get("error", {}).get("code") == "burned_in_text", ack
    # The operator is told in plain words; the text itself is nowhere.
    assert "ask your coordinator" in ack["error"]["message"]
    assert not list((settings.data_dir / "archive").rglob("*.dcm"))
    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_burned_in_text_refusals_total{kind="name",source="relay"} 1.0' in metrics
    entries = [
        e.facts
        for e in await client.app[STORE].audit_entries()
        if e.facts.action == "key_image.text_found"
    ]
    assert len(entries) == 1 and entries[0].outcome == "refused"
    assert {"name", "identifier"} <= set(entries[0].detail["found"])
    _, y, _, h = entries[0].detail["boxes"][0]
    assert y + h <= BANNER_HEIGHT  # where: the banner's rows
    everything = repr(entries) + metrics + json.dumps(ack)
    for secret in (*PATIENT_NAME.split(), PATIENT_MRN.split()[1], "1957"):
        assert secret not in everything


async def test_a_video_wider_than_4096_pixels_is_not_captured(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    ack = await clean_source_still(client, coordinator, 4112, 96)
    assert ack.get("error", {}).get("code") == "image_too_large", ack
    assert "4112x96" in ack["error"]["message"]
    assert not list((settings.data_dir / "archive").rglob("*.dcm"))


async def test_a_key_object_selection_missed_by_a_crash_is_written_at_the_next_start(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    settings: Settings,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = await create(client, coordinator, device=PHANTOM_DEVICE)
    invite = await client.post(
        f"/api/consultations/{cid}/invites",
        json={"role": "operator", "name": "op"},
        headers=coordinator,
    )
    token = (await invite.json())["token"]
    # The process dies between the capture's acknowledgement and its key object selection.
    key_images = client.app[KEY_IMAGES]
    monkeypatch.setattr(key_images.selections, "due", lambda row: None)
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=phantom_png(2),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
    )
    assert upload.status == 201
    await key_images.selections.settled()
    assert await key_images.records.objects(cid, "key_object_selection") == []
    # The next start catches up.
    restarted = await aiohttp_client(create_app(settings))
    await restarted.app[KEY_IMAGES].selections.settled()
    selections = await restarted.app[KEY_IMAGES].records.objects(cid, "key_object_selection")
    assert len(selections) == 1
