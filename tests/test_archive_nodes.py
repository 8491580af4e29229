"""Two nodes, each with its own archive: a key image captured on one is read through the other.

Real `probelink serve` processes sharing PostgreSQL and Redis, each with its own data directory.
With a PACS (a real Orthanc), the node that lacks the file reads it back by WADO-RS, checks it
against the record and keeps it in its own archive; without one, it answers that the file is in
another node's archive (503 `archived_on_another_node`), not that it is corrupt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp
from browser import coordinator_token
from conftest import unique_prefix
from orthanc_server import OrthancServer
from phantom import BREAST_REQUEST, phantom_png
from servers import Server, cli_env

# Patient-related text of the request: it must not reach any log or error of either node.
REQUEST = {**BREAST_REQUEST, "patient_ref": "PSEUDO-83920"}
SECRET_TEXTS = (REQUEST["clinical_question"], REQUEST["first_read"], REQUEST["patient_ref"])
PUSH_TIMEOUT_SECONDS = 30


def two_nodes(tmp_path: Path, postgres_url: str, redis_url: str, **extra: str) -> list[Server]:
    """Node A and node B: shared records, bus and keys; data directories (archives) apart."""
    shared = {
        "PROBELINK_DATABASE_URL": postgres_url,
        "PROBELINK_REDIS_URL": redis_url,
        "PROBELINK_REDIS_PREFIX": unique_prefix(),
        "PROBELINK_SECRET_KEY": secrets.token_urlsafe(32),
        "PROBELINK_DEID_SECRET": secrets.token_urlsafe(32),
        **extra,
    }
    return [Server(cli_env(tmp_path / name, **shared)) for name in ("a", "b")]


async def capture_on(node: Server, http: aiohttp.ClientSession) -> tuple[str, str, str]:
    """A request and a bedside still uploaded through `node`: consultation, token, key image."""
    coordinator = {"Authorization": f"Bearer {coordinator_token(node)}"}
    async with http.post(f"{node.url}/api/consultations", json=REQUEST, headers=coordinator) as r:
        assert r.status == 201, await r.text()
        cid = (await r.json())["id"]
    invite = {"role": "operator", "name": "Bedside"}
    async with http.post(
        f"{node.url}/api/consultations/{cid}/invites", json=invite, headers=coordinator
    ) as r:
        token = (await r.json())["token"]
    async with http.post(
        f"{node.url}/api/consultations/{cid}/captures",
        data=phantom_png(4),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
    ) as r:
        assert r.status == 201, await r.text()
        return cid, token, (await r.json())["key_image_id"]


async def get(
    node: Server, http: aiohttp.ClientSession, path: str, token: str
) -> tuple[int, bytes, str]:
    async with http.get(f"{node.url}{path}", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.read(), r.content_type


async def wait_until_pushed(
    node: Server, http: aiohttp.ClientSession, cid: str, token: str
) -> None:
    listing: Any = None
    for _ in range(PUSH_TIMEOUT_SECONDS * 5):
        _status, body, _type = await get(node, http, f"/api/consultations/{cid}/key-images", token)
        listing = json.loads(body)
        if listing["key_images"][0]["pacs_state"] == "sent":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not pushed to the PACS: {listing}")


def archived_copies(data_dir: Path, data: bytes) -> list[Path]:
    """The files in a node's archive that hold exactly `data` (named by their SHA-256)."""
    name = f"{hashlib.sha256(data).hexdigest()}.dcm"
    return [p for p in (data_dir / "archive").rglob(name) if p.read_bytes() == data]


async def test_a_key_image_captured_on_one_node_is_read_through_another_from_the_pacs(
    tmp_path: Path, postgres_url: str, redis_url: str, orthanc: OrthancServer
) -> None:
    node_a, node_b = two_nodes(
        tmp_path, postgres_url, redis_url, PROBELINK_DICOMWEB_URL=orthanc.dicomweb_url
    )
    with node_a, node_b:
        async with aiohttp.ClientSession() as http:
            cid, token, key_image_id = await capture_on(node_a, http)
            await wait_until_pushed(node_a, http, cid, token)
            status, on_a, _type = await get(
                node_a, http, f"/api/key-images/{key_image_id}/dicom", token
            )
            assert status == 200
            assert archived_copies(tmp_path / "a", on_a)
            assert not archived_copies(tmp_path / "b", on_a)

            # Node B has no copy: it reads the PACS's, which is the very file node A archived.
            status, on_b, _type = await get(
                node_b, http, f"/api/key-images/{key_image_id}/dicom", token
            )
            assert status == 200, on_b
            assert on_b == on_a
            # ... and keeps it: with the PACS gone, node B still serves the image from its archive.
            assert len(archived_copies(tmp_path / "b", on_a)) == 1
            orthanc.stop()
            status, png, content_type = await get(
                node_b, http, f"/api/key-images/{key_image_id}/preview", token
            )
            assert (status, content_type) == (200, "image/png")
            assert png.startswith(b"\x89PNG")
    for node in (node_a, node_b):
        for text in SECRET_TEXTS:
            assert text not in node.out + node.err


async def test_without_a_pacs_the_other_node_says_the_file_is_in_another_archive(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    node_a, node_b = two_nodes(tmp_path, postgres_url, redis_url)
    with node_a, node_b:
        async with aiohttp.ClientSession() as http:
            _cid, token, key_image_id = await capture_on(node_a, http)
            for what in ("dicom", "preview"):
                status, body, _type = await get(
                    node_b, http, f"/api/key-images/{key_image_id}/{what}", token
                )
                assert status == 503
                error = json.loads(body)["error"]
                assert error["code"] == "archived_on_another_node"
                # It says what to do: a shared archive, or a PACS to read from.
                assert "another node's archive" in error["message"]
                assert "PROBELINK_DICOMWEB_URL" in error["message"]
                assert not any(text in error["message"] for text in SECRET_TEXTS)
            # Node A, which archived it, serves it.
            status, _body, _type = await get(
                node_a, http, f"/api/key-images/{key_image_id}/dicom", token
            )
            assert status == 200
    for node in (node_a, node_b):
        for text in SECRET_TEXTS:
            assert text not in node.out + node.err
