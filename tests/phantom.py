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


def phantom_frame(n: int, width: int = 640, height: int = 480, banner: bool = True) -> np.ndarray:
    rng = np.random.default_rng(n % 7)
    speckle = rng.integers(20, 90, size=(height, width), dtype=np.uint8)
    image = Image.fromarray(np.stack([speckle] * 3, axis=-1), "RGB")
    draw = ImageDraw.Draw(image)
    if banner:
        _draw_banner(draw, width)
    cx = width // 2 + (n % 40) - 20
    draw.ellipse((cx - 40, height // 2 - 30, cx + 40, height // 2 + 30), fill=(5, 5, 5))
    return np.array(image)


def _draw_banner(draw: ImageDraw.ImageDraw, width: int) -> None:
    """The fake patient's name, MRN and date of birth, white on black, in the top rows."""
    draw.rectangle((0, 0, width, BANNER_HEIGHT), fill=(0, 0, 0))
    font = ImageFont.load_default(size=26)
    draw.text((12, 6), f"{PATIENT_NAME}  {PATIENT_MRN}", fill=(255, 255, 255), font=font)
    draw.text((12, 34), PATIENT_DOB, fill=(255, 255, 255), font=font)


def phantom_png(n: int, width: int = 640, height: int = 480, banner: bool = True) -> bytes:
    """Phantom frame `n` as a PNG: what a bedside page uploads as its lossless still."""
    out = io.BytesIO()
    Image.fromarray(phantom_frame(n, width, height, banner), "RGB").save(out, "PNG")
    return out.getvalue()


class PhantomTrack(MediaStreamTrack):
    """Raw phantom frames at 30 fps; the peer's own encoder (VP8 or H.264) encodes them."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, banner: bool = True) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.banner = banner
        self.n = 0
        self.started = time.monotonic()

    async def recv(self) -> Any:
        self.n += 1
        await asyncio.sleep(max(0.0, self.started + self.n / FPS - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(
            phantom_frame(self.n, self.width, self.height, self.banner), format="rgb24"
        )
        frame.pts = self.n * (90000 // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame


def moving_speckle_frames(width: int = 1280, height: int = 720, frames: int = 120) -> Any:
    """A scan as a fake camera should show it: speckle that moves with the tissue, looped.

    Ultrasound speckle is Rayleigh-distributed, fine along the beam and smeared across it; as the
    probe slides, the picture moves a pixel or two per frame, so consecutive frames are strongly
    correlated (what a video encoder sees from a real scanner, unlike `phantom_frame`'s white
    noise). The path is periodic in `frames`, so a looping player shows no jump. Each frame has
    the patient banner of `phantom_frame` (masked by the bundled device profile) above a sector.
    Yields RGB arrays (height, width, 3).
    """
    radius = 40
    rng = np.random.default_rng(20261202)
    field_h, field_w = height + 2 * radius + 2, width + 2 * radius + 2
    # Complex Gaussian scatterers, low-passed anisotropically, magnitude: Rayleigh speckle.
    spectrum = np.fft.fft2(
        rng.standard_normal((field_h, field_w)) + 1j * rng.standard_normal((field_h, field_w))
    )
    fy = np.fft.fftfreq(field_h)[:, None]
    fx = np.fft.fftfreq(field_w)[None, :]
    spectrum *= np.exp(-((fy / 0.12) ** 2) - (fx / 0.05) ** 2)
    speckle = np.abs(np.fft.ifft2(spectrum))
    speckle = np.clip(40 * np.log1p(4 * speckle / speckle.mean()), 0, 255)
    rows = np.arange(field_h, dtype=np.float32)[:, None] / field_h
    # Brighter tissue layers at a few depths, and a dark oval lesion that moves with the tissue.
    layers = (
        1
        + 0.6 * np.exp(-(((rows - 0.3) / 0.02) ** 2))
        + 0.4 * np.exp(-(((rows - 0.7) / 0.03) ** 2))
    )
    cols = np.arange(field_w, dtype=np.float32)[None, :] / field_w
    lesion = ((cols - 0.55) / 0.07) ** 2 + ((rows - 0.5) / 0.08) ** 2 < 1
    tissue = np.where(lesion, speckle * 0.15, speckle * layers).clip(0, 255).astype(np.uint8)
    # The sector: a fan from an apex under the banner, black outside.
    yy, xx = np.mgrid[0:height, 0:width]
    apex_x, apex_y = width / 2, BANNER_HEIGHT + 4
    angle = np.arctan2(xx - apex_x, yy - apex_y + 1e-6)
    depth = np.hypot(xx - apex_x, yy - apex_y)
    sector = (
        (np.abs(angle) < np.radians(38)) & (depth < height - BANNER_HEIGHT - 12) & (yy > apex_y)
    )
    banner_image = Image.new("RGB", (width, BANNER_HEIGHT))
    _draw_banner(ImageDraw.Draw(banner_image), width)
    banner = np.array(banner_image)
    for n in range(frames):
        phase = 2 * np.pi * n / frames
        dx = radius + round(float(radius * np.sin(phase)))
        dy = radius + round(float(radius / 2 * np.sin(2 * phase)))
        # A little electronic noise on every frame, as a real scanner's picture has.
        noise = np.random.default_rng(n).normal(0, 4, size=(height, width))
        moving = tissue[dy : dy + height, dx : dx + width] + noise
        gray = np.where(sector, moving.clip(0, 255), 0).astype(np.uint8)
        frame = np.repeat(gray[:, :, None], 3, axis=2)
        frame[:BANNER_HEIGHT] = banner
        yield frame
