"""Prior studies uploaded for comparison: de-identified like captures, rebuilt from scratch.

An imported file is never edited in place: its pixels are decoded, masked by the
device profile of the device named in its own header (or accepted unmasked only
when the header says BurnedInAnnotation NO), and written as a new object by
`writer`, so private tags, sequences and every attribute not on the writer's
allow-list are gone. UIDs are keyed HMACs of the consultation and the original
UIDs: importing the same file twice gives the same object.

Partial: ultrasound images only (Modality US, 8-bit or wider greyscale/colour,
single or multi-frame); wider greyscale is scaled to 8 bits by its own range, not
by its VOI LUT. Other modalities are refused with a message that says so.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from server.dicom import deid, writer
from server.dicom.profiles import Profiles

SERIES_NUMBER = 90
LOSSLESS = {
    pydicom.uid.RLELossless,
    pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1,
    pydicom.uid.JPEGLSLossless,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
}


class ImportRefused(Exception):
    """The file cannot be imported de-identified; the message says why (no patient data)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Imported:
    dataset: Dataset
    masked: bool


def read_upload(data: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError):
        raise ImportRefused("the upload is not a DICOM Part 10 file", "invalid_dicom") from None
    return ds


def _pixels(ds: Dataset) -> list[np.ndarray]:
    """The frames as 8-bit RGB arrays."""
    if "PixelData" not in ds:
        raise ImportRefused("the DICOM object has no image to compare with", "not_an_image")
    try:
        array = np.asarray(ds.pixel_array)
    except Exception:
        raise ImportRefused(
            "the DICOM image cannot be decoded here (its transfer syntax is not supported)",
            "unsupported_dicom",
        ) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames == 1:
        array = array[np.newaxis]
    if samples == 1:
        array = np.repeat(array[..., np.newaxis], 3, axis=-1)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ImportRefused("the DICOM image's layout is not supported", "unsupported_dicom")
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array.astype(np.float64) - low) * scale).clip(0, 255).astype(np.uint8)
    return [np.ascontiguousarray(frame) for frame in array]


def _when(ds: Dataset) -> datetime:
    for date_tag, time_tag in (("StudyDate", "StudyTime"), ("AcquisitionDate", "AcquisitionTime")):
        date = str(ds.get(date_tag, "") or "")
        if len(date) == 8 and date.isdigit():
            clock = "".join(c for c in str(ds.get(time_tag, "") or "")[:6] if c.isdigit()).ljust(
                6, "0"
            )
            try:
                return datetime.strptime(date + clock, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            except ValueError:
                continue
    return datetime.now(UTC)


def deidentify_prior(
    ds: Dataset, *, key: bytes, consultation_id: str, profiles: Profiles
) -> Imported:
    """A new, de-identified ultrasound object from an uploaded one, or `ImportRefused`."""
    if str(ds.get("Modality", "")) != "US":
        raise ImportRefused(
            "only ultrasound (Modality US) priors can be imported for now", "unsupported_modality"
        )
    frames = _pixels(ds)
    height, width = frames[0].shape[:2]
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    model = str(ds.get("ManufacturerModelName", "") or "").strip()
    try:
        rects = profiles.mask_for(manufacturer, model, width, height)
    except LookupError:
        if str(ds.get("BurnedInAnnotation", "")).upper() != "NO":
            raise ImportRefused(
                "the prior's device has no de-identification profile for its image size and "
                "its header does not say it carries no burned-in text: add a profile for its "
                "Manufacturer and ManufacturerModelName to PROBELINK_DEVICE_PROFILES",
                "no_device_profile",
            ) from None
        rects = None
    for frame in frames:
        if rects is not None:
            deid.mask(frame, rects)
    original_study = str(ds.get("StudyInstanceUID", "") or "")
    original_series = str(ds.get("SeriesInstanceUID", "") or "")
    original_sop = str(ds.get("SOPInstanceUID", "") or "")
    when = _when(ds)
    study = writer.Study(
        patient=deid.pseudonym(key, consultation_id),
        study_uid=deid.derived_uid(key, "prior-study", consultation_id, original_study),
        started_at=when,
        manufacturer=manufacturer or None,
        model=model or None,
    )
    inst = writer.Instance(
        series_uid=deid.derived_uid(key, "prior-series", consultation_id, original_series),
        series_number=SERIES_NUMBER,
        sop_uid=deid.derived_uid(key, "prior-instance", consultation_id, original_sop),
        instance_number=1,
        acquired_at=when,
        pixels_cleaned=rects is not None,
        stream_codec=None,
    )
    if len(frames) == 1:
        out = writer.still(frames[0], study, inst)
    else:
        frame_time = float(ds.get("FrameTime", 0) or 0)
        out = writer.clip(frames, 1000.0 / frame_time if frame_time > 0 else 30.0, study, inst)
    # Once lossy, always declared lossy.
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    lossy_syntax = syntax.is_compressed and syntax not in LOSSLESS
    lossy = str(ds.get("LossyImageCompression", "")) == "01" or lossy_syntax
    if lossy and "LossyImageCompression" not in out:
        out.LossyImageCompression = "01"
        out.LossyImageCompressionMethod = ds.get("LossyImageCompressionMethod") or "ISO_10918_1"
    return Imported(out, rects is not None)
