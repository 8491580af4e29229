"""The safety net under the masks: text detection over masked pictures, before anything is stored.

A device profile masks the rectangles where a scanner burns in text; a profile measured wrong, a
scanner whose layout changed or a header that says "no burned-in text" untruly would let a name
through. So every masked still, and sampled frames of every clip (the first, every `every`-th and
the last), are read by tesseract (through tesserocr, the model kept loaded), and text that looks
like a patient's name, an identifier or a date fails the capture closed (`TextFound`).

The profile's picture region (the ultrasound image itself, whose depth marks and labels are not
about the patient) is blanked before reading: text drawn inside it is not caught. Neither is text
tesseract cannot read (very small, dim or dark, handwriting-like), a single word with no label
(a surname alone) or a name split across lines. What it reads is never logged or stored; a
refusal says what kind of text was found and where.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

Rect = tuple[int, int, int, int]

# Where Debian's tesseract-ocr-eng (and the upstream default) put the English model.
TESSDATA_CANDIDATES = (
    Path("/usr/share/tesseract-ocr/5/tessdata"),
    Path("/usr/share/tesseract-ocr/4.00/tessdata"),
    Path("/usr/share/tessdata"),
    Path("/usr/local/share/tessdata"),
)
# A clip is read at its first and last frame and every EVERY_FRAMES-th between: about once a
# second at 30 fps. A scanner's burned-in text is drawn on every frame of a clip, so its first
# frame finds a banner the mask misses; the samples between find text that comes and goes (a
# frozen frame's annotation) at ~0.1 s of work per sample.
EVERY_FRAMES = 30
# Text is read where a pixel's brightest channel reaches this (of 255): white and grey text, and
# coloured text (yellow, green, cyan, a bright red); dim or dark text is not read.
BRIGHT = 150
# Words read with less confidence than this are noise (speckle read as letters) for the name
# rule; digits and dates are judged on any confidence, as a missed date is the worse error.
NAME_CONFIDENCE = 60.0

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATES = (
    re.compile(r"(?<!\d)\d{1,4}\s?[-/.]\s?\d{1,2}\s?[-/.]\s?\d{2,4}(?!\d)"),
    re.compile(rf"(?<![a-z])\d{{1,2}}[\s/-]?{_MONTH}[\s,/-]*\d{{2,4}}(?!\d)", re.I),
    re.compile(rf"(?<![a-z]){_MONTH}[\s/-]?\d{{1,2}}(?:st|nd|rd|th)?,?[\s/-]\d{{2,4}}(?!\d)", re.I),
)
_COMPACT_DATE = re.compile(r"(?<!\d)(19|20)(\d\d)(\d\d)(\d\d)(?!\d)")
# Five or more digits in a row (a record number, an accession, a phone number), or digits in
# dashed groups (123-45-6789); not "120/240" (a cine frame counter) or "16.0" (a depth).
_IDENTIFIER = re.compile(
    r"(?<![\w.])(?:[A-Za-z]{1,4}[-#:]?)?\d{5,}(?![\d.])|(?<![\w.])\d{2,4}-\d{2,4}-\d{3,6}(?!\d)"
)
# Field labels that introduce patient data on a scanner's screen.
_LABELS = frozenset(
    "name patient pat pt mrn id pid dob birth born accession acc ssn nhs hospital".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]+")
# Words a scanner writes that are not names (presets, settings, units): two of these together
# are not taken for a name. A site's own appear on the setup page and are masked or put inside
# the picture region.
_SCANNER_WORDS = frozenset(
    """
    abd abdomen adult aorta art axial bladder breast cardiac carotid cfm cine color colour
    comp depth distal dist doppler dr dyn elast elasto fast focus fps freq frame gain gen harm
    high img kidney left liver lower low med mid mode msk musc neck nerve obst ob gyn pelvis
    pen persist power prf prox proximal pw res renal right rt lt sag sagittal scan small parts
    soft speckle thyroid tissue tis tib tic trans transverse upper vasc vascular vein venous
    wall zoom mi map cm mm mhz db hz bpm
    """.split()
)


class TextCheckUnavailable(RuntimeError):
    """tesseract's English model could not be loaded: captures cannot be checked."""


@dataclass(frozen=True)
class Word:
    text: str
    box: Rect
    confidence: float
    line: int  # words of one line share it


@dataclass(frozen=True)
class Finding:
    what: str  # "name", "identifier" or "date"
    box: Rect  # the line it was read on


class TextFound(Exception):
    """Text that looks like patient data is on a masked picture; nothing may be stored."""

    def __init__(self, findings: Sequence[Finding], frame: int | None):
        self.findings = tuple(findings)
        self.frame = frame
        super().__init__(self.describe())

    def describe(self) -> str:
        kinds = sorted({f.what for f in self.findings})
        where = "; ".join(
            "{} at x {} y {} ({}x{})".format(f.what, *f.box) for f in self.findings[:4]
        )
        frame = f" on frame {self.frame + 1}" if self.frame is not None else ""
        return (
            f"text that looks like a patient's {' or '.join(kinds)} is visible{frame} outside "
            f"the masked areas ({where}); nothing was stored"
        )


def find_tessdata(configured: Path | None = None) -> Path:
    """The folder holding eng.traineddata: the configured one, TESSDATA_PREFIX, or Debian's."""
    prefix = os.environ.get("TESSDATA_PREFIX")
    if configured is not None:
        candidates = [configured]
    else:
        candidates = [Path(prefix), Path(prefix) / "tessdata"] if prefix else []
        candidates += TESSDATA_CANDIDATES
    for folder in candidates:
        if (folder / "eng.traineddata").is_file():
            return folder
    raise TextCheckUnavailable(
        "the burned-in text check needs tesseract's English model (eng.traineddata): install "
        "the Debian package tesseract-ocr-eng, or set PROBELINK_TESSDATA to the folder that "
        "holds it" + (f" (it is not in {configured})" if configured is not None else "")
    )


class TextCheck:
    """Reads text on pictures with a few tesseract engines kept loaded (one per worker)."""

    def __init__(self, tessdata: Path, workers: int = 2, every: int = EVERY_FRAMES):
        self.tessdata = tessdata
        self.every = every
        self._idle: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._made = 0
        self._workers = workers
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load one engine now (at start), so a missing model stops start-up, not a capture."""
        with self._engine():
            pass

    def close(self) -> None:
        while True:
            try:
                engine = self._idle.get_nowait()
            except queue.Empty:
                return
            engine.End()  # type: ignore[attr-defined]

    def sampled(self, index: int) -> bool:
        return index % self.every == 0

    def words(self, picture: np.ndarray, blank: Iterable[Rect] = ()) -> list[Word]:
        """Every word tesseract reads on an RGB picture, with the `blank` rectangles (the
        picture region) left out."""
        # Scanners write bright text (white, grey or a colour) over a darker picture: the bright
        # pixels, black on white, are what tesseract reads best, and the speckle between
        # falls away (on a full grey frame its page layout missed a corner's annotation).
        ink = np.where(picture.max(axis=2) >= BRIGHT, 0, 255).astype(np.uint8)
        for x, y, w, h in blank:
            ink[y : y + h, x : x + w] = 255
        with self._engine() as engine:
            return list(_read_words(engine, Image.fromarray(ink)))

    def check(
        self, picture: np.ndarray, blank: Iterable[Rect] = (), frame: int | None = None
    ) -> None:
        """`TextFound` when text that looks like patient data is on the picture."""
        found = findings(self.words(picture, blank))
        if found:
            raise TextFound(found, frame)

    @contextmanager
    def _engine(self) -> Iterator[object]:
        engine = self._take()
        try:
            yield engine
        finally:
            self._idle.put(engine)

    def _take(self) -> object:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            make = self._made < self._workers
            if make:
                self._made += 1
        if not make:
            return self._idle.get()
        try:
            return _new_engine(self.tessdata)
        except Exception:
            with self._lock:
                self._made -= 1
            raise


class FramesCheck:
    """The check of one capture's masked frames, which may come from several threads: every
    sampled frame as it comes, and the last one at the end (`finish`)."""

    def __init__(self, text: TextCheck, blank: Iterable[Rect] = ()):
        self.text = text
        self.blank = tuple(blank)
        self._lock = threading.Lock()
        self._last = -1
        self._held: tuple[int, np.ndarray] | None = None

    def frame(self, index: int, picture: np.ndarray) -> None:
        """Check a masked frame when it is sampled; otherwise hold it if it is the last so far."""
        with self._lock:
            self._last = max(self._last, index)
            if not self.text.sampled(index) and (self._held is None or index > self._held[0]):
                self._held = (index, picture)
        if self.text.sampled(index):
            self.text.check(picture, self.blank, frame=index)

    def finish(self) -> None:
        """Check the last frame, unless it was sampled."""
        held, self._held = self._held, None
        if held is not None and held[0] == self._last:
            self.text.check(held[1], self.blank, frame=held[0])


def _new_engine(tessdata: Path) -> object:
    import tesserocr

    try:
        engine = tesserocr.PyTessBaseAPI(
            path=str(tessdata), lang="eng", psm=tesserocr.PSM.AUTO, oem=tesserocr.OEM.LSTM_ONLY
        )
    except RuntimeError:
        raise TextCheckUnavailable(
            f"tesseract could not load its English model from {tessdata}"
        ) from None
    return engine


def _read_words(engine: object, image: Image.Image) -> Iterator[Word]:
    import tesserocr

    api: tesserocr.PyTessBaseAPI = engine
    api.SetImage(image)
    api.Recognize()
    iterator = api.GetIterator()
    if iterator is None:
        return
    line = -1
    level = tesserocr.RIL.WORD
    for word in tesserocr.iterate_level(iterator, level):
        try:
            text = (word.GetUTF8Text(level) or "").strip()
        except RuntimeError:  # an empty page: tesseract has no word to give
            continue
        box = word.BoundingBox(level)
        if not text or box is None:
            continue
        if word.IsAtBeginningOf(tesserocr.RIL.TEXTLINE) or line < 0:
            line += 1
        x0, y0, x1, y1 = box
        yield Word(text, (x0, y0, x1 - x0, y1 - y0), float(word.Confidence(level)), line)


@dataclass(frozen=True)
class Line:
    text: str
    box: Rect
    found: tuple[str, ...]  # what it looks like: "name", "identifier", "date" (or nothing)


def lines(words: Sequence[Word]) -> list[Line]:
    """The words by line, each with what it looks like."""
    out = []
    for number in sorted({w.line for w in words}):
        members = [w for w in words if w.line == number]
        text = " ".join(w.text for w in members)
        out.append(Line(text, _union(w.box for w in members), tuple(_kinds(members))))
    return out


def findings(words: Sequence[Word]) -> list[Finding]:
    """What looks like patient data among the words, one finding per kind and line."""
    return [Finding(what, line.box) for line in lines(words) for what in line.found]


def _kinds(words: Sequence[Word]) -> list[str]:
    text = " ".join(w.text for w in words)
    kinds = []
    if any(p.search(text) for p in _DATES) or any(
        _plausible_date(m) for m in _COMPACT_DATE.finditer(text)
    ):
        kinds.append("date")
    if _IDENTIFIER.search(text) or any(_label(w.text) for w in words):
        kinds.append("identifier")
    if _looks_like_name(words):
        kinds.append("name")
    return kinds


def _plausible_date(match: re.Match[str]) -> bool:
    try:
        date(int(match[1] + match[2]), int(match[3]), int(match[4]))
    except ValueError:
        return False
    return True


def _label(token: str) -> bool:
    return token.lower().strip(":.#-") in _LABELS


def _looks_like_name(words: Sequence[Word]) -> bool:
    """A caret or "Last, First" name, or two capitalised words in a row that a scanner does not
    write."""
    run = 0
    for n, word in enumerate(words):
        token = word.text
        if "^" in token and all(_WORD.fullmatch(p) for p in token.strip("^").split("^") if p):
            return True
        bare = token.rstrip(",")
        name_like = (
            word.confidence >= NAME_CONFIDENCE
            and _WORD.fullmatch(bare) is not None
            and len(bare) >= 2
            and bare[0].isupper()
            and bare.lower() not in _SCANNER_WORDS
            and bare.lower() not in _LABELS
        )
        if not name_like:
            run = 0
            continue
        if token.endswith(",") and n + 1 < len(words) and _WORD.fullmatch(words[n + 1].text):
            return True
        run += 1
        if run >= 2:
            return True
    return False


def _union(boxes: Iterable[Rect]) -> Rect:
    rects = list(boxes)
    x0 = min(x for x, _, _, _ in rects)
    y0 = min(y for _, y, _, _ in rects)
    x1 = max(x + w for x, _, w, _ in rects)
    y1 = max(y + h for _, y, _, h in rects)
    return (x0, y0, x1 - x0, y1 - y0)
