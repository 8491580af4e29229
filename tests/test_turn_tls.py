"""A bedside whose network lets nothing but TCP out reaches the relay through coturn's `turns:`.

Real coturn with a TLS listener (its certificate signed by a CA this test makes), a real
`probelink serve` handing out only a `turns:` URL, a Chromium bedside inside a network namespace
where every UDP packet in or out is dropped (nftables) and whose peer connections are relay-only
(`iceTransportPolicy: "relay"`, what a firewalled device effectively has), and a Chromium
expert on this host with the normal policy. The expert must see the bedside's picture, and the
bedside's selected candidate pair must be a relay allocated over TLS, and coturn must have
allocated it to the bedside's credential on a TLS session.

Chromium checks a `turns:` server's certificate (without help, the test certificate fails with
ICE candidate error 701 and the bedside never connects): the bedside's Chromium is told to
accept that one certificate's public key (`--ignore-certificate-errors-spki-list`), and nothing
else. The expert's Chromium has no such exception; it reaches the relay directly.

Needs root (namespace, nftables), coturn and Chromium: skips with the reason without them, fails
with PROBELINK_REQUIRE_ALL=1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import netns
import pytest
from browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    EXTRA_DISABLED_FEATURES,
    _disabled_features,
    coordinator_token,
    require_chromium,
)
from conftest import require, require_coturn
from netns import Namespace
from phantom import BREAST_REQUEST
from servers import Server, cli_env, live_session
from turn_server import REALM, TurnServer, stun_answers

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TIMEOUT_MS = 30_000
# How long the bedside may take from going live to a relayed pair over TLS that carries media.
CONNECT_TIMEOUT_SECONDS = 30
POLL_SECONDS = 0.5
# How long coturn may take to log a session's end once the bedside's page is closed.
CLOSE_TIMEOUT_SECONDS = 15
TESTS_DIR = Path(__file__).resolve().parent
# The namespace's link: 10.204.N.1 on this host, 10.204.N.2 inside (N picked free at run time).
SUBNET_PREFIX = "10.204"
# Namespaces are named after the pytest process (base 36; at most 10 characters in all, as
# interface names derive from it), so that concurrent runs never touch each other's.
NAMESPACE_PREFIX = "pltls"

# The bedside's page: every peer connection it makes is relay-only (as on a network where only
# the TURN server can be reached) and kept for the test to read its statistics.
RELAY_ONLY_SCRIPT = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.__iceErrors = [];
  window.RTCPeerConnection = class extends Native {
    constructor(configuration, ...rest) {
      super({ ...(configuration || {}), iceTransportPolicy: "relay" }, ...rest);
      window.__pcs.push(this);
      this.addEventListener("icecandidateerror", (e) => {
        window.__iceErrors.push({ url: e.url, code: e.errorCode, text: e.errorText });
      });
    }
  };
})();
"""

# The newest peer connection: its configured policy, its state and its selected candidate pair
# with both candidates, as the page's own getStats() reports them.
SELECTED_PAIR_SCRIPT = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!pc) return null;
  const out = { policy: pc.getConfiguration().iceTransportPolicy, state: pc.connectionState,
                gathering: pc.iceGatheringState, iceErrors: window.__iceErrors,
                iceServers: pc.getConfiguration().iceServers };
  const report = await pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) return out;
  const candidate = (id) => {
    const c = report.get(id);
    return c && { type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol,
                  address: c.address, port: c.port, url: c.url };
  };
  out.pair = { state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived };
  out.local = candidate(pair.localCandidateId);
  out.remote = candidate(pair.remoteCandidateId);
  out.localCandidates = [];
  report.forEach((s) => {
    if (s.type === "local-candidate") out.localCandidates.push(candidate(s.id));
  });
  return out;
}
"""

# Two frames presented by the expert's <video> (a bounded wait, rejected after `ms`).
FRAMES_SCRIPT = """
async (ms) => {
  const video = document.getElementById("video");
  const two = (async () => {
    for (let i = 0; i < 2; i++) await new Promise((r) => video.requestVideoFrameCallback(r));
    return { width: video.videoWidth, height: video.videoHeight, time: video.currentTime };
  })();
  const late = new Promise((_, reject) => setTimeout(() => reject(new Error("no frames")), ms));
  return await Promise.race([two, late]);
}
"""


@dataclass
class Setup:
    net: Namespace
    coturn: TurnServer
    server: Server
    workdir: Path


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, digit = divmod(n, 36)
        out = digits[digit] + out
        if n == 0:
            return out


def remove_stale_namespaces() -> None:
    """Namespaces of this test left by a run that was killed (its process is gone)."""
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    for name in names:
        match = re.fullmatch(rf"{NAMESPACE_PREFIX}([0-9a-z]+)", name)
        if match and not Path(f"/proc/{int(match.group(1), 36)}").exists():
            Namespace(name, "0.0.0.1").close()


def spki_sha256(coturn: TurnServer) -> str:
    """base64(SHA-256(public key info)) of coturn's certificate: what Chromium's SPKI list takes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert coturn.cert_path is not None
    certificate = x509.load_pem_x509_certificates(coturn.cert_path.read_bytes())[0]
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def free_subnet() -> str:
    """A 10.204.N.1 that no interface or route of this host uses yet."""
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    for n in random.sample(range(256), 256):
        if f"{SUBNET_PREFIX}.{n}." not in routes:
            return f"{SUBNET_PREFIX}.{n}.1"
    raise RuntimeError(f"no free {SUBNET_PREFIX}.N.0/24")


def stun_from_namespace(net: Namespace, host: str, port: int) -> bool:
    """Whether a STUN Binding request over UDP from inside the namespace is answered."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
        "from turn_server import stun_answers; "
        f"sys.exit(0 if any(stun_answers({host!r}, {port}) for _ in range(3)) else 1)"
    )
    result = subprocess.run(
        [*net.exec_prefix(), sys.executable, "-c", code], capture_output=True, timeout=30
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def tcp_from_namespace(net: Namespace, host: str, port: int) -> bool:
    """Whether a TCP connection from inside the namespace to `host:port` is accepted."""
    code = f"import socket, sys; socket.create_connection(({host!r}, {port}), timeout=5).close()"
    result = subprocess.run(
        [*net.exec_prefix(), sys.executable, "-c", code], capture_output=True, timeout=30
    )
    return result.returncode == 0


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """The namespace with UDP blocked, coturn (TLS) and probelink on its host side; all removed."""
    require("network namespaces", netns.available() is None, netns.available() or "")
    require_coturn()
    require_chromium()
    remove_stale_namespaces()
    with ExitStack() as stack:
        name = f"{NAMESPACE_PREFIX}{base36(os.getpid())}"
        net = stack.enter_context(Namespace(name, free_subnet()))
        net.block_udp()
        turn_dir = tmp_path / "coturn"
        turn_dir.mkdir()
        # On the host's end of the link, the only address the namespace reaches. `verbose`:
        # coturn logs each session's TLS version and username (the test reads it).
        coturn = stack.enter_context(
            TurnServer(turn_dir, ip=net.host_ip, tls=True, extra_args=("--verbose",))
        )
        env = cli_env(
            tmp_path / "data",
            PROBELINK_TURN_URLS=coturn.tls_url(),
            PROBELINK_TURN_SECRET=coturn.secret,
            # A host-only link to the namespace: plain HTTP on it is this test's LAN demo.
            PROBELINK_ALLOW_INSECURE_PUBLIC_URL="1",
        )
        server = stack.enter_context(Server(env, host=net.host_ip))
        yield Setup(net, coturn, server, tmp_path)


@pytest.fixture
async def browsers(setup: Setup, phantom_y4m: Path) -> AsyncIterator[tuple[Browser, Browser]]:
    """Chromium for the bedside (inside the namespace) and for the expert (here); closed after."""
    from playwright.async_api import async_playwright

    wrapper = setup.workdir / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(setup.net.exec_prefix())} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    async with async_playwright() as playwright:
        features = [*await _disabled_features(playwright), *EXTRA_DISABLED_FEATURES]
        args = [
            *CHROMIUM_ARGS,
            f"--use-file-for-fake-video-capture={phantom_y4m}",
            f"--disable-features={','.join(dict.fromkeys(features))}",
            # The server is at http://10.204.N.1:PORT: getUserMedia needs a secure origin.
            f"--unsafely-treat-insecure-origin-as-secure={setup.server.url}",
        ]
        # The bedside trusts coturn's certificate (its key only), as a real one would be.
        pin = f"--ignore-certificate-errors-spki-list={spki_sha256(setup.coturn)}"
        bedside = await playwright.chromium.launch(
            executable_path=wrapper, headless=True, args=[*args, pin]
        )
        try:
            expert = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=args
            )
            try:
                yield bedside, expert
            finally:
                await expert.close()
        finally:
            await bedside.close()


async def selected_pair(page: Page, coturn: TurnServer) -> dict[str, Any]:
    """The bedside's selected candidate pair once it carries media (a bounded wait)."""
    last: dict[str, Any] | None = None
    deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        last = await page.evaluate(SELECTED_PAIR_SCRIPT)
        pair = (last or {}).get("pair")
        if last and pair and pair["state"] == "succeeded" and pair["bytesSent"] > 0:
            return last
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"no selected pair carrying media: {last}\ncoturn:\n{coturn.log[-4000:]}")


async def logged(coturn: TurnServer, pattern: re.Pattern[str], seconds: float) -> bool:
    """Whether coturn's log shows `pattern` within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if pattern.search(coturn.log):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)


def tls_sessions(coturn: TurnServer, username: str) -> list[str]:
    """coturn's sessions (ids) for `username` that came in over TLS and allocated a relay."""
    tls = re.findall(
        rf"session (\d+): new, realm=<{re.escape(REALM)}>, "
        rf"username=<{re.escape(username)}>, .*method=TLSv1\.[23]",
        coturn.log,
    )
    return [
        session
        for session in tls
        if f"session {session}: realm <{REALM}> user <{username}>: "
        "incoming packet ALLOCATE processed, success" in coturn.log
    ]


async def test_bedside_with_only_tcp_streams_to_the_expert_through_turns(
    setup: Setup, browsers: tuple[Browser, Browser]
) -> None:
    net, coturn, server = setup.net, setup.coturn, setup.server
    assert coturn.tls_port is not None
    # The bedside's network: STUN over UDP to coturn gets no answer from inside the namespace
    # (from this host it does), TCP to coturn's TLS listener gets through.
    assert stun_answers(coturn.ip, coturn.port)
    assert not stun_from_namespace(net, coturn.ip, coturn.port)
    assert tcp_from_namespace(net, coturn.ip, coturn.tls_port)

    operator, expert_token = live_session(server, coordinator_token(server), BREAST_REQUEST)
    bedside_browser, expert_browser = browsers
    bedside_context = await bedside_browser.new_context()
    await bedside_context.add_init_script(RELAY_ONLY_SCRIPT)
    bedside = await bedside_context.new_page()
    expert_context = await expert_browser.new_context()
    expert = await expert_context.new_page()

    await expert.goto(f"{server.url}/expert#token={expert_token}")
    # `?live`: the bedside goes live with its camera (the phantom file) by itself.
    await bedside.goto(f"{server.url}/bedside?live#token={operator}")

    stats = await selected_pair(bedside, coturn)
    # The only ICE server the page was given is coturn's TLS listener, and it is relay-only.
    (ice_server,) = stats["iceServers"]
    assert ice_server["urls"] == [coturn.tls_url()], stats
    assert stats["policy"] == "relay", stats
    # The bedside sends through a relay that coturn allocated over TLS, at coturn's address,
    # and every candidate it gathered is such a relay.
    assert stats["local"]["type"] == "relay", stats
    assert stats["local"]["relayProtocol"] == "tls", stats
    assert stats["local"]["address"] == coturn.ip, stats
    assert stats["local"]["url"] == coturn.tls_url(), stats
    assert all(
        c["type"] == "relay" and c["relayProtocol"] == "tls" for c in stats["localCandidates"]
    ), stats

    # The expert, on this host with the normal policy, sees the bedside's picture move.
    await expert.locator("#waiting").wait_for(state="hidden", timeout=TIMEOUT_MS)
    first = await expert.evaluate(FRAMES_SCRIPT, TIMEOUT_MS)
    later = await expert.evaluate(FRAMES_SCRIPT, TIMEOUT_MS)
    assert later["time"] > first["time"], (first, later)
    assert (later["width"], later["height"]) == (640, 480), later

    # coturn's side: it allocated the bedside's relays, for the bedside's credential, on TLS
    # sessions, and bound a channel to a peer (the media relay) on one of them.
    username = ice_server["username"]
    sessions = tls_sessions(coturn, username)
    assert sessions, coturn.log[-4000:]
    assert any(
        f"session {s}: realm <{REALM}> user <{username}>: "
        "incoming packet CHANNEL_BIND processed, success" in coturn.log
        for s in sessions
    ), coturn.log[-4000:]
    await expert_context.close()
    # Those sessions were on the TLS listener, from the namespace: coturn says so as they close.
    await bedside_context.close()
    closed = re.compile(
        rf"session ({'|'.join(sessions)}): closed \(2nd stage\), user <{re.escape(username)}> "
        rf"realm <{re.escape(REALM)}> origin <[^>]*>, local {re.escape(coturn.ip)}:{coturn.tls_port}, "
        rf"remote {re.escape(net.ip)}:\d+"
    )
    assert await logged(coturn, closed, CLOSE_TIMEOUT_SECONDS), coturn.log[-4000:]
