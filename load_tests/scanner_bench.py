"""Scanner benchmark: a scanner's 10 s 1280x720 30 fps clip and 20 stills → durable key images.

Runs `probelink serve` as a subprocess with its DICOM node on. Each round goes to a new consultation
(the phantom device, whose banner every frame carries and the profile masks; `--one-consultation`:
all to one), which receives:

  clip (C-STORE)   a 300-frame US multi-frame file (JPEG baseline, regions, patient data in the
                   header) sent by a pynetdicom SCU on an open association: C-STORE request →
                   success response (de-identified, masked, archived with fsync, row committed)
  clip (DICOM)     the same file uploaded: POST .../captures (application/dicom) → 201
  clip (MP4)       the same pictures as an H.264 MP4 uploaded: POST .../captures (video/mp4) → 201
  20 stills        twenty 1280x720 single-frame files over one association, first request →
                   last response
  baseline         in this process, interleaved with the C-STORE clips: the same file's bytes
                   written to a temporary file, fsync, rename, directory fsync (what a plain
                   store-as-received SCP does: no de-identification, no masking, no records)

Each send carries a new SOP Instance UID (the same object again is recorded once, at no cost).
Server CPU and peak RSS are read from /proc during each phase; the peak is reported above the
server's RSS before the phase, against the clip's decoded size (300 frames of 2.6 MiB = 791 MiB):
the server must hold a few frames, not the clip. Usage:

    .venv/bin/python load_tests/scanner_bench.py --rounds 10 --json load_tests/results/scanner.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from capture_bench import ServerWatch, consultation, coordinator_token
from phantom import moving_speckle_frames, phantom_frame
from procstat import machine_busy_seconds, rss_bytes
from scanner_files import recorded_clip, scanner_file
from signaling_bench import free_port, log, percentile, probelink_env, process

from server.dicom import writer

ROOT = Path(__file__).resolve().parent.parent
CLIP_SECONDS, FPS, WIDTH, HEIGHT = 10, 30, 1280, 720
STILLS = 20
TARGET_CLIP_P95_S = 3.0
TARGET_STILLS_S = 5.0
AE_TITLE = "BENCH"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def renewed(ds: Dataset) -> Dataset:
    """The same object with a new SOP Instance UID (a new image to the server)."""
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def durable_write(data: bytes, directory: Path) -> None:
    """The baseline: the received bytes, as they are, made durable."""
    final = directory / f"{secrets.token_hex(8)}.dcm"
    partial = final.with_suffix(".part")
    with partial.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.rename(final)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    final.unlink()


class Scanner:
    """A pynetdicom SCU holding one association open, as a scanner sending a study does."""

    def __init__(self, port: int):
        ae = AE(ae_title=AE_TITLE)
        ae.maximum_pdu_size = 0
        for sop_class in (US_MULTIFRAME, US_IMAGE):
            ae.add_requested_context(sop_class, JPEG_BASELINE)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PROBELINK")
        if not self.assoc.is_established:
            raise RuntimeError("the DICOM node did not accept the association")

    def send(self, ds: Dataset) -> int:
        status = self.assoc.send_c_store(ds)
        return int(status.Status) if status else -1

    def close(self) -> None:
        self.assoc.release()


async def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log(f"making the scanner's files ({CLIP_SECONDS} s at {FPS} fps, {WIDTH}x{HEIGHT})")
    frames = CLIP_SECONDS * FPS

    def pictures(count: int) -> Any:
        if args.content == "speckle":
            return moving_speckle_frames(WIDTH, HEIGHT, count)
        return (phantom_frame(n, WIDTH, HEIGHT) for n in range(count))

    clip_bytes = scanner_file(
        "PLACEHOLD", frames=frames, width=WIDTH, height=HEIGHT, pictures=pictures(frames)
    )
    mp4 = recorded_clip("mp4", frames=frames, width=WIDTH, height=HEIGHT, pictures=pictures(frames))
    still_bytes = scanner_file("PLACEHOLD", width=WIDTH, height=HEIGHT, pictures=pictures(1))
    log(f"clip {len(clip_bytes) / 2**20:.1f} MiB (JPEG baseline), MP4 {len(mp4) / 2**20:.1f} MiB")
    secret = secrets.token_urlsafe(32)
    port, dicom_port = free_port(), free_port()
    results: dict[str, Any] = {"series": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as workdir:
        env = probelink_env(
            Path(workdir) / "var",
            secret,
            PROBELINK_PORT=str(port),
            PROBELINK_DICOM_PORT=str(dicom_port),
            PROBELINK_DICOM_PEERS=f"{AE_TITLE}@127.0.0.1",
            PROBELINK_CONSULTATION_QUOTA_MIB=str(1 << 20),
        )
        server = [str(ROOT / ".venv/bin/probelink"), "serve"]
        baseline_dir = Path(workdir) / "baseline"
        baseline_dir.mkdir()
        with process(server, env, port) as proc:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {coordinator_token(secret)}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                clip_ds = pydicom.dcmread(io.BytesIO(clip_bytes))
                still_ds = pydicom.dcmread(io.BytesIO(still_bytes))
                target: dict[str, str] = {}

                async def new_consultation() -> None:
                    """A request of its own (as each patient's is), the files sent with its
                    accession number."""
                    made = await consultation(http, base, [])
                    async with http.get(f"{base}/api/consultations/{made['id']}") as r:
                        accession = (await r.json())["accession_number"]
                    target["url"] = f"{base}/api/consultations/{made['id']}/captures"
                    for ds in (clip_ds, still_ds):
                        ds.AccessionNumber = accession

                await new_consultation()
                scanner = await asyncio.to_thread(Scanner, dicom_port)

                async def upload(body: bytes, content_type: str) -> int:
                    async with http.post(
                        target["url"], data=io.BytesIO(body), headers={"Content-Type": content_type}
                    ) as r:
                        await r.read()
                        return r.status

                series: dict[str, list[float]] = {
                    "clip (C-STORE)": [],
                    "clip (DICOM upload)": [],
                    "clip (MP4 upload)": [],
                    f"{STILLS} stills (one association)": [],
                    "baseline: clip written as received": [],
                }
                memory: dict[str, float] = {}
                cpu: dict[str, float] = {}

                async def phase(
                    name: str, call: Callable[[], Any], ok: Callable[[Any], bool]
                ) -> None:
                    rss0 = rss_bytes(proc.pid) / 2**20
                    watch = ServerWatch(proc.pid)
                    seconds, result = await timed(call)
                    used, _, peak = watch.stop()
                    if not ok(result):
                        raise RuntimeError(f"{name}: {result}")
                    series[name].append(seconds)
                    memory[name] = max(memory.get(name, 0.0), peak - rss0)
                    cpu[name] = cpu.get(name, 0.0) + used

                busy0 = machine_busy_seconds()
                started = time.perf_counter()
                for n in range(1, args.rounds + 1):
                    if n > 1 and not args.one_consultation:
                        await new_consultation()
                    await phase(
                        "clip (C-STORE)",
                        lambda: asyncio.to_thread(scanner.send, renewed(clip_ds)),
                        lambda status: status == 0,
                    )
                    data = await asyncio.to_thread(lambda: writer.to_bytes(renewed(clip_ds)))
                    t0 = time.perf_counter()
                    await asyncio.to_thread(durable_write, data, baseline_dir)
                    series["baseline: clip written as received"].append(time.perf_counter() - t0)
                    await phase(
                        "clip (DICOM upload)",
                        lambda data=data: upload(data, "application/dicom"),
                        lambda status: status == 201,
                    )
                    await phase(
                        "clip (MP4 upload)",
                        lambda: upload(mp4, "video/mp4"),
                        lambda status: status == 201,
                    )

                    async def stills() -> list[int]:
                        return [
                            await asyncio.to_thread(scanner.send, renewed(still_ds))
                            for _ in range(STILLS)
                        ]

                    await phase(
                        f"{STILLS} stills (one association)",
                        stills,
                        lambda statuses: statuses == [0] * STILLS,
                    )
                    log(
                        f"round {n}/{args.rounds}: "
                        + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in series.items())
                    )
                wall = time.perf_counter() - started
                machine = 100 * (machine_busy_seconds() - busy0) / wall
                await asyncio.to_thread(scanner.close)
    for name, values in series.items():
        results["series"][name] = {
            "n": len(values),
            "p50_s": round(statistics.median(values), 3),
            "p95_s": round(percentile(values, 95), 3),
            "max_s": round(max(values), 3),
            "server_peak_rss_above_start_mib": round(memory.get(name, float("nan")), 1),
            "server_cpu_s_per_send": round(cpu.get(name, float("nan")) / len(values), 2),
        }
    results["machine_busy_percent"] = round(machine, 1)
    results["content"] = args.content
    results["one_consultation"] = args.one_consultation
    results["clip_mib"] = round(len(clip_bytes) / 2**20, 1)
    results["mp4_mib"] = round(len(mp4) / 2**20, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--one-consultation",
        action="store_true",
        help="send every round to the same consultation (default: a new one per round, as "
        "each patient's study is): shows the cost of a consultation's growing key object "
        "selection",
    )
    parser.add_argument(
        "--content",
        choices=["speckle", "noise"],
        default="speckle",
        help="speckle: correlated, moving speckle as a scanner shows it (phantom."
        "moving_speckle_frames); noise: white-noise speckle, JPEG's worst case (phantom_frame)",
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    base = results["series"]["baseline: clip written as received"]["p95_s"]
    print(
        "| send | n | p50 s | p95 s | max s | p95 vs baseline | server CPU s per send | server peak RSS above start MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in results["series"].items():
        ratio = f"{s['p95_s'] / base:.1f}×" if "baseline" not in name else ""
        print(
            f"| {name} | {s['n']} | {s['p50_s']} | {s['p95_s']} | {s['max_s']} | {ratio} | "
            f"{s['server_cpu_s_per_send']} | {s['server_peak_rss_above_start_mib']} |"
        )
    print(f"machine busy: {results['machine_busy_percent']} % (2 cores: 200 %)")
    clip = results["series"]["clip (C-STORE)"]["p95_s"]
    stills = results["series"][f"{STILLS} stills (one association)"]["p95_s"]
    print(
        f"target clip p95 ≤ {TARGET_CLIP_P95_S} s: {'met' if clip <= TARGET_CLIP_P95_S else 'NOT met'}"
    )
    print(
        f"target {STILLS} stills ≤ {TARGET_STILLS_S} s: {'met' if stills <= TARGET_STILLS_S else 'NOT met'}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
