"""SDP offers as the relay needs them: bounded in size, which video codec, only the room's left
in it, and a publisher's simulcast layers (which aiortc's parser ignores) answered."""

from __future__ import annotations

import contextlib
import ipaddress
import re

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


# Simulcast (RFC 8853): a publisher may send its video as up to this many layers.
SIMULCAST_LAYERS_MAX = 3
RID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,16}")


def simulcast_rids(sdp: str, mid: str) -> list[str]:
    """The RIDs a publisher's offer sends as simulcast on the section `mid` ([]: none)."""
    section = _section(sdp, mid)
    if section is None:
        return []
    sent = {
        line.split()[0][len("a=rid:") :]
        for line in section.splitlines()
        if line.startswith("a=rid:") and line.split()[1:2] == ["send"]
    }
    listed = next((line for line in section.splitlines() if line.startswith("a=simulcast:")), None)
    if listed is None or not sent:
        return []
    words = listed[len("a=simulcast:") :].split()
    if len(words) != 2 or words[0] != "send":
        raise BadRequest(
            "the offer's simulcast line must send, and only send", code="invalid_sdp", field="sdp"
        )
    # Alternatives (a,b) are taken as layers, paused ones (~a) as any other.
    rids = [rid.lstrip("~") for group in words[1].split(";") for rid in group.split(",")]
    if len(rids) > SIMULCAST_LAYERS_MAX or len(set(rids)) != len(rids):
        raise BadRequest(
            f"the offer's video has more than {SIMULCAST_LAYERS_MAX} simulcast layers, or a "
            "layer twice",
            code="invalid_sdp",
            field="sdp",
        )
    if not all(RID_PATTERN.fullmatch(rid) and rid in sent for rid in rids):
        raise BadRequest(
            "the offer's simulcast line names a RID that is not a sent a=rid of up to 16 "
            "letters, digits, '-' or '_'",
            code="invalid_sdp",
            field="sdp",
        )
    return rids


def answer_simulcast(answer: str, mid: str, rids: list[str]) -> str:
    """The answer receiving `rids` as simulcast on the section `mid` (aiortc writes no such
    lines)."""
    section = _section(answer, mid)
    if section is None or not rids:
        return answer
    lines = [f"a=rid:{rid} recv" for rid in rids] + [f"a=simulcast:recv {';'.join(rids)}"]
    return answer.replace(section, section + "".join(f"{line}\r\n" for line in lines), 1)


def _section(sdp: str, mid: str) -> str | None:
    """The text of the media section whose a=mid is `mid` (with its line ends)."""
    starts = [m.start() for m in re.finditer(r"^m=", sdp, re.MULTILINE)]
    for start, end in zip(starts, [*starts[1:], len(sdp)], strict=True):
        section = sdp[start:end]
        if re.search(rf"^a=mid:{re.escape(mid)}\r?$", section, re.MULTILINE):
            return section
    return None


def announce(answer: str, address: str) -> str:
    """The answer with `address` in place of the host candidates' addresses of its family (one
    candidate per component and port)."""
    family = ipaddress.ip_address(address).version
    lines, seen = [], set()
    for line in answer.split("\r\n"):
        fields = line.split()
        if line.startswith("a=candidate:") and len(fields) >= 8 and fields[7] == "host":
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(fields[4]).version == family:
                    fields[4] = address
                    line = " ".join(fields)
            key = (fields[1], fields[2].lower(), fields[4], fields[5])
            if key in seen:
                continue
            seen.add(key)
        lines.append(line)
    return "\r\n".join(lines)
