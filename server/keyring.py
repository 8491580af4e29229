"""Token signing keys: generated on first run, kept under the data directory, rotated by `kid`.

The key ring is one JSON file, `DATA_DIR/keys/jwt.json`, readable by its owner
only. `probelink serve` creates it on first run; `probelink token` only loads
it (a token signed with a key no server knows would be useless), so a token
printed on the command line verifies on the server of that data directory.
Rotation adds a new active key and keeps the previous ones for verification
until their tokens have expired; a running server re-reads the file when it
meets an unknown key id (`KeyRingFile`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from server.errors import ConfigError
from server.files import write_durably

log = logging.getLogger(__name__)

KEY_BYTES = 32
# Keys in the ring after a rotation, the new active one included.
KEYS_KEPT_AFTER_ROTATION = 3
KEYRING_RELATIVE_PATH = Path("keys") / "jwt.json"
# Unknown key ids come from anyone: look at the file at most this often for them.
RELOAD_MIN_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class KeyRing:
    """Signing keys by id; `active` signs, every key verifies."""

    # kid of the key that signs new tokens.
    active: str
    # kid -> raw secret bytes.
    keys: dict[str, bytes]

    @property
    def active_secret(self) -> bytes:
        return self.keys[self.active]


def kid_for(secret: bytes) -> str:
    """A key id that names a secret without revealing it."""
    return hashlib.sha256(b"probelink-kid:" + secret).hexdigest()[:16]


def from_secret(secret: str) -> KeyRing:
    """A one-key ring from a configured secret (PROBELINK_SECRET_KEY)."""
    raw = secret.encode()
    kid = kid_for(raw)
    return KeyRing(active=kid, keys={kid: raw})


class KeyRingFile:
    """The data directory's key ring as a running server holds it, re-read once rotated."""

    def __init__(self, path: Path):
        # The ring file, DATA_DIR/keys/jwt.json.
        self.path = path
        # The keys as last read.
        self.ring = _read(path)
        # Identity of the file last read: `rotate` replaces it with a new one.
        self._version = _version(path)
        # When the file was last looked at for an unknown key id (monotonic seconds).
        self._unknown_kid_checked_at = -math.inf

    def refresh(self) -> KeyRing:
        """The ring, re-read first if the file was replaced since (`probelink rotate-key`)."""
        try:
            version = _version(self.path)
            if version != self._version:
                self.ring, self._version = _read(self.path), version
                log.info("key ring re-read", extra={"active_kid": self.ring.active})
        except (OSError, ConfigError) as exc:
            log.warning(
                "cannot re-read the key ring %s; keeping the loaded keys: %s", self.path, exc
            )
        return self.ring

    def refresh_for_unknown_kid(self) -> KeyRing:
        """`refresh`, at most once per RELOAD_MIN_INTERVAL_SECONDS."""
        now = time.monotonic()
        if now - self._unknown_kid_checked_at < RELOAD_MIN_INTERVAL_SECONDS:
            return self.ring
        self._unknown_kid_checked_at = now
        return self.refresh()


def load(data_dir: Path) -> KeyRing:
    """Load the data directory's key ring; refuse if there is none yet."""
    path = data_dir / KEYRING_RELATIVE_PATH
    if not path.exists():
        raise ConfigError(
            f"no key ring at {path}: run `probelink serve` once with this data directory "
            "(PROBELINK_DATA_DIR, relative to the working directory) to create it"
        )
    return _read(path)


def load_or_create(data_dir: Path) -> KeyRing:
    """Load the data directory's key ring, creating it with a fresh key on first run."""
    path = data_dir / KEYRING_RELATIVE_PATH
    if not path.exists():
        _write_new(path, _generated_ring())
    return _read(path)


def rotate(data_dir: Path) -> KeyRing:
    """Make a fresh key active, keeping the newest earlier ones for verifying older tokens."""
    path = data_dir / KEYRING_RELATIVE_PATH
    ring = load(data_dir)
    fresh = secrets.token_bytes(KEY_BYTES)
    kid = kid_for(fresh)
    earlier = [k for k in ring.keys if k != ring.active] + [ring.active]
    keys = {k: ring.keys[k] for k in earlier[-(KEYS_KEPT_AFTER_ROTATION - 1) :]}
    keys[kid] = fresh
    rotated = KeyRing(active=kid, keys=keys)
    _replace(path, rotated)
    return rotated


def _generated_ring() -> KeyRing:
    fresh = secrets.token_bytes(KEY_BYTES)
    kid = kid_for(fresh)
    return KeyRing(active=kid, keys={kid: fresh})


def _encode(ring: KeyRing) -> bytes:
    doc = {
        "active": ring.active,
        "keys": {k: base64.b64encode(v).decode() for k, v in ring.keys.items()},
        "written_at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(doc, indent=2).encode()


def _read(path: Path) -> KeyRing:
    try:
        doc = json.loads(path.read_bytes())
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in doc["keys"].items()}
        active = str(doc["active"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the key ring {path} is unreadable ({type(exc).__name__})") from None
    if active not in keys or any(len(v) < KEY_BYTES for v in keys.values()):
        raise ConfigError(f"the key ring {path} is inconsistent: fix or remove it")
    return KeyRing(active=active, keys=keys)


def _version(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def _write_new(path: Path, ring: KeyRing) -> None:
    """Create the ring unless another process just did (first writer wins)."""
    write_durably(path, _encode(ring), replace=False)


def _replace(path: Path, ring: KeyRing) -> None:
    write_durably(path, _encode(ring))
