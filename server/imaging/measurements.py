"""Measurements on a stored key image: calipers in the image's own pixels, lengths in mm.

Plain Python. The server computes every length itself from what it knows of the image, never
from a number a page sends: on a scanner's image from its ultrasound region (the scanner's own
size of a pixel; both ends must lie inside the region), otherwise from a two-point calibration
the expert made on the picture's depth scale (two points and the distance between them in mm,
the same scale both ways). A caliper with neither is kept, uncalibrated, with no length in mm.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import Field, model_validator

from server import image_limits
from server.errors import BadRequest
from server.messages import ShortText, StrictModel

CALIPERS_MAX = 20
ULTRASOUND_REGION = "ultrasound_region"
DEPTH_SCALE = "depth_scale"
# How each calibration is said on the pages and in the report.
CALIBRATION_LABELS = {
    ULTRASOUND_REGION: "calibrated from the scanner's ultrasound region",
    DEPTH_SCALE: "calibrated on the depth scale",
    None: "uncalibrated",
}

Point = tuple[float, float]
# A point in the image's own pixels; JSON gives it as a two-number array.
PixelPoint = Annotated[tuple[float, float], Field(strict=False)]


class Caliper(StrictModel):
    points: list[PixelPoint] = Field(min_length=2, max_length=2)
    label: ShortText | None = None
    # The clip's frame it was drawn on (1-based); none: a still, or every frame.
    frame: int | None = Field(None, ge=1, le=image_limits.FRAMES_MAX)


class Calibration(StrictModel):
    """Two points of the depth scale and the distance between them."""

    points: list[PixelPoint] = Field(min_length=2, max_length=2)
    mm: float = Field(gt=0, le=1000)

    @model_validator(mode="after")
    def _apart(self) -> Calibration:
        (x0, y0), (x1, y1) = self.points
        if math.hypot(x1 - x0, y1 - y0) < 1:
            raise ValueError("the calibration's two points must be apart")
        return self


class MeasurementsBody(StrictModel):
    calipers: list[Caliper] = Field(max_length=CALIPERS_MAX)
    calibration: Calibration | None = None


def measure(
    body: MeasurementsBody,
    width: int,
    height: int,
    region: dict[str, Any] | None,
    frames: int = 1,
) -> dict[str, Any]:
    """The calipers with their lengths, as stored and shown; `BadRequest` naming a point off the
    picture or a frame it does not have. `region`: the image's ultrasound region calibration
    (`incoming`), if it has one; `frames`: how many frames it has."""
    for caliper in body.calipers:
        if caliper.frame is not None and caliper.frame > frames:
            raise BadRequest(
                f"a caliper names frame {caliper.frame} of an image of {frames}",
                code="invalid_points",
            )
    points = [p for c in body.calipers for p in c.points]
    points += body.calibration.points if body.calibration else []
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise BadRequest(
                f"a point lies outside the {width}x{height} picture", code="invalid_points"
            )
    depth_mm_per_pixel = None
    if body.calibration is not None:
        (x0, y0), (x1, y1) = body.calibration.points
        depth_mm_per_pixel = body.calibration.mm / math.hypot(x1 - x0, y1 - y0)
    calipers = []
    for caliper in body.calipers:
        (x0, y0), (x1, y1) = caliper.points
        mm, calibration = None, None
        if region is not None and all(_inside(p, region["region"]) for p in caliper.points):
            sx, sy = region["mm_per_pixel"]
            mm, calibration = math.hypot((x1 - x0) * sx, (y1 - y0) * sy), ULTRASOUND_REGION
        elif depth_mm_per_pixel is not None:
            mm, calibration = math.hypot(x1 - x0, y1 - y0) * depth_mm_per_pixel, DEPTH_SCALE
        calipers.append(
            {
                "points": [list(p) for p in caliper.points],
                "label": caliper.label,
                "frame": caliper.frame,
                "mm": None if mm is None else round(mm, 2),
                "calibration": calibration,
                "said": CALIBRATION_LABELS[calibration],
            }
        )
    return {
        "calipers": calipers,
        "calibration": None if body.calibration is None else body.calibration.model_dump(),
    }


def _inside(point: Point, region: list[int]) -> bool:
    x, y = point
    return region[0] <= x <= region[2] and region[1] <= y <= region[3]
