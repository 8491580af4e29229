"""The same join link opened twice, on two nodes (a clinician moving from laptop to tablet behind
a balancer): the new connection replaces the old, which is told why and disconnected; the room
then has that participant once, with one connection."""

from __future__ import annotations

from typing import Any

from live_client import Participant
from servers import Server
from test_live_multinode import setup_room, shared_env  # noqa: F401 (a fixture)


def connections(presence: dict[str, Any], role: str) -> list[int]:
    return [p["connections"] for p in presence["participants"] if p["role"] == role]


async def test_the_same_link_opened_on_another_node_replaces_the_first(
    shared_env: tuple[dict[str, str], dict[str, str]],  # noqa: F811
) -> None:
    env_a, env_b = shared_env
    with Server(env_a) as node_a, Server(env_b) as node_b:
        tokens = await setup_room(node_a.url, env_a["PROBELINK_SECRET_KEY"])
        operator = await Participant(node_a.url, tokens["operator"]).connect()
        laptop = await Participant(node_a.url, tokens["expert"]).connect()
        tablet = None
        try:
            await operator.wait_until(
                lambda r: (
                    connections(r["presence"][-1], "expert") == [1] if r["presence"] else False
                )
            )
            tablet = await Participant(node_b.url, tokens["expert"]).connect()
            (ended,) = await laptop.wait_for("ended")
            assert ended["error"]["code"] == "opened_elsewhere"
            assert "no longer connected" in ended["error"]["message"]
            await laptop.wait_for("disconnect")
            assert not laptop.sio.connected and tablet.sio.connected
            # The room has the expert once, on one connection: the tablet's.
            await operator.wait_until(
                lambda r: (
                    r["presence"][-1]["event"] == "leave"
                    and connections(r["presence"][-1], "expert") == [1]
                )
            )
            assert tablet.received["ended"] == []
            await tablet.call("guidance", {"cue": "hold"})
            await operator.wait_for("guidance")
        finally:
            for person in (operator, laptop, tablet):
                if person is not None:
                    await person.close()
