"""The local archive: DICOM files, durable before they are acknowledged, named by content.

Layout under `DATA_DIR/archive`: `<study UID>/<series UID>/<sha256>.dcm`. UIDs are
keyed-HMAC pseudonyms (`deid.derived_uid`), so no path holds patient data, and
a file's name is the SHA-256 of its bytes, so a read can prove it intact.
Files are written in `.incoming/<node>/` (same file system), fsynced, linked
into place and the directory fsynced; whatever a crash leaves there is cleared
at start-up. `<node>` is an id kept in the node's own data directory, so nodes
may share one archive (a shared volume) without clearing each other's writes.
Synchronous: callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from server.files import ensure_private_dir, write_durably

log = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"
INCOMING_DIR = ".incoming"
# In DATA_DIR, beside (not inside) the archive, which may be shared between nodes.
NODE_ID_FILE = "archive-node-id"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_NODE_ID = re.compile(r"[0-9a-f]{16}")
_RELATIVE = re.compile(r"[0-9.]{1,64}/[0-9.]{1,64}/[0-9a-f]{64}\.dcm")


class ArchiveCorrupt(Exception):
    """An archived file cannot be read back as recorded (it does not hash to its name)."""


class ArchiveMissing(ArchiveCorrupt):
    """An archived file is not in this node's archive: another node archived it (or it was
    removed). Nodes share one archive, or read such files back from the PACS."""


@dataclass(frozen=True)
class Stored:
    path: str  # relative to the archive root
    sha256: str
    size: int


class Archive:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.root = data_dir / ARCHIVE_DIR
        # This node's staging directory, known once open.
        self.incoming = self.root / INCOMING_DIR

    def open(self) -> None:
        """Create the archive and clear what a crash of this node left half-written."""
        ensure_private_dir(self.root)
        id_file = self.data_dir / NODE_ID_FILE
        write_durably(id_file, secrets.token_hex(8).encode(), replace=False)
        node = id_file.read_text().strip()
        if not _NODE_ID.fullmatch(node):
            raise ValueError(f"{id_file} holds no node id: remove it to generate a new one")
        self.incoming = self.root / INCOMING_DIR / node
        if self.incoming.exists():
            leftovers = sum(1 for _ in self.incoming.iterdir())
            if leftovers:
                log.warning("cleared %d unfinished archive writes", leftovers)
            shutil.rmtree(self.incoming)
        ensure_private_dir(self.incoming)

    def store(self, data: bytes, study_uid: str, series_uid: str) -> Stored:
        """Write durably; an identical file already there is kept (content-addressed)."""
        for uid in (study_uid, series_uid):
            if not _UID.fullmatch(uid) or len(uid) > 64:
                raise ValueError("study and series must be DICOM UIDs")
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{study_uid}/{series_uid}/{digest}.dcm"
        target = self.root / relative
        ensure_private_dir(target.parent)
        write_durably(target, data, replace=False, tmp_dir=self.incoming)
        return Stored(relative, digest, len(data))

    def read(self, relative: str, sha256: str) -> bytes:
        """The file's bytes, checked against the recorded hash."""
        if not _RELATIVE.fullmatch(relative):
            raise ArchiveCorrupt("not an archive path")
        try:
            data = (self.root / relative).read_bytes()
        except FileNotFoundError:
            raise ArchiveMissing("the file is not in this node's archive") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveCorrupt("an archived file does not match its recorded SHA-256")
        return data

    def adopt(self, data: bytes, relative: str, sha256: str) -> None:
        """Keep a copy fetched from elsewhere (the PACS) where the record says it is, once its
        bytes prove to be the recorded file."""
        if not _RELATIVE.fullmatch(relative) or not relative.endswith(f"/{sha256}.dcm"):
            raise ArchiveCorrupt("not an archive path")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveCorrupt("the copy does not match the recorded SHA-256")
        study, series = study_and_series(relative)
        self.store(data, study, series)


def study_and_series(relative: str) -> tuple[str, str]:
    """The study and series UIDs an archive path is filed under."""
    study, series, _name = relative.split("/")
    return study, series
