"""A still uploaded by the bedside is bounded, checked whole and stored compressed, within a quota."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import dciodvfy_errors, read
from phantom import BANNER_HEIGHT, PATIENT_NAME, PHANTOM_DEVICE, phantom_frame, phantom_png
from PIL import Image, ImageFile
from pydicom.uid import JPEGLSLossless

from server.app import create_app
from server.config import Settings
from server.web.keys import KEY_IMAGES

CLEAN_DEVICE = {"manufacturer": "Acme", "model": "US-1", "burned_in_text": False}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, raw: bytes | None = None, *, end: bool = True) -> bytes:
    """A greyscale 8-bit PNG written chunk by chunk; `raw`: the filtered rows to deflate."""
    if raw is None:
        raw = bytes(height * (1 + width))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
    return data + chunk(b"IEND", b"") if end else data


def interlaced_png(picture: np.ndarray) -> bytes:
    """The picture as an Adam7-interlaced PNG (written by FFmpeg's encoder, not by us)."""
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = picture.shape[1], picture.shape[0], "rgb24"
    encoder.options = {"flags": "+ildct"}  # FFmpeg's PNG encoder interlaces with this flag
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
    data = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    assert data[8 + 8 + 12] == 1  # IHDR's interlace method: Adam7
    return data


async def consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str], device: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """A consultation and its operator's upload headers."""
    body = {
        "clinical_question": "solid or cystic?",
        "urgency": "urgent",
        "incomplete_reason": "test request",
        "device": device,
    }
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    cid = str((await response.json())["id"])
    invite = await client.post(
        f"/api/consultations/{cid}/invites",
        json={"role": "operator", "name": "op"},
        headers=coordinator,
    )
    token = (await invite.json())["token"]
    return cid, {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}


def archived(settings: Settings) -> list[Path]:
    return [p for p in (settings.data_dir / "archive").rglob("*.dcm") if p.is_file()]


async def test_oversized_truncated_or_inflated_pngs_are_refused_before_decoding(
    client: TestClient[Any, Any], coordinator: dict[str, str], settings: Settings
) -> None:
    cid, headers = await consultation(client, coordinator, CLEAN_DEVICE)
    url = f"/api/consultations/{cid}/captures"
    short = png(640, 480, bytes(240 * 641))  # a whole zlib stream, but only half the rows
    whole = phantom_png(1, banner=False)  # a clean source: no patient banner on it
    cases = [
        # DICOM Rows and Columns are 16-bit: this one gave a 500.
        (png(16_777_216, 1), 413, "image_too_large", "16777216x1"),
        # Fewer pixels than 4096x4096, but far wider: it was archived, 49 MB uncompressed.
        (png(16_384, 1_000), 413, "image_too_large", "16384x1000"),
        (png(4_097, 8), 413, "image_too_large", "4097x8"),
        (short, 400, "invalid_image", "truncated"),  # was accepted, zero-filled
        (png(640, 480, end=False), 400, "invalid_image", "truncated"),
        (whole[: len(whole) // 2], 400, "invalid_image", "truncated"),
        (png(64, 64, bytes(8 << 20)), 400, "invalid_image", "inflates to more"),
        (whole[:-5] + b"\0" + whole[-4:], 400, "invalid_image", "CRC"),
        (b"GIF89a" + bytes(64), 400, "invalid_image", "PNG"),
    ]
    for body, status, code, said in cases:
        response = await client.post(url, data=body, headers=headers)
        assert response.status == status, (said, await response.text())
        error = (await response.json())["error"]
        assert error["code"] == code and said in error["message"], error
    # Pillow must never fill in a truncated image on its own.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # Nothing was stored, nothing was told; a whole PNG still goes through.
    assert archived(settings) == []
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=coordinator)
    assert (await listing.json())["key_images"] == []
    assert (await client.post(url, data=whole, headers=headers)).status == 201
    interlaced = await client.post(
        url, data=interlaced_png(phantom_frame(2, banner=False)), headers=headers
    )
    assert interlaced.status == 201, await interlaced.text()


async def test_a_still_is_stored_losslessly_compressed(
    client: TestClient[Any, Any], coordinator: dict[str, str], tmp_path: Path
) -> None:
    async def upload(device: dict[str, Any], picture: np.ndarray) -> bytes:
        cid, headers = await consultation(client, coordinator, device)
        buffer = io.BytesIO()
        Image.fromarray(picture, "RGB").save(buffer, "PNG")
        url = f"/api/consultations/{cid}/captures"
        response = await client.post(url, data=io.BytesIO(buffer.getvalue()), headers=headers)
        assert response.status == 201, await response.text()
        key_image_id = (await response.json())["key_image_id"]
        dicom = await client.get(f"/api/key-images/{key_image_id}/dicom", headers=coordinator)
        return await dicom.read()

    picture = phantom_frame(3, 1280, 720)
    data = await upload(PHANTOM_DEVICE, picture)
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert "LossyImageCompression" not in ds  # lossless: the PNG's pixels, masked
    pixels = ds.pixel_array
    assert np.array_equal(pixels[BANNER_HEIGHT:], picture[BANNER_HEIGHT:])
    assert not pixels[:BANNER_HEIGHT].any() and PATIENT_NAME.encode() not in data
    # The phantom's speckle is random noise, the worst case; it still comes out smaller.
    raw = 1280 * 720 * 3
    assert len(data) < 0.8 * raw, f"{len(data)} bytes for {raw} bytes of pixels"
    # A 49 KB PNG of 4096x4096 pixels used to become a 50 MB file.
    data = await upload(CLEAN_DEVICE, np.zeros((4096, 4096, 3), np.uint8))
    assert len(data) < 100_000, len(data)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_a_consultation_full_to_its_quota_refuses_more_images(
    aiohttp_client: Callable[..., Any],
    settings: Settings,
    coordinator: dict[str, str],
) -> None:
    client = await aiohttp_client(
        create_app(settings.model_copy(update={"consultation_quota_mib": 1}))
    )
    cid, headers = await consultation(client, coordinator, PHANTOM_DEVICE)
    url = f"/api/consultations/{cid}/captures"
    statuses = []
    for n in range(8):
        response = await client.post(url, data=phantom_png(n), headers=headers)
        statuses.append(response.status)
        if response.status != 201:
            break
    assert statuses[0] == 201 and statuses[-1] == 413, statuses
    error = (await response.json())["error"]
    assert error["code"] == "quota_exceeded"
    assert "PROBELINK_CONSULTATION_QUOTA_MIB" in error["message"]
    await client.app[
        KEY_IMAGES
    ].selections.settled()  # the key object selection, written after the ack
    kept = archived(settings)
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=coordinator)
    images = (await listing.json())["key_images"]
    assert len(images) == len(statuses) - 1
    # A prior is refused too, before it is written; another consultation has its own quota.
    still = await (await client.get(images[0]["dicom_url"], headers=coordinator)).read()
    prior = await client.post(
        f"/api/consultations/{cid}/priors",
        data=still,
        headers={**coordinator, "Content-Type": "application/dicom"},
    )
    assert prior.status == 413 and (await prior.json())["error"]["code"] == "quota_exceeded"
    assert len(archived(settings)) == len(kept)
    other, other_headers = await consultation(client, coordinator, PHANTOM_DEVICE)
    response = await client.post(
        f"/api/consultations/{other}/captures", data=phantom_png(1), headers=other_headers
    )
    assert response.status == 201
