"""Capture benchmark: 1280×720 stills and clips, request → acknowledged DICOM on disk.

Runs `probelink serve` as a subprocess. One consultation (the phantom device, so its banner is
masked) has an operator publishing a pre-encoded 1280×720 VP8 phantom clip at 30 fps (a keyframe
every 2 s, the server's keyframe interval) and Opus voice, and an expert watching; the expert
captures over Socket.IO. Measured, one after the other in the same invocation:

  still (relay)   expert `capture {"kind": "still"}` → ack (decode from the cine buffer, mask,
                  DICOM, key object selection, fsync, row committed), STILLS times, SPACING apart
  still (upload)  operator `POST /api/consultations/{id}/captures` (PNG) → 201, in a second
                  consultation, UPLOADS times
  clip            expert `capture {"kind": "clip", "seconds": 6}` → ack, CLIPS times; frames and
                  file size read back afterwards
  baseline        in this process, interleaved with the relay stills (same moment, same disk):
                  a decoded 1280×720 RGB frame written as a plain uncompressed pydicom dataset to
                  a temporary file, fsync, rename, directory fsync; no decode, mask, KOS or DB

Server CPU and RSS are read from /proc during each phase (and while only publishing, for
reference). Then, unless `--breakdown 0`, a second, short run against a server whose capture
stages are wrapped with timers (this script's `_instrumented` mode: same code, `time.perf_counter`
around decode, mask, DICOM build, serialization, archive writes and the database) says where the
time goes. Usage:

    .venv/bin/python load_tests/capture_bench.py --stills 40 --uploads 40 --clips 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pydicom
from aiortc import RTCSessionDescription
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from eio_client import LiveConnection
from media_bench import (
    FPS,
    HEIGHT,
    PTS_PER_FRAME,
    VIDEO_BITRATE,
    VIDEO_TIME_BASE,
    WIDTH,
    Expert,
    encode_voice,
    operator_pc,
)
from phantom import BANNER_HEIGHT, PHANTOM_DEVICE, phantom_frame
from procstat import cpu_seconds, rss_bytes
from signaling_bench import (
    free_port,
    log,
    percentile,
    probelink_env,
    process,
    write_results,
)

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import from_secret
from server.media import forwarding

ROOT = Path(__file__).resolve().parent.parent
GOP_SECONDS = 2  # the server asks for a keyframe every 2 s (capture_keyframe_seconds)
GOP = FPS * GOP_SECONDS
TARGET_P95_MS = 250.0
INSTRUMENTED = "_instrumented"
CALL_TIMEOUT = 120.0
UPLOAD_VARIANTS = 7  # phantom_frame's speckle repeats every 7 frames


# The operator's video: the phantom, pre-encoded once


def encode_phantom_clip() -> tuple[list[bytes], list[bool]]:
    """GOP_SECONDS of 1280×720 phantom frames, VP8, one keyframe at the start (looped)."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = VIDEO_TIME_BASE
    encoder.bit_rate = VIDEO_BITRATE
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    data, keys = [], []
    for n in range(GOP):
        frame = av.VideoFrame.from_ndarray(
            phantom_frame(n, WIDTH, HEIGHT), format="rgb24"
        ).reformat(format="yuv420p")
        frame.pts, frame.time_base = n * PTS_PER_FRAME, VIDEO_TIME_BASE
        if n == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in encoder.encode(frame):
            data.append(bytes(packet))
            keys.append(bool(packet.is_keyframe))
    return data, keys


def decoded_picture(clip: tuple[list[bytes], list[bool]], index: int) -> np.ndarray:
    """Frame `index` of the clip as the relay would decode it: 1280×720 RGB."""
    decoder = av.CodecContext.create("vp8", "r")
    pictures = []
    for data in clip[0][: index + 1]:
        pictures.extend(f.to_ndarray(format="rgb24") for f in decoder.decode(av.Packet(data)))
    return pictures[-1]


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(phantom_frame(n, WIDTH, HEIGHT), "RGB").save(out, "PNG")
    return out.getvalue()


# Baseline: the same still made durable with nothing else


def baseline_write(pixels: np.ndarray, directory: Path) -> float:
    """Plain uncompressed DICOM of `pixels`, fsynced and renamed into place; ms taken."""
    start = time.perf_counter()
    ds = Dataset()
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = "BENCH^", "BENCH"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target = directory / f"{ds.SOPInstanceUID}.dcm"
    tmp = directory / f".{target.name}.tmp"
    with tmp.open("wb") as handle:
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return 1000 * (time.perf_counter() - start)


# Results


@dataclass
class Sample:
    ms: float
    started: float  # wall clock (time.time), to match the instrumented server's stage records
    ended: float
    gop_position: int | None = None  # frames since the keyframe the relay must decode from
    key_image_id: str | None = None


@dataclass
class Series:
    name: str
    requested: int = 0
    acknowledged: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    max_ms: float = float("nan")
    mean_ms: float = float("nan")
    server_cpu_percent: float = float("nan")
    server_cpu_ms_per_capture: float = float("nan")
    server_rss_mib_peak: float = float("nan")
    frames: list[int] = field(default_factory=list)
    file_bytes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def summarize(self) -> None:
        values = [s.ms for s in self.samples]
        self.acknowledged = len(values)
        if values:
            self.p50_ms = percentile(values, 50)
            self.p95_ms = percentile(values, 95)
            self.max_ms = max(values)
            self.mean_ms = statistics.fmean(values)


class ServerWatch:
    """CPU time and peak RSS of the server over one phase (RSS sampled every 100 ms)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self.cpu0 = cpu_seconds(pid)
        self.t0 = time.perf_counter()
        self.task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.1)

    def stop(self) -> tuple[float, float, float]:
        """(CPU seconds, wall seconds, peak RSS MiB)."""
        self.task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))
        return cpu_seconds(self.pid) - self.cpu0, time.perf_counter() - self.t0, self.peak / 2**20


def account(series: Series, watch: ServerWatch, idle_cpu_rate: float) -> None:
    cpu, wall, peak = watch.stop()
    series.server_cpu_percent = 100 * cpu / wall
    if series.samples:
        series.server_cpu_ms_per_capture = 1000 * (cpu - idle_cpu_rate * wall) / len(series.samples)
    series.server_rss_mib_peak = peak
    series.summarize()


# The server, its consultations and participants


def coordinator_token(secret: str) -> str:
    policy = TokenPolicy("probelink", "probelink", 30, 30 * 86400)
    return issue_token(
        from_secret(secret), policy, sub="bench", role=Role.COORDINATOR, ttl_seconds=3600
    )


async def consultation(http: aiohttp.ClientSession, base: str, roles: list[str]) -> dict[str, str]:
    """A phantom-device consultation; its id and one invite token per role."""
    body = {"clinical_question": "bench", "urgency": "urgent", "device": PHANTOM_DEVICE}
    async with http.post(f"{base}/api/consultations", json=body) as r:
        assert r.status == 201, await r.text()
        out = {"id": (await r.json())["id"]}
    for role in roles:
        async with http.post(
            f"{base}/api/consultations/{out['id']}/invites", json={"role": role, "name": role}
        ) as r:
            assert r.status == 201, await r.text()
            out[role] = (await r.json())["token"]
    return out


@dataclass
class Run:
    stills: Series
    uploads: Series
    clips: Series
    baseline: Series
    idle_cpu_percent: float
    idle_rss_mib: float
    masked: dict[str, bool]
    log_file: str
    log_problems: list[str]


async def session(
    args: argparse.Namespace,
    base: str,
    secret: str,
    pid: int,
    clip: tuple[list[bytes], list[bool]],
    voice: list[bytes],
    pngs: list[bytes],
    picture: np.ndarray,
    scratch: Path,
    counts: tuple[int, int, int],
) -> tuple[Series, Series, Series, Series, float, float, dict[str, bool]]:
    n_stills, n_uploads, n_clips = counts
    coordinator = {"Authorization": f"Bearer {coordinator_token(secret)}"}
    stills, uploads = Series("still (relay)"), Series("still (PNG upload)")
    clips, baseline = Series(f"clip {args.clip_seconds:g} s"), Series("baseline")
    async with aiohttp.ClientSession(headers=coordinator) as http:
        live = await consultation(http, base, ["operator", "expert"])
        bedside = await consultation(http, base, ["operator"])
        connections: list[LiveConnection] = []

        async def join(token: str, pc: Any) -> LiveConnection:
            conn = await LiveConnection.open(http, base, "/live", {"token": token}, lambda e, d: 0)
            connections.append(conn)
            await pc.setLocalDescription(await pc.createOffer())
            answer = await conn.call("rtc_offer", {"sdp": pc.localDescription.sdp, "type": "offer"})
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            return conn

        sent: list[float] = []
        operator = operator_pc(clip, voice, sent)
        await join(live["operator"], operator)
        expert = Expert(voice)
        capturer = await join(live["expert"], expert.pc)
        log(f"publishing 1280×720 phantom; warming up {args.warmup:.0f} s")
        await asyncio.sleep(args.warmup)
        watch = ServerWatch(pid)
        await asyncio.sleep(args.idle_seconds)
        cpu, wall, idle_rss = watch.stop()
        idle_rate = cpu / wall
        log(f"publishing only: server {100 * idle_rate:.1f}% CPU, {idle_rss:.0f} MiB")
        received0 = len(expert.arrivals)

        async def capture(series: Series, request: dict[str, Any], gop: int | None) -> None:
            series.requested += 1
            t0, w0 = time.perf_counter(), time.time()
            try:
                ack = await capturer.call("capture", request, timeout=CALL_TIMEOUT)
            except TimeoutError:
                series.errors.append("timeout")
                return
            ms = 1000 * (time.perf_counter() - t0)
            if not isinstance(ack, dict) or "key_image_id" not in ack:
                series.errors.append(json.dumps(ack)[:200])
                return
            series.samples.append(Sample(ms, w0, time.time(), gop, ack["key_image_id"]))

        log(f"still (relay): {n_stills} captures, {args.spacing:g} s apart")
        watch = ServerWatch(pid)
        for i in range(n_stills):
            await capture(stills, {"kind": "still"}, len(sent) % GOP)
            # Baseline in the gap: same moment, same disk, the server idle but forwarding.
            baseline.requested += 1
            w0 = time.time()
            ms = await asyncio.to_thread(baseline_write, picture, scratch)
            baseline.samples.append(Sample(ms, w0, time.time()))
            if (i + 1) % 10 == 0:
                done = [s.ms for s in stills.samples]
                log(f"  {i + 1}/{n_stills}, p50 so far {percentile(done, 50):.0f} ms")
            await asyncio.sleep(args.spacing)
        account(stills, watch, idle_rate)
        baseline.summarize()

        log(f"still (PNG upload): {n_uploads} uploads, {args.spacing:g} s apart")
        headers = {"Authorization": f"Bearer {bedside['operator']}", "Content-Type": "image/png"}
        url = f"{base}/api/consultations/{bedside['id']}/captures"
        watch = ServerWatch(pid)
        async with aiohttp.ClientSession(headers=headers) as bedside_http:
            for i in range(n_uploads):
                uploads.requested += 1
                t0, w0 = time.perf_counter(), time.time()
                async with bedside_http.post(url, data=pngs[i % len(pngs)]) as r:
                    body = await r.read()
                ms = 1000 * (time.perf_counter() - t0)
                if r.status == 201:
                    key_image_id = json.loads(body)["key_image_id"]
                    uploads.samples.append(Sample(ms, w0, time.time(), None, key_image_id))
                else:
                    uploads.errors.append(f"{r.status} {body[:200]!r}")
                if (i + 1) % 10 == 0:
                    done = [s.ms for s in uploads.samples]
                    log(f"  {i + 1}/{n_uploads}, p50 so far {percentile(done, 50):.0f} ms")
                await asyncio.sleep(args.spacing)
        account(uploads, watch, idle_rate)

        log(f"clip: {n_clips} × {args.clip_seconds:g} s")
        watch = ServerWatch(pid)
        for i in range(n_clips):
            await capture(clips, {"kind": "clip", "seconds": args.clip_seconds}, len(sent) % GOP)
            if clips.samples:
                log(f"  {i + 1}/{n_clips}: {clips.samples[-1].ms:.0f} ms")
            await asyncio.sleep(args.clip_spacing)
        account(clips, watch, idle_rate)

        delivered = len(expert.arrivals) - received0
        log(f"expert received {delivered} video frames while capturing")
        # Read back: clip frames and sizes, and whether the banner is blank in what was stored.
        masked: dict[str, bool] = {}
        for series in (stills, uploads, clips):
            for n, sample in enumerate(series.samples):
                async with http.get(f"{base}/api/key-images/{sample.key_image_id}/dicom") as r:
                    data = await r.read()
                series.file_bytes.append(len(data))
                ds = pydicom.dcmread(io.BytesIO(data))
                series.frames.append(int(getattr(ds, "NumberOfFrames", 1) or 1))
                if n == 0:
                    pixels = np.asarray(ds.pixel_array)
                    if pixels.ndim == 3:
                        pixels = pixels[np.newaxis]
                    # JPEG (clips) may ring at the banner's edge; the text itself must be gone.
                    masked[series.name] = bool(pixels[:, : BANNER_HEIGHT - 8].max() < 24)
        for conn in connections:
            await conn.close()
        await expert.pc.close()
        await operator.close()
    return stills, uploads, clips, baseline, 100 * idle_rate, idle_rss, masked


def server_log_problems(path: Path) -> list[str]:
    """Lines of the server's log at ERROR or above, or tracebacks (the log level is WARNING)."""
    problems = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            level = str(json.loads(line).get("level", "")).upper()
        except (ValueError, AttributeError):
            level = "ERROR" if "Traceback" in line or "Error" in line else ""
        if level in ("ERROR", "CRITICAL") or level.startswith("WARN"):
            problems.append(line[:400])
    return problems


@contextmanager
def probelink(
    workdir: Path, secret: str, instrumented: Path | None
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    env = probelink_env(workdir / "data", secret)
    prefix = [sys.executable, "-m", "server"]
    if instrumented is not None:
        prefix = [sys.executable, str(Path(__file__).resolve()), INSTRUMENTED, str(instrumented)]
    with process([*prefix, "serve", "--port", str(port)], env, port) as proc:
        yield f"http://127.0.0.1:{port}", proc, Path(tempfile.gettempdir()) / (
            f"probelink-bench-{port}.log"
        )


def bench(
    args: argparse.Namespace,
    workdir: Path,
    clip: tuple[list[bytes], list[bool]],
    voice: list[bytes],
    pngs: list[bytes],
    picture: np.ndarray,
    counts: tuple[int, int, int],
    instrumented: Path | None = None,
) -> Run:
    secret = secrets.token_urlsafe(32)
    scratch = workdir / "baseline"
    scratch.mkdir(parents=True)
    with probelink(workdir, secret, instrumented) as (base, proc, logfile):
        got = asyncio.run(
            session(args, base, secret, proc.pid, clip, voice, pngs, picture, scratch, counts)
        )
    stills, uploads, clips, baseline, idle_cpu, idle_rss, masked = got
    problems = server_log_problems(logfile)
    if problems:
        log(f"server log {logfile}: {len(problems)} warnings/errors, first: {problems[0][:200]}")
    return Run(
        stills, uploads, clips, baseline, idle_cpu, idle_rss, masked, str(logfile), problems
    )


# Where the time goes: the same server with timers around its capture stages


def instrumented_server(timings: Path, argv: list[str]) -> int:
    """Run probelink's CLI with each capture stage timed into `timings` (JSON lines)."""
    import server.key_images as key_images
    from server.cli import main
    from server.dicom import archive, deid, writer
    from server.store import key_images as store

    lock = threading.Lock()
    sink = timings.open("a")

    def note(stage: str, start: float, wall_start: float) -> None:
        record = {"stage": stage, "ms": 1000 * (time.perf_counter() - start), "at": wall_start}
        with lock:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*a: Any, **k: Any) -> Any:
                start, wall = time.perf_counter(), time.time()
                try:
                    return await fn(*a, **k)
                finally:
                    note(stage, start, wall)

            return run_async

        @functools.wraps(fn)
        def run(*a: Any, **k: Any) -> Any:
            start, wall = time.perf_counter(), time.time()
            try:
                return fn(*a, **k)
            finally:
                note(stage, start, wall)

        return run

    key_images.decode = timed("decode (VP8 → RGB)", key_images.decode)
    key_images._read_png = timed("PNG read", key_images._read_png)
    deid.mask = timed("mask", deid.mask)
    writer.still = timed("DICOM still dataset", writer.still)
    writer.clip = timed("DICOM clip dataset (JPEG per frame)", writer.clip)
    writer.key_object_selection = timed("key object selection", writer.key_object_selection)
    writer.to_bytes = timed("serialize (to_bytes)", writer.to_bytes)
    archive.Archive.store = timed("archive write (hash, fsync)", archive.Archive.store)  # type: ignore[method-assign]
    log_ = store.KeyImageLog
    log_.count = timed("DB reads (count, objects)", log_.count)  # type: ignore[method-assign]
    log_.objects = timed("DB reads (count, objects)", log_.objects)  # type: ignore[method-assign]
    log_.add = timed("DB commit (row, audit, room event)", log_.add)  # type: ignore[method-assign]
    return main(argv)


def breakdown(series: Series, timings: list[dict[str, Any]]) -> dict[str, float]:
    """Median ms per stage over the series' captures; 'other' is the rest of the request."""
    per_capture: list[dict[str, float]] = []
    for sample in series.samples:
        stages: dict[str, float] = {}
        for record in timings:
            if sample.started <= record["at"] <= sample.ended:
                stages[record["stage"]] = stages.get(record["stage"], 0.0) + record["ms"]
        stages["other (event loop, thread hops, Socket.IO/HTTP, small queries)"] = (
            sample.ms - sum(stages.values())
        )
        stages["total"] = sample.ms
        per_capture.append(stages)
    names = list(dict.fromkeys(name for stages in per_capture for name in stages))
    return {n: statistics.median(s.get(n, 0.0) for s in per_capture) for n in names}


# Output


def ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base and base == base and value == value else "-"


def table(run: Run) -> str:
    lines = [
        "| capture | n (errors) | p50 ms | p95 ms | max ms | p50 / p95 vs baseline | frames | file MiB | server CPU % | server CPU ms per capture | server RSS MiB peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    b = run.baseline
    for s in (run.baseline, run.stills, run.uploads, run.clips):
        vs = (
            "1.0× / 1.0×"
            if s is b
            else f"{ratio(s.p50_ms, b.p50_ms)} / {ratio(s.p95_ms, b.p95_ms)}"
        )
        frames = f"{statistics.median(s.frames):.0f}" if s.frames else "1"
        size = (
            f"{statistics.median(s.file_bytes) / 2**20:.2f}"
            if s.file_bytes
            else f"{WIDTH * HEIGHT * 3 / 2**20:.2f}"
        )
        where = "in-process" if s is b else None
        lines.append(
            f"| {s.name} | {s.acknowledged} ({len(s.errors)}) | {s.p50_ms:.1f} | {s.p95_ms:.1f} "
            f"| {s.max_ms:.1f} | {vs} | {frames} | {size} "
            f"| {where or f'{s.server_cpu_percent:.0f}'} "
            f"| {where or f'{s.server_cpu_ms_per_capture:.0f}'} "
            f"| {where or f'{s.server_rss_mib_peak:.0f}'} |"
        )
    return "\n".join(lines)


def breakdown_table(stages: dict[str, dict[str, float]]) -> str:
    kinds = list(stages)
    names = list(dict.fromkeys(n for k in kinds for n in stages[k] if n != "total"))
    lines = [
        "| stage (median ms) | " + " | ".join(kinds) + " |",
        "| --- |" + " --- |" * len(kinds),
    ]
    for name in [*names, "total"]:
        cells = [
            f"{stages[k][name]:.1f}" if stages[k].get(name) else "-" for k in kinds
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gop_effect(series: Series) -> str:
    """Still latency by how far into its GOP the capture landed (frames the relay decodes)."""
    early = [s.ms for s in series.samples if s.gop_position is not None and s.gop_position < GOP / 2]
    late = [s.ms for s in series.samples if s.gop_position is not None and s.gop_position >= GOP / 2]
    if not early or not late:
        return ""
    return (
        f"relay stills in the first half of a GOP: p50 {percentile(early, 50):.0f} ms (n={len(early)}); "
        f"second half: p50 {percentile(late, 50):.0f} ms, max {max(late):.0f} ms (n={len(late)})"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == INSTRUMENTED:
        raise SystemExit(instrumented_server(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stills", type=int, default=40, help="relay stills")
    parser.add_argument("--uploads", type=int, default=40, help="PNG uploads")
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--clip-seconds", type=float, default=6)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between stills")
    parser.add_argument("--clip-spacing", type=float, default=1.0, help="seconds between clips")
    parser.add_argument("--warmup", type=float, default=8, help="publishing before capturing")
    parser.add_argument("--idle-seconds", type=float, default=5, help="publishing-only CPU")
    parser.add_argument(
        "--breakdown", type=int, default=10, help="stills per kind in the timed run (0: skip)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    forwarding.install()  # the expert counts encoded frames; nothing in the generator decodes
    log("encoding the 1280×720 phantom clip, the voice and the PNGs once")
    clip, voice = encode_phantom_clip(), encode_voice()
    log(
        f"clip: {len(clip[0])} frames, keyframes at {[i for i, k in enumerate(clip[1]) if k]}, "
        f"{8 * sum(map(len, clip[0])) / GOP_SECONDS / 1e6:.2f} Mbit/s"
    )
    pngs = [png(n) for n in range(UPLOAD_VARIANTS)]
    log(f"PNG uploads: {statistics.fmean(map(len, pngs)) / 2**20:.2f} MiB each")
    picture = decoded_picture(clip, GOP // 2)
    stages: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        counts = (args.stills, args.uploads, args.clips)
        run = bench(args, Path(tmp) / "main", clip, voice, pngs, picture, counts)
        log("main run: done")
        if args.breakdown:
            timings_file = Path(tmp) / "timings.jsonl"
            timings_file.touch()
            small = (args.breakdown, args.breakdown, min(2, args.clips))
            timed = bench(
                args, Path(tmp) / "timed", clip, voice, pngs, picture, small, timings_file
            )
            records = [json.loads(line) for line in timings_file.read_text().splitlines()]
            for series in (timed.stills, timed.uploads, timed.clips):
                if series.samples:
                    stages[series.name] = breakdown(series, records)
            log("timed run: done")
    print(table(run))
    effect = gop_effect(run.stills)
    if effect:
        print(f"\n{effect}")
    print(
        f"\nPublishing only (no captures): server {run.idle_cpu_percent:.1f}% CPU, "
        f"{run.idle_rss_mib:.0f} MiB RSS. Banner blank in stored files: {run.masked}"
    )
    met = run.stills.p95_ms <= TARGET_P95_MS and not run.stills.errors
    print(
        f"Target (capture → acknowledged DICOM on disk, 1280×720, p95 ≤ {TARGET_P95_MS:.0f} ms): "
        f"relay still p95 {run.stills.p95_ms:.0f} ms, {'met' if met else 'NOT met'}; "
        f"PNG upload p95 {run.uploads.p95_ms:.0f} ms"
    )
    if stages:
        print(f"\nWhere the time goes (timed run, {args.breakdown} stills per kind):\n")
        print(breakdown_table(stages))
    if run.log_problems:
        print(f"\nServer log {run.log_file}: {len(run.log_problems)} warnings/errors")
    if args.json:
        write_results(
            args.json,
            args,
            [run.baseline, run.stills, run.uploads, run.clips],
            idle_cpu_percent=run.idle_cpu_percent,
            idle_rss_mib=run.idle_rss_mib,
            banner_blank=run.masked,
            target_p95_ms=TARGET_P95_MS,
            target_met=met,
            gop_effect=effect,
            breakdown_ms=stages,
            server_log_problems=run.log_problems[:50],
            server_revision=revision(),
        )


def revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        return head.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
