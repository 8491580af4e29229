"""The pixel work of a capture, in a worker thread: decode, mask each picture as it comes (own
size, one at a time), write the DICOM objects (the image, and for a marked still its presentation
state)."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image

from server import image_limits
from server.dicom import deid, writer
from server.dicom.profiles import Layout
from server.dicom.text_check import FramesCheck, TextCheck
from server.errors import Conflict
from server.imaging.identity import StudyIdentity
from server.imaging.masking import DeviceMasks
from server.imaging.model import Capture
from server.live.room import CaptureKind
from server.media.capture import frame_rate

# A clip holds at most this many frames, one at a time in memory as pixels.
CLIP_FRAMES_MAX = image_limits.FRAMES_MAX

# The pictures of a capture with their media timestamps, decoded as they are taken.
Pictures = Callable[[], Iterator[tuple[np.ndarray, int]]]


@dataclass(frozen=True)
class Built:
    objects: list[tuple[str, str, bytes]]  # (kind, sop uid, file bytes), image first
    media_ts: int | None
    detail: dict[str, Any]


def build(
    capture: Capture,
    pictures: Pictures,
    codec: str | None,
    key_image_id: str,
    *,
    masks: DeviceMasks,
    text: TextCheck,
    identity: StudyIdentity,
    key: bytes,
    exact_size: bool = False,
) -> Built:
    """Decode, mask each picture as it comes (own size, one at a time), check what is left for
    text that looks like patient data (`text`: the still, sampled frames of a clip; raises
    `TextFound`), write the objects."""
    row = capture.consultation
    now = datetime.now(UTC)
    size: tuple[int, int] | None = None  # (height, width) of the first picture: the clip's
    layout: Layout | None = None
    checks: FramesCheck | None = None
    still: np.ndarray | None = None
    timestamps: list[int] = []

    def masked(index: int, picture: np.ndarray) -> np.ndarray:
        assert size is not None and checks is not None
        if picture.shape[:2] != size:
            # The resolution changed mid-clip (WebRTC adapting): one size for the clip,
            # masked at that size.
            picture = _resize(picture, size)
        if layout is not None:
            try:
                deid.mask(picture, layout.mask)
            except deid.MaskingFailed:
                raise Conflict(
                    "the device profile's mask does not fit the picture; nothing was stored",
                    code="masking_failed",
                ) from None
        if capture.kind is CaptureKind.CLIP:
            checks.frame(index, picture)
        return picture

    def taken() -> Iterator[Callable[[], np.ndarray]]:
        nonlocal size, layout, checks
        for picture, timestamp in pictures():
            if size is None:
                size = (picture.shape[0], picture.shape[1])
                layout = masks.layout_for(row, size[1], size[0], scaled=not exact_size)
                # A source declared clean (no layout) is read whole: the net is for it too.
                checks = FramesCheck(text, layout.unread if layout is not None else ())
            if capture.kind is CaptureKind.CLIP and len(timestamps) >= CLIP_FRAMES_MAX:
                break
            timestamps.append(timestamp)
            yield functools.partial(masked, len(timestamps) - 1, picture)

    jpegs: list[bytes] = []
    if capture.kind is CaptureKind.STILL:
        last = deque(taken(), maxlen=1)  # one decoded picture held at a time
        still = last[0]() if last else None  # the last picture taken is the still
    else:
        jpegs = writer.jpeg_frames(taken())
    if size is None or checks is None:
        raise Conflict("the operator's video could not be decoded", code="no_picture")
    if still is not None:
        text.check(still, checks.blank)
    checks.finish()
    study = identity.study_of(row)
    sop = deid.derived_uid(key, "instance", key_image_id)
    inst = identity.instance_of(
        row, capture.kind, sop, now, pixels_cleaned=layout is not None, stream_codec=codec
    )
    fps = frame_rate(timestamps)
    if capture.kind is CaptureKind.STILL:
        assert still is not None
        image = writer.still(still, study, inst)
    else:
        image = writer.clip(jpegs, size, fps, study, inst)
    objects = [(capture.kind.value, sop, writer.to_bytes(image))]
    if capture.kind is CaptureKind.STILL and capture.marks:
        pr_sop = deid.derived_uid(key, "presentation_state", key_image_id)
        pr_inst = identity.instance_of(row, "presentation_state", pr_sop, now)
        state = writer.presentation_state(image, capture.marks, study, pr_inst)
        objects.append(("presentation_state", pr_sop, writer.to_bytes(state)))
    detail = {
        "width": size[1],
        "height": size[0],
        "frames": len(timestamps) if capture.kind is CaptureKind.STILL else len(jpegs),
        "fps": round(fps, 2),
        "masked": layout is not None,
    }
    return Built(objects, timestamps[-1] if codec else None, detail)


def _resize(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.array(Image.fromarray(picture, "RGB").resize((width, height)))
