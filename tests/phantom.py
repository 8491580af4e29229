"""A synthetic ultrasound picture with a patient banner burned in, as some scanners send.

The banner (top 64 pixels, the bundled "probelink / Synthetic phantom" device profile) carries a
fake patient's name, MRN and date of birth in large type; below it, a speckled sector with a
dark "lesion" and a frame counter that moves it, so consecutive frames differ.
"""

from __future__ import annotations

import asyncio
import fractions
import io
import time
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from PIL import Image, ImageDraw, ImageFont

# Fake patient data: these strings must never reach an archived file.
PATIENT_NAME = "ZEBULON QUIXOTE"
PATIENT_MRN = "MRN 48213977"
PATIENT_DOB = "DOB 1957-03-14"
BANNER_HEIGHT = 64
PHANTOM_DEVICE = {"manufacturer": "probelink", "model": "Synthetic phantom"}
# A breast request scanned with the phantom (first read BI-RADS 4A, sent incomplete).
BREAST_REQUEST = {
    "clinical_question": "Palpable lump left breast: solid or cystic?",
    "urgency": "urgent",
    "application": "breast",
    "first_read": "Oval hypoechoic mass, BI-RADS 4A",
    "device": PHANTOM_DEVICE,
    "incomplete_reason": "scanning now",
    "breast": {"lesion_clock": "2", "distance_from_nipple_cm": 3, "first_read_birads": "4A"},
}
FPS = 30
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


def phantom_frame(n: int, width: int = 640, height: int = 480) -> np.ndarray:
    rng = np.random.default_rng(n % 7)
    speckle = rng.integers(20, 90, size=(height, width), dtype=np.uint8)
    image = Image.fromarray(np.stack([speckle] * 3, axis=-1), "RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, BANNER_HEIGHT), fill=(0, 0, 0))
    font = ImageFont.load_default(size=26)
    draw.text((12, 6), f"{PATIENT_NAME}  {PATIENT_MRN}", fill=(255, 255, 255), font=font)
    draw.text((12, 34), PATIENT_DOB, fill=(255, 255, 255), font=font)
    cx = width // 2 + (n % 40) - 20
    draw.ellipse((cx - 40, height // 2 - 30, cx + 40, height // 2 + 30), fill=(5, 5, 5))
    return np.array(image)


def phantom_png(n: int, width: int = 640, height: int = 480) -> bytes:
    """Phantom frame `n` as a PNG: what a bedside page uploads as its lossless still."""
    out = io.BytesIO()
    Image.fromarray(phantom_frame(n, width, height), "RGB").save(out, "PNG")
    return out.getvalue()


class PhantomTrack(MediaStreamTrack):
    """Raw phantom frames at 30 fps; the peer's own encoder (VP8 or H.264) encodes them."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.n = 0
        self.started = time.monotonic()

    async def recv(self) -> Any:
        self.n += 1
        await asyncio.sleep(max(0.0, self.started + self.n / FPS - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(
            phantom_frame(self.n, self.width, self.height), format="rgb24"
        )
        frame.pts = self.n * (90000 // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame
