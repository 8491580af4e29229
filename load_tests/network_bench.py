"""Network benchmark: the live picture at the expert, Chromium → relay → Chromium, on impaired links.

A real `probelink serve`, a Chromium bedside publishing a 1280x720 fake camera (a moving-speckle
phantom, `tests/phantom.py`, consecutive frames correlated like a real scan) and a Chromium expert
watching it. The bedside's browser runs inside a network namespace this script makes (a veth
pair, 10.203.0.2 in the namespace, 10.203.0.1 here; no default route, so it reaches nothing but
the server), where its link is impaired:

  clean         no impairment
  4mbit …       `tc tbf` caps both directions of the bedside's link
  loss1 …       an `nftables` `numgen random` rule drops that share of the bedside's packets
                (both directions)
  outage        the bedside's link drops everything for 5 s, 15 s after going live

(`netem` is not available on these machines; delay is not emulated.) Everything is torn down
after each scenario, and the namespace is deleted on exit.

Per scenario, measured in the pages (frames the expert's `<video>` presented, through
`requestVideoFrameCallback`; the browsers' own `getStats`): time from going live to the first
frame at the expert and to the first second at ≥ 25 fps at 1280x720; median and p10 frames/s and
the resolution seen, from 5 s after going live; freeze count and total freeze duration
(`freezeCount`, `totalFreezesDuration`); the bedside's send rate, its encoder target and its
bandwidth estimate; after the outage, the time from the link's return to the first frame, and to
the first second at ≥ 15 fps; whether the expert page showed its below-quality banner or its
frozen overlay.

    sudo .venv/bin/python load_tests/network_bench.py --seconds 30 --json /tmp/network.json
    sudo .venv/bin/python load_tests/network_bench.py --scenarios clean,2mbit --seconds 20

Needs root (namespaces, tc, nft), Debian's chromium, and the [test] extras (Playwright).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "load_tests"))

from browser import CHROMIUM, CHROMIUM_ARGS, RECORD_PEER_CONNECTIONS, write_y4m  # noqa: E402
from netns import Namespace  # noqa: E402
from phantom import BREAST_REQUEST, PHANTOM_DEVICE, moving_speckle_frames  # noqa: E402
from servers import Server, cli_env, free_port, live_session  # noqa: E402
from signaling_bench import baseline_checkout, log, percentile, write_results  # noqa: E402

NAMESPACE = "probelink-bench"
HOST_IP = "10.203.0.1"
# The second expert's own network, in the scenarios that have one.
EXPERT_NAMESPACE = "probelink-bench-expert"
EXPERT_HOST_IP = "10.203.1.1"
OUTAGE_AT_SECONDS = 15
OUTAGE_SECONDS = 5
WARMUP_SECONDS = 5
GOOD_FPS = 25
RECOVERED_FPS = 15
SCENARIOS: dict[str, dict[str, Any]] = {
    "clean": {},
    "4mbit": {"rate_kbit": 4000},
    "2mbit": {"rate_kbit": 2000},
    "1mbit": {"rate_kbit": 1000},
    "0.5mbit": {"rate_kbit": 500},
    "loss1": {"loss_percent": 1},
    "loss3": {"loss_percent": 3},
    "loss5": {"loss_percent": 5},
    "outage": {"outage": True},
    # A second expert whose downlink carries 1 Mbit/s: what it costs the first one.
    "expert2-1mbit": {"expert2_kbit": 1000},
    # ... and one whose link carries 1.5 Mbit/s (above the floor): the bedside should follow it.
    "expert2-1.5mbit": {"expert2_kbit": 1500},
    # A second expert whose link loses 3 % both ways: repaired by the relay's retransmissions.
    "expert2-loss3": {"expert2_loss_percent": 3},
    # Two experts on clean links, and with the bedside's uplink at 1.5 Mbit/s: what simulcast
    # (sent while two watch) costs the bedside's uplink and the picture.
    "expert2-clean": {"expert2": True},
    "expert2-uplink1.5mbit": {"expert2": True, "rate_kbit": 1500},
}

# Every page records each RTCPeerConnection it makes (`window.__pcs`), and the expert's video
# each frame it presents: [wall-clock ms, width, height].
INIT_SCRIPT = (
    RECORD_PEER_CONNECTIONS
    + """
(() => {
  window.__frames = [];
  document.addEventListener("DOMContentLoaded", () => {
    const video = document.getElementById("video");
    if (!video || !video.requestVideoFrameCallback) return;
    const tick = (now, meta) => {
      window.__frames.push([performance.timeOrigin + now, meta.width, meta.height]);
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  });
})();
"""
)

# The newest peer connection's figures: what a page's own statistics say.
STATS_SCRIPT = """
async () => {
  const out = { at: Date.now(), pcs: window.__pcs.length };
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!pc || pc.connectionState === "closed") return out;
  out.state = pc.connectionState;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.kind === "video" && s.type === "outbound-rtp") {
      // With simulcast, one per layer: the rates summed, the picture's figures the largest's.
      const add = (key, value) => { out[key] = (out[key] || 0) + (value || 0); };
      add("bytesSent", s.bytesSent);
      add("targetBitrate", s.targetBitrate);
      add("nackIn", s.nackCount);
      add("pliIn", s.pliCount);
      add("retransmitted", s.retransmittedBytesSent);
      if ((s.frameWidth || 0) >= (out.sentWidth || 0)) {
        Object.assign(out, { sentWidth: s.frameWidth, sentHeight: s.frameHeight,
          sentFps: s.framesPerSecond, framesEncoded: s.framesEncoded, qpSum: s.qpSum,
          limitation: s.qualityLimitationReason });
      }
    }
    if (s.kind === "video" && s.type === "inbound-rtp") {
      Object.assign(out, { bytesReceived: s.bytesReceived, framesDecoded: s.framesDecoded,
        freezeCount: s.freezeCount, freezeSeconds: s.totalFreezesDuration,
        lost: s.packetsLost, nackOut: s.nackCount, pliOut: s.pliCount,
        width: s.frameWidth, height: s.frameHeight });
    }
    if (s.kind === "video" && s.type === "remote-inbound-rtp") {
      Object.assign(out, { remoteLost: s.packetsLost, remoteFraction: s.fractionLost });
    }
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      out.estimate = s.availableOutgoingBitrate;
      out.rtt = s.currentRoundTripTime;
    }
  });
  const banner = document.getElementById("quality-banner");
  const frozen = document.getElementById("frozen");
  out.banner = !!banner && !banner.classList.contains("hidden");
  out.frozen = !!frozen && !frozen.classList.contains("hidden");
  return out;
}
"""


@dataclass
class Result:
    scenario: str
    server: str  # "probelink" (this checkout) or "baseline" (--baseline's commit)
    first_frame_s: float | None = None
    good_at_s: float | None = None
    fps_median: float | None = None
    fps_p10: float | None = None
    resolution: str = ""
    share_720p: float | None = None
    freeze_count: int | None = None
    freeze_seconds: float | None = None
    send_kbit_median: float | None = None
    target_kbit_median: float | None = None
    estimate_kbit_median: float | None = None
    limitation: str = ""
    banner_seconds: int = 0
    frozen_seconds: int = 0
    recovered_first_frame_s: float | None = None
    recovered_fps_s: float | None = None
    # The second expert (on its own impaired link), in the scenarios that have one.
    expert2: dict[str, Any] | None = None


def cli(server: Server, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def per_second_fps(frames: list[list[float]], start_ms: float, end_ms: float) -> list[int]:
    seconds = int((end_ms - start_ms) // 1000)
    counts = [0] * max(0, seconds)
    for at, _w, _h in frames:
        index = int((at - start_ms) // 1000)
        if 0 <= index < seconds:
            counts[index] += 1
    return counts


def summarize(
    name: str,
    label: str,
    live_ms: float,
    end_ms: float,
    frames: list[list[float]],
    expert: list[dict[str, Any]],
    bedside: list[dict[str, Any]],
    outage_end_ms: float | None,
) -> Result:
    result = Result(name, label)
    frames = [f for f in frames if f[0] >= live_ms]
    if frames:
        result.first_frame_s = round((frames[0][0] - live_ms) / 1000, 2)
    counts = per_second_fps(frames, live_ms, end_ms)
    full = [
        i
        for i in range(len(counts))
        if counts[i] >= GOOD_FPS
        and any(f[1] == 1280 and f[2] == 720 and int((f[0] - live_ms) // 1000) == i for f in frames)
    ]
    result.good_at_s = float(full[0]) if full else None
    window = counts[WARMUP_SECONDS:]
    if outage_end_ms is not None:
        # Outside the outage and its recovery: the outage is measured on its own.
        skip = range(OUTAGE_AT_SECONDS, OUTAGE_AT_SECONDS + OUTAGE_SECONDS + 3)
        window = [c for i, c in enumerate(counts) if i >= WARMUP_SECONDS and i not in skip]
    if window:
        result.fps_median = statistics.median(window)
        result.fps_p10 = round(percentile([float(c) for c in window], 10), 1)
    measured = [f for f in frames if f[0] >= live_ms + WARMUP_SECONDS * 1000]
    if measured:
        sizes: dict[str, int] = {}
        for _at, w, h in measured:
            sizes[f"{int(w)}x{int(h)}"] = sizes.get(f"{int(w)}x{int(h)}", 0) + 1
        result.resolution = max(sizes, key=lambda s: sizes[s])
        result.share_720p = round(sizes.get("1280x720", 0) / len(measured), 3)
    last = expert[-1] if expert else {}
    result.freeze_count = last.get("freezeCount")
    result.freeze_seconds = last.get("freezeSeconds")
    rates, targets, estimates, limits = [], [], [], {}
    for before, after in itertools.pairwise(bedside):
        if after["at"] < live_ms + WARMUP_SECONDS * 1000:
            continue
        if (
            "bytesSent" in after
            and "bytesSent" in before
            and after["bytesSent"] >= before["bytesSent"]
        ):
            rates.append(
                8 * (after["bytesSent"] - before["bytesSent"]) / (after["at"] - before["at"])
            )
        if after.get("targetBitrate"):
            targets.append(after["targetBitrate"] / 1000)
        if after.get("estimate"):
            estimates.append(after["estimate"] / 1000)
        if after.get("limitation"):
            limits[after["limitation"]] = limits.get(after["limitation"], 0) + 1
    result.send_kbit_median = round(statistics.median(rates)) if rates else None
    result.target_kbit_median = round(statistics.median(targets)) if targets else None
    result.estimate_kbit_median = round(statistics.median(estimates)) if estimates else None
    result.limitation = ",".join(f"{k}:{v}" for k, v in sorted(limits.items()))
    result.banner_seconds = sum(1 for s in expert if s.get("banner"))
    result.frozen_seconds = sum(1 for s in expert if s.get("frozen"))
    if outage_end_ms is not None:
        after = [f for f in frames if f[0] >= outage_end_ms]
        if after:
            result.recovered_first_frame_s = round((after[0][0] - outage_end_ms) / 1000, 2)
        tail = per_second_fps(after, outage_end_ms, end_ms)
        # The first whole second, after the link returned, with the picture back at a usable rate.
        good = [i for i, c in enumerate(tail) if c >= RECOVERED_FPS]
        result.recovered_fps_s = float(good[0] + 1) if good else None
    return result


def netns_chromium(workdir: Path, net: Namespace) -> Path:
    """An executable that starts Chromium inside a namespace."""
    wrapper = workdir / f"chromium-in-{net.name}"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(net.exec_prefix())} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@dataclass
class Page:
    """A participant's page and the statistics sampled from it every second."""

    role: str
    page: Any
    stats: list[dict[str, Any]] = field(default_factory=list)

    async def sample(self) -> dict[str, Any]:
        self.stats.append(await self.page.evaluate(STATS_SCRIPT))
        return self.stats[-1]


async def scenario(
    name: str,
    spec: dict[str, Any],
    args: argparse.Namespace,
    camera: Path,
    workdir: Path,
    nets: tuple[Namespace, Namespace],
    server_root: Path | None = None,
) -> Result:
    """One run of a scenario against the server of `server_root` (default: this checkout)."""
    from playwright.async_api import async_playwright

    net, expert_net = nets
    data = Path(tempfile.mkdtemp(dir=workdir))
    port = free_port()
    # The namespaces reach the server over host-only links, in plain HTTP (a LAN demo's setup).
    insecure_lan = {"PROBELINK_ALLOW_INSECURE_PUBLIC_URL": "1"}
    env = cli_env(data, **{**insecure_lan, **dict(kv.split("=", 1) for kv in args.env)})
    server = Server(env, port=port, host=HOST_IP, cwd=server_root)
    with server:
        coordinator = cli(server, "token", "--role", "coordinator", "--sub", "bench")
        request = {**BREAST_REQUEST, "device": PHANTOM_DEVICE}
        second = spec.get("expert2") or spec.get("expert2_kbit") or spec.get("expert2_loss_percent")
        experts_wanted = 2 if second else 1
        operator, *experts = live_session(server, coordinator, request, experts_wanted)
        base = f"http://{HOST_IP}:{port}"
        browser_args = [
            *CHROMIUM_ARGS,
            f"--use-file-for-fake-video-capture={camera}",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            f"--unsafely-treat-insecure-origin-as-secure={base}",
        ]
        async with async_playwright() as playwright:
            executables = [netns_chromium(workdir, net), CHROMIUM]
            if second:
                executables.append(netns_chromium(workdir, expert_net))
            browsers = [
                await playwright.chromium.launch(
                    executable_path=e, headless=True, args=browser_args
                )
                for e in executables
            ]
            try:
                pages = []
                for browser, role in zip(browsers, ["bedside", "expert", "expert2"], strict=False):
                    context = await browser.new_context(viewport={"width": 1280, "height": 900})
                    await context.add_init_script(INIT_SCRIPT)
                    pages.append(Page(role, await context.new_page()))
                bedside, *watching = pages
                for page, token in zip(watching, experts, strict=True):
                    await page.page.goto(f"{base}/expert#token={token}")
                await bedside.page.goto(f"{base}/bedside#token={operator}")
                await bedside.page.wait_for_function(
                    "() => document.getElementById('video').videoWidth === 1280", timeout=30_000
                )
                if spec.get("rate_kbit"):
                    net.shape(spec["rate_kbit"])
                if spec.get("loss_percent"):
                    net.drop(spec["loss_percent"] * 10)
                if spec.get("expert2_kbit"):
                    expert_net.shape(spec["expert2_kbit"])
                if spec.get("expert2_loss_percent"):
                    expert_net.drop(spec["expert2_loss_percent"] * 10)
                live_ms = time.time() * 1000
                await bedside.page.click("#go-live")
                outage_end_ms = None
                for second in range(args.seconds):
                    if spec.get("outage") and second == OUTAGE_AT_SECONDS:
                        net.drop(1000)
                    if spec.get("outage") and second == OUTAGE_AT_SECONDS + OUTAGE_SECONDS:
                        net.undrop()
                        outage_end_ms = time.time() * 1000
                    for page in pages:
                        await page.sample()
                    if args.verbose:
                        log(f"  {name} t={second:2d} " + " | ".join(describe(p) for p in pages))
                    await asyncio.sleep(max(0.0, live_ms / 1000 + second + 1 - time.time()))
                end_ms = time.time() * 1000
                frames = [await p.page.evaluate("() => window.__frames") for p in watching]
            finally:
                # The next scenario starts from a clean link.
                for namespace in nets:
                    namespace.undrop()
                    namespace.unshape()
                for browser in browsers:
                    await browser.close()
    shutil.rmtree(data, ignore_errors=True)
    label = "baseline" if server_root is not None else "probelink"
    server_log = Path(tempfile.gettempdir()) / f"probelink-netbench-{name}-{label}.log"
    server_log.write_text(server.err)
    result = summarize(
        name, label, live_ms, end_ms, frames[0], watching[0].stats, bedside.stats, outage_end_ms
    )
    if len(watching) > 1:
        second_expert = summarize(
            name, label, live_ms, end_ms, frames[1], watching[1].stats, bedside.stats, None
        )
        result.expert2 = {
            "fps_median": second_expert.fps_median,
            "fps_p10": second_expert.fps_p10,
            "resolution": second_expert.resolution,
            "freeze_count": second_expert.freeze_count,
            "freeze_seconds": second_expert.freeze_seconds,
            "banner_seconds": second_expert.banner_seconds,
        }
    return result


def describe(page: Page) -> str:
    """One second of a page's figures, for --verbose."""
    s = page.stats[-1]
    if page.role == "bedside":
        return (
            f"bedside {s.get('sentWidth')}x{s.get('sentHeight')}@{s.get('sentFps')} "
            f"target={s.get('targetBitrate')} est={s.get('estimate')} nack={s.get('nackIn')} "
            f"pli={s.get('pliIn')} lim={s.get('limitation')} "
            f"lost@relay={s.get('remoteLost')} rtx={s.get('retransmitted')}"
        )
    return (
        f"{page.role} {s.get('width')}x{s.get('height')} freezes={s.get('freezeCount')} "
        f"pli={s.get('pliOut')} banner={s.get('banner')} frozen={s.get('frozen')}"
    )


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # the second expert
        return (
            f"{value['fps_median']} fps (p10 {value['fps_p10']}) {value['resolution']}, "
            f"{value['freeze_count']} freezes {value['freeze_seconds']} s, "
            f"banner {value['banner_seconds']} s"
        )
    return str(value)


def table(results: list[Result]) -> str:
    columns = [
        ("scenario", "scenario"),
        ("server", "server"),
        ("first frame s", "first_frame_s"),
        ("720p≥25 at s", "good_at_s"),
        ("fps med", "fps_median"),
        ("fps p10", "fps_p10"),
        ("resolution", "resolution"),
        ("720p share", "share_720p"),
        ("freezes", "freeze_count"),
        ("frozen s", "freeze_seconds"),
        ("send kbit/s", "send_kbit_median"),
        ("target kbit/s", "target_kbit_median"),
        ("estimate kbit/s", "estimate_kbit_median"),
        ("banner s", "banner_seconds"),
        ("recover frame s", "recovered_first_frame_s"),
        ("recover 15fps s", "recovered_fps_s"),
        ("limited by", "limitation"),
        ("2nd expert", "expert2"),
    ]
    rows = [[c for c, _ in columns]]
    for r in results:
        rows.append([cell(getattr(r, a)) for _, a in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seconds", type=int, default=30, help="per scenario, from going live")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="PROBELINK_X=VALUE",
        help="extra server setting (repeatable)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REVISION",
        help="also run each scenario against this commit's server (a git worktree), side by side",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--verbose", action="store_true", help="print the figures every second")
    args = parser.parse_args()
    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    if os.geteuid() != 0:
        parser.error("needs root: it makes a network namespace and shapes its link")
    if "outage" in names and args.seconds < OUTAGE_AT_SECONDS + OUTAGE_SECONDS + 8:
        parser.error(
            f"the outage scenario needs --seconds ≥ {OUTAGE_AT_SECONDS + OUTAGE_SECONDS + 8}"
        )
    results = []
    with contextlib.ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="probelink-netbench-"))
        )
        log("writing the 1280×720 moving-speckle camera (5 s, looped)")
        camera = write_y4m(
            workdir / "speckle.y4m", moving_speckle_frames(1280, 720, 150), 1280, 720
        )
        roots: list[Path | None] = [None]
        if args.baseline:
            roots.insert(0, baseline_checkout(args.baseline, workdir, stack))
        net = stack.enter_context(Namespace(NAMESPACE, HOST_IP))
        expert_net = stack.enter_context(Namespace(EXPERT_NAMESPACE, EXPERT_HOST_IP))
        expert_net.reach(HOST_IP)
        runs = [(name, root) for name in names for root in roots]
        for index, (name, root) in enumerate(runs, 1):
            who = "probelink" if root is None else f"baseline {args.baseline}"
            log(f"[{index}/{len(runs)}] {name} ({who}): {args.seconds} s")
            result = await scenario(
                name, SCENARIOS[name], args, camera, workdir, (net, expert_net), root
            )
            log(
                f"  fps median {result.fps_median}, {result.resolution}, "
                f"freezes {result.freeze_count}, sent {result.send_kbit_median} kbit/s"
            )
            results.append(result)
    print(table(results))
    if args.json:
        write_results(args.json, args, results)


if __name__ == "__main__":
    asyncio.run(main())
