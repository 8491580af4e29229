from __future__ import annotations
import asyncio, io, json
from typing import Any
import numpy as np
import pytest
from phantom import PHANTOM_DEVICE, phantom_frame
from PIL import Image
from sqlalchemy import text
from server.appkeys import STORE

BREAST = {
    "clinical_question": "Palpable lump left breast: solid or cystic?",
    "urgency": "urgent",
    "application": "breast",
    "first_read": "Oval hypoechoic mass, BI-RADS 4A",
    "device": PHANTOM_DEVICE,
    "incomplete_reason": "scanning now",
    "breast": {"lesion_clock": "2", "distance_from_nipple_cm": 3, "first_read_birads": "4A"},
}
SIGNABLE = {
    "findings": "Oval circumscribed anechoic lesion.",
    "category": "2",
    "recommendation": "Routine screening.",
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "limited", "reasons": ["missing_landmarks"]},
}

def png(pixels):
    out = io.BytesIO(); Image.fromarray(pixels, "RGB").save(out, "PNG"); return out.getvalue()

async def consultation(client, coordinator, token_for, body):
    created = await client.post("/api/consultations", json=body, headers=coordinator)
    cid = (await created.json())["id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}
    upload = await client.post(f"/api/consultations/{cid}/captures", data=png(phantom_frame(3)),
        headers={**expert, "Content-Type": "image/png"})
    assert upload.status == 201, await upload.text()
    return cid, expert, (await upload.json())["key_image_id"]

async def test_probe(client, coordinator, token_for):
    cid, expert, k = await consultation(client, coordinator, token_for, BREAST)
    url = f"/api/consultations/{cid}/report"
    for body in [{**SIGNABLE, "findings": "cyst \ud800 here", "key_image_ids": [k, k]}]:
        r = await client.put(url, data=json.dumps(body).encode(), headers={**expert, "Content-Type": "application/json"})
        print("put", r.status, (await r.text())[:300])
    r = await client.post(f"{url}/sign", headers=expert)
    print("sign", r.status, (await r.text())[:300])

async def test_probe_dup(client, coordinator, token_for):
    cid, expert, k = await consultation(client, coordinator, token_for, BREAST)
    url = f"/api/consultations/{cid}/report"
    r = await client.put(url, json={**SIGNABLE, "key_image_ids": [k, k]}, headers=expert)
    print("put", r.status)
    r = await client.post(f"{url}/sign", headers=expert)
    print("sign dup", r.status, (await r.text())[:300])
    r = await client.post(f"{url}/addenda", data=json.dumps({"text": "x\udfff"}).encode(), headers=expert)
    print("addendum surrogate", r.status, (await r.text())[:300])
    r1, r2 = await asyncio.gather(client.post(f"{url}/addenda", json={"text": "a"}, headers=expert), client.post(f"{url}/addenda", json={"text": "b"}, headers=expert))
    print("concurrent addenda", r1.status, r2.status, await r1.text(), await r2.text())

async def test_probe_checklist(client, coordinator, token_for):
    for body in [{"clinical_question": 5}, {"urgency": 7}, {"clinical_question": ["x"]}, {"dvt": {"compressibility": {"popliteal": "x"}}}, {"application": "dvt", "dvt": {"segments_examined": ["popliteal"]*60}},
                  {"dvt": {"compressibility": []}}, {"breast": []}, {"incomplete_reason": "\ud800"}]:
        r = await client.post("/api/consultations/checklist", data=json.dumps(body).encode(), headers=coordinator)
        print("checklist", body, r.status, (await r.text())[:300])
