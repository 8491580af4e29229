"""What a scanner sends: DICOM ultrasound files full of patient data, and recorded clips.

`scanner_file` makes a single- or multi-frame US object as a scanner writes it: the patient's
name, id and birth date in the header, an institution, an operator, a private tag, the patient
banner burned into every frame (`phantom`), the ultrasound regions that calibrate it (0.1 mm per
pixel, as a 4 cm-deep linear probe gives at 720 rows, with a 5 cm scale), and the cine timing.
`recorded_clip` writes the same pictures as an MP4 (H.264) or WebM (VP8) as a phone would.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import av
import numpy as np
from dicom_checks import every_value, ocr, read
from phantom import BANNER_HEIGHT, PATIENT_DOB, PATIENT_MRN, PATIENT_NAME, phantom_frame
from PIL import Image
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from server.dicom import writer

HOSPITAL = "ST ELSEWHERE GENERAL"
OPERATOR = "SONOGRAPHER^SALLY"
SCANNER_ACCESSION_FALLBACK = "ACC998877"
# The regions: 0.1 mm a pixel (PhysicalDelta in cm, units 3 = cm).
MM_PER_PIXEL = 0.1
FRAME_TIME_MS = 33.3333
# Strings that must never reach an archived file (the banner's are checked by OCR).
PHI = (*PATIENT_NAME.split(), PATIENT_MRN.split()[1], "19570314", HOSPITAL, "SALLY")


def region(width: int, height: int) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = 1  # 2D
    item.RegionDataType = 1  # tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = 0, 64
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = width - 1, height - 1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3  # cm
    item.PhysicalDeltaX = item.PhysicalDeltaY = MM_PER_PIXEL / 10
    item.ReferencePixelX0, item.ReferencePixelY0 = width // 2, 64
    item.TransducerFrequency = 12000  # kHz
    return item


def scanner_file(
    accession: str = SCANNER_ACCESSION_FALLBACK,
    frames: int = 1,
    width: int = 1280,
    height: int = 720,
    syntax: UID = JPEGBaseline8Bit,
    pictures: Iterable[np.ndarray] | None = None,
    **changes: Any,
) -> bytes:
    """A scanner's US image (multi-frame when `frames` > 1), sent with `accession`; its
    pictures `phantom_frame`s (white-noise speckle: the worst case for JPEG) unless given."""
    ds = Dataset()
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage if frames > 1 else UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME.replace(" ", "^")
    ds.PatientID = PATIENT_MRN.split()[1]
    ds.PatientBirthDate = PATIENT_DOB.split()[1].replace("-", "")
    ds.PatientSex = "F"
    ds.InstitutionName = HOSPITAL
    ds.OperatorsName = OPERATOR
    ds.StudyDate, ds.StudyTime = "20261203", "101500"
    ds.AccessionNumber = accession
    ds.Modality = "US"
    ds.Manufacturer, ds.ManufacturerModelName = "probelink", "Synthetic phantom"
    ds.DeviceSerialNumber = "SN-12345"
    other = Dataset()
    other.PatientID = PATIENT_MRN.split()[1]
    other.IssuerOfPatientID = HOSPITAL
    ds.OtherPatientIDsSequence = Sequence([other])
    block = ds.private_block(0x0099, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", PATIENT_NAME)
    ds.SequenceOfUltrasoundRegions = Sequence([region(width, height)])
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "YES"
    if pictures is None:
        pictures = (phantom_frame(n, width, height) for n in range(frames))
    pictures = list(pictures)
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = f"{FRAME_TIME_MS:.4f}"
        ds.CineRate = 30
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    if syntax == JPEGBaseline8Bit:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([writer.jpeg_frame(p) for p in pictures])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = b"".join(p.tobytes() for p in pictures)
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, generate_instance_uid=False)
    with config.disable_value_validation():
        for name, value in changes.items():
            setattr(ds, name, value)
    return writer.to_bytes(ds)


def recorded_clip(
    container: str,
    frames: int = 30,
    width: int = 1280,
    height: int = 720,
    pictures: Iterable[np.ndarray] | None = None,
) -> bytes:
    """The phantom's pictures (banner and all, unless `pictures` are given) as an MP4 (H.264)
    or WebM (VP8) at 30 fps, with a sound track (which must never be kept)."""
    out = io.BytesIO()
    codec = {"mp4": "libx264", "webm": "libvpx"}[container]
    with av.open(out, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        audio = output.add_stream("aac" if container == "mp4" else "libopus", rate=48000)
        if pictures is None:
            pictures = (phantom_frame(n, width, height) for n in range(frames))
        for picture in pictures:
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        silence = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono"
        )
        silence.sample_rate = 48000
        for packet in audio.encode(silence):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
        for packet in audio.encode():
            output.mux(packet)
    return out.getvalue()


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def assert_no_phi(data: bytes, banner_frame: np.ndarray) -> None:
    ds = read(data)
    for text in PHI:
        assert text.encode() not in data, text
        assert not any(text in str(v) for v in every_value(ds)), text
    assert not any(e.tag.is_private for e in ds.iterall())
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    # The banner is gone (JPEG leaves at most a faint ringing at its edge), OCR reads nothing.
    assert banner_frame[: BANNER_HEIGHT - 2].max() < 40
    seen = ocr(banner_frame)
    assert PATIENT_NAME.split()[0] not in seen and PATIENT_MRN.split()[1] not in seen, seen
