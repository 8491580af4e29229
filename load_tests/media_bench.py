"""Media benchmark: N consultations, operator 720p30 VP8 (~1.5 Mbit/s) + Opus, two experts (with
voice, or listening only: --no-expert-voice).

Runs the relays named by --relays, alternated --rounds times, in one invocation on one machine:
  mediarelay aiortc's MediaRelay (decode + re-encode per subscriber), load_tests/mediarelay_server.py
  probelink  probelink serve (forwarding RTP packets), negotiated over Socket.IO rtc_offer
  janus      Debian's Janus 1.1 VideoRoom (C, forwarding RTP packets), load_tests/janus_videoroom.py;
             its subscribers only listen, so compare it with --no-expert-voice

The operators send a pre-encoded clip in a loop (2 s, a keyframe at the start of each loop), so
the generator spends no CPU encoding. Reported per run: server CPU (% of one core) and CPU per
forwarded video stream, frames delivered to the experts, end-to-end frame latency p50/p99
(operator send → complete frame at the expert, both on this machine's loopback), server RSS.

    .venv/bin/python load_tests/media_bench.py --consultations 1,2,5,10 --seconds 15 --json out.json
    .venv/bin/python load_tests/media_bench.py --relays probelink,janus --no-expert-voice \
        --consultations 4 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import janus_videoroom
from eio_client import LiveConnection
from procstat import cpu_seconds, machine_busy_seconds, rss_bytes
from relay_latency import relay_samples
from signaling_bench import (
    free_port,
    log,
    percentile,
    probelink_env,
    process,
    provision,
    write_results,
)

from server.media.frames import FrameAssembler
from server.media.hooks import receive
from server.media.hooks.packets import take_packets
from server.media.rtp import vp8_descriptor

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS = 1280, 720, 30
VIDEO_BITRATE = 1_500_000
CLIP_SECONDS = 2
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48000)
PTS_PER_FRAME = 90000 // FPS


def synthetic_ultrasound(n: int) -> np.ndarray:
    """A speckled fan of grey with a slowly moving bright structure: realistic to encode."""
    rng = np.random.default_rng(n)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    fan = ((x - WIDTH / 2) ** 2 + (y + 100) ** 2 < (HEIGHT * 1.1) ** 2) & (
        np.abs(x - WIDTH / 2) < (y + 100) * 0.9
    )
    speckle = rng.integers(0, 90, size=(HEIGHT, WIDTH), dtype=np.uint8)
    blob = (((x - 640 - 80 * math.sin(n / 15)) ** 2 + (y - 360) ** 2) < 60**2) * 120
    gray = np.where(fan, speckle + blob.astype(np.uint8), 0).astype(np.uint8)
    return np.stack([gray] * 3, axis=-1)


def encode_clip() -> tuple[list[bytes], list[bool]]:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = VIDEO_TIME_BASE
    encoder.bit_rate = VIDEO_BITRATE
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    data, keys = [], []
    for n in range(FPS * CLIP_SECONDS):
        frame = av.VideoFrame.from_ndarray(synthetic_ultrasound(n), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts, frame.time_base = n * PTS_PER_FRAME, VIDEO_TIME_BASE
        if n == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in encoder.encode(frame):
            data.append(bytes(packet))
            keys.append(bool(packet.is_keyframe))
    return data, keys


def encode_voice() -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    encoder.bit_rate = 32000
    out = []
    for n in range(50):
        t = (np.arange(960) + n * 960) / 48000
        samples = (3000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, n * 960
        out.extend(bytes(p) for p in encoder.encode(frame))
    return out


class LoopTrack(MediaStreamTrack):
    """Sends pre-encoded frames in a loop at their real cadence; records video send times."""

    def __init__(
        self, kind: str, frames: list[bytes], keys: list[bool] | None, sent: list[float] | None
    ):
        super().__init__()
        self.kind = kind
        self.frames, self.keys, self.sent = frames, keys, sent
        self.period = 1 / FPS if kind == "video" else 0.02
        self.step = PTS_PER_FRAME if kind == "video" else 960
        self.i = 0
        self.t0 = time.perf_counter()

    async def recv(self) -> Any:
        due = self.t0 + self.i * self.period
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        packet = av.Packet(self.frames[self.i % len(self.frames)])
        packet.pts = self.i * self.step
        packet.time_base = VIDEO_TIME_BASE if self.kind == "video" else AUDIO_TIME_BASE
        packet.is_keyframe = self.keys[self.i % len(self.keys)] if self.keys else True
        if self.sent is not None:
            self.sent.append(time.perf_counter())
        self.i += 1
        return packet


@dataclass
class Result:
    name: str
    consultations: int
    seconds: float
    video_frames_expected: int = 0
    video_frames_delivered: int = 0
    latency_measured: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    # The relay's own share (last packet in → first packet out, in the server), with --relay-latency.
    relay_measured: int = 0
    relay_p50_ms: float = 0.0
    relay_p99_ms: float = 0.0
    server_cpu_percent: float = 0.0
    cpu_percent_per_stream: float = 0.0
    server_rss_mib: float = 0.0
    generator_cpu_percent: float = 0.0
    # The whole machine's busy CPU during the window, % of one core (2 cores: up to 200).
    machine_cpu_percent: float = 0.0


class Expert:
    """A subscriber: it offers (video in, its voice out or audio in only), or answers (Janus)."""

    def __init__(self, voice: list[bytes] | None, offers: bool = True):
        self.pc = RTCPeerConnection()
        if offers:
            self.pc.addTransceiver("video", direction="recvonly")
            if voice is not None:
                self.pc.addTransceiver(LoopTrack("audio", voice, None, None), direction="sendrecv")
            else:
                self.pc.addTransceiver("audio", direction="recvonly")
        self.arrivals: list[tuple[float, int]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self.on_track)

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            # A frame counts when its last packet arrives: the bot takes the packets as the
            # relay does and puts frames together itself (aiortc's own jitter buffer would hold
            # each frame until the next one starts, a frame time added to every figure).
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    self.tap(transceiver.receiver)
            return
        self.tasks.append(asyncio.ensure_future(self.read(track)))

    def tap(self, receiver: Any) -> None:
        assemblers: dict[int, FrameAssembler] = {}

        def arrived(frame: Any) -> None:
            self.arrivals.append((time.perf_counter(), hash(bytes(frame))))

        async def on_packet(packet: Any, codec: Any) -> None:
            assembler = assemblers.get(packet.ssrc)
            if assembler is None:
                assembler = assemblers[packet.ssrc] = FrameAssembler(codec, arrived)
            descriptor = vp8_descriptor(packet.payload)
            if descriptor is not None:
                assembler.add(
                    packet.sequence_number,
                    packet.timestamp,
                    bool(packet.marker),
                    packet.payload,
                    starts=descriptor.starts_frame,
                    key=descriptor.keyframe,
                )

        take_packets(receiver, on_packet, repair=False)

    async def read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                packet = await track.recv()
                if track.kind == "video":
                    self.arrivals.append((time.perf_counter(), hash(bytes(packet))))
        except MediaStreamError:
            return


def operator_pc(
    clip: tuple[list[bytes], list[bool]], voice: list[bytes], sent: list[float]
) -> RTCPeerConnection:
    pc = RTCPeerConnection()
    pc.addTransceiver(LoopTrack("video", clip[0], clip[1], sent), direction="sendonly")
    pc.addTransceiver(LoopTrack("audio", voice, None, None), direction="sendrecv")
    return pc


def latencies(
    sent: list[float],
    arrivals: list[tuple[float, int]],
    window: tuple[float, float],
    clip_index: dict[int, int],
) -> list[float]:
    """Frame latency in ms. A forwarded frame is byte-identical to the one sent, so its bytes
    name its place in the clip; the latest send of that clip frame before arrival is the one.
    Re-encoded frames (MediaRelay) match nothing and are not measured."""
    out = []
    period = len(clip_index)
    for at, digest in arrivals:
        j = clip_index.get(digest)
        if j is None or not window[0] <= at <= window[1] or len(sent) <= j:
            continue
        i = len(sent) - 1 - ((len(sent) - 1 - j) % period)
        while i >= 0 and sent[i] > at:
            i -= period
        if i >= 0:
            out.append(1000 * (at - sent[i]))
    return out


async def run(
    name: str,
    negotiate: Any,
    consultations: int,
    args: argparse.Namespace,
    pids: list[int],
    clip: Any,
    voice: list[bytes],
    experts_offer: bool = True,
) -> Result:
    """One relay's window: `negotiate(room, role, index, pc)` connects each peer to it."""
    seconds, warmup = args.seconds, args.warmup
    expert_voice = voice if args.expert_voice else None
    result = Result(name, consultations, seconds)
    clip_index = {hash(frame): i for i, frame in enumerate(clip[0])}
    operators, experts, sent_lists = [], [], []
    for room in range(consultations):
        sent: list[float] = []
        pc = operator_pc(clip, voice, sent)
        await negotiate(room, "operator", 0, pc)
        operators.append(pc)
        sent_lists.append(sent)
        pair = []
        for index in range(2):
            expert = Expert(expert_voice, offers=experts_offer)
            await negotiate(room, "expert", index, expert.pc)
            pair.append(expert)
        experts.append(pair)
    log(f"{name}: {consultations} consultations connected; warming up {warmup:.0f} s")
    await asyncio.sleep(warmup)
    start = time.perf_counter()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    machine0 = machine_busy_seconds()
    self0 = time.process_time()
    counts0 = [[len(e.arrivals) for e in pair] for pair in experts]
    sent0 = [len(s) for s in sent_lists]
    await asyncio.sleep(seconds)
    wall = time.perf_counter() - start
    result.server_cpu_percent = 100 * (sum(cpu_seconds(p) for p in pids) - cpu0) / wall
    result.generator_cpu_percent = 100 * (time.process_time() - self0) / wall
    result.machine_cpu_percent = 100 * (machine_busy_seconds() - machine0) / wall
    result.server_rss_mib = sum(rss_bytes(p) for p in pids) / 2**20
    lat: list[float] = []
    for room, pair in enumerate(experts):
        sent_in_window = len(sent_lists[room]) - sent0[room]
        for expert, before in zip(pair, counts0[room], strict=True):
            result.video_frames_expected += sent_in_window
            result.video_frames_delivered += len(expert.arrivals) - before
            lat += latencies(sent_lists[room], expert.arrivals, (start, start + wall), clip_index)
    result.latency_measured = len(lat)
    result.latency_p50_ms = percentile(lat, 50)
    result.latency_p99_ms = percentile(lat, 99)
    result.cpu_percent_per_stream = result.server_cpu_percent / (2 * consultations)
    for pair in experts:
        for expert in pair:
            await expert.pc.close()
    for pc in operators:
        await pc.close()
    return result


def bench_mediarelay(args: argparse.Namespace, n: int, clip: Any, voice: list[bytes]) -> Result:
    port = free_port()
    with ExitStack() as stack:
        proc = stack.enter_context(
            process(
                [
                    sys.executable,
                    str(ROOT / "load_tests" / "mediarelay_server.py"),
                    "--port",
                    str(port),
                ],
                dict(os.environ),
                port,
            )
        )

        async def main() -> Result:
            async with aiohttp.ClientSession() as http:

                async def negotiate(
                    room: int, role: str, index: int, pc: RTCPeerConnection
                ) -> None:
                    await pc.setLocalDescription(await pc.createOffer())
                    async with http.post(
                        f"http://127.0.0.1:{port}/offer",
                        json={"room": str(room), "role": role, "sdp": pc.localDescription.sdp},
                    ) as r:
                        await pc.setRemoteDescription(RTCSessionDescription(**await r.json()))

                return await run("mediarelay", negotiate, n, args, [proc.pid], clip, voice)

        return asyncio.run(main())


def bench_probelink(
    args: argparse.Namespace, n: int, clip: Any, voice: list[bytes], workdir: Path
) -> Result:
    port = free_port()
    secret = secrets.token_urlsafe(32)
    with ExitStack() as stack:
        env = probelink_env(workdir / f"probelink-{n}", secret)
        samples = workdir / f"relay-latency-{n}.jsonl"
        command = [sys.executable, "-m", "server"]
        if args.relay_latency:
            command = [
                sys.executable,
                str(Path(__file__).with_name("relay_latency.py")),
                str(samples),
            ]
        proc = stack.enter_context(process([*command, "serve", "--port", str(port)], env, port))
        base = f"http://127.0.0.1:{port}"
        tokens = asyncio.run(provision(base, secret, n, 2))

        async def main() -> Result:
            connections: list[LiveConnection] = []
            async with aiohttp.ClientSession() as session:

                async def negotiate(
                    room: int, role: str, index: int, pc: RTCPeerConnection
                ) -> None:
                    conn = await LiveConnection.open(
                        session,
                        base,
                        "/live",
                        {"token": tokens[(room, role, index)]},
                        lambda e, d: None,
                    )
                    connections.append(conn)
                    await pc.setLocalDescription(await pc.createOffer())
                    answer = await conn.call(
                        "rtc_offer", {"sdp": pc.localDescription.sdp, "type": "offer"}
                    )
                    await pc.setRemoteDescription(
                        RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
                    )

                result = await run("probelink", negotiate, n, args, [proc.pid], clip, voice)
                for conn in connections:
                    await conn.close()
                return result

        result = asyncio.run(main())
    # The server has stopped (its probes flushed): the relay's own share of each frame's latency.
    relay = relay_samples(samples)
    if relay:
        result.relay_measured = len(relay)
        result.relay_p50_ms = percentile(relay, 50)
        result.relay_p99_ms = percentile(relay, 99)
    return result


def bench_janus(
    args: argparse.Namespace, n: int, clip: Any, voice: list[bytes], workdir: Path
) -> Result:
    janus_videoroom.ensure_installed()
    port = free_port()
    folder = workdir / f"janus-{n}-{secrets.token_hex(3)}"
    config = janus_videoroom.write_config(folder, port)
    with ExitStack() as stack:
        command = [janus_videoroom.JANUS, "-C", str(config), "-F", str(folder)]
        proc = stack.enter_context(process(command, dict(os.environ), port))
        base = f"http://127.0.0.1:{port}/janus"

        async def main() -> Result:
            async with aiohttp.ClientSession() as http:
                feeds: dict[int, int] = {}

                async def negotiate(
                    room: int, role: str, index: int, pc: RTCPeerConnection
                ) -> None:
                    handle = await janus_videoroom.JanusHandle.open(http, base)
                    if role == "operator":
                        feeds[room] = await handle.publish(1000 + room, pc)
                    else:
                        await handle.subscribe(1000 + room, feeds[room], pc)

                return await run(
                    "janus", negotiate, n, args, [proc.pid], clip, voice, experts_offer=False
                )

        return asyncio.run(main())


def continuous_decode_cost(clip: tuple[list[bytes], list[bool]], loops: int = 5) -> float:
    """% of one core that decoding one 720p30 publisher continuously would take."""
    decoder = av.CodecContext.create("vp8", "r")
    start = time.process_time()
    frames = 0
    for _ in range(loops):
        for data in clip[0]:
            frames += len(decoder.decode(av.Packet(data)))
    seconds_per_frame = (time.process_time() - start) / max(1, frames)
    return 100 * seconds_per_frame * FPS


def table(results: list[Result]) -> str:
    lines = [
        "| relay | consultations | server CPU % | CPU % per stream | vs MediaRelay | frames delivered | latency p50 / p99 ms | relay-only p50 / p99 ms | server RSS MiB | generator CPU % | machine CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        base = next(
            (b for b in results if b.name == "mediarelay" and b.consultations == r.consultations),
            None,
        )
        ratio = (
            f"{base.cpu_percent_per_stream / r.cpu_percent_per_stream:.0f}× less"
            if base and r.name != "mediarelay" and r.cpu_percent_per_stream
            else "-"
        )
        janus = [j for j in results if j.name == "janus" and j.consultations == r.consultations]
        if janus and r.name == "probelink":
            per_stream = statistics.median(j.cpu_percent_per_stream for j in janus)
            ratio = f"{r.cpu_percent_per_stream / per_stream:.2f}× Janus (median)"
        delivered = 100 * r.video_frames_delivered / max(1, r.video_frames_expected)
        latency = (
            f"{r.latency_p50_ms:.1f} / {r.latency_p99_ms:.1f}"
            if r.latency_measured
            else "n/a (re-encoded)"
        )
        relay = f"{r.relay_p50_ms:.2f} / {r.relay_p99_ms:.2f}" if r.relay_measured else "-"
        lines.append(
            f"| {r.name} | {r.consultations} | {r.server_cpu_percent:.1f} | {r.cpu_percent_per_stream:.2f} | {ratio} "
            f"| {delivered:.1f}% | {latency} | {relay} | {r.server_rss_mib:.0f} | {r.generator_cpu_percent:.0f} | {r.machine_cpu_percent:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--consultations", default="1,2,5", help="comma-separated counts")
    parser.add_argument(
        "--relays",
        default="mediarelay,probelink",
        help="comma-separated: mediarelay, probelink, janus",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each relay, alternated, per count"
    )
    parser.add_argument(
        "--expert-voice",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="experts send their voice (Janus's subscribers cannot: compare it without)",
    )
    parser.add_argument(
        "--mediarelay-max", type=int, default=2, help="largest count to run MediaRelay at"
    )
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--relay-latency",
        action="store_true",
        help="probe the server: the relay's own latency per frame (load_tests/relay_latency.py)",
    )
    args = parser.parse_args()
    receive.install()  # the experts count encoded frames; nothing in the generator decodes
    log("encoding the 720p clip and the voice once")
    clip, voice = encode_clip(), encode_voice()
    log(
        f"clip: {len(clip[0])} frames, {8 * sum(map(len, clip[0])) / CLIP_SECONDS / 1e6:.2f} Mbit/s"
    )
    decode_cost = continuous_decode_cost(clip)
    log(f"decoding one 720p30 publisher continuously: {decode_cost:.1f}% of a core")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        log(f"work directory {tmp}")
        relays = args.relays.split(",")
        for n in [int(c) for c in args.consultations.split(",")]:
            for round_ in range(args.rounds):
                for relay in relays:
                    if relay == "mediarelay" and n > args.mediarelay_max:
                        continue
                    if relay == "mediarelay":
                        results.append(bench_mediarelay(args, n, clip, voice))
                    elif relay == "janus":
                        results.append(bench_janus(args, n, clip, voice, Path(tmp)))
                    else:
                        results.append(bench_probelink(args, n, clip, voice, Path(tmp)))
                    log(f"{relay} with {n}, round {round_ + 1}/{args.rounds}: done")
    print(table(results))
    print(
        f"\nContinuous decode of one 720p30 VP8 publisher (for captures): {decode_cost:.1f}% of a core"
    )
    if args.json:
        write_results(args.json, args, results, continuous_decode_percent=decode_cost)


if __name__ == "__main__":
    main()
