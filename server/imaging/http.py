"""REST handlers for key images: list, download the DICOM, preview, and upload a still."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pydicom
from aiohttp import web
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from server.auth import Principal, Role, require_consultation
from server.consultations.model import ConsultationRow, require_open
from server.dicom.incoming import first_frame
from server.errors import NotFound, PayloadTooLarge, UnsupportedMediaType
from server.imaging.captures import read_dicom, room_commit
from server.imaging.measurements import MeasurementsBody
from server.imaging.model import ArchivedObject
from server.live.room import CaptureKind
from server.web.edge import authenticate, consultation_of, facts, read_json
from server.web.keys import KEY_IMAGES, LIVE, STORE

KEY_IMAGE_ID = re.compile(r"[0-9a-f]{32}")
UID = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40}){1,30}")
UPLOAD_MAX_BYTES = 32 * 1024 * 1024
PNG, DICOM = "image/png", "application/dicom"
# What a capture may be uploaded as, and how large each may be (a scanner's 20 s multi-frame
# clip, uncompressed, is several hundred MiB; it is read into memory, never to disk).
UPLOAD_TYPES = {
    PNG: UPLOAD_MAX_BYTES,
    DICOM: 512 * 1024 * 1024,
    "video/mp4": 256 * 1024 * 1024,
    "video/webm": 256 * 1024 * 1024,
}
PREVIEW_MAX_WIDTH = 640


def routes(table: web.RouteTableDef) -> None:
    table.get("/api/consultations/{consultation_id}/key-images")(list_key_images)
    table.post("/api/consultations/{consultation_id}/captures")(upload_capture)
    table.get("/api/key-images/{key_image_id}/dicom")(get_dicom)
    table.get("/api/key-images/{key_image_id}/preview")(get_preview)
    table.get("/api/key-images/{key_image_id}/frames")(get_frames)
    table.put("/api/key-images/{key_image_id}/measurements")(put_measurements)
    table.post("/api/consultations/{consultation_id}/priors")(import_prior)
    table.get("/api/priors/{sop_instance_uid}/dicom")(get_prior)
    table.get("/api/priors/{sop_instance_uid}/frames")(get_prior_frames)


async def read_upload(request: web.Request, limit: int = UPLOAD_MAX_BYTES) -> bytes:
    """A request body of up to `limit` bytes (larger than the JSON limit), streamed."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    chunks, size = [], 0
    while chunk := await request.content.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def list_key_images(request: web.Request) -> web.Response:
    cid = (await consultation_of(request, authenticate(request))).id
    key_images = request.app[KEY_IMAGES]
    return web.json_response(
        {
            "key_images": await key_images.records.images(cid),
            "pacs": await key_images.records.outbox_state(cid),
            # What the viewer compares with.
            "priors": [prior_view(o) for o in await key_images.records.objects(cid, "prior")],
        }
    )


async def upload_capture(request: web.Request) -> web.Response:
    """A key image uploaded by the bedside (or the coordinator for a review without a live
    session), by its Content-Type: the page's own full-resolution frame (PNG, the preferred
    still), a scanner's DICOM file, or a clip (MP4, WebM)."""
    principal = authenticate(request, Role.OPERATOR, Role.EXPERT, Role.COORDINATOR)
    row = await consultation_of(request, principal)
    require_open(row, "nothing can be captured")
    content_type = request.content_type
    if content_type not in UPLOAD_TYPES:
        raise UnsupportedMediaType(
            f"a capture is uploaded as one of {', '.join(sorted(UPLOAD_TYPES))}",
            field="Content-Type",
        )
    key_images = request.app[KEY_IMAGES]
    if content_type != DICOM:
        # A scanner's DICOM is masked by the device its own header names; the rest by the
        # consultation's device, checked before the upload is read.
        key_images.masks.check_device(row, principal.role)
    if content_type == PNG:
        return await _upload(request, principal, row, content_type)
    # A file of hundreds of MiB is held in memory while it is read, parsed and rebuilt: a few
    # at a time, the others wait (their bodies unread).
    async with key_images.receiving:
        return await _upload(request, principal, row, content_type)


async def _upload(
    request: web.Request, principal: Principal, row: ConsultationRow, content_type: str
) -> web.Response:
    key_images = request.app[KEY_IMAGES]
    body = await read_upload(request, UPLOAD_TYPES[content_type])
    kind = CaptureKind.STILL if content_type == PNG else CaptureKind.CLIP
    # The page's own frame is what is on screen (its marks go with it); a file is not.
    capture = await key_images.capture(
        row, kind, principal, request.remote or "unknown", on_screen=content_type == PNG
    )
    commit = room_commit(request.app[LIVE], key_images, row.id)
    if content_type == DICOM:
        dataset = await asyncio.to_thread(read_dicom, body)
        key_image_id, event = await key_images.from_dicom(capture, dataset, commit)
        if event is None:  # this object was received before
            return web.json_response({"key_image_id": key_image_id, "seq": None}, status=200)
    elif content_type == PNG:
        event = await key_images.from_upload(capture, body, commit)
    else:
        event = await key_images.from_video(capture, body, content_type, commit)
    return web.json_response({"key_image_id": event.body["id"], "seq": event.seq}, status=201)


async def _key_image(
    request: web.Request, principal: Principal
) -> tuple[dict[str, Any], ArchivedObject]:
    """The key image named in the path (its row and archived file), if the caller may see it."""
    key_image_id = request.match_info["key_image_id"]
    if not KEY_IMAGE_ID.fullmatch(key_image_id):
        raise NotFound("no such key image", code="key_image_not_found", field="id")
    found = await request.app[KEY_IMAGES].records.image(key_image_id)
    if found is None:
        raise NotFound("no such key image", code="key_image_not_found", field="id")
    row, obj = found
    require_consultation(principal, row["consultation_id"])
    return row, obj


async def _archived(request: web.Request) -> tuple[dict[str, Any], bytes]:
    principal = authenticate(request)
    row, obj = await _key_image(request, principal)
    key_image_id = row["id"]
    key_images = request.app[KEY_IMAGES]
    data = await key_images.read(obj, "the key image")
    await request.app[STORE].record_audit(
        facts(request, principal, "key_image.read", "key_image", key_image_id)
    )
    return row, data


async def get_dicom(request: web.Request) -> web.Response:
    row, data = await _archived(request)
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/dicom",
            # The key image's id, never anything about the patient.
            "Content-Disposition": f'attachment; filename="{row["id"]}.dcm"',
        },
    )


async def get_preview(request: web.Request) -> web.Response:
    _row, data = await _archived(request)
    png = await asyncio.to_thread(_preview, data)
    return web.Response(body=png, headers={"Content-Type": "image/png"})


async def get_frames(request: web.Request) -> web.Response:
    """Every frame of a key image at full size, for the viewer's cine playback and calipers: one
    response (frames concatenated; X-Frame-Lengths lists their sizes, X-Frame-Type their type,
    X-Frame-Rate a clip's rate). A clip's frames are its stored JPEG frames as they are; a
    still is one PNG."""
    _row, data = await _archived(request)
    return await _frames_response(data)


async def _frames_response(data: bytes) -> web.Response:
    frames, kind, fps = await asyncio.to_thread(_frames, data)
    return web.Response(
        body=b"".join(frames),
        headers={
            "Content-Type": "application/octet-stream",
            "X-Frame-Type": kind,
            "X-Frame-Lengths": ",".join(str(len(f)) for f in frames),
            "X-Frame-Rate": f"{fps:.3f}" if fps else "",
        },
    )


async def put_measurements(request: web.Request) -> web.Response:
    """The expert's calipers on a stored key image: lengths in mm computed here, kept with the
    key image and drawn in a presentation state archived (and pushed) beside it."""
    principal = authenticate(request, Role.EXPERT)
    view, obj = await _key_image(request, principal)
    row = require_open(
        await request.app[STORE].get_consultation(view["consultation_id"]),
        "nothing can be measured",
    )
    body = await read_json(request, MeasurementsBody)
    audit = facts(request, principal, "key_image.measure", "key_image", view["id"])
    measured = await request.app[KEY_IMAGES].save_measurements(row, view, obj, body, audit)
    return web.json_response(measured)


def _frames(data: bytes) -> tuple[list[bytes], str, float | None]:
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit:
        # The stored frames are JPEG baseline, which every browser shows as it is.
        fps = 1000.0 / float(ds.FrameTime) if "FrameTime" in ds else None
        return list(generate_frames(ds.PixelData, number_of_frames=frames)), "image/jpeg", fps
    out = io.BytesIO()
    first_frame(ds).save(out, "PNG", compress_level=1)
    return [out.getvalue()], "image/png", None


def _preview(data: bytes) -> bytes:
    image = first_frame(pydicom.dcmread(io.BytesIO(data)))
    if image.width > PREVIEW_MAX_WIDTH:
        image = image.resize(
            (PREVIEW_MAX_WIDTH, round(image.height * PREVIEW_MAX_WIDTH / image.width))
        )
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def prior_view(obj: ArchivedObject) -> dict[str, Any]:
    return {
        "sop_instance_uid": obj.sop_instance_uid,
        "sha256": obj.sha256,
        "size": obj.size,
        "dicom_url": f"/api/priors/{obj.sop_instance_uid}/dicom",
    }


async def import_prior(request: web.Request) -> web.Response:
    """A prior study's image, uploaded as DICOM, de-identified and attached for comparison."""
    principal = authenticate(request, Role.COORDINATOR, Role.OPERATOR, Role.EXPERT)
    row = await consultation_of(request, principal)
    require_open(row, "nothing can be attached")
    cid = row.id
    key_images = request.app[KEY_IMAGES]
    body = await read_upload(request)
    obj = await key_images.import_prior(row, body, principal, request.remote or "unknown")
    audit = facts(request, principal, "prior.import", "dicom_object", obj.sop_instance_uid)
    created = await key_images.records.add_prior(cid, obj, audit)
    return web.json_response(prior_view(obj), status=201 if created else 200)


async def _prior(request: web.Request) -> bytes:
    principal = authenticate(request)
    sop = request.match_info["sop_instance_uid"]
    if not UID.fullmatch(sop) or len(sop) > 64:
        raise NotFound("no such prior", code="prior_not_found", field="id")
    key_images = request.app[KEY_IMAGES]
    found = await key_images.records.prior(sop)
    if found is None:
        raise NotFound("no such prior", code="prior_not_found", field="id")
    cid, obj = found
    require_consultation(principal, cid)
    data = await key_images.read(obj, "the prior")
    await request.app[STORE].record_audit(
        facts(request, principal, "prior.read", "dicom_object", sop)
    )
    return data


async def get_prior(request: web.Request) -> web.Response:
    data = await _prior(request)
    return web.Response(body=data, headers={"Content-Type": "application/dicom"})


async def get_prior_frames(request: web.Request) -> web.Response:
    """A prior's frames for the viewer's comparison, as for a key image (`get_frames`)."""
    return await _frames_response(await _prior(request))
