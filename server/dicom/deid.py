"""De-identification rules (PS3.15 Annex E, basic profile, clean pixel data option).

Plain functions, no I/O: mask burned-in text, derive pseudonyms and UIDs from a
keyed HMAC, stamp the de-identification attributes, and rebuild an imported
dataset from an allow-list. Everything fails closed: a mask that did not take,
an imported image whose burned-in text cannot be masked, a value that is not
plain data, is an error, never a pass.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from server import __version__

UID_ROOT = "2.25."
DEIDENTIFIER = "probelink"
DEIDENTIFICATION_METHOD = "PS3.15 E basic, clean pixel (device profile masks)"
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL = ("113101", "Clean Pixel Data Option")
# Acquisition and study dates and times are kept: the record's turnaround depends on them.
RETAIN_FULL_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
# The scanner's manufacturer and model are kept (needed to read the image; no serial number).
RETAIN_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")


class MaskingFailed(Exception):
    """Masking did not leave the masked rectangles blank: nothing may be stored."""


def mask(pixels: np.ndarray, rects: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    """Blank `rects` of an HxWxC frame in place, check that they are blank, return the frame."""
    if pixels.ndim != 3 or not rects:
        raise MaskingFailed("a frame must be HxWxC and have at least one rectangle to mask")
    height, width = pixels.shape[:2]
    for x, y, w, h in rects:
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
            raise MaskingFailed(f"mask rectangle outside the {width}x{height} frame")
        pixels[y : y + h, x : x + w] = 0
    for x, y, w, h in rects:
        if pixels[y : y + h, x : x + w].any():
            raise MaskingFailed("a masked rectangle is not blank")
    return pixels


def derived_uid(key: bytes, *parts: str) -> str:
    """A UID under 2.25 from a keyed HMAC of `parts`: stable, and unlinkable without the key."""
    digest = hmac.new(key, "\x1f".join(("uid", *parts)).encode(), hashlib.sha256).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def pseudonym(key: bytes, consultation_id: str) -> str:
    """The patient's pseudonymous name and id in every object of one consultation."""
    digest = hmac.new(key, f"patient\x1f{consultation_id}".encode(), hashlib.sha256).hexdigest()
    return f"PL-{digest[:16].upper()}"


def reader_pseudonym(key: bytes, sub: str) -> str:
    """The signing reader in DICOM objects: stable per reader, no name (Annex E removes them)."""
    digest = hmac.new(key, f"reader\x1f{sub}".encode(), hashlib.sha256).hexdigest()
    return f"R-{digest[:16].upper()}"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def stamp(ds: Dataset, *, pixels_cleaned: bool, when: datetime) -> None:
    """Set the Annex E attributes on `ds`, which holds only de-identified content.

    `pixels_cleaned`: the burned-in text was masked by a device profile (clean pixel
    data option); otherwise the source was declared to carry no burned-in text.
    Either way BurnedInAnnotation is NO: the caller has established it.
    """
    ds.PatientIdentityRemoved = "YES"
    methods = [BASIC_PROFILE, *([CLEAN_PIXEL] if pixels_cleaned else [])]
    methods += [RETAIN_FULL_DATES, RETAIN_DEVICE_IDENTITY]
    ds.DeidentificationMethod = (
        DEIDENTIFICATION_METHOD if pixels_cleaned else "PS3.15 E basic (no burned-in text)"
    )
    ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in methods])
    ds.BurnedInAnnotation = "NO"
    equipment = Dataset()
    equipment.Manufacturer = DEIDENTIFIER
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f%z")
    equipment.ContributionDescription = "De-identified"
    equipment.PurposeOfReferenceCodeSequence = Sequence(
        [_code("109104", "De-identifying Equipment")]
    )
    ds.ContributingEquipmentSequence = Sequence([equipment])
