"""A prior study uploaded for comparison is de-identified like a capture, private tags and all."""

from __future__ import annotations

import asyncio
import io
import struct
from pathlib import Path
from typing import Any

import jpeg_ls
import numpy as np
from aiohttp.test_utils import TestClient
from dicom_checks import dciodvfy_errors, every_value, read
from phantom import BANNER_HEIGHT, PATIENT_MRN, PATIENT_NAME, phantom_frame
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from scanner_files import HOSPITAL, scanner_file

from server.dicom import writer
from server.imaging.captures import BUILD_CONCURRENCY
from server.web.keys import KEY_IMAGES

COMPRESSED = (JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless)
OPERATOR = "SONOGRAPHER^SALLY"


def hospital_file(**changes: Any) -> bytes:
    """An ultrasound image as a hospital PACS holds it: full of identifying data."""
    return scanner_file(
        "ACC998877",
        width=640,
        height=480,
        syntax=ExplicitVRLittleEndian,
        StudyDate="20250102",
        **changes,
    )


async def consultation(client: TestClient[Any, Any], coordinator: dict[str, str]) -> str:
    body = {
        "clinical_question": "interval change?",
        "urgency": "routine",
        "incomplete_reason": "test request",
    }
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    return str((await response.json())["id"])


async def test_prior_is_de_identified_masked_and_attached(
    client: TestClient[Any, Any], coordinator: dict[str, str], tmp_path: Path
) -> None:
    cid = await consultation(client, coordinator)
    original = hospital_file()
    headers = {**coordinator, "Content-Type": "application/dicom"}
    response = await client.post(f"/api/consultations/{cid}/priors", data=original, headers=headers)
    assert response.status == 201, await response.text()
    prior = await response.json()
    data = await (await client.get(prior["dicom_url"], headers=coordinator)).read()
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    for text in (
        *PATIENT_NAME.split(),
        PATIENT_MRN.split()[1],
        "19570314",
        HOSPITAL,
        "SALLY",
        "ACC998877",
    ):
        assert text.encode() not in data
        assert not any(text in str(v) for v in every_value(ds))
    assert not any(e.tag.is_private for e in ds.iterall())
    assert "OtherPatientIDsSequence" not in ds and "InstitutionName" not in ds
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert not ds.pixel_array[:BANNER_HEIGHT].any()
    assert ds.StudyDate == "20250102"  # the prior's date is kept: it is what makes it a prior
    # The same file again is the same object, attached once.
    again = await client.post(f"/api/consultations/{cid}/priors", data=original, headers=headers)
    assert (
        again.status == 200
        and (await again.json())["sop_instance_uid"] == prior["sop_instance_uid"]
    )
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert [p["sop_instance_uid"] for p in record["priors"]] == [prior["sop_instance_uid"]]


async def test_prior_without_profile_or_not_an_image_is_refused(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Any
) -> None:
    cid = await consultation(client, coordinator)
    headers = {**coordinator, "Content-Type": "application/dicom"}
    url = f"/api/consultations/{cid}/priors"
    cases = [
        (hospital_file(Manufacturer="Acme"), 409, "no_device_profile"),
        (hospital_file(Modality="MG"), 400, "unsupported_modality"),
        (b"not dicom at all", 400, "invalid_dicom"),
        (b"", 400, "invalid_dicom"),
        (hospital_file(Rows=0), 400, "unsupported_dicom"),
    ]
    for body, status, code in cases:
        response = await client.post(url, data=body, headers=headers)
        assert response.status == status, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == code
        assert PATIENT_NAME.split()[0] not in error["message"]
    # A header that says there is no burned-in text is taken at its word (no profile needed);
    # its free-text device names and compression method are not (they could hold anything).
    # (When the picture does not say otherwise: the text check reads it too.)
    declared = {
        "Manufacturer": HOSPITAL,
        "ManufacturerModelName": PATIENT_NAME,
        "BurnedInAnnotation": "NO",
        "LossyImageCompression": "01",
        "LossyImageCompressionMethod": OPERATOR,
    }
    lying = await client.post(url, data=hospital_file(**declared), headers=headers)
    assert lying.status == 409 and (await lying.json())["error"]["code"] == "burned_in_text"
    clean = hospital_file(pictures=[phantom_frame(1, banner=False)], **declared)
    response = await client.post(url, data=clean, headers=headers)
    assert response.status == 201, await response.text()
    data = await (
        await client.get((await response.json())["dicom_url"], headers=coordinator)
    ).read()
    for text in (HOSPITAL, PATIENT_NAME.split()[0], "SALLY"):
        assert text.encode() not in data
    assert read(data).LossyImageCompression == "01"
    # Nothing refused reached the archive: one prior file only.
    files = list((settings.data_dir / "archive").rglob("*.dcm"))
    assert len(files) == 1


def rle_zeros(pixels: int) -> bytes:
    """One RLE frame (PS3.5 G.3) of a greyscale image of `pixels` zeros: runs of 128, 2 bytes
    each, so that a large image is a small file."""
    runs, rest = divmod(pixels, 128)
    segment = b"\x81\x00" * runs + (bytes([257 - rest, 0]) if rest > 1 else b"\0\0" * rest)
    return struct.pack("<16I", 1, 64, *[0] * 14) + segment


def encoded_file(rows: int, columns: int, frames: list[bytes], syntax: UID = RLELossless) -> bytes:
    """A greyscale prior whose header says rows x columns, its frames encoded as given; its
    header declares no burned-in text, so that nothing stops it before its pixels."""
    ds = read(hospital_file(BurnedInAnnotation="NO"))
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    del ds.PlanarConfiguration
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return writer.to_bytes(ds)


def codestream(syntax: UID, rows: int, columns: int) -> bytes:
    """A black greyscale frame encoded in `syntax` (JPEG baseline, JPEG-LS or JPEG 2000)."""
    if syntax == JPEGLSLossless:
        return bytes(jpeg_ls.encode(np.zeros((rows, columns), np.uint8)))
    out = io.BytesIO()
    if syntax == JPEG2000Lossless:
        Image.new("L", (columns, rows)).save(out, "JPEG2000", no_jp2=True)
    else:
        Image.new("L", (columns, rows)).save(out, "JPEG")
    return out.getvalue()


async def test_a_small_file_of_a_huge_image_is_refused_on_its_header(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Any
) -> None:
    cid = await consultation(client, coordinator)
    headers = {**coordinator, "Content-Type": "application/dicom"}
    url = f"/api/consultations/{cid}/priors"
    cases = [
        # 390 KB that decoded to 75 MB and were archived as a 75 MB still.
        (encoded_file(5000, 5000, [rle_zeros(5000 * 5000)]), "5000x5000"),
        (encoded_file(64, 4097, [rle_zeros(64 * 4097)]), "4097x64"),
        (encoded_file(16, 16, [rle_zeros(256)] * 601), "601 frames"),
        # Codestreams larger than their header: an RLE bomb, frames of another size.
        (encoded_file(64, 64, [rle_zeros(64 << 20)]), "not the size its header says"),
        *[
            (encoded_file(64, 64, [codestream(syntax, 2048, 2048)], syntax), "not the size")
            for syntax in COMPRESSED
        ],
    ]
    for body, said in cases:
        response = await client.post(url, data=io.BytesIO(body), headers=headers)
        assert response.status == 413, (said, await response.text())
        error = (await response.json())["error"]
        assert error["code"] == "image_too_large" and said in error["message"], error
    assert not list((settings.data_dir / "archive").rglob("*.dcm"))
    # Within bounds, the same kinds of file are imported.
    for body in (
        encoded_file(480, 640, [rle_zeros(480 * 640)]),
        *[encoded_file(64, 64, [codestream(syntax, 64, 64)] * 3, syntax) for syntax in COMPRESSED],
    ):
        response = await client.post(url, data=body, headers=headers)
        assert response.status == 201, await response.text()


async def test_a_prior_import_takes_its_turn_with_the_captures_being_built(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    cid = await consultation(client, coordinator)
    building = client.app[KEY_IMAGES]._building
    for _ in range(BUILD_CONCURRENCY):  # as many captures as may be built at once, in progress
        await building.acquire()

    async def send() -> Any:
        return await client.post(
            f"/api/consultations/{cid}/priors",
            data=hospital_file(),
            headers={**coordinator, "Content-Type": "application/dicom"},
        )

    upload = asyncio.create_task(send())
    await asyncio.sleep(1.0)
    assert not upload.done(), "the prior was built beside the captures, outside their limit"
    for _ in range(BUILD_CONCURRENCY):
        building.release()
    response = await upload
    assert response.status == 201, await response.text()
