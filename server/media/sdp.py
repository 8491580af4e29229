"""SDP offers as the relay needs them: bounded in size, which video codec, and only the room's
left in it."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from server.errors import BadRequest, Conflict

SDP_MAX_CHARS = 64 * 1024
# Video, the first audio, and up to six voice slots.
MEDIA_SECTIONS_MAX = 8


def check_size(sdp: str) -> None:
    """Refuse an offer too long, or with more media sections than a room uses, before parsing."""
    if len(sdp) > SDP_MAX_CHARS:
        raise BadRequest(
            f"the SDP offer is longer than {SDP_MAX_CHARS} characters",
            code="invalid_sdp",
            field="sdp",
        )
    if sdp.count("\nm=") > MEDIA_SECTIONS_MAX:
        raise BadRequest(
            f"the offer has more than {MEDIA_SECTIONS_MAX} media sections",
            code="invalid_sdp",
            field="sdp",
        )


def restrict_video_codec(sdp: str, mime_type: str) -> str:
    """The offer with only the room's video codec (and its retransmission) left in it."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception:
        raise BadRequest(
            "the SDP offer could not be parsed", code="invalid_sdp", field="sdp"
        ) from None
    for media in description.media:
        if media.kind != "video":
            continue
        kept = {c.payloadType for c in media.rtp.codecs if c.mimeType.lower() == mime_type}
        if not kept:
            name = mime_type.split("/")[1].upper()
            raise Conflict(
                f"this consultation's video is {name}; the offer does not include it",
                code="codec_mismatch",
            )
        kept |= {
            c.payloadType
            for c in media.rtp.codecs
            if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") in kept
        }
        media.rtp.codecs = [c for c in media.rtp.codecs if c.payloadType in kept]
        media.fmt = [f for f in media.fmt if f in kept]
    return str(description)


def video_codec(sdp: str) -> str | None:
    """The first video codec an offer lists (its preferred), as a lower-case MIME type."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.lower()
    return None
