"""A PNG upload, checked chunk by chunk before a pixel is decoded (PNG spec, ISO/IEC 15948).

The IHDR chunk says the size; the IDAT chunks hold one zlib stream that inflates to
exactly what that size needs (a filter byte and the packed samples of each row, per
interlace pass). Both are checked here, inflating into nothing with a bounded buffer,
so an oversized image, a decompression bomb or a truncated file is refused cheaply
and clearly. Only then does Pillow decode it. Runs in a worker thread.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server import image_limits
from server.errors import BadRequest, PayloadTooLarge

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel and the bit depths allowed, by colour type.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
BIT_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# Adam7 passes: first column, first row, column step, row step.
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
INFLATE_STEP_BYTES = 1 << 20


@dataclass(frozen=True)
class Header:
    """What a PNG's IHDR chunk says about its image."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    def raw_bytes(self) -> int:
        """What the IDAT stream inflates to: per pass, rows x (filter byte + row bytes)."""
        bits = CHANNELS[self.color_type] * self.bit_depth
        total = 0
        for x0, y0, dx, dy in ADAM7 if self.interlaced else ((0, 0, 1, 1),):
            columns = (self.width - x0 + dx - 1) // dx
            rows = (self.height - y0 + dy - 1) // dy
            if columns > 0 and rows > 0:
                total += rows * (1 + (columns * bits + 7) // 8)
        return total


def _invalid(why: str) -> BadRequest:
    return BadRequest(f"the capture is not a valid PNG image: {why}", code="invalid_image")


def check(data: bytes) -> Header:
    """The PNG's header, once its chunks and its image data's size have been checked."""
    if not data.startswith(SIGNATURE):
        raise BadRequest("the capture must be a PNG image", code="invalid_image")
    header: Header | None = None
    inflater = zlib.decompressobj()
    inflated = 0
    pos = len(SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise _invalid("the file is truncated (it ends before its IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise _invalid("the file is truncated (a chunk is cut short)")
        if zlib.crc32(kind + body) != int.from_bytes(crc, "big"):
            raise _invalid("a chunk is damaged (its CRC does not match)")
        if (header is None) != (kind == b"IHDR"):
            raise _invalid("the IHDR chunk must come first, once")
        if kind == b"IHDR":
            header = _header(body)
        elif kind == b"IDAT":
            assert header is not None
            inflated += _inflate(inflater, body, header.raw_bytes() - inflated)
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None
    if inflated != header.raw_bytes() or not inflater.eof:
        raise _invalid("its image data is incomplete (truncated)")
    return header


def _header(body: bytes) -> Header:
    if len(body) != 13:
        raise _invalid("the IHDR chunk is malformed")
    width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
    bit_depth, color_type, interlace = body[8], body[9], body[12]
    if bit_depth not in BIT_DEPTHS.get(color_type, ()) or interlace > 1 or body[10:12] != b"\0\0":
        raise _invalid("the IHDR chunk names an unknown colour type, depth or method")
    if width == 0 or height == 0:
        raise _invalid("the image has no pixels")
    problem = image_limits.size_problem(width, height)
    if problem is not None:
        raise PayloadTooLarge(problem, code="image_too_large")
    return Header(width, height, bit_depth, color_type, interlace == 1)


def _inflate(inflater: zlib._Decompress, chunk: bytes, room: int) -> int:
    """Inflate into nothing; how many bytes came out. More than `room` is refused at once."""
    out = 0
    while True:
        try:
            piece = inflater.decompress(chunk, INFLATE_STEP_BYTES)
        except zlib.error:
            raise _invalid("its image data is not a valid zlib stream") from None
        out += len(piece)
        if out > room:
            raise _invalid("its image data inflates to more than its size needs")
        chunk = inflater.unconsumed_tail
        if not chunk and len(piece) < INFLATE_STEP_BYTES:
            return out


def read(data: bytes) -> np.ndarray:
    """The uploaded PNG's pixels as an RGB array, once `check` has passed."""
    check(data)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        raise _invalid("it cannot be decoded") from None
