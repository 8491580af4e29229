"""Device profiles: where each ultrasound device burns text into its video, to mask it.

The data file format is documented in `device_profiles.toml` (bundled); a site's
own file (PROBELINK_DEVICE_PROFILES) is read first and takes precedence. Reading
is strict: a malformed file stops start-up naming the file and the entry. Profiles
made over the API (kept in the records store, `server/imaging/profile_store.py`)
are consulted before both, and swapped in without a restart (`use_stored`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from server.datafiles import norm, read_tables
from server.errors import ConfigError

BUNDLED_PROFILES = Path(__file__).with_name("device_profiles.toml")
# A frame of another size is matched when its aspect ratio is this close to the profile's.
ASPECT_TOLERANCE = 0.01

Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    manufacturer: str
    model: str
    width: int
    height: int
    mask: tuple[Rect, ...]
    note: str | None = None
    # The ultrasound picture itself: text inside it (depth marks, labels) is left to the mask
    # and not read by the safety net (`text_check`).
    picture: Rect | None = None

    def matches_device(self, manufacturer: str, model: str) -> bool:
        return norm(manufacturer) == norm(self.manufacturer) and norm(model) == norm(self.model)

    def layout_for(self, width: int, height: int) -> Layout | None:
        """The mask and picture region for a frame of this size: exact, scaled at the same
        aspect (the mask outwards, the picture inwards), or None."""
        if (width, height) == (self.width, self.height):
            return Layout(self.mask, self.picture)
        if abs(width / height - self.width / self.height) > ASPECT_TOLERANCE * (
            self.width / self.height
        ):
            return None
        sx, sy = width / self.width, height / self.height
        scaled = []
        for x, y, w, h in self.mask:
            x0, y0 = math.floor(x * sx), math.floor(y * sy)
            x1, y1 = math.ceil((x + w) * sx), math.ceil((y + h) * sy)
            scaled.append((x0, y0, min(x1, width) - x0, min(y1, height) - y0))
        picture = None
        if self.picture is not None:
            x, y, w, h = self.picture
            x0, y0 = math.ceil(x * sx), math.ceil(y * sy)
            x1, y1 = math.floor((x + w) * sx), math.floor((y + h) * sy)
            picture = (x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))
        return Layout(tuple(scaled), picture)


@dataclass(frozen=True)
class Layout:
    """What a profile says of a frame of one size: the rectangles to mask, and the picture region
    the safety net leaves out (None: the whole frame is read)."""

    mask: tuple[Rect, ...]
    picture: Rect | None = None

    @property
    def unread(self) -> tuple[Rect, ...]:
        """What the text check leaves out: the picture region, if there is one."""
        return () if self.picture is None else (self.picture,)


class Profiles:
    """The profiles in force: those made over the API first, then the site's, then the bundled
    ones (the files are read once, at start)."""

    def __init__(self, profiles: tuple[Profile, ...]):
        self.files = profiles
        self.stored: tuple[Profile, ...] = ()

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return self.stored + self.files

    def use_stored(self, stored: tuple[Profile, ...]) -> None:
        """Replace the stored profiles (one assignment: a capture sees the old or the new)."""
        self.stored = stored

    def mask_for(
        self, manufacturer: str, model: str, width: int, height: int, *, scaled: bool = True
    ) -> Layout:
        """The rectangles to mask and the picture region; `LookupError` (with no device names in
        it) when none fits. `scaled` False: only a profile of exactly this size fits."""
        for exact in (True, False) if scaled else (True,):
            for profile in self.profiles:
                if not profile.matches_device(manufacturer, model):
                    continue
                if exact and (width, height) != (profile.width, profile.height):
                    continue
                layout = profile.layout_for(width, height)
                if layout is not None:
                    return layout
        raise LookupError(f"no device profile for this device at {width}x{height}")


def load_profiles(site_file: Path | None) -> Profiles:
    files = ([site_file] if site_file is not None else []) + [BUNDLED_PROFILES]
    return Profiles(tuple(p for path in files for p in _read(path)))


def _read(path: Path) -> list[Profile]:
    entries = read_tables(path, "profile", "device profiles")
    return [_profile(path, n, entry) for n, entry in enumerate(entries, 1)]


def _profile(path: Path, n: int, entry: object) -> Profile:
    return checked_profile(entry, f"the device profiles {path}, profile {n}")


def checked_profile(entry: object, where: str) -> Profile:
    """A profile from its fields (the file's format), or `ConfigError` saying, after `where`,
    which field is wrong."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"manufacturer", "model", "width", "height", "mask", "note", "picture"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    for key in ("manufacturer", "model"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    width, height = entry.get("width"), entry.get("height")
    for key, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 8192:
            raise ConfigError(f"{where}: '{key}' must be a whole number of pixels (16-8192)")
    assert isinstance(width, int) and isinstance(height, int)
    mask = entry.get("mask")
    if not isinstance(mask, list) or not mask:
        raise ConfigError(f"{where}: 'mask' must list at least one [x, y, width, height]")
    rects = tuple(_rect(where, "mask rectangle", rect, width, height) for rect in mask)
    note = entry.get("note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{where}: 'note' must be text")
    picture = entry.get("picture")
    if picture is not None:
        picture = _rect(where, "picture", picture, width, height)
    return Profile(
        entry["manufacturer"].strip(),
        entry["model"].strip(),
        width,
        height,
        rects,
        note,
        picture,
    )


def _rect(where: str, what: str, rect: object, width: int, height: int) -> Rect:
    if (
        not isinstance(rect, list)
        or len(rect) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in rect)
    ):
        raise ConfigError(f"{where}: each {what} must be [x, y, width, height] in pixels")
    x, y, w, h = rect
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise ConfigError(f"{where}: {what} {rect} lies outside {width}x{height}")
    return (x, y, w, h)
