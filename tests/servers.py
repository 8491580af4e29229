"""Real `probelink serve` processes for tests, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

START_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a probelink process: ours without PROBELINK_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBELINK_")}
    env.update(PROBELINK_DATA_DIR=str(data_dir), **extra)
    return env


class Server:
    """`probelink serve` in a child process; `with Server(...) as s:` waits until it listens."""

    def __init__(
        self,
        env: dict[str, str],
        port: int | None = None,
        host: str = "127.0.0.1",
        cwd: Path | None = None,
    ):
        self.port = port or free_port()
        self.host = host
        # Another checkout's server (a benchmark's baseline): its `server` package is imported.
        self.cwd = cwd
        self.env = env
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.out = ""
        self.err = ""

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"probelink serve exited early: {self.err}") from None
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"probelink serve did not listen within {START_TIMEOUT_SECONDS} s")

    def stop(self) -> int:
        """SIGTERM, wait, collect output; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.out, self.err = self.process.communicate(timeout=30)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the node dies without cleaning up, as on a crash."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.out, self.err = self.process.communicate(timeout=30)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.stop()


def post_json(server: Server, path: str, token: str, body: Any) -> Any:
    """POST a JSON body to the server's API with a bearer token; the JSON answer."""
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def live_session(server: Server, coordinator: str, request: Any, experts: int = 1) -> list[str]:
    """A consultation with this request; the join tokens of a bedside and `experts` experts."""
    cid = post_json(server, "/api/consultations", coordinator, request)["id"]
    invitees = [("operator", "Bedside"), *(("expert", f"Dr Test {n + 1}") for n in range(experts))]
    return [
        post_json(server, f"/api/consultations/{cid}/invites", coordinator, {"role": r, "name": n})[
            "token"
        ]
        for r, n in invitees
    ]


class RedisServer:
    """A private redis-server on a free port, which a test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
