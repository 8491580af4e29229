"""Device profiles made over the API: kept in the records store, versioned, audited, in use at
once on the node that saved them and within seconds on the others, with no restart."""

from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import read
from phantom import BANNER_HEIGHT, phantom_png

from server.app import create_app
from server.config import Settings
from server.web.keys import KEY_IMAGES, STORE

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

# A model of its own per run: on PostgreSQL, the tests of a run share one records store.
ACME = {"manufacturer": "Acme", "model": f"US-9 {secrets.token_hex(4)}"}
PROFILE = {**ACME, "width": 640, "height": 480, "mask": [[0, 0, 640, 64]], "note": "measured"}


async def still(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    device: dict[str, str] = ACME,
    as_coordinator: bool = False,
) -> Any:
    """A request naming `device`, and a still uploaded to it (by its operator, or the
    coordinator)."""
    body = {
        "clinical_question": "q",
        "urgency": "urgent",
        "incomplete_reason": "t",
        "device": device,
    }
    created = await client.post("/api/consultations", json=body, headers=coordinator)
    cid = (await created.json())["id"]
    operator = {"Authorization": f"Bearer {token_for('operator', consultation=cid)}"}
    return await client.post(
        f"/api/consultations/{cid}/captures",
        data=io.BytesIO(phantom_png(2)),
        headers={**(coordinator if as_coordinator else operator), "Content-Type": "image/png"},
    )


async def test_a_profile_saved_over_the_api_masks_the_next_capture_without_a_restart(
    client: TestClient[Any, Any],
    coordinator: dict[str, str],
    token_for: Any,
    aiohttp_client: Callable[..., Any],
    settings: Settings,
) -> None:
    refused = await still(client, coordinator, token_for)
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "no_device_profile"
    # Another node on the same records store.
    other = await aiohttp_client(create_app(settings))

    saved = await client.post("/api/device-profiles", json=PROFILE, headers=coordinator)
    assert saved.status == 201, await saved.text()
    first = await saved.json()
    assert first["version"] == 1 and first["source"] == "store" and first["created_by"] == "coord-1"
    stored = await still(client, coordinator, token_for)
    assert stored.status == 201, await stored.text()
    key_image = (await stored.json())["key_image_id"]
    data = await (
        await client.get(f"/api/key-images/{key_image}/dicom", headers=coordinator)
    ).read()
    assert not read(data).pixel_array[:BANNER_HEIGHT].any()
    # The other node reads it at its next refresh (every few seconds), not at a restart.
    await other.app[KEY_IMAGES].refresh_profiles()
    assert (await still(other, coordinator, token_for)).status == 201

    # Saving again makes version 2, in force; version 1 stays in the record.
    wider = {**PROFILE, "mask": [[0, 0, 640, 72]]}
    second = await (
        await client.post("/api/device-profiles", json=wider, headers=coordinator)
    ).json()
    assert second["version"] == 2
    listed = (await (await client.get("/api/device-profiles", headers=coordinator)).json())[
        "profiles"
    ]
    acme = [p for p in listed if p["model"] == ACME["model"]]
    assert [(p["version"], p["mask"]) for p in acme] == [(2, [[0, 0, 640, 72]])]
    assert listed[0]["model"] == ACME["model"]  # the newest saved: consulted first
    assert any(p["source"] == "file" and p["model"] == "Synthetic phantom" for p in listed)
    audit = [e.facts for e in await client.app[STORE].audit_entries()]
    saves = [f for f in audit if f.action == "device_profile.save"]
    assert [f.detail["version"] for f in saves] == [1, 2]
    assert {f.object_id for f in saves} == {first["id"], second["id"]}


async def test_bad_profiles_are_refused_naming_what_is_wrong_and_change_nothing(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    url = "/api/device-profiles"
    before = await (await client.get(url, headers=coordinator)).json()
    cases = [
        ({**PROFILE, "mask": [[600, 0, 100, 64]]}, "invalid_profile", "outside 640x480"),
        ({**PROFILE, "mask": []}, "invalid_profile", "at least one"),
        ({**PROFILE, "mask": [[0, 0, 64]]}, "invalid_profile", "[x, y, width, height]"),
        ({**PROFILE, "width": 0}, "invalid_profile", "'width'"),
        ({**PROFILE, "model": "US-9\u202e"}, "invalid_field", "model"),
        ({k: v for k, v in PROFILE.items() if k != "model"}, "missing_field", "model"),
        ({**PROFILE, "extra": 1}, "unknown_field", "extra"),
    ]
    for body, code, said in cases:
        response = await client.post(url, json=body, headers=coordinator)
        assert response.status == 400, body
        error = (await response.json())["error"]
        assert error["code"] == code and said in error["message"] + str(error["field"]), error
    operator = {"Authorization": f"Bearer {token_for('operator', consultation='c' * 32)}"}
    assert (await client.post(url, json=PROFILE, headers=operator)).status == 403
    assert (await client.get(url, headers=operator)).status == 403
    assert await (await client.get(url, headers=coordinator)).json() == before


async def test_the_clinician_is_told_to_ask_the_coordinator_who_is_told_what_to_fix(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    device = {"manufacturer": "Acme", "model": f"never set up {secrets.token_hex(4)}"}
    refused = await still(client, coordinator, token_for, device)  # the operator's upload
    message = (await refused.json())["error"]["message"]
    assert message.startswith("This scanner is not set up for captures yet; ask your coordinator")
    response = await still(client, coordinator, token_for, device, as_coordinator=True)
    error = (await response.json())["error"]
    assert error["code"] == "no_device_profile" and "PROBELINK_DEVICE_PROFILES" in error["message"]
