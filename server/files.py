"""Directories and files that hold clinical records or keys: readable by their owner only.

Mode bits from `mkdir`/`open` are filtered by the umask, so modes are set
explicitly after creating. An existing directory is the administrator's choice:
it is left as it is, with a warning when other users can reach it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Mode bits that give the group or other users any access.
SHARED_MODE_BITS = 0o077


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and its missing parents) owner-only; warn if it exists and is shared."""
    if path.is_dir():
        if stat.S_IMODE(path.stat().st_mode) & SHARED_MODE_BITS:
            log.warning(
                "the directory %s is open to other users; it holds clinical records and keys",
                path,
            )
        return
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    for created in missing:
        created.chmod(PRIVATE_DIR_MODE)
    # A new directory's entry must be durable too, or a file in it could vanish on power loss.
    for created in reversed(missing):
        fsync_dir(created.parent)


def create_private_file(path: Path) -> None:
    """Create `path` empty and owner-only unless it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))


def restrict_file(path: Path) -> None:
    """Make an existing file owner-only; warn (not fail) if that is not allowed."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != PRIVATE_FILE_MODE:
            path.chmod(PRIVATE_FILE_MODE)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot make %s owner-only: %s", path, exc.strerror)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new link) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(
    path: Path, data: bytes, *, replace: bool = True, tmp_dir: Path | None = None
) -> bool:
    """Write `data` to `path` so that it is complete on disk or absent, never partial.

    The bytes go to an owner-only temporary file (a dot name in the same directory,
    or in `tmp_dir` on the same file system), which is fsynced, then renamed
    (`replace`) or linked (first writer wins) into place, and the directory is
    fsynced. Returns False when `replace` is off and `path` already existed (it is
    left as it was).
    """
    ensure_private_dir(path.parent)
    staging = tmp_dir if tmp_dir is not None else path.parent
    ensure_private_dir(staging)
    tmp = staging / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    created = True
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                created = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return created
