"""docs/nginx/probelink.conf in front of a real node: TLS, HSTS, a join over Socket.IO, body limits.

The test renders that very file (loopback ports, a certificate signed by a CA made here, the
node's port) and runs nginx on it in the foreground. Every request goes through nginx over TLS
checked against the test's CA, as a bedside on another machine would send it; the node itself
listens on loopback in plain HTTP with PROBELINK_PUBLIC_URL set to the proxy's https URL.

Needs nginx (Debian package nginx): skips with the reason without it, fails with
PROBELINK_REQUIRE_ALL=1.
"""

from __future__ import annotations

import io
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from browser import coordinator_token
from conftest import require
from phantom import BREAST_REQUEST, phantom_png
from servers import Server, cli_env, free_port
from turn_server import make_certificate, tls_answers

# Debian installs it in /usr/sbin, which is not on a user's PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
CONF = Path(__file__).resolve().parents[1] / "docs" / "nginx" / "probelink.conf"
START_TIMEOUT_SECONDS = 15
HSTS = "max-age=63072000; includeSubDomains"
JSON_LIMIT_BYTES = 64 * 1024

# What the test puts around the file: nginx's main context, with everything under `directory`.
MAIN_CONF = """\
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/probelink.conf;
}}
"""


def render(node_port: int, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """The shipped configuration on this test's loopback ports, certificate and node."""
    conf = CONF.read_text()
    replacements = {
        "    listen [::]:80;\n": "",
        "    listen [::]:443 ssl;\n": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{node_port};",
        "/etc/letsencrypt/live/probelink.example.org/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/probelink.example.org/privkey.pem": str(key),
    }
    for old, new in replacements.items():
        assert conf.count(old) == 1, f"{old!r} is no longer in {CONF.name}: update this test"
        conf = conf.replace(old, new)
    return conf


class Nginx:
    """nginx in the foreground on a rendered configuration; `with` waits until TLS answers."""

    def __init__(self, directory: Path, conf: str, https_port: int, ca: Path):
        self.directory = directory
        self.https_port = https_port
        self.ca = ca
        (directory / "probelink.conf").write_text(conf)
        # Root's workers would otherwise run as nobody, who cannot enter the test's directory.
        user = "user root root;" if os.geteuid() == 0 else ""
        (directory / "nginx.conf").write_text(MAIN_CONF.format(user=user, directory=directory))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        assert NGINX is not None
        conf, error_log = self.directory / "nginx.conf", self.directory / "error.log"
        self.process = subprocess.Popen(
            [NGINX, "-p", self.directory, "-c", conf, "-e", error_log, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not tls_answers("127.0.0.1", self.https_port, self.ca):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                log = error_log.read_text() if error_log.exists() else ""
                raise RuntimeError(f"nginx did not start: {log}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Proxied:
    """A node behind the shipped nginx configuration."""

    url: str  # the proxy's https URL, the node's PROBELINK_PUBLIC_URL
    http_url: str  # the proxy's plain-HTTP listener
    node: Server
    tls: ssl.SSLContext  # trusts the test's CA only

    def session(self, token: str | None = None) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls), headers=headers)


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Proxied]:
    require("nginx", NGINX is not None, "`nginx` is not installed (Debian package nginx)")
    certs, proxy_dir = tmp_path / "certs", tmp_path / "nginx"
    certs.mkdir()
    proxy_dir.mkdir()
    ca, cert, key = make_certificate(certs, "127.0.0.1")
    http_port, https_port = free_port(), free_port()
    url = f"https://127.0.0.1:{https_port}"
    env = cli_env(tmp_path / "data", PROBELINK_PUBLIC_URL=url, PROBELINK_LOG_LEVEL="WARNING")
    with Server(env) as node:
        conf = render(node.port, http_port, https_port, cert, key)
        with Nginx(proxy_dir, conf, https_port, ca):
            tls = ssl.create_default_context(cafile=str(ca))
            yield Proxied(url, f"http://127.0.0.1:{http_port}", node, tls)


@dataclass(frozen=True)
class Consultation:
    id: str
    operator_link: str
    operator: str  # join tokens
    expert: str


@pytest.fixture
async def consultation(proxied: Proxied) -> Consultation:
    """Through the proxy: a request, then the bedside's and an expert's join links."""
    async with proxied.session(coordinator_token(proxied.node)) as http:
        async with http.post(f"{proxied.url}/api/consultations", json=BREAST_REQUEST) as answer:
            assert answer.status == 201, await answer.text()
            cid = (await answer.json())["id"]
        links = []
        for role in ("operator", "expert"):
            async with http.post(
                f"{proxied.url}/api/consultations/{cid}/invites", json={"role": role, "name": role}
            ) as answer:
                assert answer.status == 201, await answer.text()
                links.append((await answer.json())["url"])
    operator, expert = (link.split("#token=", 1)[1] for link in links)
    return Consultation(cid, links[0], operator, expert)


async def join(
    proxied: Proxied, http: aiohttp.ClientSession, token: str
) -> tuple[socketio.AsyncClient, dict[str, list[Any]]]:
    """A Socket.IO client as a page of the proxy's origin: polling, then the WebSocket upgrade
    through the proxy, the certificate checked against the test's CA; the events it receives."""
    sio = socketio.AsyncClient(reconnection=False, http_session=http)
    received: dict[str, list[Any]] = {"room_state": [], "mark": []}
    for name, events in received.items():
        sio.on(name, events.append, namespace="/live")
    await sio.connect(
        proxied.url,
        namespaces=["/live"],
        auth={"token": token},
        headers={"Origin": proxied.url},
        wait_timeout=10,
    )
    for _ in range(100):
        if received["room_state"] and sio.transport() == "websocket":
            break
        await sio.sleep(0.1)
    assert sio.transport() == "websocket"
    assert received["room_state"]
    return sio, received


async def test_a_bedside_and_an_expert_join_through_the_tls_proxy(
    proxied: Proxied, consultation: Consultation
) -> None:
    # The join link points at the proxy, in https, and the page comes with HSTS.
    assert consultation.operator_link.startswith(f"{proxied.url}/join#token=")
    async with proxied.session() as http:
        async with http.get(f"{proxied.url}/join") as page:
            assert page.status == 200
            assert page.headers["Strict-Transport-Security"] == HSTS
        bedside, at_bedside = await join(proxied, http, consultation.operator)
        expert, _ = await join(proxied, http, consultation.expert)
        try:
            assert at_bedside["room_state"][0]["consultation"]["id"] == consultation.id
            # The expert's arrow is stored and reaches the bedside, both over the proxy.
            arrow = {"kind": "arrow", "points": [[0.2, 0.2], [0.4, 0.5]]}
            ack = await expert.call("mark", arrow, namespace="/live", timeout=10)
            assert ack["seq"] >= 1, ack
            for _ in range(100):
                if at_bedside["mark"]:
                    break
                await bedside.sleep(0.1)
            assert at_bedside["mark"][0]["id"] == ack["id"]
        finally:
            await bedside.disconnect()
            await expert.disconnect()


async def test_bodies_are_limited_at_the_proxy_and_uploads_pass(
    proxied: Proxied, consultation: tuple[str, str, str]
) -> None:
    cid = consultation.id
    async with proxied.session(consultation.operator) as http:
        # A bedside still (a PNG larger than the JSON limit) goes through to the node.
        still = phantom_png(3)
        assert len(still) > JSON_LIMIT_BYTES
        async with http.post(
            f"{proxied.url}/api/consultations/{cid}/captures",
            data=still,
            headers={"Content-Type": "image/png"},
        ) as answer:
            assert answer.status == 201, await answer.text()
        # A JSON body over the limit is refused by nginx, in the wire contract's shape, with HSTS.
        big = b'{"clinical_question": "' + b"x" * JSON_LIMIT_BYTES + b'"}'
        async with http.post(
            f"{proxied.url}/api/consultations",
            data=big,
            headers={"Content-Type": "application/json"},
        ) as answer:
            assert answer.status == 413
            assert (await answer.json())["error"]["code"] == "payload_too_large"
            assert answer.headers["Strict-Transport-Security"] == HSTS
            assert answer.headers["Server"] == "nginx"  # no version
        # An upload over 32 MiB is refused before it reaches the node.
        async with http.post(
            f"{proxied.url}/api/consultations/{cid}/captures",
            data=io.BytesIO(b"\0" * (32 * 1024 * 1024 + 1)),
            headers={"Content-Type": "image/png"},
        ) as answer:
            assert answer.status == 413
        # The node's metrics stay off the network.
        async with http.get(f"{proxied.url}/metrics") as answer:
            assert answer.status == 404


async def test_plain_http_only_redirects_to_https(proxied: Proxied) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxied.http_url}/api/consultations", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == "https://127.0.0.1/api/consultations"
    # Without the test's CA, the proxy's certificate is refused: verification is on.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{proxied.url}/healthz")
