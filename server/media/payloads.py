"""What an encoded payload says about itself (no I/O): whether a frame is a keyframe."""

from __future__ import annotations

from server.media.rtp import VP8_START_CODE


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame can be decoded on its own: a VP8 key frame (P bit clear and the
    start code that follows its frame tag, RFC 6386 9.1), an H.264 IDR with its parameter set.

    Strict, so that the tail of a frame whose start was lost is not taken for a keyframe.
    """
    if not data:
        return False
    if mime_type == "video/vp8":
        return data[0] & 0x01 == 0 and data[3:6] == VP8_START_CODE
    if mime_type == "video/h264":
        types = _h264_nal_types(data)
        return 5 in types and 7 in types
    return True  # audio frames stand alone


def _h264_nal_types(data: bytes) -> list[int]:
    types = []
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        types.append(data[start + 3] & 0x1F)
        start = data.find(b"\x00\x00\x01", start + 3)
    return types
