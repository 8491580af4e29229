"""The production coturn configuration keeps the relay away from private and special networks.

coturn runs with `turn_config/turnserver.conf` itself; only the listener, ports, secret and
files are overridden on the command line. A client with a valid credential asks for permission
to reach each peer address: the denied ranges answer 403, public addresses are allowed (a
permission sends nothing to the peer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import TurnClientUdpProtocol
from conftest import require_coturn
from turn_server import TurnServer

from server.media.ice import turn_credential

PRODUCTION_CONFIG = Path(__file__).resolve().parent.parent / "turn_config" / "turnserver.conf"
REQUEST_TIMEOUT_SECONDS = 30
CREDENTIAL_TTL_SECONDS = 600
FORBIDDEN = 403

DENIED_IPV4 = [
    "0.0.0.1",
    "10.1.2.3",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",  # cloud metadata service
    "172.16.0.1",
    "172.31.255.254",
    "192.0.0.1",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
]
ALLOWED_IPV4 = ["8.8.8.8", "100.128.0.1", "172.32.0.1", "193.0.0.1"]
DENIED_IPV6 = [
    "::",
    "::1",
    "::a01:203",  # IPv4-compatible 10.1.2.3
    "::ffff:10.1.2.3",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:172.16.0.1",
    "::ffff:192.168.1.1",
    "::ffff:100.64.0.1",
    "::ffff:0:a01:203",  # IPv4-translated 10.1.2.3
    "64:ff9b::a01:203",  # NAT64 of 10.1.2.3
    "64:ff9b:1::a01:203",
    "100::1",
    "2001::1",  # Teredo
    "2001:db8::1",
    "2002:a01:203::1",  # 6to4 of 10.1.2.3
    "3fff::1",
    "5f00::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
]
ALLOWED_IPV6 = ["2001:4860:4860::8888", "2a00:1450:4001::1"]


@pytest.fixture
def production_coturn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TurnServer]:
    """coturn with the production configuration, on the loopback address of `request.param`."""
    require_coturn()
    ip = str(request.param)
    # Relay in the family the client speaks (RFC 6156 would default to IPv4).
    extra = ("--allocation-default-address-family=keep",)
    with TurnServer(tmp_path, config_file=PRODUCTION_CONFIG, ip=ip, extra_args=extra) as server:
        yield server


async def permission_answers(server: TurnServer, peers: list[str]) -> dict[str, int | None]:
    """For each peer address: None if coturn grants a permission to it, else its error code."""
    credential = turn_credential(server.secret, "probe", int(time.time()) + CREDENTIAL_TTL_SECONDS)
    address = (server.ip, server.port)
    transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: TurnClientUdpProtocol(
            address,
            username=credential.username,
            password=credential.password,
            lifetime=CREDENTIAL_TTL_SECONDS,
            channel_refresh_time=CREDENTIAL_TTL_SECONDS,
        ),
        remote_addr=address,
    )
    answers: dict[str, int | None] = {}
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
            await client.connect()
            for peer in peers:
                request = stun.Message(stun.Method.CREATE_PERMISSION, stun.Class.REQUEST)
                request.attributes["XOR-PEER-ADDRESS"] = (peer, 0)
                try:
                    await client.request_with_retry(request)
                    answers[peer] = None
                except stun.TransactionFailed as refused:
                    answers[peer] = refused.response.attributes["ERROR-CODE"][0]
            await client.delete()
    finally:
        transport.close()
    return answers


@pytest.mark.parametrize("production_coturn", ["127.0.0.1"], indirect=True)
async def test_relay_to_private_loopback_link_local_and_reserved_ipv4_is_refused(
    production_coturn: TurnServer,
) -> None:
    answers = await permission_answers(production_coturn, DENIED_IPV4 + ALLOWED_IPV4)
    assert answers == {peer: FORBIDDEN for peer in DENIED_IPV4} | dict.fromkeys(ALLOWED_IPV4)


@pytest.mark.parametrize("production_coturn", ["::1"], indirect=True)
async def test_relay_to_special_ipv6_and_mapped_private_ipv4_is_refused(
    production_coturn: TurnServer,
) -> None:
    answers = await permission_answers(production_coturn, DENIED_IPV6 + ALLOWED_IPV6)
    assert answers == {peer: FORBIDDEN for peer in DENIED_IPV6} | dict.fromkeys(ALLOWED_IPV6)


async def test_without_the_shared_secret_coturn_accepts_no_credential(tmp_path: Path) -> None:
    require_coturn()
    with TurnServer(tmp_path, config_file=PRODUCTION_CONFIG, give_secret=False) as server:
        with pytest.raises(stun.TransactionFailed) as refused:
            await permission_answers(server, [])
    assert refused.value.response.attributes["ERROR-CODE"][0] == 401
