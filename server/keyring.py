"""Token signing keys: generated on first run, kept under the data directory, rotated by `kid`.

The key ring is one JSON file, `DATA_DIR/keys/jwt.json`, readable by its owner
only. `probelink serve` and `probelink token` load the same file, so a token
printed on the command line verifies on the server of that data directory.
Rotation adds a new active key and keeps the previous ones for verification
until their tokens have expired.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from server.errors import ConfigError

KEY_BYTES = 32
KEYS_KEPT_AFTER_ROTATION = 3
KEYRING_RELATIVE_PATH = Path("keys") / "jwt.json"


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


def load_or_create(data_dir: Path) -> KeyRing:
    """Load the data directory's key ring, creating it with a fresh key on first run."""
    path = data_dir / KEYRING_RELATIVE_PATH
    if not path.exists():
        _write_new(path, _generated_ring())
    return _read(path)


def rotate(data_dir: Path) -> KeyRing:
    """Make a fresh key active, keeping the last few for verifying older tokens."""
    path = data_dir / KEYRING_RELATIVE_PATH
    ring = load_or_create(data_dir)
    fresh = secrets.token_bytes(KEY_BYTES)
    kid = kid_for(fresh)
    kept = [k for k in ring.keys if k != ring.active][-(KEYS_KEPT_AFTER_ROTATION - 1) :]
    keys = {k: ring.keys[k] for k in [*kept, ring.active]}
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


def _write_temp(path: Path, ring: KeyRing) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_encode(ring))
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, ring: KeyRing) -> None:
    """Create the ring unless another process just did (first writer wins)."""
    tmp = _write_temp(path, ring)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


def _replace(path: Path, ring: KeyRing) -> None:
    tmp = _write_temp(path, ring)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
