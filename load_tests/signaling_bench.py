"""Signaling load test: many live rooms, the expert's pointer at 30 Hz, marks; latency, CPU, memory.

Runs, one after the other in the same invocation and on the same machine:
  baseline   a bare python-socketio relay (load_tests/echo_server.py)
  one-node   probelink serve, embedded defaults (SQLite, in-process Socket.IO)
  two-nodes  two probelink serve processes sharing PostgreSQL and Redis; each room's
             operator on node A, its experts on node B, so every pointer crosses Redis

Each room has one operator and EXPERTS experts; the first expert moves the pointer at HZ and
places a mark every MARK_INTERVAL seconds. Latency is send → receive at every other participant
(one clock: all participants live in this process). Usage:

    .venv/bin/python load_tests/signaling_bench.py --rooms 200 --hz 30 --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eio_client import LiveConnection
from procstat import cpu_seconds, rss_bytes

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import from_secret

NAMESPACE = "/live"
ROOT = Path(__file__).resolve().parent.parent
CONNECT_CONCURRENCY = 20
MEDIA_TS_MODULUS = 2**32


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(args: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    logfile = Path(tempfile.gettempdir()) / f"probelink-bench-{port}.log"
    log(f"server log: {logfile}")
    with logfile.open("wb") as sink:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Target:
    """Where the participants connect, and how they authenticate."""

    name: str
    node_for_operator: str
    node_for_experts: str
    pids: list[int]
    # auth(room, role, index) -> the Socket.IO auth payload
    auth: Callable[[int, str, int], dict[str, Any]]


@dataclass
class Result:
    name: str
    rooms: int
    hz: float
    seconds: float
    pointers_sent: int = 0
    pointer_deliveries_expected: int = 0
    pointer_deliveries: int = 0
    marks_sent: int = 0
    mark_deliveries: int = 0
    pointer_p50_ms: float = 0.0
    pointer_p95_ms: float = 0.0
    pointer_p99_ms: float = 0.0
    mark_p50_ms: float = 0.0
    mark_p99_ms: float = 0.0
    events_per_second: float = 0.0
    server_cpu_percent: float = 0.0
    server_rss_mib: float = 0.0
    generator_cpu_percent: float = 0.0
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]
        if len(values) > 1
        else values[0]
    )


async def run_load(
    target: Target,
    rooms: int,
    experts: int,
    hz: float,
    seconds: float,
    warmup: float,
    mark_interval: float,
) -> Result:
    result = Result(target.name, rooms, hz, seconds)
    pointer_sent: dict[tuple[int, int], float] = {}
    mark_sent: dict[tuple[int, int], float] = {}
    pointer_latency: list[float] = []
    mark_latency: list[float] = []
    measuring = False

    def receiver(room: int) -> Callable[[str, Any], None]:
        def on_event(event: str, data: Any) -> None:
            now = time.perf_counter()
            if not measuring or not isinstance(data, dict):
                return
            if event == "pointer":
                sent = pointer_sent.get((room, data.get("media_ts", -1)))
                if sent is not None:
                    pointer_latency.append(now - sent)
            elif event == "mark":
                sent = mark_sent.get((room, data.get("media_ts", -1)))
                if sent is not None:
                    mark_latency.append(now - sent)

        return on_event

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(url: str, room: int, role: str, index: int) -> LiveConnection:
            async with gate:
                return await LiveConnection.open(
                    session, url, NAMESPACE, target.auth(room, role, index), receiver(room)
                )

        log(f"{target.name}: connecting {rooms * (1 + experts)} participants")
        operators = await asyncio.gather(
            *(connect(target.node_for_operator, r, "operator", 0) for r in range(rooms))
        )
        pointing = await asyncio.gather(
            *(connect(target.node_for_experts, r, "expert", 0) for r in range(rooms))
        )
        others = await asyncio.gather(
            *(
                connect(target.node_for_experts, r, "expert", i)
                for r in range(rooms)
                for i in range(1, experts)
            )
        )
        log(f"{target.name}: connected; warming up {warmup:.0f} s, then measuring {seconds:.0f} s")
        period = 1.0 / hz
        stop_at = time.perf_counter() + warmup + seconds
        counters = {"pointers": 0, "marks": 0}

        async def point(room: int, conn: LiveConnection) -> None:
            await asyncio.sleep(period * room / rooms)  # spread the rooms over one period
            n = 0
            next_at = time.perf_counter()
            next_mark = next_at + mark_interval * (room / rooms)
            while (now := time.perf_counter()) < stop_at:
                n = (n + 1) % MEDIA_TS_MODULUS
                pointer_sent[(room, n)] = time.perf_counter()
                await conn.emit("pointer", {"x": (n % 100) / 100, "y": 0.5, "media_ts": n})
                if measuring:
                    counters["pointers"] += 1
                if now >= next_mark:
                    next_mark += mark_interval
                    mark_sent[(room, n)] = time.perf_counter()
                    await conn.emit(
                        "mark", {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]], "media_ts": n}
                    )
                    if measuring:
                        counters["marks"] += 1
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        tasks = [asyncio.create_task(point(r, c)) for r, c in enumerate(pointing)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu_start = sum(cpu_seconds(p) for p in target.pids)
        self_start = resource.getrusage(resource.RUSAGE_SELF)
        wall_start = time.perf_counter()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.5)  # let the last deliveries land
        wall = time.perf_counter() - wall_start
        measuring = False
        self_end = resource.getrusage(resource.RUSAGE_SELF)
        result.server_cpu_percent = (
            100 * (sum(cpu_seconds(p) for p in target.pids) - cpu_start) / wall
        )
        result.generator_cpu_percent = (
            100
            * (
                (self_end.ru_utime + self_end.ru_stime)
                - (self_start.ru_utime + self_start.ru_stime)
            )
            / wall
        )
        result.server_rss_mib = sum(rss_bytes(p) for p in target.pids) / 2**20
        result.pointers_sent = counters["pointers"]
        result.marks_sent = counters["marks"]
        result.pointer_deliveries_expected = counters["pointers"] * experts
        result.pointer_deliveries = len(pointer_latency)
        result.mark_deliveries = len(mark_latency)
        ms = [v * 1000 for v in pointer_latency]
        result.pointer_p50_ms = percentile(ms, 50)
        result.pointer_p95_ms = percentile(ms, 95)
        result.pointer_p99_ms = percentile(ms, 99)
        mms = [v * 1000 for v in mark_latency]
        result.mark_p50_ms = percentile(mms, 50)
        result.mark_p99_ms = percentile(mms, 99)
        result.events_per_second = (len(pointer_latency) + len(mark_latency)) / wall
        await asyncio.gather(*(conn.close() for conn in [*operators, *pointing, *others]))
    return result


async def provision(
    base: str, secret: str, rooms: int, experts: int
) -> dict[tuple[int, str, int], str]:
    """Create the consultations and invite everyone; return the join tokens."""
    policy = TokenPolicy("probelink", "probelink", 30, 30 * 86400)
    coordinator = issue_token(
        from_secret(secret), policy, sub="bench", role=Role.COORDINATOR, ttl_seconds=3600
    )
    headers = {"Authorization": f"Bearer {coordinator}"}
    tokens: dict[tuple[int, str, int], str] = {}
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one_room(room: int) -> None:
            async with gate:
                async with http.post(
                    f"{base}/api/consultations",
                    json={
                        "clinical_question": "bench",
                        "urgency": "routine",
                        "incomplete_reason": "test request",
                    },
                ) as r:
                    cid = (await r.json())["id"]
                people = [("operator", 0)] + [("expert", i) for i in range(experts)]
                for role, index in people:
                    async with http.post(
                        f"{base}/api/consultations/{cid}/invites",
                        json={"role": role, "name": f"{role}{index}"},
                    ) as r:
                        tokens[(room, role, index)] = (await r.json())["token"]

        await asyncio.gather(*(one_room(r) for r in range(rooms)))
    return tokens


def baseline_checkout(revision: str, workdir: Path, stack: ExitStack) -> Path:
    """A detached worktree of `revision`, whose server runs as the baseline; removed on exit."""
    path = workdir / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
        timeout=60,
    )
    stack.callback(
        subprocess.run,
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
        check=False,
        capture_output=True,
        timeout=60,
    )
    return path


def probelink_env(data_dir: Path, secret: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBELINK_")}
    env.update(
        PROBELINK_DATA_DIR=str(data_dir),
        PROBELINK_SECRET_KEY=secret,
        PROBELINK_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


async def create_database(admin_url: str) -> str:
    import asyncpg

    name = f"probelink_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


def run_mode(mode: str, args: argparse.Namespace, stack: ExitStack, workdir: Path) -> Result:
    python = sys.executable
    if mode == "baseline":
        port = free_port()
        proc = stack.enter_context(
            process(
                [python, str(ROOT / "load_tests" / "echo_server.py"), "--port", str(port)],
                dict(os.environ),
                port,
            )
        )
        url = f"http://127.0.0.1:{port}"
        target = Target(mode, url, url, [proc.pid], lambda room, role, i: {"room": f"r{room}"})
        return asyncio.run(
            run_load(
                target,
                args.rooms,
                args.experts,
                args.hz,
                args.seconds,
                args.warmup,
                args.mark_interval,
            )
        )
    secret = secrets.token_urlsafe(32)
    serve = [python, "-m", "server", "serve", "--port"]
    if mode == "one-node":
        port = free_port()
        env = probelink_env(workdir / "one-node", secret)
        proc = stack.enter_context(process([*serve, str(port)], env, port))
        urls, pids = [f"http://127.0.0.1:{port}"] * 2, [proc.pid]
    else:
        db = asyncio.run(create_database(args.postgres))
        stack.callback(lambda: asyncio.run(drop_database(args.postgres, db)))
        extra = {
            "PROBELINK_DATABASE_URL": db,
            "PROBELINK_REDIS_URL": args.redis,
            "PROBELINK_REDIS_PREFIX": f"bench-{secrets.token_hex(4)}",
        }
        urls, pids = [], []
        for node in ("a", "b"):
            port = free_port()
            env = probelink_env(workdir / node, secret, **extra)
            proc = stack.enter_context(process([*serve, str(port)], env, port))
            urls.append(f"http://127.0.0.1:{port}")
            pids.append(proc.pid)
    log(f"{mode}: provisioning {args.rooms} consultations")
    tokens = asyncio.run(provision(urls[0], secret, args.rooms, args.experts))
    target = Target(
        mode, urls[0], urls[1], pids, lambda room, role, i: {"token": tokens[(room, role, i)]}
    )
    return asyncio.run(
        run_load(
            target, args.rooms, args.experts, args.hz, args.seconds, args.warmup, args.mark_interval
        )
    )


def write_results(path: Path, args: argparse.Namespace, results: list[Any], **extra: Any) -> None:
    """The run as JSON: machine, arguments, one object per result, and any extra figures."""
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    document = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results],
        **extra,
    }
    path.write_text(json.dumps(document, indent=2))


def table(results: list[Result]) -> str:
    lines = [
        "| mode | rooms × Hz | pointer p50 / p95 / p99 ms | delivered | mark p50 / p99 ms | events/s | server CPU % | server RSS MiB | generator CPU % | CPU vs baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        base = next((b for b in results if b.name == "baseline" and b.rooms == r.rooms), None)
        delivered = 100 * r.pointer_deliveries / max(1, r.pointer_deliveries_expected)
        ratio = (
            f"{r.server_cpu_percent / base.server_cpu_percent:.2f}×"
            if base and base.server_cpu_percent
            else "-"
        )
        lines.append(
            f"| {r.name} | {r.rooms} × {r.hz:g} | {r.pointer_p50_ms:.1f} / {r.pointer_p95_ms:.1f} / {r.pointer_p99_ms:.1f} "
            f"| {delivered:.1f}% | {r.mark_p50_ms:.1f} / {r.mark_p99_ms:.1f} | {r.events_per_second:.0f} "
            f"| {r.server_cpu_percent:.0f} | {r.server_rss_mib:.0f} | {r.generator_cpu_percent:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", default="200", help="room counts, comma-separated (a sweep)")
    parser.add_argument("--experts", type=int, default=2, help="experts per room")
    parser.add_argument("--hz", type=float, default=30, help="pointer rate of one expert per room")
    parser.add_argument("--seconds", type=float, default=20, help="measured duration per mode")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument(
        "--mark-interval", type=float, default=2.0, help="seconds between marks per room"
    )
    parser.add_argument("--modes", default="baseline,one-node,two-nodes")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rooms in [int(r) for r in args.rooms.split(",")]:
            for mode in args.modes.split(","):
                run_args = argparse.Namespace(**{**vars(args), "rooms": rooms})
                with ExitStack() as stack:
                    results.append(run_mode(mode, run_args, stack, Path(tmp) / f"{mode}-{rooms}"))
                log(f"{mode} with {rooms} rooms: done")
    print(table(results))
    if args.json:
        write_results(args.json, args, results)


if __name__ == "__main__":
    main()
