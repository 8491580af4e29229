"""Refusal flood benchmark: a valid request's latency while clients send garbage tokens.

A real `probelink serve` (SQLite, the embedded default). First, quiet: one client makes valid
requests (`GET /api/consultations` with a coordinator token) one after the other. Then, flooded:
`--attackers` clients send the same request with a garbage token, as fast as they are answered
or at `--rate` requests per second in all, while the one client keeps making valid requests. Reported: the valid requests' median and p90
latency, quiet and flooded, their ratio, and how many refusals the flood got answered; with
`--baseline REV`, the same against that commit's server, side by side.

    .venv/bin/python load_tests/refusal_bench.py --seconds 10 --attackers 20 --baseline 6b96257
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "load_tests"))

from servers import Server  # noqa: E402
from signaling_bench import (  # noqa: E402
    baseline_checkout,
    log,
    percentile,
    probelink_env,
    write_results,
)

from server.auth import Role, TokenPolicy, issue_token  # noqa: E402
from server.keyring import from_secret  # noqa: E402

SECRET = "refusal-bench-secret-0123456789abcdef"
PATH = "/api/consultations"


@dataclass
class Result:
    server: str
    quiet_median_ms: float
    quiet_p90_ms: float
    flooded_median_ms: float
    flooded_p90_ms: float
    ratio: float
    refusals_answered: int


async def valid_latencies(http: aiohttp.ClientSession, url: str, until: float) -> list[float]:
    token = issue_token(
        from_secret(SECRET),
        TokenPolicy("probelink", "probelink", 30, 30 * 86400),
        sub="bench",
        role=Role.COORDINATOR,
        ttl_seconds=3600,
    )
    headers = {"Authorization": f"Bearer {token}"}
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        async with http.get(url + PATH, headers=headers) as response:
            assert response.status == 200, response.status
            await response.read()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def attacker(http: aiohttp.ClientSession, url: str, until: float, interval: float) -> int:
    """Garbage-token requests, one every `interval` s (0: as fast as they are answered)."""
    answered = 0
    headers = {"Authorization": "Bearer not-a-token"}
    due = time.monotonic()
    while time.monotonic() < until:
        async with http.get(url + PATH, headers=headers) as response:
            await response.read()
            answered += response.status == 401
        due += interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    return answered


async def measure(label: str, server: Server, args: argparse.Namespace) -> Result:
    async with aiohttp.ClientSession() as http:
        quiet = await valid_latencies(http, server.url, time.monotonic() + args.seconds)
        until = time.monotonic() + args.seconds
        interval = args.attackers / args.rate if args.rate else 0.0
        flood = [
            asyncio.create_task(attacker(http, server.url, until, interval))
            for _ in range(args.attackers)
        ]
        await asyncio.sleep(0.5)  # the flood is under way
        flooded = await valid_latencies(http, server.url, until)
        answered = sum(await asyncio.gather(*flood))
    result = Result(
        label,
        round(statistics.median(quiet), 1),
        round(percentile(quiet, 90), 1),
        round(statistics.median(flooded), 1),
        round(percentile(flooded, 90), 1),
        round(statistics.median(flooded) / statistics.median(quiet), 1),
        answered,
    )
    log(f"  {result}")
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--attackers", type=int, default=20)
    parser.add_argument(
        "--rate", type=float, default=0, help="refused requests per second in all (0: flat out)"
    )
    parser.add_argument("--baseline", help="also run against this commit's server (a worktree)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="refusal-bench-")))
        roots: list[tuple[str, Path | None]] = [("probelink", None)]
        if args.baseline:
            roots.insert(
                0, (f"baseline {args.baseline}", baseline_checkout(args.baseline, workdir, stack))
            )
        for label, root in roots:
            log(
                f"{label}: {args.seconds} s quiet, {args.seconds} s with {args.attackers} attackers"
            )
            env = probelink_env(workdir / label.replace(" ", "-"), SECRET)
            with Server(env, cwd=root) as server:
                results.append(await measure(label, server, args))
    for r in results:
        print(
            f"{r.server:<20} quiet {r.quiet_median_ms} ms (p90 {r.quiet_p90_ms}),"
            f" flooded {r.flooded_median_ms} ms (p90 {r.flooded_p90_ms}), x{r.ratio},"
            f" {r.refusals_answered} refusals answered"
        )
    if args.json:
        write_results(args.json, args, results)


if __name__ == "__main__":
    asyncio.run(main())
