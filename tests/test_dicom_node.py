"""A scanner talks to the DICOM node as it would to a PACS: dcmtk's findscu and storescu.

The worklist answers with the open consultation's accession number and pseudonymous patient;
a multi-frame US file sent with that accession (patient data in the header, a banner burned
in, ultrasound regions) becomes a de-identified key image that a report cites and signs. An
unknown accession is refused and nothing is stored; a peer not on the allow-list is rejected.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp.test_utils import TestClient
from conftest import require
from dicom_checks import dciodvfy_errors, read
from phantom import BREAST_REQUEST
from pydicom.uid import RLELossless
from scanner_files import FRAME_TIME_MS, MM_PER_PIXEL, assert_no_phi, scanner_file
from servers import free_port

from server.app import create_app
from server.config import Settings
from server.web.keys import DICOM_NODE, STORE

FINDSCU = shutil.which("findscu")
STORESCU = shutil.which("storescu")
SIGNABLE = {
    "findings": "Oval circumscribed anechoic lesion with posterior enhancement: a simple cyst.",
    "category": "2",
    "recommendation": "Routine screening.",
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "adequate"},
}


def node_settings(settings: Settings, peers: str = "SCANNER@127.0.0.1") -> Settings:
    return settings.model_copy(update={"dicom_port": free_port(), "dicom_peers": peers})


@pytest.fixture
async def node(
    aiohttp_client: Callable[..., Any], settings: Settings
) -> tuple[TestClient[Any, Any], int]:
    """The server with its DICOM node on a free port; SCANNER@127.0.0.1 may call."""
    require("dcmtk", FINDSCU is not None and STORESCU is not None, "install dcmtk")
    client = await aiohttp_client(create_app(node_settings(settings)))
    return client, client.app[DICOM_NODE].port


async def dcmtk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk client off the event loop (the server answers on it)."""
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=120, cwd=cwd
    )


async def store(
    port: int, path: Path, calling: str = "SCANNER", propose: str = "-xy", verbosity: str = "-v"
) -> subprocess.CompletedProcess[str]:
    """storescu sending `path` in its own transfer syntax (`propose`: -xy JPEG, -xr RLE)."""
    assert STORESCU is not None
    return await dcmtk(
        STORESCU,
        verbosity,
        propose,
        "-aet",
        calling,
        "-aec",
        "PROBELINK",
        "127.0.0.1",
        str(port),
        str(path),
    )


async def test_a_scanner_reads_the_worklist_and_sends_its_images_to_the_consultation(
    node: tuple[TestClient[Any, Any], int],
    coordinator: dict[str, str],
    token_for: Any,
    tmp_path: Path,
) -> None:
    client, port = node
    created = await client.post(
        "/api/consultations", json={**BREAST_REQUEST, "patient_ref": "BR-0042"}, headers=coordinator
    )
    record = await created.json()
    cid, accession = record["id"], record["accession_number"]
    assert len(accession) == 8
    queue = await (await client.get("/api/consultations", headers=coordinator)).json()
    assert any(c["accession_number"] == accession for c in queue["consultations"])

    # The worklist, as a scanner asks for it.
    answers = tmp_path / "worklist"
    answers.mkdir()
    assert FINDSCU is not None
    found = await dcmtk(
        FINDSCU,
        "-W",
        "-X",
        "-od",
        str(answers),
        "-aet",
        "SCANNER",
        "-aec",
        "PROBELINK",
        "-k",
        "AccessionNumber",
        "-k",
        "PatientID",
        "-k",
        "PatientName",
        "-k",
        "RequestedProcedureDescription",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=US",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
        "127.0.0.1",
        str(port),
    )
    assert found.returncode == 0, found.stderr
    items = [pydicom.dcmread(p) for p in sorted(answers.glob("*.dcm"))]
    assert [i.AccessionNumber for i in items] == [accession]
    [item] = items
    assert item.PatientID == "BR-0042" and str(item.PatientName).startswith("PL-")
    assert "breast" in item.RequestedProcedureDescription
    assert item.ScheduledProcedureStepSequence[0].Modality == "US"

    # The scanner sends a multi-frame clip (JPEG baseline) and a still (RLE) with it.
    clip, still = tmp_path / "clip.dcm", tmp_path / "still.dcm"
    clip.write_bytes(scanner_file(accession, frames=12))
    still.write_bytes(scanner_file(accession, syntax=RLELossless))
    for path, propose in ((clip, "-xy"), (still, "-xr")):
        sent = await store(port, path, propose=propose)
        assert sent.returncode == 0 and "Success" in sent.stderr + sent.stdout, sent.stderr
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=coordinator)
    images = (await listing.json())["key_images"]
    assert [i["kind"] for i in images] == ["clip", "still"]
    assert all(i["detail"]["source"] == "scanner" for i in images)
    assert images[0]["created_by"] == "dicom:SCANNER"
    queue = await (await client.get("/api/consultations", headers=coordinator)).json()
    [row] = [c for c in queue["consultations"] if c["id"] == cid]
    assert row["attached"] == {"stills": 0, "clips": 0, "scanner_images": 2, "priors": 0}
    data = await (await client.get(images[0]["dicom_url"], headers=coordinator)).read()
    assert dciodvfy_errors(data, tmp_path) == []
    ds = read(data)
    assert int(ds.NumberOfFrames) == 12 and abs(float(ds.FrameTime) - FRAME_TIME_MS) < 0.01
    assert ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY == pytest.approx(MM_PER_PIXEL / 10)
    assert str(ds.PatientName).rstrip("^") == str(item.PatientName).rstrip("^")
    assert_no_phi(data, ds.pixel_array[0])
    assert_no_phi(data, ds.pixel_array[11])

    # The report cites the scanner's clip and is signed: its SR references it.
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}
    url = f"/api/consultations/{cid}/report"
    body = {**SIGNABLE, "key_image_ids": [images[0]["id"]]}
    assert (await client.put(url, json=body, headers=expert)).status == 200
    signed = await client.post(f"{url}/sign", headers=expert)
    assert signed.status == 200, await signed.text()


async def test_unknown_accessions_and_peers_not_allowed_are_refused(
    node: tuple[TestClient[Any, Any], int],
    aiohttp_client: Callable[..., Any],
    coordinator: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    client, port = node
    created = await client.post("/api/consultations", json=BREAST_REQUEST, headers=coordinator)
    cid = (await created.json())["id"]
    path = tmp_path / "stray.dcm"
    path.write_bytes(scanner_file("NOSUCH99"))
    sent = await store(port, path, verbosity="-d")  # -d: the status's error comment too
    said = sent.stderr + sent.stdout
    assert "0xc001" in said and "no open consultation" in said, said
    archive = settings.data_dir / "archive"
    assert not archive.exists() or not [p for p in archive.rglob("*.dcm")]
    audit = await client.app[STORE].audit_entries()
    assert any(
        e.facts.action == "key_image.scanner" and e.facts.outcome == "refused" for e in audit
    )

    # An AE title not on the list, then the right title from an address not on it.
    rejected = await store(port, path, calling="INTRUDER")
    assert rejected.returncode != 0 and "Rejected" in rejected.stderr + rejected.stdout
    elsewhere = await aiohttp_client(create_app(node_settings(settings, peers="SCANNER@127.0.0.2")))
    rejected = await store(elsewhere.app[DICOM_NODE].port, path)
    assert rejected.returncode != 0 and "Rejected" in rejected.stderr + rejected.stdout
    listing = await client.get(f"/api/consultations/{cid}/key-images", headers=coordinator)
    assert (await listing.json())["key_images"] == []
