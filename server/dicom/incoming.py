"""Incoming DICOM objects (a scanner's images, a prior study's): de-identified like captures,
rebuilt from scratch.

An incoming file is never edited in place: its pixels are decoded one frame at a time, masked by
the device profile of the device named in its own header (or accepted unmasked only when the
header says BurnedInAnnotation NO), and written as a new object by `writer`, so private tags,
sequences and every attribute not on the allow-list are gone. Kept from the file, checked and
copied item by item: the ultrasound regions (what a measurement in mm is read from) and the cine
timing (frame time, or a frame time vector). UIDs are keyed HMACs of the consultation and the
original UIDs: the same file sent twice gives the same object.

Partial: ultrasound images only (Modality US, 8-bit or wider greyscale/colour, single or
multi-frame); wider greyscale is scaled to 8 bits by its own range, not by its VOI LUT. Other
modalities are refused with a message that says so.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_preamble
from pydicom.pixels.utils import pixel_array
from pydicom.sequence import Sequence

from server import image_limits
from server.dicom import codestreams, deid, writer
from server.dicom.profiles import Layout, Profiles
from server.dicom.text_check import FramesCheck, TextCheck, TextFound

PRIOR_SERIES_NUMBER = 90
# The ultrasound region attributes kept (PS3.3 C.8.5.5.1): those a measurement needs, then
# optional numeric facts; each item must hold the required ones, in range, or is dropped.
REGION_REQUIRED = (
    "RegionSpatialFormat",
    "RegionDataType",
    "RegionFlags",
    "RegionLocationMinX0",
    "RegionLocationMinY0",
    "RegionLocationMaxX1",
    "RegionLocationMaxY1",
    "PhysicalUnitsXDirection",
    "PhysicalUnitsYDirection",
    "PhysicalDeltaX",
    "PhysicalDeltaY",
)
REGION_OPTIONAL = (
    "ReferencePixelX0",
    "ReferencePixelY0",
    "ReferencePixelPhysicalValueX",
    "ReferencePixelPhysicalValueY",
    "TransducerFrequency",
    "PulseRepetitionFrequency",
    "DopplerCorrectionAngle",
    "SteeringAngle",
)
REGIONS_MAX = 16
# What each integer region attribute's VR can hold (US, UL, SL); the rest are FD.
_US, _UL, _SL = (0, 0xFFFF), (0, 0xFFFFFFFF), (-(2**31), 2**31 - 1)
REGION_BOUNDS = {
    "RegionSpatialFormat": _US,
    "RegionDataType": _US,
    "PhysicalUnitsXDirection": _US,
    "PhysicalUnitsYDirection": _US,
    "RegionFlags": _UL,
    "RegionLocationMinX0": _UL,
    "RegionLocationMinY0": _UL,
    "RegionLocationMaxX1": _UL,
    "RegionLocationMaxY1": _UL,
    "TransducerFrequency": _UL,
    "PulseRepetitionFrequency": _UL,
    "ReferencePixelX0": _SL,
    "ReferencePixelY0": _SL,
}
# Region values (PS3.3 C.8.5.5.1.1, C.8.5.5.1.15): a 2D tissue picture, physical units cm.
SPATIAL_2D = 1
CM = 3
# The photometric interpretations Pillow decodes JPEG baseline frames of, as DICOM means them.
PILLOW_PHOTOMETRIC = {"YBR_FULL_422", "YBR_FULL", "MONOCHROME2"}
FRAME_TIME_VECTOR = 0x00181065  # (0018,1065), as a Frame Increment Pointer
LOSSY_METHODS = {
    pydicom.uid.JPEGBaseline8Bit: "ISO_10918_1",
    pydicom.uid.JPEGExtended12Bit: "ISO_10918_1",
    pydicom.uid.JPEGLSNearLossless: "ISO_14495_1",
    pydicom.uid.JPEG2000: "ISO_15444_1",
}
# Compressed transfer syntaxes whose frames `codestreams` can size before decoding.
DECODABLE = {
    *pydicom.uid.JPEGTransferSyntaxes,
    *pydicom.uid.JPEGLSTransferSyntaxes,
    pydicom.uid.JPEG2000,
    pydicom.uid.JPEG2000Lossless,
    pydicom.uid.RLELossless,
}
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
    frames: int
    regions: int  # ultrasound regions kept
    fps: float | None  # a clip's frame rate
    # Millimetres per pixel and the region they hold in, from the first 2D tissue region in cm:
    # what turns a caliper's pixels into a length (None: the image cannot be measured).
    calibration: dict[str, Any] | None = None


def _file_meta(fp: io.BytesIO) -> Dataset:
    """The file meta group alone (pydicom's `read_file_meta_info`, for bytes in memory)."""
    read_preamble(fp, False)
    return pydicom.filereader._read_file_meta_info(fp)


def read_upload(data: bytes) -> Dataset:
    """Parse an upload, refusing what could not be read safely (a clear `ImportRefused`)."""
    try:
        # The transfer syntax, read from the file meta alone (wherever in it it stands): a
        # deflated dataset is inflated whole, in memory, and a small upload could become
        # gigabytes.
        meta = _file_meta(io.BytesIO(data))
        if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
            raise ImportRefused("deflated DICOM files are not accepted", "unsupported_dicom")
        return pydicom.dcmread(io.BytesIO(data))
    except ImportRefused:
        raise
    except MemoryError:
        raise
    except Exception:
        raise ImportRefused(
            "the upload is not a readable DICOM Part 10 file", "invalid_dicom"
        ) from None


@dataclass(frozen=True)
class Size:
    """An image's size as its header states it (checked against the bounds)."""

    rows: int
    columns: int
    frames: int
    samples: int


def _size(ds: Dataset) -> Size:
    """The image's size from its header, refused before anything is decoded when too large."""
    if "PixelData" not in ds:
        raise ImportRefused("the DICOM object has no image to compare with", "not_an_image")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise ImportRefused("the DICOM image's size cannot be read", "invalid_dicom") from None
    if samples not in (1, 3) or bits not in (8, 16) or min(rows, columns, frames) <= 0:
        raise ImportRefused(
            "the DICOM image's layout is not supported (1 or 3 samples of 8 or 16 bits)",
            "unsupported_dicom",
        )
    problem = image_limits.size_problem(columns, rows, frames, samples * bits // 8)
    if problem is not None:
        raise ImportRefused(problem, "image_too_large")
    return Size(rows, columns, frames, samples)


def first_frame(ds: Dataset, index: int = 0) -> Image.Image:
    """The image's first frame (or frame `index`; a clip's others are not decoded) as RGB."""
    # pydicom hands JPEG (YBR_FULL_422) pixels over as RGB already.
    pixels = pixel_array(ds, index=index)
    return Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8), "RGB")


def frame_count(ds: Dataset) -> int:
    """How many frames the image has, by its header (its size checked: `ImportRefused`)."""
    try:
        return _size(ds).frames
    except (ImportRefused, MemoryError):
        raise
    except Exception:
        raise ImportRefused("the DICOM file could not be read", "invalid_dicom") from None


def _check_encoded(ds: Dataset, size: Size) -> None:
    """Every encoded frame decodes to the header's size (checked on its bytes, not decoded)."""
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    if not syntax.is_compressed:
        return  # the pixels are in the upload already, as they will be decoded
    if syntax not in DECODABLE:
        raise ImportRefused(
            "the DICOM image's transfer syntax is not supported here", "unsupported_dicom"
        )
    # The decoder would follow an extended offset table; the frames checked must be its frames.
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    try:
        encoded = generate_frames(ds.PixelData, number_of_frames=size.frames)
        for _, frame in zip(range(size.frames), encoded, strict=False):
            if not codestreams.frame_fits(syntax, frame, size.rows, size.columns):
                raise ImportRefused(
                    "an encoded frame of the DICOM image is not the size its header says",
                    "image_too_large",
                )
    except ImportRefused:
        raise
    except Exception:
        raise ImportRefused("the DICOM image's frames cannot be read", "invalid_dicom") from None


def _decoders(ds: Dataset, size: Size) -> Iterator[Callable[[], np.ndarray]]:
    """One decoder per frame, in order, each safe to run in a worker thread.

    JPEG baseline frames in YBR or greyscale are decoded by Pillow, whose libjpeg-turbo converts
    the colour as it decodes (about four times faster than pydicom's conversion in numpy); the
    rest by pydicom, frame by frame.
    """
    _check_encoded(ds, size)
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if syntax == pydicom.uid.JPEGBaseline8Bit and photometric in PILLOW_PHOTOMETRIC:
        for frame in generate_frames(ds.PixelData, number_of_frames=size.frames):
            yield functools.partial(_pillow_frame, frame, size)
    else:
        for index in range(size.frames):
            yield functools.partial(_pydicom_frame, ds, index, size)


def _pillow_frame(data: bytes, size: Size) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except MemoryError:
        raise
    except Exception:
        raise ImportRefused(
            "a frame of the DICOM image cannot be decoded", "invalid_dicom"
        ) from None
    return _rgb8(array, size)


def _pydicom_frame(ds: Dataset, index: int, size: Size) -> np.ndarray:
    try:
        array = np.asarray(pixel_array(ds, index=index))
    except MemoryError:
        raise
    except Exception:
        raise ImportRefused(
            "the DICOM image cannot be decoded here (its transfer syntax is not supported)",
            "unsupported_dicom",
        ) from None
    if size.samples == 1:
        array = np.repeat(array[..., np.newaxis], 3, axis=-1)
    return _rgb8(array, size)


def _rgb8(array: np.ndarray, size: Size) -> np.ndarray:
    """An HxWx3 frame of 8-bit samples (wider ones scaled by their own range), writable."""
    if array.shape != (size.rows, size.columns, 3):
        raise ImportRefused("the DICOM image's layout is not supported", "unsupported_dicom")
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array.astype(np.float32) - low) * scale).clip(0, 255).astype(np.uint8)
    return np.array(array, order="C", copy=True) if not array.flags.writeable else array


def _rebuilt_frames(
    decoders: Iterator[Callable[[], np.ndarray]],
    layout: Layout | None,
    multi: bool,
    text: TextCheck,
) -> list[Any]:
    """Each frame decoded and masked, then checked for text left (`text_check`: sampled frames
    and the last; `TextFound`); a clip's encoded as JPEG (`writer.jpeg_frames`, a few at a
    time), a still's one frame kept as pixels."""
    checks = FramesCheck(text, layout.unread if layout is not None else ())

    def masked(index: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        frame = decode()
        if layout is not None:
            deid.mask(frame, layout.mask)
        if multi:
            checks.frame(index, frame)
        return frame

    if not multi:
        frames = [masked(n, decode) for n, decode in enumerate(decoders)]
        text.check(frames[0], checks.blank)
        return frames
    jpegs = writer.jpeg_frames(
        functools.partial(masked, n, decode) for n, decode in enumerate(decoders)
    )
    checks.finish()
    return jpegs


def _acquired_at(ds: Dataset) -> datetime | None:
    """When the image was taken, by its header (UTC assumed), or None."""
    for date_tag, time_tag in (("StudyDate", "StudyTime"), ("AcquisitionDate", "AcquisitionTime")):
        date = str(ds.get(date_tag, "") or "")
        if len(date) == 8 and date.isdigit():
            digits = "".join(c for c in str(ds.get(time_tag, "") or "")[:6] if c.isdigit())
            try:
                return datetime.strptime(date + digits.ljust(6, "0"), "%Y%m%d%H%M%S").replace(
                    tzinfo=UTC
                )
            except ValueError:
                continue
    return None


def _fps(ds: Dataset) -> float:
    try:
        frame_time = float(ds.get("FrameTime", 0) or 0)
    except (TypeError, ValueError):
        return 30.0
    return 1000.0 / frame_time if math.isfinite(frame_time) and 1 <= frame_time <= 10_000 else 30.0


def _regions(ds: Dataset, size: Size) -> Sequence | None:
    """The ultrasound regions, rebuilt item by item from the allow-list (None: none usable)."""
    kept = []
    for item in list(ds.get("SequenceOfUltrasoundRegions", None) or [])[:REGIONS_MAX]:
        region = Dataset()
        try:
            for keyword in (*REGION_REQUIRED, *REGION_OPTIONAL):
                value = item.get(keyword)
                if value is None or value == "":
                    if keyword in REGION_REQUIRED:
                        raise ValueError(keyword)
                    continue
                number = float(value) if isinstance(value, float) else int(value)
                low, high = REGION_BOUNDS.get(keyword, (-math.inf, math.inf))
                if not (math.isfinite(number) and low <= number <= high):
                    raise ValueError(keyword)
                setattr(region, keyword, number)
        except (TypeError, ValueError):
            continue
        x0, y0 = region.RegionLocationMinX0, region.RegionLocationMinY0
        x1, y1 = region.RegionLocationMaxX1, region.RegionLocationMaxY1
        if not (0 <= x0 <= x1 < size.columns and 0 <= y0 <= y1 < size.rows):
            continue
        if region.PhysicalDeltaX <= 0 or region.PhysicalDeltaY <= 0:
            continue
        kept.append(region)
    return Sequence(kept) if kept else None


def _frame_time_vector(ds: Dataset, frames: int) -> list[float] | None:
    """The file's own frame time vector (ms between frames), when its timing is given that way."""
    try:
        if int(ds.get("FrameIncrementPointer", 0) or 0) != FRAME_TIME_VECTOR:
            return None
        vector = [float(v) for v in ds.FrameTimeVector]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(vector) != frames or not all(math.isfinite(v) and 0 <= v <= 10_000 for v in vector):
        return None
    # The first frame comes at 0; the others each after some time.
    if vector[0] != 0 or not all(v > 0 for v in vector[1:]):
        return None
    return vector


def rebuild(
    ds: Dataset,
    *,
    profiles: Profiles,
    text: TextCheck,
    study: writer.Study,
    inst: writer.Instance,
    what: str,
) -> Imported:
    """A new, de-identified ultrasound object from an incoming one, or `ImportRefused`.

    `study` and `inst` say where it goes (pseudonym, UIDs, times); the device's names and
    whether its pixels were cleaned are filled in here. `what` names the object in refusals
    ("prior", "scanner image").
    """
    try:
        return _rebuild(ds, profiles, text, study, inst, what)
    except (ImportRefused, TextFound, MemoryError):
        raise
    except Exception:
        # Nothing of the file (its values may be patient data) goes into the message.
        raise ImportRefused("the DICOM file could not be read", "invalid_dicom") from None


def _rebuild(
    ds: Dataset,
    profiles: Profiles,
    text: TextCheck,
    study: writer.Study,
    inst: writer.Instance,
    what: str,
) -> Imported:
    if str(ds.get("Modality", "")) != "US":
        raise ImportRefused(
            f"only ultrasound (Modality US) images are accepted as a {what}",
            "unsupported_modality",
        )
    size = _size(ds)
    rows, columns = size.rows, size.columns
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    model = str(ds.get("ManufacturerModelName", "") or "").strip()
    try:
        layout: Layout | None = profiles.mask_for(manufacturer, model, columns, rows)
    except LookupError:
        if str(ds.get("BurnedInAnnotation", "")).upper() != "NO":
            raise ImportRefused(
                f"the {what}'s device has no de-identification profile for its image size "
                f"({columns}x{rows}) and its header does not say it carries no burned-in text "
                "(BurnedInAnnotation NO): add a profile for its Manufacturer and "
                "ManufacturerModelName to PROBELINK_DEVICE_PROFILES",
                "no_device_profile",
            ) from None
        layout = None
    multi = size.frames > 1
    frames = _rebuilt_frames(_decoders(ds, size), layout, multi, text)
    # The device's names are kept only when a profile knows them (then they are a device's,
    # not free text that might hold anything).
    known = layout is not None
    study = replace(
        study, manufacturer=manufacturer if known else None, model=model if known else None
    )
    inst = replace(inst, pixels_cleaned=known)
    times = _frame_time_vector(ds, size.frames) if multi else None
    # A clip timed by a vector plays at its mean rate where one rate is asked for.
    fps = (1000.0 * (len(times) - 1) / sum(times) if times else _fps(ds)) if multi else None
    if multi:
        assert fps is not None
        out = writer.clip(
            frames,
            (rows, columns),
            fps,
            study,
            inst,
            frame_times=times,
        )
    else:
        out = writer.still(frames[0], study, inst)
    regions = _regions(ds, size)
    if regions is not None:
        out.SequenceOfUltrasoundRegions = regions
    # Once lossy, always declared lossy (with a defined term, never the file's own text).
    syntax = ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian)
    lossy_syntax = syntax.is_compressed and syntax not in LOSSLESS
    lossy = str(ds.get("LossyImageCompression", "")) == "01" or lossy_syntax
    if lossy and "LossyImageCompression" not in out:
        out.LossyImageCompression = "01"
        out.LossyImageCompressionMethod = LOSSY_METHODS.get(syntax, "ISO_10918_1")
    return Imported(out, known, size.frames, len(regions or ()), fps, _calibration(regions))


def _calibration(regions: Sequence | None) -> dict[str, Any] | None:
    for region in regions or ():
        in_cm = region.PhysicalUnitsXDirection == CM and region.PhysicalUnitsYDirection == CM
        if region.RegionSpatialFormat == SPATIAL_2D and in_cm:
            return {
                "source": "ultrasound_region",
                "mm_per_pixel": [region.PhysicalDeltaX * 10, region.PhysicalDeltaY * 10],
                "region": [
                    region.RegionLocationMinX0,
                    region.RegionLocationMinY0,
                    region.RegionLocationMaxX1,
                    region.RegionLocationMaxY1,
                ],
            }
    return None


def deidentify_prior(
    ds: Dataset,
    *,
    key: bytes,
    consultation_id: str,
    profiles: Profiles,
    text: TextCheck,
    undated: datetime,
) -> Imported:
    """A prior study's image, in a study of its own (UIDs from its own), or `ImportRefused`.

    `undated`: the acquisition time to use when the prior's header has none (stable, so
    that importing the same file twice gives the same object).
    """
    try:
        study, inst = _prior_place(ds, key, consultation_id, undated)
    except Exception:
        raise ImportRefused("the DICOM file could not be read", "invalid_dicom") from None
    return rebuild(ds, profiles=profiles, text=text, study=study, inst=inst, what="prior")


def _prior_place(
    ds: Dataset, key: bytes, consultation_id: str, undated: datetime
) -> tuple[writer.Study, writer.Instance]:
    when = _acquired_at(ds) or undated
    study = writer.Study(
        patient=deid.pseudonym(key, consultation_id),
        study_uid=deid.derived_uid(
            key, "prior-study", consultation_id, str(ds.get("StudyInstanceUID", ""))
        ),
        started_at=when,
    )
    inst = writer.Instance(
        series_uid=deid.derived_uid(
            key, "prior-series", consultation_id, str(ds.get("SeriesInstanceUID", ""))
        ),
        series_number=PRIOR_SERIES_NUMBER,
        sop_uid=deid.derived_uid(
            key, "prior-instance", consultation_id, str(ds.get("SOPInstanceUID", ""))
        ),
        instance_number=1,
        acquired_at=when,
        stream_codec=None,
    )
    return study, inst
