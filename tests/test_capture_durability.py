"""Nothing acknowledged is lost: a server killed in a storm of captures keeps every acked one."""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from dicom_checks import dciodvfy_errors, read
from phantom import PHANTOM_DEVICE, phantom_frame
from PIL import Image
from servers import Server, cli_env

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import from_secret

UPLOADERS = 4
ACKS_BEFORE_KILL = 12


def token(secret: str, role: Role, consultation: str | None = None) -> str:
    policy = TokenPolicy("probelink", "probelink", 30, 30 * 86400)
    return issue_token(
        from_secret(secret),
        policy,
        sub=f"{role}-1",
        role=role,
        ttl_seconds=600,
        consultation_id=consultation,
    )


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(phantom_frame(n), "RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()


async def storm(base: str, cid: str, operator: str, acked: list[str], stop: asyncio.Event) -> None:
    """Upload stills back to back; note each acknowledged one."""
    headers = {"Authorization": f"Bearer {operator}", "Content-Type": "image/png"}
    body = png(3)
    async with aiohttp.ClientSession(headers=headers) as http:
        while not stop.is_set():
            try:
                async with http.post(f"{base}/api/consultations/{cid}/captures", data=body) as r:
                    assert r.status == 201, await r.text()  # before the kill, all succeed
                    acked.append((await r.json())["key_image_id"])
            except (aiohttp.ClientError, ConnectionError):
                return  # the server died under us: whatever was not acked may be lost


@pytest.mark.timeout(180)
async def test_every_acknowledged_capture_survives_sigkill(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    data_dir = tmp_path / "var"
    env = cli_env(data_dir, PROBELINK_SECRET_KEY=secret, PROBELINK_LOG_LEVEL="WARNING")
    coordinator = {"Authorization": f"Bearer {token(secret, Role.COORDINATOR)}"}
    acked: list[str] = []
    with Server(env) as first:
        async with aiohttp.ClientSession(headers=coordinator) as http:
            body = {
                "clinical_question": "q",
                "urgency": "urgent",
                "incomplete_reason": "test request",
                "device": PHANTOM_DEVICE,
            }
            async with http.post(f"{first.url}/api/consultations", json=body) as r:
                cid = (await r.json())["id"]
        operator = token(secret, Role.OPERATOR, cid)
        stop = asyncio.Event()
        uploads = [
            asyncio.create_task(storm(first.url, cid, operator, acked, stop))
            for _ in range(UPLOADERS)
        ]
        for _ in range(600):
            if len(acked) >= ACKS_BEFORE_KILL:
                break
            await asyncio.sleep(0.05)
        # Killed in the middle of the storm: uploads are in flight at this moment.
        first.kill()
        stop.set()
        await asyncio.gather(*uploads)
    assert len(acked) >= ACKS_BEFORE_KILL

    archive = data_dir / "archive"
    # Right after the crash, no partial file is visible in the layout: every file outside the
    # staging directory is a whole DICOM named by its hash.
    files = [p for p in archive.rglob("*") if p.is_file() and ".incoming" not in p.parts]
    for path in files:
        assert not path.name.startswith("."), path
        data = path.read_bytes()
        assert path.name == hashlib.sha256(data).hexdigest() + ".dcm"
        read(data)
    with Server(env, port=first.port) as second:
        # What the crash left half-written in staging is cleared at start-up.
        assert not any(p.is_file() for p in (archive / ".incoming").rglob("*"))
        async with aiohttp.ClientSession(headers=coordinator) as http:
            async with http.get(f"{second.url}/api/consultations/{cid}/key-images") as r:
                listing: list[dict[str, Any]] = (await r.json())["key_images"]
            recorded = {image["id"]: image for image in listing}
            assert set(acked) <= set(recorded), "an acknowledged capture is missing"
            for key_image_id in acked:
                async with http.get(f"{second.url}/api/key-images/{key_image_id}/dicom") as r:
                    assert r.status == 200, await r.text()
                    data = await r.read()
                assert hashlib.sha256(data).hexdigest() == recorded[key_image_id]["sha256"]
                ds = read(data)
                assert ds.SOPInstanceUID == recorded[key_image_id]["sop_instance_uid"]
                assert not np.asarray(ds.pixel_array)[:64].any()
        # The first and the last acknowledged are valid DICOM, not merely parseable.
        for key_image_id in (acked[0], acked[-1]):
            sha = recorded[key_image_id]["sha256"]
            (path,) = [p for p in files if p.name == f"{sha}.dcm"]
            assert dciodvfy_errors(path.read_bytes(), tmp_path) == []
