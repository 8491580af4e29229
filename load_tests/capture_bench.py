"""Capture benchmark: 1280x720 stills and clips, request → acknowledged DICOM on disk.

Runs `probelink serve` as a subprocess. One consultation (the phantom device, so its banner is
masked) has an operator publishing a pre-encoded 1280x720 VP8 phantom clip at 30 fps (a keyframe
every 2 s, the server's keyframe interval) and Opus voice, and an expert watching; the expert
captures over Socket.IO. Measured, one after the other in the same invocation:

  still (relay)   expert `capture {"kind": "still"}` → ack (decode from the cine buffer, mask,
                  DICOM, key object selection, fsync, row committed), STILLS times, SPACING apart
  still (upload)  operator `POST /api/consultations/{id}/captures` (PNG) → 201, in a second
                  consultation, UPLOADS times
  clip            expert `capture {"kind": "clip", "seconds": 6}` → ack, CLIPS times; frames and
                  file size read back afterwards
  baseline        in this process, interleaved with the relay stills (same moment, same disk):
                  a decoded 1280x720 RGB frame written as a plain uncompressed pydicom dataset to
                  a temporary file, fsync, rename, directory fsync; no decode, mask, KOS or DB

Each kind starts with one unmeasured capture (the first after start-up pays lazy imports; it is
reported apart). Server CPU and RSS are read from /proc during each phase (and while only
publishing, for reference). Then, unless `--breakdown 0`, a second run (as many captures, or
BREAKDOWN per kind) against a server whose capture stages are wrapped with timers (this script's
`_instrumented` mode: probelink's own code, with `time.perf_counter` around decode, mask, DICOM
build, serialization, archive writes and the database) says where the time goes. Usage:

    .venv/bin/python load_tests/capture_bench.py --stills 40 --uploads 40 --clips 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import inspect
import io
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from server.media.hooks import receive

ROOT = Path(__file__).resolve().parent.parent
GOP_SECONDS = 2  # the server asks for a keyframe every 2 s (capture_keyframe_seconds)
GOP = FPS * GOP_SECONDS
TARGET_P95_MS = 250.0
INSTRUMENTED = "_instrumented"
CALL_TIMEOUT = 120.0
UPLOAD_VARIANTS = 7  # phantom_frame's speckle repeats every 7 frames


# The operator's video: the phantom, pre-encoded once


def encode_phantom_clip() -> tuple[list[bytes], list[bool]]:
    """GOP_SECONDS of 1280x720 phantom frames, VP8, one keyframe at the start (looped)."""
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
    """Frame `index` of the clip as the relay would decode it: 1280x720 RGB."""
    decoder = av.CodecContext.create("vp8", "r")
    pictures: list[np.ndarray] = []
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
    # The first capture of its kind after the server started (lazy imports, first thread),
    # made before the measured ones and left out of the figures.
    first_ms: float = float("nan")
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


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used (from /proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


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
    body = {
        "clinical_question": "bench",
        "urgency": "urgent",
        "incomplete_reason": "test request",
        "device": PHANTOM_DEVICE,
    }
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
    end_rss_mib: float  # two seconds after the last clip
    masked: dict[str, bool]
    log_file: str
    log_problems: list[str]
    # CPU used by everything but the server and this generator during the run (% of one core):
    # other work on the machine (tests, builds) that makes the figures noisy.
    others_cpu_percent: float


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
) -> tuple[Series, Series, Series, Series, float, float, float, dict[str, bool]]:
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

        async def capture(
            series: Series, request: dict[str, Any], gop: int | None, first: bool = False
        ) -> None:
            series.requested += 0 if first else 1
            t0, w0 = time.perf_counter(), time.time()
            try:
                ack = await capturer.call("capture", request, timeout=CALL_TIMEOUT)
            except TimeoutError:
                series.errors.append("timeout")
                return
            ms = 1000 * (time.perf_counter() - t0)
            if not isinstance(ack, dict) or "key_image_id" not in ack:
                series.errors.append(json.dumps(ack)[:200])
            elif first:
                series.first_ms = ms
            else:
                series.samples.append(Sample(ms, w0, time.time(), gop, ack["key_image_id"]))

        log(f"still (relay): one first, then {n_stills} captures, {args.spacing:g} s apart")
        await capture(stills, {"kind": "still"}, None, first=True)
        log(f"  first: {stills.first_ms:.0f} ms")
        await asyncio.sleep(args.spacing)
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

        log(f"still (PNG upload): one first, then {n_uploads} uploads, {args.spacing:g} s apart")
        headers = {"Authorization": f"Bearer {bedside['operator']}", "Content-Type": "image/png"}
        url = f"{base}/api/consultations/{bedside['id']}/captures"
        async with aiohttp.ClientSession(headers=headers) as bedside_http:

            async def upload(body: bytes, first: bool = False) -> None:
                uploads.requested += 0 if first else 1
                t0, w0 = time.perf_counter(), time.time()
                async with bedside_http.post(url, data=body) as r:
                    answer = await r.read()
                ms = 1000 * (time.perf_counter() - t0)
                if r.status != 201:
                    uploads.errors.append(f"{r.status} {answer[:200]!r}")
                elif first:
                    uploads.first_ms = ms
                else:
                    key_image_id = json.loads(answer)["key_image_id"]
                    uploads.samples.append(Sample(ms, w0, time.time(), None, key_image_id))

            await upload(pngs[-1], first=True)
            log(f"  first: {uploads.first_ms:.0f} ms")
            await asyncio.sleep(args.spacing)
            watch = ServerWatch(pid)
            for i in range(n_uploads):
                await upload(pngs[i % len(pngs)])
                if (i + 1) % 10 == 0:
                    done = [s.ms for s in uploads.samples]
                    log(f"  {i + 1}/{n_uploads}, p50 so far {percentile(done, 50):.0f} ms")
                await asyncio.sleep(args.spacing)
        account(uploads, watch, idle_rate)

        log(f"clip: one first, then {n_clips} × {args.clip_seconds:g} s")
        clip_request = {"kind": "clip", "seconds": args.clip_seconds}
        if n_clips:
            await capture(clips, clip_request, None, first=True)
            log(f"  first: {clips.first_ms:.0f} ms")
            await asyncio.sleep(args.clip_spacing)
        watch = ServerWatch(pid)
        for i in range(n_clips):
            await capture(clips, clip_request, len(sent) % GOP)
            if clips.samples:
                log(f"  {i + 1}/{n_clips}: {clips.samples[-1].ms:.0f} ms")
            await asyncio.sleep(args.clip_spacing)
        account(clips, watch, idle_rate)

        await asyncio.sleep(2)
        end_rss = rss_bytes(pid) / 2**20
        log(f"server RSS after the clips: {end_rss:.0f} MiB")
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
    return stills, uploads, clips, baseline, 100 * idle_rate, idle_rss, end_rss, masked


def server_log_problems(path: Path) -> list[str]:
    """The server's log lines at WARNING or above (its level in these runs), and tracebacks."""
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
        yield (
            f"http://127.0.0.1:{port}",
            proc,
            Path(tempfile.gettempdir()) / (f"probelink-bench-{port}.log"),
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
        busy0, server0, self0 = machine_busy_seconds(), cpu_seconds(proc.pid), time.process_time()
        start = time.perf_counter()
        got = asyncio.run(
            session(args, base, secret, proc.pid, clip, voice, pngs, picture, scratch, counts)
        )
        ours = cpu_seconds(proc.pid) - server0 + time.process_time() - self0
        others = 100 * (machine_busy_seconds() - busy0 - ours) / (time.perf_counter() - start)
    log(f"other processes on this machine during the run: {others:.0f}% of a core")
    stills, uploads, clips, baseline, idle_cpu, idle_rss, end_rss, masked = got
    problems = server_log_problems(logfile)
    if problems:
        log(f"server log {logfile}: {len(problems)} warnings/errors, first: {problems[0][:200]}")
    return Run(
        stills,
        uploads,
        clips,
        baseline,
        idle_cpu,
        idle_rss,
        end_rss,
        masked,
        str(logfile),
        problems,
        others,
    )


# Where the time goes: the same server with timers around its capture stages


def instrumented_server(timings: Path, argv: list[str]) -> int:
    """Run probelink's CLI with each capture stage timed into `timings` (JSON lines).

    Stages are module attributes looked up at call time, wrapped if present (the capture code
    changes; what is absent is skipped and named on stderr, i.e. in the server's log). A
    generator (pictures decoded one at a time) is timed across all its steps.
    """
    import server.imaging.captures as key_images
    from server.cli import main
    from server.dicom import deid, writer
    from server.imaging import archive, png, store

    lock = threading.Lock()
    sink = timings.open("a")

    def note(stage: str, seconds: float, wall_start: float) -> None:
        record = {"stage": stage, "ms": 1000 * seconds, "at": wall_start}
        with lock:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*a: Any, **k: Any) -> Any:
                start, wall = time.perf_counter(), time.time()
                try:
                    return await fn(*a, **k)
                finally:
                    note(stage, time.perf_counter() - start, wall)

            return run_async

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def run_generator(*a: Any, **k: Any) -> Any:
                wall, spent = time.time(), 0.0
                inner = fn(*a, **k)
                try:
                    while True:
                        start = time.perf_counter()
                        try:
                            item = next(inner)
                        except StopIteration as stop:
                            spent += time.perf_counter() - start
                            return stop.value
                        spent += time.perf_counter() - start
                        yield item
                finally:
                    inner.close()
                    note(stage, spent, wall)

            return run_generator

        @functools.wraps(fn)
        def run(*a: Any, **k: Any) -> Any:
            start, wall = time.perf_counter(), time.time()
            try:
                return fn(*a, **k)
            finally:
                note(stage, time.perf_counter() - start, wall)

        return run

    split_jpeg = hasattr(writer, "jpeg_frame")  # JPEG outside the clip dataset
    wanted: list[tuple[Any, str, str]] = [
        (key_images, "decode", DECODE),
        (key_images, "decode_pictures", DECODE),
        (png, "read", "PNG read"),
        (deid, "mask", "mask"),
        (writer, "still", "DICOM still dataset"),
        (writer, "jpeg_frame", JPEG),
        (writer, "clip", "DICOM clip dataset" if split_jpeg else CLIP_WITH_JPEG),
        (writer, "key_object_selection", "key object selection"),
        (writer, "to_bytes", "serialize (to_bytes)"),
        (archive.Archive, "store", "archive write (hash, fsync)"),
        (store.KeyImageLog, "count", DB_READS),
        (store.KeyImageLog, "objects", DB_READS),
        (store.KeyImageLog, "add", "DB commit (row, audit, room event)"),
    ]
    absent = []
    for owner, name, stage in wanted:
        if hasattr(owner, name):
            setattr(owner, name, timed(stage, getattr(owner, name)))
        else:
            absent.append(f"{getattr(owner, '__name__', owner)}.{name}")
    if absent:
        print(f"capture_bench: not in this server, not timed: {absent}", file=sys.stderr)
    return main(argv)


DECODE = "decode (VP8 → RGB)"
JPEG = "JPEG per frame"
CLIP_WITH_JPEG = "DICOM clip dataset (JPEG per frame)"
DB_READS = "DB reads (count, objects)"
OTHER = "other (event loop, thread hops, Socket.IO/HTTP, small queries)"
STAGES = (
    DECODE,
    "PNG read",
    "mask",
    "DICOM still dataset",
    JPEG,
    "DICOM clip dataset",
    CLIP_WITH_JPEG,
    "key object selection",
    "serialize (to_bytes)",
    "archive write (hash, fsync)",
    DB_READS,
    "DB commit (row, audit, room event)",
    OTHER,
    "total",
)


def stages_per_capture(series: Series, timings: list[dict[str, Any]]) -> list[dict[str, float]]:
    """ms per stage of each of the series' captures; 'other' is the rest of the request."""
    per_capture: list[dict[str, float]] = []
    for sample in series.samples:
        stages: dict[str, float] = {}
        for record in timings:
            if sample.started <= record["at"] <= sample.ended:
                stages[record["stage"]] = stages.get(record["stage"], 0.0) + record["ms"]
        stages[OTHER] = sample.ms - sum(stages.values())
        stages["total"] = sample.ms
        per_capture.append(stages)
    return per_capture


def medians(per_capture: list[dict[str, float]]) -> dict[str, float]:
    names = [n for n in STAGES if any(n in stages for stages in per_capture)]
    return {n: statistics.median(s.get(n, 0.0) for s in per_capture) for n in names}


# Output


def ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base and base == base and value == value else "-"


def table(run: Run) -> str:
    lines = [
        "| capture | n (errors) | p50 ms | p95 ms | max ms | first after start ms | p50 / p95 vs baseline | frames | file MiB | server CPU % | server CPU ms per capture | server RSS MiB peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    b = run.baseline
    for s in (run.baseline, run.stills, run.uploads, run.clips):
        vs = f"{ratio(s.p50_ms, b.p50_ms)} / {ratio(s.p95_ms, b.p95_ms)}"
        if s is run.clips:
            vs = "n/a (the baseline is a still)"
        frames = f"{statistics.median(s.frames):.0f}" if s.frames else "1"
        size = (
            f"{statistics.median(s.file_bytes) / 2**20:.2f}"
            if s.file_bytes
            else f"{WIDTH * HEIGHT * 3 / 2**20:.2f}"
        )
        where = "in-process" if s is b else None
        lines.append(
            f"| {s.name} | {s.acknowledged} ({len(s.errors)}) | {s.p50_ms:.1f} | {s.p95_ms:.1f} "
            f"| {s.max_ms:.1f} | {'-' if s is b else f'{s.first_ms:.0f}'} | {vs} | {frames} | {size} "
            f"| {where or f'{s.server_cpu_percent:.0f}'} "
            f"| {where or f'{s.server_cpu_ms_per_capture:.0f}'} "
            f"| {where or f'{s.server_rss_mib_peak:.0f}'} |"
        )
    return "\n".join(lines)


def breakdown_table(stages: dict[str, dict[str, float]]) -> str:
    kinds = list(stages)
    names = [n for n in STAGES if n != "total" and any(n in stages[k] for k in kinds)]
    lines = [
        "| stage (median ms) | " + " | ".join(kinds) + " |",
        "| --- |" + " --- |" * len(kinds),
    ]
    for name in [*names, "total"]:
        cells = [f"{stages[k][name]:.1f}" if stages[k].get(name) else "-" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def growth(series: Series, n: int = 10) -> str:
    """p50 of the first and last `n` captures: whether captures slow down as a study grows."""
    values = [s.ms for s in series.samples]
    if len(values) < 2 * n:
        return ""
    return (
        f"{series.name}: p50 of captures 1-{n} {percentile(values[:n], 50):.0f} ms, "
        f"of captures {len(values) - n + 1}-{len(values)} {percentile(values[-n:], 50):.0f} ms"
    )


def gop_effect(series: Series) -> str:
    """Still latency by how far into its GOP the capture landed (frames the relay decodes)."""
    early = [
        s.ms for s in series.samples if s.gop_position is not None and s.gop_position < GOP / 2
    ]
    late = [
        s.ms for s in series.samples if s.gop_position is not None and s.gop_position >= GOP / 2
    ]
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
        "--breakdown",
        type=int,
        default=None,
        help="captures per kind in the timed run (default: as many as measured; 0: skip)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    receive.install()  # the expert counts encoded frames; nothing in the generator decodes
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
    per_capture: dict[str, list[dict[str, float]]] = {}
    timed_problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        counts = (args.stills, args.uploads, args.clips)
        run = bench(args, Path(tmp) / "main", clip, voice, pngs, picture, counts)
        log("main run: done")
        if args.breakdown != 0:
            timings_file = Path(tmp) / "timings.jsonl"
            timings_file.touch()
            small = counts
            if args.breakdown is not None:
                small = (args.breakdown, args.breakdown, min(args.breakdown, args.clips))
            timed = bench(
                args, Path(tmp) / "timed", clip, voice, pngs, picture, small, timings_file
            )
            records = [json.loads(line) for line in timings_file.read_text().splitlines()]
            for series in (timed.stills, timed.uploads, timed.clips):
                if series.samples:
                    per_capture[series.name] = stages_per_capture(series, records)
                    stages[series.name] = medians(per_capture[series.name])
            timed_problems = timed.log_problems
            log("timed run: done")
    print(table(run))
    effect = gop_effect(run.stills)
    print("")
    for line in (effect, growth(run.stills), growth(run.uploads)):
        if line:
            print(line)
    print(
        f"\nPublishing only (no captures): server {run.idle_cpu_percent:.1f}% CPU, "
        f"{run.idle_rss_mib:.0f} MiB RSS; after the clips {run.end_rss_mib:.0f} MiB RSS.\n"
        f"Banner blank in the stored files: {run.masked}.\n"
        f"Other processes on the machine during the run: {run.others_cpu_percent:.0f}% of a core."
    )
    met = run.stills.p95_ms <= TARGET_P95_MS and not run.stills.errors
    print(
        f"Target (capture → acknowledged DICOM on disk, 1280×720, p95 ≤ {TARGET_P95_MS:.0f} ms): "
        f"relay still p95 {run.stills.p95_ms:.0f} ms, {'met' if met else 'NOT met'}; "
        f"PNG upload p95 {run.uploads.p95_ms:.0f} ms"
    )
    if stages:
        timed_counts = ", ".join(f"{k} {len(v)}" for k, v in per_capture.items())
        print(f"\nWhere the time goes (timed run: {timed_counts}):\n")
        print(breakdown_table(stages))
    if run.log_problems or timed_problems:
        print(
            f"\nServer log {run.log_file}: {len(run.log_problems)} warnings/errors; "
            f"timed run's: {len(timed_problems)}"
        )
    if args.json:
        write_results(
            args.json,
            args,
            [without_nan(s) for s in (run.baseline, run.stills, run.uploads, run.clips)],
            idle_cpu_percent=run.idle_cpu_percent,
            idle_rss_mib=run.idle_rss_mib,
            others_cpu_percent=run.others_cpu_percent,
            banner_blank=run.masked,
            target_p95_ms=TARGET_P95_MS,
            target_met=met,
            gop_effect=effect,
            breakdown_ms=stages,
            breakdown_per_capture_ms=per_capture,
            growth=[growth(run.stills), growth(run.uploads)],
            server_rss_mib_end=run.end_rss_mib,
            server_log_problems=run.log_problems[:50],
            timed_server_log_problems=timed_problems[:50],
            server_revision=revision(),
        )


def without_nan(series: Series) -> Series:
    """The series with figures it does not have (NaN) as null, which JSON can hold."""
    missing = {k: None for k, v in vars(series).items() if isinstance(v, float) and math.isnan(v)}
    return dataclasses.replace(series, **missing)


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
