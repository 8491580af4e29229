"""DICOM objects from de-identified captures (pydicom; highdicom for KOS and presentation state).

Every object is built from an allow-list: only the attributes written here
exist, so nothing identifying can slip in from elsewhere. Callers pass pixels
that are already masked (`deid.mask`) and the pseudonymous identifiers.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageCms
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from pydicom.valuerep import DA, TM

from server import __version__
from server.dicom import deid

CHARSET = "ISO_IR 192"  # UTF-8
MANUFACTURER = "probelink"
JPEG_QUALITY = 90
# A clip's frames are made and encoded this many at once (Pillow and numpy release the GIL;
# 2 cores here), with at most FRAMES_IN_FLIGHT frames decoded at any time.
FRAME_WORKERS = 2
FRAMES_IN_FLIGHT = 4
# Stills keep every pixel (the bedside's PNG, or a decoded frame), compressed without loss.
STILL_TRANSFER_SYNTAX = JPEGLSLossless
DICOM_SIDE_MAX = 65535
# DICOM body part terms for the applications that name one (PS3.16 Annex L).
BODY_PART = {
    "breast": "BREAST",
    "dvt": "LEG",
    "thyroid": "THYROID",
    "abdominal": "ABDOMEN",
}
LATERALITY = {"left": "L", "right": "R", "bilateral": "B"}
# Body parts that come in pairs (the series then states laterality, PS3.3 C.7.3.1).
PAIRED_BODY_PARTS = {"BREAST", "LEG"}
# How the video reached the relay, when it was decoded from the live stream.
# (VP8 and VP9 have no defined term; their names are written.)
STREAM_COMPRESSION = {"video/h264": "ISO_14496_10", "video/hevc": "ISO_23008_2", "video/vp9": "VP9"}


@dataclass(frozen=True)
class Study:
    """What every object of one consultation shares; pseudonymous only."""

    patient: str
    study_uid: str
    started_at: datetime
    manufacturer: str | None = None
    model: str | None = None
    transducer: str | None = None
    application: str | None = None
    laterality: str | None = None


@dataclass(frozen=True)
class Instance:
    series_uid: str
    series_number: int
    sop_uid: str
    instance_number: int
    acquired_at: datetime
    # Whether masking cleaned the pixels (else the source carries no burned-in text).
    pixels_cleaned: bool = True
    # The codec of the live stream the pixels were decoded from (None: lossless upload).
    stream_codec: str | None = None


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")


def _common(study: Study, inst: Instance, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSET
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = inst.sop_uid
    ds.InstanceCreationDate = _da(inst.acquired_at)
    ds.InstanceCreationTime = _tm(inst.acquired_at)
    ds.TimezoneOffsetFromUTC = "+0000"
    # Patient: the pseudonym; Type 2 attributes present and empty.
    # Family name ^ given name: the pseudonym as the family name.
    ds.PatientName = f"{study.patient}^"
    ds.PatientID = study.patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General study: empty Type 2 attributes, never absent.
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = _da(study.started_at)
    ds.StudyTime = _tm(study.started_at)
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General series and equipment.
    ds.Modality = modality
    ds.SeriesInstanceUID = inst.series_uid
    ds.SeriesNumber = inst.series_number
    ds.Manufacturer = study.manufacturer or ""
    if study.model:
        ds.ManufacturerModelName = study.model
    ds.InstanceNumber = inst.instance_number
    deid.stamp(ds, pixels_cleaned=inst.pixels_cleaned, when=inst.acquired_at)
    return ds


def _image(ds: Dataset, study: Study, inst: Instance, rows: int, columns: int) -> None:
    ds.SeriesDate = _da(inst.acquired_at)
    ds.SeriesTime = _tm(inst.acquired_at)
    ds.ContentDate = _da(inst.acquired_at)
    ds.ContentTime = _tm(inst.acquired_at)
    ds.AcquisitionDateTime = inst.acquired_at.strftime("%Y%m%d%H%M%S.%f+0000")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    if study.application in BODY_PART:
        ds.BodyPartExamined = BODY_PART[study.application]
    side = LATERALITY.get(study.laterality or "")
    if side:
        ds.ImageLaterality = side
    elif _maybe_paired(study):
        ds.Laterality = ""  # Type 2C: a paired (or unnamed) part whose side is not known
    if study.transducer:
        ds.TransducerData = [study.transducer]
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if not (0 < rows <= DICOM_SIDE_MAX and 0 < columns <= DICOM_SIDE_MAX):
        raise ValueError(f"Rows and Columns are 1 to {DICOM_SIDE_MAX} (unsigned 16-bit)")
    ds.Rows = rows
    ds.Columns = columns
    ds.SoftwareVersions = f"probelink {__version__}"
    if inst.stream_codec is not None:
        # Decoded from the live stream: the pixels have been through a lossy codec.
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = STREAM_COMPRESSION.get(inst.stream_codec, "VP8")


def _maybe_paired(study: Study) -> bool:
    part = BODY_PART.get(study.application or "")
    return part is None or part in PAIRED_BODY_PARTS


def still(pixels: np.ndarray, study: Study, inst: Instance) -> Dataset:
    """Ultrasound Image Storage, RGB, compressed losslessly (`STILL_TRANSFER_SYNTAX`)."""
    _check_rgb(pixels)
    ds = _common(study, inst, UltrasoundImageStorage, "US")
    _image(ds, study, inst, *pixels.shape[:2])
    ds.PhotometricInterpretation = "RGB"
    ds = _with_meta(ds, ExplicitVRLittleEndian)
    # The UIDs are ours (keyed HMACs): compressing must not make new ones.
    ds.compress(STILL_TRANSFER_SYNTAX, np.ascontiguousarray(pixels), generate_instance_uid=False)
    return ds


def clip(
    frames: Seq[bytes],
    size: tuple[int, int],
    fps: float,
    study: Study,
    inst: Instance,
    frame_times: Seq[float] | None = None,
) -> Dataset:
    """Ultrasound Multi-frame Image Storage from JPEG baseline frames (`jpeg_frame`), with cine
    timing. `size` is (rows, columns), the size every frame was encoded at; `frame_times`, the
    milliseconds before each frame (the first 0) when the frames are not evenly spaced."""
    if not frames:
        raise ValueError("a clip needs at least one frame")
    rows, columns = size
    ds = _common(study, inst, UltrasoundMultiFrameImageStorage, "US")
    _image(ds, study, inst, rows, columns)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.NumberOfFrames = len(frames)
    # Frame Time or Frame Time Vector, whichever the pointer names (never both: Type 1C).
    if frame_times is not None:
        if len(frame_times) != len(frames):
            raise ValueError("a frame time vector has one value per frame")
        ds.FrameIncrementPointer = 0x00181065  # Frame Time Vector
        ds.FrameTimeVector = [f"{t:.3f}"[:16] for t in frame_times]
    else:
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = f"{1000.0 / fps:.3f}"
    ds.CineRate = round(fps)
    ds.RecommendedDisplayFrameRate = round(fps)
    raw = rows * columns * 3 * len(frames)
    ds.LossyImageCompression = "01"
    methods = [STREAM_COMPRESSION.get(inst.stream_codec or "", "VP8")] if inst.stream_codec else []
    ds.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]
    ds.LossyImageCompressionRatio = [
        *(["1"] if methods else []),
        f"{raw / sum(len(f) for f in frames):.2f}"[:16],
    ]
    ds.PixelData = encapsulate(list(frames), has_bot=True)
    ds["PixelData"].VR = "OB"
    return _with_meta(ds, JPEGBaseline8Bit)


def jpeg_frame(pixels: np.ndarray) -> bytes:
    """One RGB frame as JPEG baseline, 4:2:2 (what YBR_FULL_422 declares)."""
    _check_rgb(pixels)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=JPEG_QUALITY, subsampling=1)
    return out.getvalue()


def jpeg_frames(jobs: Iterable[Callable[[], np.ndarray]]) -> list[bytes]:
    """A clip's frames as JPEG (`jpeg_frame`), in order: each job makes one RGB frame (decode,
    mask) and is run with its encoding FRAME_WORKERS at a time, at most FRAMES_IN_FLIGHT frames
    in memory at once. The first error stops the clip and is raised."""

    def work(job: Callable[[], np.ndarray]) -> bytes:
        return jpeg_frame(job())

    done: list[bytes] = []
    with ThreadPoolExecutor(FRAME_WORKERS, thread_name_prefix="frames") as pool:
        window: deque[Future[bytes]] = deque()
        try:
            for job in jobs:
                window.append(pool.submit(work, job))
                if len(window) >= FRAMES_IN_FLIGHT:
                    done.append(window.popleft().result())
            while window:
                done.append(window.popleft().result())
        finally:
            for pending in window:
                pending.cancel()
    return done


def _check_rgb(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("pixels must be an HxWx3 array of uint8 (RGB)")


def _with_meta(ds: Dataset, transfer_syntax: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PROBELINK_{__version__}"[:16]
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The Part 10 file: preamble, file meta, dataset."""
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _series_facts(study: Study, inst: Instance) -> dict[str, Any]:
    return {
        "series_instance_uid": inst.series_uid,
        "series_number": inst.series_number,
        "sop_instance_uid": inst.sop_uid,
        "instance_number": inst.instance_number,
    }


def finish(ds: Dataset, study: Study, inst: Instance) -> Dataset:
    """Shared attributes highdicom leaves to us, then the de-identification stamp."""
    ds.SpecificCharacterSet = CHARSET
    ds.PatientName = f"{study.patient}^"
    ds.PatientID = study.patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.InstanceCreationDate = _da(inst.acquired_at)
    ds.InstanceCreationTime = _tm(inst.acquired_at)
    ds.TimezoneOffsetFromUTC = "+0000"
    deid.stamp(ds, pixels_cleaned=True, when=inst.acquired_at)
    # The presentation state and KOS have no pixels: BurnedInAnnotation is an image attribute.
    del ds.BurnedInAnnotation
    ds.DeidentificationMethod = "PS3.15 E basic"
    ds.DeidentificationMethodCodeSequence = [
        item
        for item in ds.DeidentificationMethodCodeSequence
        if item.CodeValue != deid.CLEAN_PIXEL[0]
    ]
    return _with_meta(ds, ExplicitVRLittleEndian)


def key_object_selection(evidence: Seq[Dataset], study: Study, inst: Instance) -> Dataset:
    """The consultation's Key Object Selection: every key image captured so far."""
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=list(evidence),
    )
    ds = hd.ko.KeyObjectSelectionDocument(
        evidence=list(evidence),
        content=content,
        manufacturer=MANUFACTURER,
        **_series_facts(study, inst),
    )
    ds.ContentDate = DA(_da(inst.acquired_at))
    ds.ContentTime = TM(_tm(inst.acquired_at))
    return finish(ds, study, inst)


def _srgb_profile() -> bytes:
    """sRGB as an input-device ICC profile, the class DICOM asks for (PS3.3 C.11.15).

    LittleCMS builds sRGB as a display ('mntr') profile; an input ('scnr') profile
    with the same matrix and curves describes the same colours. The header's
    profile id (an MD5, optional) is zeroed because the header changed.
    """
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[12:16] = b"scnr"
    profile[84:100] = bytes(16)
    return bytes(profile)


def presentation_state(
    image: Dataset, marks: Seq[dict[str, Any]], study: Study, inst: Instance
) -> Dataset:
    """A colour softcopy presentation state drawing `marks` (normalized points) on `image`;
    a mark with a `frame` (1-based) is drawn on that frame of a clip only.

    Shapes only: a text label is drawn as a point at its anchor, its words stay in the
    record. Free text typed during a session may name the patient, and nothing could tell.
    """
    rows, columns = int(image.Rows), int(image.Columns)
    layer = hd.pr.GraphicLayer(layer_name="MARKS", order=1, description="Expert marks")
    by_frame: dict[int | None, list[hd.pr.GraphicObject]] = {}
    for mark in marks:
        points = np.clip(np.array(mark["points"], dtype=float), 0.0, 1.0) * (columns, rows)
        kind = mark["kind"]
        if kind == "circle" and len(points) >= 2:
            graphic_type, data = hd.pr.GraphicTypeValues.CIRCLE, points[:2]
        elif len(points) == 1:
            graphic_type, data = hd.pr.GraphicTypeValues.POINT, points[:1]
        else:
            graphic_type, data = hd.pr.GraphicTypeValues.POLYLINE, points
        by_frame.setdefault(mark.get("frame"), []).append(
            hd.pr.GraphicObject(
                graphic_type=graphic_type,
                graphic_data=data,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        )
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[image],
            graphic_layer=layer,
            referenced_frame_number=frame,
            graphic_objects=graphics,
        )
        for frame, graphics in by_frame.items()
    ] or [hd.pr.GraphicAnnotation(referenced_images=[image], graphic_layer=layer)]
    ds = hd.pr.ColorSoftcopyPresentationState(
        referenced_images=[image],
        manufacturer=MANUFACTURER,
        manufacturer_model_name="probelink",
        software_versions=__version__,
        device_serial_number="",
        content_label="MARKS",
        content_description="Marks on screen at capture",
        graphic_layers=[layer],
        graphic_annotations=annotations,
        icc_profile=_srgb_profile(),
        **_series_facts(study, inst),
    )
    # The series of a paired body part states its side (its objects carry no image laterality).
    side = LATERALITY.get(study.laterality or "")
    if side in ("L", "R"):
        ds.Laterality = side
    elif ds.get("BodyPartExamined") in (None, *PAIRED_BODY_PARTS):
        ds.Laterality = ""
    return finish(ds, study, inst)
