"""Device profiles made over the API: kept in the records store, versioned, audited.

A profile is for a manufacturer, model and frame size, as in the files. Saving one for a device
and size that has one makes a new version (the old ones stay, for the record); the newest
version is in force. Each node reads the profiles in force at start and then every few seconds
(`KeyImages.refresh_profiles`), and at once after its own saves: no restart.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.exc import IntegrityError

from server.audit import AuditFacts
from server.consultations.store import Store
from server.datafiles import norm
from server.dicom.profiles import Profile
from server.errors import Conflict
from server.store.times import iso

CURRENT = (
    "SELECT * FROM device_profiles d WHERE version ="
    " (SELECT MAX(version) FROM device_profiles e WHERE e.device_key = d.device_key)"
    " ORDER BY created_at DESC, id"
)


def device_key(profile: Profile) -> str:
    return "\x1f".join(
        (norm(profile.manufacturer), norm(profile.model), str(profile.width), str(profile.height))
    )


class ProfileStore:
    def __init__(self, store: Store):
        self.store = store

    async def current(self) -> list[tuple[Profile, dict[str, Any]]]:
        """The profiles in force, newest first, each with its record (id, version, who, when)."""
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(text(CURRENT))).mappings().all()
        return [(_profile(m), _record(m)) for m in rows]

    async def add(self, profile: Profile, by: str, audit: AuditFacts) -> dict[str, Any]:
        """Save `profile` as the newest version for its device and size; its record."""
        key = device_key(profile)
        row_id = uuid.uuid4().hex
        now = iso(datetime.now(UTC))
        try:
            async with self.store.transaction() as conn:
                found = await conn.execute(
                    text("SELECT MAX(version) FROM device_profiles WHERE device_key = :k"),
                    {"k": key},
                )
                version = int(found.scalar() or 0) + 1
                await conn.execute(
                    text(
                        "INSERT INTO device_profiles (id, device_key, version, manufacturer,"
                        " model, width, height, mask, note, picture, created_by, created_at) VALUES"
                        " (:id, :key, :version, :manufacturer, :model, :width, :height, :mask,"
                        " :note, :picture, :by, :at)"
                    ),
                    {
                        "id": row_id,
                        "key": key,
                        "version": version,
                        "manufacturer": profile.manufacturer,
                        "model": profile.model,
                        "width": profile.width,
                        "height": profile.height,
                        "mask": json.dumps([list(r) for r in profile.mask]),
                        "note": profile.note,
                        "picture": None
                        if profile.picture is None
                        else json.dumps(list(profile.picture)),
                        "by": by,
                        "at": now,
                    },
                )
                facts = replace(
                    audit, object_id=row_id, detail={**audit.detail, "version": version}
                )
                await self.store.append_audit(conn, facts)
        except IntegrityError:
            raise Conflict(
                "another version of this device's profile was saved at the same moment: "
                "look at it, then save again",
                code="profile_changed",
            ) from None
        return {"id": row_id, "version": version, "created_by": by, "created_at": now}


def _profile(m: RowMapping) -> Profile:
    mask = tuple((int(x), int(y), int(w), int(h)) for x, y, w, h in json.loads(m["mask"]))
    picture = None
    if m["picture"]:
        x, y, w, h = (int(v) for v in json.loads(m["picture"]))
        picture = (x, y, w, h)
    return Profile(m["manufacturer"], m["model"], m["width"], m["height"], mask, m["note"], picture)


def _record(m: RowMapping) -> dict[str, Any]:
    return {
        "id": m["id"],
        "version": m["version"],
        "created_by": m["created_by"],
        "created_at": m["created_at"],
    }
