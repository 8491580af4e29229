"""The capture pipeline without a network: cine buffer bounds, decoding, masking every frame."""

from __future__ import annotations

import fractions
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import pytest
from dicom_checks import dciodvfy_errors, read
from phantom import BANNER_HEIGHT, PHANTOM_DEVICE, phantom_frame

from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext, ConsultationRow
from server.dicom.profiles import load_profiles
from server.dicom.text_check import TextCheck, find_tessdata
from server.errors import Conflict
from server.imaging import pixels
from server.imaging.identity import StudyIdentity
from server.imaging.masking import DeviceMasks
from server.imaging.model import Capture
from server.live.room import CaptureKind
from server.media.capture import CineBuffer, Frame, decode_pictures

TIME_BASE = fractions.Fraction(1, 90000)


def vp8_packets(sizes: list[tuple[int, int]], per_size: int) -> list[Any]:
    """VP8 packets of phantom frames; a new encoder (and so a keyframe) at each size."""
    packets = []
    n = 0
    for width, height in sizes:
        encoder = av.CodecContext.create("libvpx", "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        encoder.time_base = TIME_BASE
        encoder.bit_rate = 2_000_000
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for _ in range(per_size):
            n += 1
            frame = av.VideoFrame.from_ndarray(phantom_frame(n, width, height), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = n * 3000
            frame.time_base = TIME_BASE
            for packet in encoder.encode(frame):
                packet.pts, packet.time_base = n * 3000, TIME_BASE
                packets.append(packet)
    return packets


def consultation(**device: Any) -> ConsultationRow:
    now = datetime.now(UTC)
    return ConsultationRow(
        id=uuid.uuid4().hex,
        state=State.LIVE,
        context=ClinicalContext.model_validate(
            {
                "clinical_question": "q",
                "urgency": "urgent",
                "incomplete_reason": "test request",
                "device": device or PHANTOM_DEVICE,
            }
        ),
        created_by="desk",
        requested_at=now,
        due_at=now + timedelta(hours=1),
        updated_at=now,
    )


def build(
    capture: Capture, pictures: pixels.Pictures, codec: str | None, key_image_id: str
) -> pixels.Built:
    """The pixel work of a capture, with the bundled profiles and a test key."""
    key = b"k" * 32
    masks = DeviceMasks(load_profiles(None))
    return pixels.build(
        capture,
        pictures,
        codec,
        key_image_id,
        masks=masks,
        text=TextCheck(find_tessdata()),
        identity=StudyIdentity(key),
        key=key,
    )


def capture(kind: str, row: ConsultationRow, marks: list[dict[str, Any]] | None = None) -> Capture:
    return Capture(row, CaptureKind(kind), "expert-1", "expert", "127.0.0.1", marks or [], None)


def test_clip_that_changes_resolution_is_masked_on_every_frame(tmp_path: Path) -> None:
    packets = vp8_packets([(640, 480), (1280, 960)], 10)
    frames = [Frame(p, i / 30) for i, p in enumerate(packets)]
    built = build(
        capture("clip", consultation()),
        lambda: decode_pictures("video/vp8", frames, keep_from=0.0),
        "video/vp8",
        uuid.uuid4().hex,
    )
    data = built.objects[0][2]
    assert dciodvfy_errors(data, tmp_path) == []
    pixels = read(data).pixel_array
    assert pixels.shape == (20, 480, 640, 3)  # one size: the later frames scaled to it
    for frame in pixels:
        assert frame[: BANNER_HEIGHT - 8].max() < 24, "banner text left in a frame"
    assert built.detail["masked"] is True and built.detail["frames"] == 20


def test_damaged_frame_is_skipped_and_a_clean_source_with_a_profile_is_still_masked(
    tmp_path: Path,
) -> None:
    packets = vp8_packets([(640, 480)], 6)
    damaged = av.Packet(b"\x00garbage" * 10)
    damaged.pts = 99
    frames = [Frame(p, i / 30) for i, p in enumerate([*packets[:3], damaged, *packets[3:]])]
    pictures = list(decode_pictures("video/vp8", frames, keep_from=0.0))
    assert 5 <= len(pictures) <= 6
    # Declared clean, but a profile knows this device: the profile wins.
    row = consultation(**PHANTOM_DEVICE, burned_in_text=False)
    built = build(
        capture("still", row, [{"kind": "text", "points": [[0.5, 0.5]], "text": "L\\R note"}]),
        lambda: decode_pictures("video/vp8", frames),
        "video/vp8",
        uuid.uuid4().hex,
    )
    assert not read(built.objects[0][2]).pixel_array[:BANNER_HEIGHT].any()
    assert built.detail["masked"] is True
    kinds = [kind for kind, _sop, _data in built.objects]
    assert kinds == ["still", "presentation_state"]  # the KOS is written after the ack


def test_nothing_decodable_is_refused(tmp_path: Path) -> None:
    damaged = av.Packet(b"\x00" * 50)
    damaged.pts = 1
    with pytest.raises(Conflict) as refused:
        build(
            capture("still", consultation()),
            lambda: decode_pictures("video/vp8", [Frame(damaged, 0.0)]),
            "video/vp8",
            uuid.uuid4().hex,
        )
    assert refused.value.code == "no_picture"


def test_cine_buffer_keeps_whole_gops_within_its_bounds() -> None:
    now = [0.0]
    requests: list[float] = []
    cine = CineBuffer(
        "video/vp8",
        seconds=2.0,
        max_bytes=100_000,
        request_keyframe=lambda: requests.append(now[0]),
        keyframe_every=1.0,
        clock=lambda: now[0],
    )

    def packet(keyframe: bool, size: int = 1000) -> Any:
        p = av.Packet(bytes(size))
        p.is_keyframe = keyframe
        p.pts = int(now[0] * 90000)
        return p

    cine.add(packet(False))  # nothing decodable yet: asks for a keyframe, keeps nothing
    assert not cine.gops and requests == [0.0]
    for i in range(300):  # 10 s at 30 fps, a keyframe every second
        now[0] = i / 30
        cine.add(packet(i % 30 == 0))
    assert all(g[0].packet.is_keyframe for g in cine.gops)
    assert len(cine.gops) == 3  # the oldest kept GOP starts at or before now - 2 s, the next after
    assert cine.gops[-1][-1].arrived - cine.gops[1][0].arrived < 2.0
    assert cine.bytes == sum(f.packet.size for g in cine.gops for f in g) <= 100_000
    frames, keep_from = cine.last_frames(1.5)
    assert frames[0].packet.is_keyframe and frames[0].arrived <= keep_from
    # One GOP larger than the budget (keyframes stopped): dropped, a keyframe asked for, no crash.
    requests.clear()
    for i in range(300, 400):
        now[0] = i / 30
        cine.add(packet(i == 300, size=2000))
    assert cine.bytes <= 100_000 and requests
    assert not cine.gops  # each P-frame after the drop asks again; nothing undecodable is kept
    with pytest.raises(Conflict):
        cine.still_frames()


def test_keyframes_are_asked_for_less_often_on_a_poor_link() -> None:
    """A keyframe every 2 s at 2 Mbit/s, every 8 s (the most it stretches) at 0.3 Mbit/s."""

    def requests_at(bitrate: int) -> list[float]:
        now = [0.0]
        requests: list[float] = []
        cine = CineBuffer(
            "video/vp8",
            seconds=20.0,
            max_bytes=50_000_000,
            request_keyframe=lambda: requests.append(now[0]),
            keyframe_every=2.0,
            clock=lambda: now[0],
        )
        keyframe = True
        for i in range(30 * 30):  # 30 s at 30 fps; a keyframe comes when one is asked for
            now[0] = i / 30
            p = av.Packet(bytes(bitrate // 8 // 30))
            p.is_keyframe = keyframe
            asked = len(requests)
            cine.add(p)
            keyframe = len(requests) > asked
        return requests

    fast, slow = requests_at(2_000_000), requests_at(300_000)
    assert [round(b - a, 1) for a, b in itertools.pairwise(fast)] == [2.0] * (len(fast) - 1)
    assert [round(b - a, 1) for a, b in itertools.pairwise(slow)] == [8.0] * (len(slow) - 1)
    assert len(fast) >= 12 and len(slow) >= 2
