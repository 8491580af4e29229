"""A still uploaded by the bedside is bounded and checked whole before it is decoded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp.test_utils import TestClient
from phantom import phantom_frame, phantom_png
from PIL import ImageFile

from server.config import Settings

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
    whole = phantom_png(1)
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
    interlaced = await client.post(url, data=interlaced_png(phantom_frame(2)), headers=headers)
    assert interlaced.status == 201, await interlaced.text()
