"""Real aiortc peers for media tests: an operator bot whose frames carry a counter, an expert bot.

The bots' receivers yield encoded frames (`receive.install()`, process-wide: the relay's own
receivers hand on packets and decode nothing); the bots decode what they need themselves.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import time
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from live_client import Participant

from server.media.hooks import receive
from server.media.hooks.receive import on_keyframe_request

WIDTH, HEIGHT = 320, 240
COUNTER_BITS = 12
FPS = 30
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)

receive.install()


def counter_image(n: int) -> np.ndarray:
    """A grey frame with the counter drawn as big black/white blocks (survives lossy coding)."""
    image = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    block = WIDTH // COUNTER_BITS
    for bit in range(COUNTER_BITS):
        value = 255 if (n >> bit) & 1 else 0
        image[HEIGHT // 4 : 3 * HEIGHT // 4, bit * block + 4 : (bit + 1) * block - 4] = value
    return image


def read_counter(frame: av.VideoFrame) -> int:
    gray = frame.to_ndarray(format="gray")
    block = WIDTH // COUNTER_BITS
    return sum(
        1 << bit for bit in range(COUNTER_BITS) if gray[HEIGHT // 2, bit * block + block // 2] > 128
    )


class CounterVideoTrack(MediaStreamTrack):
    """Encodes counter frames with VP8 itself and hands the sender packets (no encoder there)."""

    kind = "video"

    def __init__(self, start: int = 0, keyframe_interval: int = 10_000):
        super().__init__()
        self.n = start
        self.encoder = av.CodecContext.create("libvpx", "w")
        self.encoder.width, self.encoder.height = WIDTH, HEIGHT
        self.encoder.pix_fmt = "yuv420p"
        self.encoder.time_base = VIDEO_TIME_BASE
        self.encoder.bit_rate = 800_000
        self.encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        self.keyframe_interval = keyframe_interval
        self.force_keyframe = True
        self.keyframe_requests = 0
        # counter -> sha256 of the encoded frame sent
        self.sent: dict[int, str] = {}
        self.started = time.monotonic()
        self.produced = 0

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        self.force_keyframe = True

    async def recv(self) -> Any:
        while True:
            self.produced += 1
            due = self.started + self.produced / FPS
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.n += 1
            frame = av.VideoFrame.from_ndarray(counter_image(self.n), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts = self.n * (90000 // FPS)
            frame.time_base = VIDEO_TIME_BASE
            if self.force_keyframe or self.n % self.keyframe_interval == 0:
                frame.pict_type = av.video.frame.PictureType.I
                self.force_keyframe = False
            packets = self.encoder.encode(frame)
            if packets:
                packet = packets[0]
                packet.pts = frame.pts
                packet.time_base = VIDEO_TIME_BASE
                self.sent[self.n] = hashlib.sha256(bytes(packet)).hexdigest()
                return packet


class Bot:
    """One participant: Socket.IO for signaling and an aiortc peer connection for media."""

    def __init__(self, participant: Participant):
        self.participant = participant
        self.pc = RTCPeerConnection()
        # kind -> encoded packets received, in order
        self.received: dict[str, list[Any]] = {"video": [], "audio": []}
        self.readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                self.received[track.kind].append(await track.recv())
        except Exception:
            return

    async def negotiate(self) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.participant.call(
            "rtc_offer", {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        )
        if "error" not in answer:
            await self.pc.setRemoteDescription(RTCSessionDescription(**answer))
        return answer  # type: ignore[no-any-return]

    async def wait_packets(self, kind: str, count: int, within: float = 20) -> list[Any]:
        deadline = time.monotonic() + within
        while len(self.received[kind]) < count:
            assert time.monotonic() < deadline, f"only {len(self.received[kind])} {kind} packets"
            await asyncio.sleep(0.05)
        return self.received[kind]

    async def close(self) -> None:
        await self.pc.close()
        for reader in self.readers:
            reader.cancel()
        await self.participant.close()


async def operator_bot(participant: Participant, track: CounterVideoTrack) -> Bot:
    bot = Bot(participant)
    video = bot.pc.addTransceiver(track, direction="sendonly")
    on_keyframe_request(video.sender, track.request_keyframe)
    bot.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")  # voice out, experts' in
    return bot


async def expert_bot(participant: Participant, voice: bool = True) -> Bot:
    bot = Bot(participant)
    bot.pc.addTransceiver("video", direction="recvonly")
    if voice:
        bot.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    else:
        bot.pc.addTransceiver("audio", direction="recvonly")
    return bot


def decode_counters(packets: list[Any]) -> list[int]:
    """Decode VP8 packets (from the first keyframe) and read each frame's counter."""
    decoder = av.CodecContext.create("vp8", "r")
    counters = []
    started = False
    for packet in packets:
        started = started or packet.is_keyframe
        if not started:
            continue
        for frame in decoder.decode(av.Packet(bytes(packet))):
            counters.append(read_counter(frame))
    return counters


class CounterFrameTrack(MediaStreamTrack):
    """Raw counter frames: the bot's own aiortc sender encodes them (any codec)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.started = time.monotonic()

    async def recv(self) -> Any:
        self.n += 1
        await asyncio.sleep(max(0.0, self.started + self.n / FPS - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(
            counter_image(self.n % (1 << COUNTER_BITS)), format="rgb24"
        )
        frame.pts = self.n * (90000 // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame


def prefer_codec(transceiver: Any, mime_type: str) -> None:
    from aiortc import RTCRtpSender

    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == mime_type]
    )


def decode_counters_with(codec: str, packets: list[Any]) -> list[int]:
    decoder = av.CodecContext.create(codec, "r")
    counters = []
    for packet in packets:
        try:
            frames = decoder.decode(av.Packet(bytes(packet)))
        except av.FFmpegError:
            continue  # before the first keyframe
        counters.extend(read_counter(frame) for frame in frames)
    return counters
