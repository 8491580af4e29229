"""A scanner's own DICOM and recorded clips, uploaded, become de-identified key images.

The upload endpoint takes a scanner's DICOM (masked by the device its own header names, its
ultrasound regions and cine timing kept) and MP4/WebM clips (decoded with PyAV, masked by the
consultation's device on every frame, stored as US multi-frame), at the size scanners use.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import dciodvfy_errors, read
from phantom import PHANTOM_DEVICE, phantom_frame
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)
from scanner_files import FRAME_TIME_MS, MM_PER_PIXEL, assert_no_phi, recorded_clip, scanner_file
from test_capture_uploads import consultation as png_consultation

from server.config import Settings
from server.web.keys import KEY_IMAGES


async def consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str], device: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """A consultation and its operator's authorization header."""
    cid, headers = await png_consultation(client, coordinator, device)
    return cid, {"Authorization": headers["Authorization"]}


async def upload(
    client: TestClient[Any, Any], cid: str, auth: dict[str, str], body: bytes, content_type: str
) -> Any:
    return await client.post(
        f"/api/consultations/{cid}/captures",
        data=io.BytesIO(body),
        headers={**auth, "Content-Type": content_type},
    )


async def key_images(
    client: TestClient[Any, Any], cid: str, auth: dict[str, str]
) -> list[dict[str, Any]]:
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=auth)
    return list((await listing.json())["key_images"])


async def test_a_scanners_multiframe_file_is_de_identified_with_its_regions_and_timing(
    client: TestClient[Any, Any], coordinator: dict[str, str], tmp_path: Path
) -> None:
    cid, auth = await consultation(client, coordinator, PHANTOM_DEVICE)
    original = scanner_file(frames=12)
    response = await upload(client, cid, auth, original, "application/dicom")
    assert response.status == 201, await response.text()
    key_image_id = (await response.json())["key_image_id"]
    [listed] = await key_images(client, cid, auth)
    assert listed["id"] == key_image_id and listed["kind"] == "clip"
    detail = listed["detail"]
    assert detail["source"] == "scanner" and detail["frames"] == 12
    assert detail["ultrasound_regions"] == 1 and detail["masked"] is True
    assert (detail["width"], detail["height"]) == (1280, 720)
    data = await (await client.get(f"/api/key-images/{key_image_id}/dicom", headers=auth)).read()
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage and int(ds.NumberOfFrames) == 12
    assert abs(float(ds.FrameTime) - FRAME_TIME_MS) < 0.01
    [item] = ds.SequenceOfUltrasoundRegions
    assert item.PhysicalDeltaX == pytest.approx(MM_PER_PIXEL / 10)
    assert item.PhysicalUnitsXDirection == 3 and item.RegionLocationMinY0 == 64
    assert ds.Manufacturer == "probelink" and "DeviceSerialNumber" not in ds
    assert ds.AccessionNumber == "" and ds.StudyDate  # the consultation's study, not the scanner's
    assert_no_phi(data, ds.pixel_array[0])
    assert_no_phi(data, ds.pixel_array[11])
    # The scanner sends the same object again (a retry): the same key image, recorded once.
    again = await upload(client, cid, auth, original, "application/dicom")
    assert again.status == 200 and (await again.json())["key_image_id"] == key_image_id
    assert len(await key_images(client, cid, auth)) == 1


async def test_a_scanner_file_is_masked_by_its_own_device_or_refused(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    # The consultation names no device: a scanner's file is masked by the device it names.
    cid, auth = await consultation(client, coordinator, {"manufacturer": "Acme", "model": "X"})
    masked = await upload(client, cid, auth, scanner_file(syntax=RLELossless), "application/dicom")
    assert masked.status == 201, await masked.text()
    unknown = {"Manufacturer": "Other", "ManufacturerModelName": "Unknown 9"}
    refused = await upload(client, cid, auth, scanner_file(**unknown), "application/dicom")
    assert refused.status == 409
    error = (await refused.json())["error"]
    assert error["code"] == "no_device_profile" and "BurnedInAnnotation" in error["message"]
    # A header that says "no burned-in text" over a picture that has a banner: the safety net
    # under the masks reads it and refuses the file.
    lying = scanner_file(BurnedInAnnotation="NO", **unknown)
    caught = await upload(client, cid, auth, lying, "application/dicom")
    assert caught.status == 409 and (await caught.json())["error"]["code"] == "burned_in_text"
    clean = [phantom_frame(1, 1280, 720, banner=False)]
    declared = scanner_file(BurnedInAnnotation="NO", pictures=clean, **unknown)
    accepted = await upload(client, cid, auth, declared, "application/dicom")
    assert accepted.status == 201, await accepted.text()
    images = await key_images(client, cid, auth)
    assert [i["detail"]["masked"] for i in images] == [True, False]
    ct = await upload(client, cid, auth, scanner_file(Modality="CT"), "application/dicom")
    assert ct.status == 400 and (await ct.json())["error"]["code"] == "unsupported_modality"
    junk = await upload(client, cid, auth, b"DICM" * 100, "application/dicom")
    assert junk.status == 400 and (await junk.json())["error"]["code"] == "invalid_dicom"
    gif = await upload(client, cid, auth, b"GIF89a", "image/gif")
    assert gif.status == 415 and "video/mp4" in (await gif.json())["error"]["message"]
    assert len(await key_images(client, cid, auth)) == 2


@pytest.mark.parametrize("container", ["mp4", "webm"])
async def test_a_recorded_clip_becomes_a_masked_multiframe_key_image(
    client: TestClient[Any, Any], coordinator: dict[str, str], tmp_path: Path, container: str
) -> None:
    cid, auth = await consultation(client, coordinator, PHANTOM_DEVICE)
    response = await upload(client, cid, auth, recorded_clip(container), f"video/{container}")
    assert response.status == 201, await response.text()
    [listed] = await key_images(client, cid, auth)
    assert listed["kind"] == "clip" and listed["detail"]["source"] == "video_upload"
    assert listed["detail"]["frames"] == 30 and listed["detail"]["fps"] == pytest.approx(30, 0.05)
    data = await (await client.get(f"/api/key-images/{listed['id']}/dicom", headers=auth)).read()
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    assert int(ds.NumberOfFrames) == 30 and (ds.Rows, ds.Columns) == (720, 1280)
    assert abs(float(ds.FrameTime) - 1000 / 30) < 0.5
    assert "ISO_14496_10" in ds.LossyImageCompressionMethod or container == "webm"
    assert_no_phi(data, ds.pixel_array[0])
    assert_no_phi(data, ds.pixel_array[29])
    broken = await upload(client, cid, auth, b"\x00\x00\x00\x18ftypmp42" + bytes(64), "video/mp4")
    assert broken.status == 400 and (await broken.json())["error"]["code"] == "invalid_video"


async def test_a_clip_of_an_unmasked_device_is_refused_before_it_is_read(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    cid, auth = await consultation(client, coordinator, {"manufacturer": "Acme", "model": "X"})
    response = await upload(client, cid, auth, recorded_clip("mp4", frames=2), "video/mp4")
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "no_device_profile"
    assert await key_images(client, cid, auth) == []


async def test_calipers_in_mm_are_kept_drawn_and_reported(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """On a scanner's image the region gives the mm; on a capture, the depth-scale calibration;
    the lengths are the server's own, drawn in a presentation state and in the signed SR."""
    cid, auth = await consultation(client, coordinator, PHANTOM_DEVICE)
    scanned = await upload(client, cid, auth, scanner_file(frames=3), "application/dicom")
    scan_id = (await scanned.json())["key_image_id"]
    still = await upload(client, cid, auth, recorded_clip("mp4", frames=2), "video/mp4")
    clip_id = (await still.json())["key_image_id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}

    def put(key_image_id: str, body: Any, headers: dict[str, str] = expert) -> Any:
        return client.put(
            f"/api/key-images/{key_image_id}/measurements", json=body, headers=headers
        )

    # A caliper of 150 pixels down the region (0.1 mm a pixel); one in the banner, outside it.
    calipers = [
        {"points": [[400, 300], [400, 450]], "label": "AP", "frame": 2},
        {"points": [[400, 10], [500, 10]]},
    ]
    response = await put(scan_id, {"calipers": calipers, "calibration": None})
    assert response.status == 200, await response.text()
    measured = (await response.json())["calipers"]
    assert (
        measured[0]["mm"] == pytest.approx(15.0)
        and measured[0]["calibration"] == "ultrasound_region"
    )
    assert measured[1]["mm"] is None and measured[1]["said"] == "uncalibrated"
    # The recorded clip has no region: 200 pixels of its depth scale are 20 mm.
    depth = {"points": [[100, 100], [100, 300]], "mm": 20}
    response = await put(
        clip_id, {"calipers": [{"points": [[10, 10], [130, 10]]}], "calibration": depth}
    )
    assert (await response.json())["calipers"][0]["mm"] == pytest.approx(12.0)
    # Bad bodies and the wrong role change nothing.
    off = await put(scan_id, {"calipers": [{"points": [[0, 0], [5000, 0]]}]})
    assert off.status == 400 and (await off.json())["error"]["code"] == "invalid_points"
    no_such_frame = await put(scan_id, {"calipers": [{"points": [[0, 0], [5, 0]], "frame": 4}]})
    assert (await no_such_frame.json())["error"]["code"] == "invalid_points"
    assert (await put(scan_id, {"calipers": [], "extra": 1})).status == 400
    assert (await put(scan_id, {"calipers": []}, auth)).status == 403
    images = {k["id"]: k for k in await key_images(client, cid, auth)}
    assert images[scan_id]["measurements"]["calipers"][0]["mm"] == pytest.approx(15.0)

    # The presentation state draws the calipers on the scanner's image.
    state_uid = images[scan_id]["measurements"]["presentation_state"]
    [state] = [
        o
        for o in await client.app[KEY_IMAGES].records.objects(cid, "presentation_state")
        if o.sop_instance_uid == state_uid
    ]
    data = (settings.data_dir / "archive" / state.path).read_bytes()
    assert dciodvfy_errors(data, tmp_path) == []
    ps = read(data)
    referenced = ps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == images[scan_id]["sop_instance_uid"]
    # Each caliper on the frame it was drawn on (the one in the banner: every frame).
    on_frames = [
        a.ReferencedImageSequence[0].get("ReferencedFrameNumber")
        for a in ps.GraphicAnnotationSequence
    ]
    assert sorted(on_frames, key=str) == [2, None]

    # Cited and signed: the SR carries 15 mm (UCUM) inferred from the scanner's image.
    url = f"/api/consultations/{cid}/report"
    report = {
        "findings": "Oval circumscribed anechoic lesion: a simple cyst.",
        "recommendation": "Routine screening.",
        "technical_quality": {"grade": "adequate"},
        "key_image_ids": [scan_id, clip_id],
    }
    assert (await client.put(url, json=report, headers=expert)).status == 200
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()
    [sr_object] = await client.app[KEY_IMAGES].records.objects(cid, "report")
    data = (settings.data_dir / "archive" / sr_object.path).read_bytes()
    assert dciodvfy_errors(data, tmp_path) == []
    numbers = [
        item
        for section in read(data).ContentSequence
        if "ContentSequence" in section
        for item in section.ContentSequence
        if item.ValueType == "NUM"
    ]
    assert [float(n.MeasuredValueSequence[0].NumericValue) for n in numbers] == [15.0, 12.0]
    unit = numbers[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("mm", "UCUM")
    source = numbers[0].ContentSequence[0]
    assert source.RelationshipType == "INFERRED FROM"
    assert int(source.ReferencedSOPSequence[0].ReferencedFrameNumber) == 2
    assert (
        source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == images[scan_id]["sop_instance_uid"]
    )


async def test_what_cannot_be_placed_or_masked_safely_is_refused_or_dropped(
    client: TestClient[Any, Any], coordinator: dict[str, str], tmp_path: Path
) -> None:
    cid, auth = await consultation(client, coordinator, PHANTOM_DEVICE)

    async def refused(body: bytes, content_type: str, status: int, code: str) -> str:
        response = await upload(client, cid, auth, body, content_type)
        assert response.status == status, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == code, error
        return str(error["message"])

    # Without its own UID a retry could not be told from a new image: every such file after the
    # first would have been answered "stored" and dropped.
    await refused(scanner_file(SOPInstanceUID=""), "application/dicom", 400, "invalid_dicom")
    # Deflated, its transfer syntax pushed past the first 4 KiB by a long file meta value
    # (the check read the first 4 KiB; pydicom then inflated the whole body in memory).
    ds = read(scanner_file(width=640, height=480, syntax=ExplicitVRLittleEndian))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.FileMetaInformationVersion = bytes(8192)  # (0002,0001), before the syntax
    deflated = io.BytesIO()
    ds.save_as(deflated, enforce_file_format=True)
    assert b"1.2.840.10008.1.2.1.99" not in deflated.getvalue()[:4096]
    said = await refused(deflated.getvalue(), "application/dicom", 400, "unsupported_dicom")
    assert "deflated" in said
    # A recorded clip must be the device's own output at a profile's exact size: 640x360 has
    # the 1280x720 profile's shape, but nothing says the picture is the scanner's, scaled.
    small = recorded_clip("mp4", frames=2, width=640, height=360)
    said = await refused(small, "video/mp4", 409, "no_device_profile")
    assert "exact size" in said
    assert await key_images(client, cid, auth) == []

    # A region whose values do not fit their DICOM types is dropped; a frame time vector is
    # kept, and the clip's rate is read from it.
    bad_region = read(scanner_file(frames=3)).SequenceOfUltrasoundRegions
    bad_region[0]["PhysicalUnitsXDirection"].VR = "UL"  # written wrong, as a file may be
    bad_region[0].PhysicalUnitsXDirection = 70000
    stored = await upload(
        client,
        cid,
        auth,
        scanner_file(
            frames=3,
            SequenceOfUltrasoundRegions=bad_region,
            FrameIncrementPointer=0x00181065,
            FrameTimeVector=["0", "40", "40"],
        ),
        "application/dicom",
    )
    assert stored.status == 201, await stored.text()
    [listed] = await key_images(client, cid, auth)
    assert listed["detail"]["ultrasound_regions"] == 0 and listed["detail"]["calibration"] is None
    assert listed["detail"]["fps"] == pytest.approx(25.0)
    data = await (await client.get(listed["dicom_url"], headers=auth)).read()
    assert dciodvfy_errors(data, tmp_path) == []
    assert [float(v) for v in read(data).FrameTimeVector] == [0, 40, 40]
