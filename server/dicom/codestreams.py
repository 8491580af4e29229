"""What an encoded DICOM frame will decode to, read from its own bytes before any decoder runs.

A DICOM header's Rows and Columns are only a claim: the JPEG, JPEG-LS or JPEG 2000
codestream inside carries its own size, and that is what a decoder allocates (a
100x100 header can hold a 20000x20000 JPEG); an RLE segment can inflate 64-fold.
`frame_fits` checks an encapsulated frame against the header's size without
decoding it, so an import can be refused before a decoder allocates anything.
"""

from __future__ import annotations

import itertools

from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

# JPEG start-of-frame markers (ISO/IEC 10918-1 B.1.1.3, without DHT, JPG and DAC) and
# JPEG-LS SOF55 (ISO/IEC 14495-1 C.2.2): their segments hold the height, then the width.
SOF_MARKERS = ({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}
RLE_HEADER_BYTES = 64
RLE_SEGMENTS_MAX = 15


def frame_fits(syntax: UID, frame: bytes, rows: int, columns: int) -> bool:
    """Whether `frame` decodes to no more than rows x columns, as its header says."""
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        return _jpeg_size(frame) == (rows, columns)
    if syntax in JPEG2000TransferSyntaxes:
        return _j2k_size(frame) == (rows, columns)
    if syntax == RLELossless:
        return _rle_fits(frame, rows * columns)
    return False


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG or JPEG-LS codestream's frame header."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 9 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker in SOF_MARKERS:
            height = int.from_bytes(frame[pos + 5 : pos + 7], "big")
            width = int.from_bytes(frame[pos + 7 : pos + 9], "big")
            return height, width
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) of a JPEG 2000 codestream's SIZ segment (ISO/IEC 15444-1 A.5.1)."""
    if not frame.startswith(b"\xff\x4f\xff\x51") or len(frame) < 24:
        return None
    width, height, x0, y0 = (int.from_bytes(frame[at : at + 4], "big") for at in (8, 12, 16, 20))
    return height - y0, width - x0


def _rle_fits(frame: bytes, segment_bytes: int) -> bool:
    """Whether every RLE segment (PS3.5 G.3) decodes to no more than `segment_bytes` (+ a pad
    byte), counted run by run and given up as soon as it is more."""
    if len(frame) < RLE_HEADER_BYTES:
        return False
    count = int.from_bytes(frame[:4], "little")
    if not 1 <= count <= RLE_SEGMENTS_MAX:
        return False
    offsets = [int.from_bytes(frame[4 * i : 4 * i + 4], "little") for i in range(1, count + 1)]
    for start, end in itertools.pairwise([*offsets, len(frame)]):
        if not RLE_HEADER_BYTES <= start <= end <= len(frame):
            return False
        out, pos = 0, start
        while pos < end and out <= segment_bytes + 1:
            n = frame[pos]
            if n < 128:  # n + 1 literal bytes follow
                out, pos = out + n + 1, pos + n + 2
            elif n > 128:  # the next byte, 257 - n times
                out, pos = out + 257 - n, pos + 2
            else:
                pos += 1
        if out > segment_bytes + 1:
            return False
    return True
