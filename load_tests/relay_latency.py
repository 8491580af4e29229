"""The latency the relay itself adds to a video packet: in (parsed) → out (before SRTP protect).

`python load_tests/relay_latency.py SAMPLES serve --port N` runs `probelink serve` with two
probes, measured in the server process with one clock (`time.perf_counter`):

- in: the relay's source starts handling the video packet with the marker bit (a frame's last
  packet), after SRTP unprotect, parsing, receive statistics and NACKs;
- out: a subscriber's sender starts sending that packet (before SRTP protect and `sendto`).

The relay forwards each packet inline, so both happen in the same call: each forwarded copy is
one sample (two experts: two per frame). Samples go to SAMPLES as JSON lines of milliseconds;
`relay_samples(path)` reads them back. The media benchmark uses this with `--relay-latency`.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

FLUSH_EVERY_SAMPLES = 200


def install_probes(samples: Path) -> None:
    from server.media.fanout import Source
    from server.media.hooks.packets import PacketSender

    # Set while the relay's source handles a video packet with the marker bit.
    entered: contextvars.ContextVar[float | None] = contextvars.ContextVar("in", default=None)
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

    on_packet = Source.on_packet

    async def probed_on_packet(self: Any, packet: Any, codec: Any) -> None:
        video_marker = packet.marker and self.kind == "video"
        token = entered.set(time.perf_counter() if video_marker else None)
        try:
            await on_packet(self, packet, codec)
        finally:
            entered.reset(token)

    send = PacketSender.send

    async def probed_send(self: Any, marker: bool, seq: int, ts: int, payload: bytes) -> None:
        started = entered.get()
        if started is not None:
            note(1000 * (time.perf_counter() - started))
        await send(self, marker, seq, ts, payload)

    Source.on_packet = probed_on_packet  # type: ignore[method-assign]
    PacketSender.send = probed_send  # type: ignore[method-assign]

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
