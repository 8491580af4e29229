"""Device profiles over HTTP, and the setup page's look at a scanner's live frame.

`GET/POST /api/device-profiles` list and save profiles (`profile_store`). A device setup session
(a consultation of kind "device_setup": the scanner in its demo or phantom mode, no patient) is
where a coordinator measures one: `POST /api/consultations/{id}/setup/frame` answers with the
bedside's current frame as the relay has it (the very pictures captures are made from), the
text lines tesseract reads on it with what each looks like (the boxes the page proposes), and,
given a draft profile, the frame masked by it with what is still read outside its picture
region: what the safety net would refuse. The frame is never stored.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections import deque
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image
from pydantic import Field

from server.auth import Role
from server.consultations.model import Kind, require_open
from server.dicom import deid, text_check
from server.dicom.profiles import Profile, checked_profile
from server.errors import BadRequest, ConfigError, Conflict
from server.media.capture import decode_pictures
from server.messages import LongText, ShortText, StrictModel
from server.web.edge import authenticate, consultation_of, facts, read_json
from server.web.keys import KEY_IMAGES, RELAY

PROFILE_RECTS_MAX = 64
# The frame is sent to the page as a JPEG of this quality: small text stays legible.
FRAME_JPEG_QUALITY = 90


def routes(table: web.RouteTableDef) -> None:
    table.get("/api/device-profiles")(list_device_profiles)
    table.post("/api/device-profiles")(create_device_profile)
    table.post("/api/consultations/{consultation_id}/setup/frame")(setup_frame)


class ProfileBody(StrictModel):
    """A device profile, the files' fields as JSON (the geometry checked by `checked_profile`)."""

    manufacturer: ShortText
    model: ShortText
    width: int
    height: int
    mask: list[list[int]] = Field(max_length=PROFILE_RECTS_MAX)
    note: LongText | None = None
    picture: list[int] | None = None


class DraftLayout(StrictModel):
    """A profile being drawn on the setup page, in the pixels of the frame it was drawn on."""

    width: int
    height: int
    mask: list[list[int]] = Field(max_length=PROFILE_RECTS_MAX)
    picture: list[int] | None = None


def _profile_view(profile: Profile, source: str, record: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "manufacturer": profile.manufacturer,
        "model": profile.model,
        "width": profile.width,
        "height": profile.height,
        "mask": [list(r) for r in profile.mask],
        "note": profile.note,
        "picture": None if profile.picture is None else list(profile.picture),
        "source": source,  # store (made over the API), or file (site or bundled, read at start)
        **(record or {}),
    }


async def list_device_profiles(request: web.Request) -> web.Response:
    """The device profiles in force, in the order they are consulted: those made over the API
    (newest version of each), then those of the files."""
    authenticate(request, Role.COORDINATOR)
    key_images = request.app[KEY_IMAGES]
    stored = await key_images.profile_store.current()
    return web.json_response(
        {
            "profiles": [_profile_view(p, "store", record) for p, record in stored]
            + [_profile_view(p, "file", None) for p in key_images.profiles.files]
        }
    )


async def create_device_profile(request: web.Request) -> web.Response:
    """Save a device's profile (the files' fields as JSON): a new version when the device and
    size have one; in use on this node at once, on the others within seconds."""
    principal = authenticate(request, Role.COORDINATOR)
    body = await read_json(request, ProfileBody)
    profile = _checked(body.model_dump(exclude_none=True))
    key_images = request.app[KEY_IMAGES]
    audit = facts(request, principal, "device_profile.save", "device_profile", "")
    record = await key_images.profile_store.add(profile, principal.sub, audit)
    await key_images.refresh_profiles()
    return web.json_response(_profile_view(profile, "store", record), status=201)


def _checked(fields: dict[str, Any]) -> Profile:
    try:
        return checked_profile(fields, "the device profile")
    except ConfigError as exc:
        raise BadRequest(str(exc), code="invalid_profile") from None


async def setup_frame(request: web.Request) -> web.Response:
    """The setup session's current frame, what tesseract reads on it, and (given a draft
    profile) the frame masked by it with what is still read: nothing is stored."""
    principal = authenticate(request, Role.COORDINATOR)
    row = require_open(await consultation_of(request, principal), "its setup session has ended")
    device = row.context.device
    if row.context.kind is not Kind.DEVICE_SETUP or device is None:
        raise Conflict(
            "only a device setup session's frames are shown for setup (this consultation is "
            "about a patient)",
            code="not_a_setup_session",
        )
    draft = await read_json(request, DraftLayout) if request.body_exists else None
    draft_profile = None
    if draft is not None:
        draft_profile = _checked(
            {"manufacturer": device.manufacturer, "model": device.model}
            | draft.model_dump(exclude_none=True)
        )
    room = request.app[RELAY].rooms.get(row.id)
    cine = room.cine if room is not None else None
    if cine is None:
        raise Conflict(
            "no video from the bedside here yet: open the bedside link on the scanner's "
            "computer and go live (on a cluster, open this page through the node that carries "
            "the session's media)",
            code="no_video",
        )
    frames = cine.still_frames()
    text = request.app[KEY_IMAGES].text

    def look() -> dict[str, Any]:
        last = deque(decode_pictures(cine.codec, frames, None), maxlen=1)
        if not last:
            raise Conflict("the bedside's video could not be decoded yet", code="no_picture")
        picture = last[0][0]
        height, width = picture.shape[:2]
        unread: tuple[tuple[int, int, int, int], ...] = ()
        if draft_profile is not None:
            layout = draft_profile.layout_for(width, height)
            if layout is None:
                raise Conflict(
                    f"the bedside's video is now {width}x{height}, not the shape the profile "
                    f"was drawn on ({draft_profile.width}x{draft_profile.height}): look again",
                    code="frame_size_changed",
                )
            deid.mask(picture, layout.mask)
            unread = layout.unread
        read = text_check.lines(text.words(picture, unread))
        return {
            "width": width,
            "height": height,
            "masked": draft_profile is not None,
            "image": _jpeg_data_url(picture),
            "lines": [
                {"text": line.text, "box": list(line.box), "found": list(line.found)}
                for line in read
            ],
            "refused": sorted({kind for line in read for kind in line.found}),
        }

    return web.json_response(await asyncio.to_thread(look))


def _jpeg_data_url(picture: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(picture, "RGB").save(out, "JPEG", quality=FRAME_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
