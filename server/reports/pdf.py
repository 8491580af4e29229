"""The report as a fileable PDF document (fpdf2): data in, bytes out, no I/O but the fonts.

`Document` holds what the page shows, already worded; `render` lays it out on A4: the
identifiers and dates, the clinical fields, the cited key images as pictures with their marks
and measurements drawn (`picture`), the signature, the addenda. A draft says so on every page.
fpdf2 is pure Python, maintained, embeds a TrueType font (any script the expert types) and
JPEG pictures as they are; it runs in a worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image, ImageDraw, ImageFont

from server.errors import ConfigError

# Debian's fonts-dejavu-core: a Unicode TrueType family with a bold face.
DEFAULT_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
FAMILY = "DejaVu"
PICTURE_SIDE_MAX_PX = 1024  # pictures are scaled down to this before they are embedded
PICTURE_JPEG_QUALITY = 88
PICTURE_WIDTH_MM = 86.0  # two pictures side by side on A4
PICTURE_HEIGHT_MAX_MM = 80.0
LABEL_WIDTH_MM = 48.0
LINE_MM = 5.2
# The colours marks have on the pages (overlay.js), on a black outline.
ROLE_COLOURS = {"expert": (255, 212, 0), "operator": (0, 229, 255)}
MARK_COLOUR = (255, 255, 255)
CALIPER_COLOUR = (255, 212, 0)
DRAFT_COLOUR = (190, 0, 0)


@dataclass(frozen=True)
class Fonts:
    """The TrueType files the document is set in (regular, bold)."""

    regular: Path
    bold: Path


def find_fonts(folder: Path | None) -> Fonts:
    """The report's fonts in `folder` (default: Debian's DejaVu); `ConfigError` naming what to
    install when they are missing, so start-up stops rather than a signature later."""
    where = folder or DEFAULT_FONT_DIR
    fonts = Fonts(where / FONT_FILES[""], where / FONT_FILES["B"])
    for path in (fonts.regular, fonts.bold):
        if not path.is_file():
            raise ConfigError(
                f"the report PDF's font {path} is missing: install the Debian package "
                "fonts-dejavu-core, or set PROBELINK_REPORT_FONTS to a folder holding "
                f"{FONT_FILES['']} and {FONT_FILES['B']}"
            )
    return fonts


@dataclass(frozen=True)
class Picture:
    """A cited key image as printed: JPEG bytes, its size in pixels, caption and notes."""

    caption: str
    jpeg: bytes
    width: int
    height: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Addendum:
    text: str
    author: str
    at: datetime


@dataclass(frozen=True)
class Document:
    """Everything the PDF shows, worded; `rows` are (label, text) pairs in reading order."""

    title: str
    draft: bool
    identity: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, str], ...]
    pictures: tuple[Picture, ...]
    signature: tuple[tuple[str, str], ...]
    addenda: tuple[Addendum, ...]
    footer: str
    made_at: datetime


def when(at: datetime) -> str:
    """A time as the document states it: UTC, to the minute."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


class _Page(FPDF):
    """A4 with the draft banner on every page and the identifiers and page number below."""

    def multi_cell(self, *args: Any, **kwargs: Any) -> Any:
        # Ragged right: fpdf2 justifies by default, which spreads short clinical lines apart.
        kwargs.setdefault("align", "L")
        return super().multi_cell(*args, **kwargs)

    def __init__(self, document: Document, fonts: Fonts):
        super().__init__(orientation="P", unit="mm", format="A4")
        # What the header and footer print on each page.
        self.document = document
        for style, path in (("", fonts.regular), ("B", fonts.bold)):
            self.add_font(FAMILY, style, str(path))
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(15, 15, 15)

    def header(self) -> None:
        if not self.document.draft:
            return
        self.set_font(FAMILY, "B", 12)
        self.set_fill_color(*DRAFT_COLOUR)
        self.set_text_color(255, 255, 255)
        self.cell(
            0,
            9,
            "DRAFT — NOT SIGNED: this report may still change",
            align="C",
            fill=True,
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        self.set_text_color(0, 0, 0)
        self.ln(2)

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font(FAMILY, "", 8)
        self.set_text_color(90, 90, 90)
        self.cell(0, 5, f"{self.document.footer} · page {self.page_no()}/{{nb}}", align="C")
        self.set_text_color(0, 0, 0)


def render(document: Document, fonts: Fonts) -> bytes:
    """The document as PDF bytes."""
    pdf = _Page(document, fonts)
    pdf.set_title(document.title)
    pdf.set_creator("probelink")
    pdf.set_creation_date(document.made_at)
    pdf.add_page()
    pdf.set_font(FAMILY, "B", 16)
    pdf.multi_cell(0, 8, document.title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    _rows(pdf, document.identity, size=9.5)
    _rule(pdf)
    _rows(pdf, document.fields, size=10.5)
    if document.pictures:
        _heading(pdf, f"Key images cited ({len(document.pictures)})")
        _pictures(pdf, document.pictures)
    _rule(pdf)
    _heading(pdf, "Not signed" if document.draft else "Signature")
    _rows(pdf, document.signature, size=10)
    if document.addenda:
        _heading(pdf, "Addenda")
        for n, addendum in enumerate(document.addenda, 1):
            pdf.set_font(FAMILY, "B", 10)
            pdf.multi_cell(
                0,
                LINE_MM,
                f"Addendum {n} — {addendum.author}, {when(addendum.at)}",
                new_x=XPos.LMARGIN,
                new_y=YPos.NEXT,
            )
            pdf.set_font(FAMILY, "", 10.5)
            pdf.multi_cell(0, LINE_MM, addendum.text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(1.5)
    return bytes(pdf.output())


def _heading(pdf: FPDF, text: str) -> None:
    if pdf.will_page_break(20):
        pdf.add_page()
    pdf.ln(1.5)
    pdf.set_font(FAMILY, "B", 12)
    pdf.cell(0, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _rule(pdf: FPDF) -> None:
    pdf.ln(1.5)
    pdf.set_draw_color(160, 160, 160)
    pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
    pdf.ln(2)


def _rows(pdf: FPDF, rows: Sequence[tuple[str, str]], size: float) -> None:
    """Label on the left, its text wrapped on the right."""
    width = pdf.w - pdf.l_margin - pdf.r_margin - LABEL_WIDTH_MM
    for label, text in rows:
        pdf.set_font(FAMILY, "", size)
        lines = pdf.multi_cell(width, LINE_MM, text, dry_run=True, output="LINES")
        assert isinstance(lines, list)
        # A label is not left alone at the foot of a page.
        if pdf.will_page_break(min(len(lines), 4) * LINE_MM):
            pdf.add_page()
        y = pdf.get_y()
        pdf.set_font(FAMILY, "B", size)
        pdf.multi_cell(LABEL_WIDTH_MM, LINE_MM, label, new_x=XPos.RIGHT, new_y=YPos.TOP)
        pdf.set_font(FAMILY, "", size)
        pdf.set_xy(pdf.l_margin + LABEL_WIDTH_MM, y)
        pdf.multi_cell(width, LINE_MM, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(0.8)


def _pictures(pdf: FPDF, pictures: Sequence[Picture]) -> None:
    """Two per row, each with its caption and measurement notes below."""
    gap = pdf.w - pdf.l_margin - pdf.r_margin - 2 * PICTURE_WIDTH_MM
    for start in range(0, len(pictures), 2):
        pair = pictures[start : start + 2]
        sizes = [_fit(p) for p in pair]
        notes_mm = max(len(p.notes) + 2 for p in pair) * 4.2
        height = max(h for _, h in sizes) + notes_mm
        if pdf.will_page_break(height):
            pdf.add_page()
        top = pdf.get_y()
        bottom = top
        for column, (picture, (w, h)) in enumerate(zip(pair, sizes, strict=True)):
            x = pdf.l_margin + column * (PICTURE_WIDTH_MM + gap)
            pdf.image(io.BytesIO(picture.jpeg), x=x, y=top, w=w, h=h, alt_text=picture.caption)
            pdf.set_xy(x, top + h + 1)
            pdf.set_font(FAMILY, "B", 8.5)
            pdf.multi_cell(PICTURE_WIDTH_MM, 4.2, picture.caption, new_x=XPos.LEFT)
            pdf.set_font(FAMILY, "", 8.5)
            for note in picture.notes:
                pdf.set_x(x)
                pdf.multi_cell(PICTURE_WIDTH_MM, 4.2, note, new_x=XPos.LEFT)
            bottom = max(bottom, pdf.get_y())
        pdf.set_xy(pdf.l_margin, bottom + 3)


def _fit(picture: Picture) -> tuple[float, float]:
    scale = min(PICTURE_WIDTH_MM / picture.width, PICTURE_HEIGHT_MAX_MM / picture.height)
    return picture.width * scale, picture.height * scale


# The pictures: a key image's frame with what was drawn on it.


def picture(
    image: Image.Image,
    marks: Sequence[dict[str, Any]],
    calipers: Sequence[dict[str, Any]],
    caption: str,
    notes: Sequence[str],
    fonts: Fonts,
    *,
    mark_text: bool = True,
) -> Picture:
    """`image` with `marks` (normalized points, as on screen) and `calipers` (the image's own
    pixels, with their mm and number) drawn, scaled down and encoded for the document.
    `mark_text` False draws a text label as its anchor point only (as the presentation state)."""
    image = image.convert("RGB")
    scale = min(1.0, PICTURE_SIDE_MAX_PX / max(image.width, image.height))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    draw = ImageDraw.Draw(image)
    stroke = max(3, round(image.width / 210))  # legible once printed at ~9 cm wide
    font = ImageFont.truetype(str(fonts.bold), max(12, round(image.width / 40)))
    size = (image.width, image.height)
    for mark in marks:
        _mark(draw, mark, size, stroke, font, mark_text)
    for n, caliper in enumerate(calipers, 1):
        (x0, y0), (x1, y1) = ((x * scale, y * scale) for x, y in caliper["points"])
        mm = caliper.get("mm")
        text = f"M{caliper.get('n', n)} " + (f"{mm:.1f} mm" if mm is not None else "?")
        _caliper(draw, (x0, y0), (x1, y1), CALIPER_COLOUR, stroke, font, text)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=PICTURE_JPEG_QUALITY)
    return Picture(caption, out.getvalue(), image.width, image.height, tuple(notes))


def _mark(
    draw: ImageDraw.ImageDraw,
    mark: dict[str, Any],
    size: tuple[int, int],
    stroke: int,
    font: ImageFont.FreeTypeFont,
    mark_text: bool,
) -> None:
    width, height = size
    points = [
        (min(max(float(x), 0.0), 1.0) * width, min(max(float(y), 0.0), 1.0) * height)
        for x, y in mark.get("points") or []
    ]
    if not points:
        return
    colour = ROLE_COLOURS.get(str(mark.get("author_role")), MARK_COLOUR)
    kind = mark.get("kind")
    a = points[0]
    if kind == "text":
        if mark_text and mark.get("text"):
            _label(draw, a, str(mark["text"]), colour, font)
        else:
            r = stroke * 2
            draw.ellipse((a[0] - r, a[1] - r, a[0] + r, a[1] + r), fill=colour, outline=(0, 0, 0))
        return
    if kind == "freehand" and len(points) >= 2:
        _outlined(draw, points, colour, stroke)
        return
    if len(points) < 2:
        return
    b = points[1]
    if kind == "arrow":
        angle = math.atan2(b[1] - a[1], b[0] - a[0])
        head = 6 * stroke
        _outlined(draw, [a, b], colour, stroke)
        for side in (-0.45, 0.45):
            tip = (b[0] - head * math.cos(angle + side), b[1] - head * math.sin(angle + side))
            _outlined(draw, [b, tip], colour, stroke)
    elif kind == "circle":
        radius = math.hypot(b[0] - a[0], b[1] - a[1])
        box = (a[0] - radius, a[1] - radius, a[0] + radius, a[1] + radius)
        draw.ellipse(box, outline=(0, 0, 0), width=stroke + 2)
        draw.ellipse(box, outline=colour, width=stroke)
    elif kind in ("caliper", "calibration"):
        text = f"scale {mark.get('mm')} mm" if kind == "calibration" else ""
        _caliper(draw, a, b, colour, stroke, font, text)
    else:
        _outlined(draw, points, colour, stroke)


def _outlined(
    draw: ImageDraw.ImageDraw,
    points: Sequence[tuple[float, float]],
    colour: tuple[int, int, int],
    stroke: int,
) -> None:
    draw.line(list(points), fill=(0, 0, 0), width=stroke + 2, joint="curve")
    draw.line(list(points), fill=colour, width=stroke, joint="curve")


def _caliper(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    colour: tuple[int, int, int],
    stroke: int,
    font: ImageFont.FreeTypeFont,
    text: str,
) -> None:
    length = math.hypot(b[0] - a[0], b[1] - a[1]) or 1.0
    nx, ny = -(b[1] - a[1]) / length * 3 * stroke, (b[0] - a[0]) / length * 3 * stroke
    _outlined(draw, [a, b], colour, stroke)
    for px, py in (a, b):
        _outlined(draw, [(px - nx, py - ny), (px + nx, py + ny)], colour, stroke)
    if text:
        middle = ((a[0] + b[0]) / 2 + nx * 2, (a[1] + b[1]) / 2 + ny * 2)
        _label(draw, middle, text, colour, font)


def _label(
    draw: ImageDraw.ImageDraw,
    at: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont,
) -> None:
    draw.text(at, text, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0), anchor="mm")
