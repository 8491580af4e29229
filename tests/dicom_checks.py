"""Checks on written DICOM files: dciodvfy, OCR, and a search for patient data everywhere."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from conftest import require
from PIL import Image
from pydicom.dataset import Dataset

DCIODVFY = shutil.which("dciodvfy")
TESSERACT = shutil.which("tesseract")


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    """The error lines dciodvfy prints for a file (warnings are not errors)."""
    require("dciodvfy", DCIODVFY is not None, "install the Debian package dicom3tools")
    assert DCIODVFY is not None
    path = tmp_path / f"check-{len(list(tmp_path.iterdir()))}.dcm"
    path.write_bytes(data)
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def ocr(pixels: np.ndarray) -> str:
    require("tesseract", TESSERACT is not None, "install the Debian package tesseract-ocr")
    assert TESSERACT is not None
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buffer, "PNG")
    result = subprocess.run(
        [TESSERACT, "stdin", "stdout"], input=buffer.getvalue(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode(errors="replace")


def every_value(ds: Dataset) -> list[Any]:
    """Every element's value, sequences walked, file meta included."""
    values: list[Any] = []

    def walk(d: Dataset) -> None:
        for element in d:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.tag != 0x7FE00010:
                values.append(element.value)

    if hasattr(ds, "file_meta"):
        walk(ds.file_meta)
    walk(ds)
    return values


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))
