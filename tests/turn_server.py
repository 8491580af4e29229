"""A real coturn (`turnserver`) for tests: loopback only, free ports, everything under a temp dir."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

TURNSERVER = shutil.which("turnserver")
START_TIMEOUT_SECONDS = 15
STOP_TIMEOUT_SECONDS = 10
PORT_ATTEMPTS = 20
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
STUN_BINDING_REQUEST = b"\x00\x01\x00\x00"
STUN_BINDING_SUCCESS = b"\x01\x01"
REALM = "probelink.test"

# The test-only configuration: loopback peers are allowed (both peers of a test live on
# 127.0.0.1), no TLS, no CLI, and the pid file and user database under the temp dir.
TEST_CONFIG = """\
listening-ip={ip}
relay-ip={ip}
listening-port={port}
use-auth-secret
static-auth-secret={secret}
realm={realm}
fingerprint
allow-loopback-peers
no-tls
no-dtls
no-cli
no-tcp-relay
no-rfc5780
no-software-attribute
pidfile={dir}/turnserver.pid
userdb={dir}/turndb
log-file=stdout
simple-log
"""


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (coturn listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(PORT_ATTEMPTS):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                with socket.socket(family, socket.SOCK_STREAM) as tcp:
                    tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def stun_answers(host: str, port: int) -> bool:
    """Whether a STUN Binding request over UDP gets a success response."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transaction = secrets.token_bytes(12)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(STUN_BINDING_REQUEST + STUN_MAGIC_COOKIE + transaction, (host, port))
            data = sock.recv(2048)
        except OSError:
            return False
    return data[:2] == STUN_BINDING_SUCCESS and data[8:20] == transaction


class TurnServer:
    """`turnserver` in a child process; `with TurnServer(dir) as t:` waits until it answers STUN.

    With `config_file`, that file is used (e.g. the production one) and the loopback
    listener, ports, secret (unless `give_secret` is false) and files are given on the
    command line, which overrides it; `extra_args` are added to the command line.
    """

    def __init__(
        self,
        directory: Path,
        config_file: Path | None = None,
        ip: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        give_secret: bool = True,
    ):
        self.directory = directory
        self.config_file = config_file
        self.extra_args = extra_args
        self.give_secret = give_secret
        # Where clients reach it and where it relays from.
        self.ip = ip
        self.port = free_udp_tcp_port(ip)
        self.secret = secrets.token_hex(32)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "turnserver.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"turn:{host}:{self.port}?transport=udp"

    def _command(self) -> list[str]:
        assert TURNSERVER is not None
        if self.config_file is None:
            config = self.directory / "turnserver.conf"
            config.write_text(
                TEST_CONFIG.format(
                    ip=self.ip,
                    port=self.port,
                    secret=self.secret,
                    realm=REALM,
                    dir=self.directory,
                )
            )
            config.chmod(0o600)
            return [TURNSERVER, "-c", str(config), *self.extra_args]
        return [
            TURNSERVER,
            "-c",
            str(self.config_file),
            f"--listening-ip={self.ip}",
            f"--relay-ip={self.ip}",
            f"--listening-port={self.port}",
            *([f"--static-auth-secret={self.secret}"] if self.give_secret else []),
            "--no-tls",
            f"--pidfile={self.directory}/turnserver.pid",
            f"--userdb={self.directory}/turndb",
            *self.extra_args,
        ]

    def __enter__(self) -> TurnServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if stun_answers(self.ip, self.port):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited early:\n{self.log}")
        self.stop()
        raise RuntimeError(
            f"turnserver did not answer within {START_TIMEOUT_SECONDS} s:\n{self.log}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def __exit__(self, *exc: object) -> None:
        self.stop()
