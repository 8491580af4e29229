"""The latency the relay itself adds to a video frame: last packet in → first packet out.

`python load_tests/relay_latency.py SAMPLES serve --port N` runs `probelink serve` with three
probes on aiortc 1.16.0 (the version the forwarding hook is pinned to), measured in the server
process with one clock (`time.perf_counter`):

- in: a video receiver starts handling the RTP packet with the marker bit (the frame's last
  packet), after SRTP unprotect and parsing; the frame completes inline in that call and is
  keyed by its bytes (the forwarded packet carries the same bytes);
- out: a video sender sends the first packet of that frame (the first `_send_rtp` after its
  `pack`, in the sender's own task, before SRTP protect).

Each forwarded copy is one sample (two experts: two per frame). Frames are keyed by their
bytes: a looped clip repeats them every loop, so a copy delayed by more than a loop would be
matched to the later arrival (not seen at these latencies: p99 is milliseconds). Samples go to SAMPLES as JSON
lines of milliseconds; `relay_samples(path)` reads them back. The media benchmark uses this with
`--relay-latency`.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

IN_MAX_FRAMES = 4096  # frames remembered awaiting their copies (a few seconds of 30 fps, all rooms)
FLUSH_EVERY_SAMPLES = 200


def install_probes(samples: Path) -> None:
    from aiortc import RTCDtlsTransport, RTCRtpReceiver
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    from server.media.hooks.receive import PassthroughDecoder

    # Frames seen complete, by their bytes: when their last packet arrived.
    arrived: OrderedDict[int, float] = OrderedDict()
    # Set while a video receiver handles a marker packet (the frame completes inline in it).
    marker_at: contextvars.ContextVar[float | None] = contextvars.ContextVar("marker", default=None)
    # Set in a sender's task once it has packed a frame, until its first packet is sent.
    pending: contextvars.ContextVar[int | None] = contextvars.ContextVar("pending", default=None)
    lock = threading.Lock()
    buffer: list[float] = []
    sink = samples.open("a")

    def note(ms: float) -> None:
        with lock:
            buffer.append(ms)
            if len(buffer) >= FLUSH_EVERY_SAMPLES:
                sink.write("".join(json.dumps(v) + "\n" for v in buffer))
                sink.flush()
                buffer.clear()

    handle = RTCRtpReceiver._handle_rtp_packet

    async def handle_rtp_packet(self: Any, packet: Any, arrival_time_ms: int) -> None:
        video = getattr(self, "_RTCRtpReceiver__kind", None) == "video"
        token = marker_at.set(time.perf_counter() if packet.marker and video else None)
        try:
            await handle(self, packet, arrival_time_ms)
        finally:
            marker_at.reset(token)

    decode = PassthroughDecoder.decode

    def passthrough(self: Any, encoded_frame: Any) -> list[Any]:
        started = marker_at.get()
        if started is not None:
            arrived[hash(encoded_frame.data)] = started
            while len(arrived) > IN_MAX_FRAMES:
                arrived.popitem(last=False)
        return decode(self, encoded_frame)

    def packing(pack: Any) -> Any:
        def packed(self: Any, packet: Any) -> Any:
            pending.set(hash(bytes(packet)))
            return pack(self, packet)

        return packed

    send_rtp = RTCDtlsTransport._send_rtp

    async def send(self: Any, data: bytes) -> None:
        key = pending.get()
        if key is not None:
            pending.set(None)
            started = arrived.get(key)
            if started is not None:
                note(1000 * (time.perf_counter() - started))
        await send_rtp(self, data)

    RTCRtpReceiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    PassthroughDecoder.decode = passthrough  # type: ignore[method-assign]
    Vp8Encoder.pack = packing(Vp8Encoder.pack)  # type: ignore[method-assign]
    H264Encoder.pack = packing(H264Encoder.pack)  # type: ignore[method-assign]
    RTCDtlsTransport._send_rtp = send  # type: ignore[method-assign]

    def flush_at_exit() -> None:
        with lock:
            sink.write("".join(json.dumps(v) + "\n" for v in buffer))
            sink.close()

    atexit.register(flush_at_exit)


def relay_samples(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [float(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install_probes(Path(sys.argv[1]))
    from server.cli import main

    raise SystemExit(main(sys.argv[2:]))
