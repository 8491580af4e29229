"""A network namespace with one veth link to this host, for a peer whose network is impaired.

Used by tests and `load_tests/network_bench.py` (needs root, iproute2, tc and nft). The namespace
has no default route: it reaches this host's end of the link and nothing else. Its link can be
shaped (`tc tbf`, both directions), lose packets at random or all of them (`nftables`), or block
one protocol (`block_udp`). Everything is removed on exit, and a leftover of the same name from a
killed run is removed on entry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib


def available() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""

    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian packages iproute2, nftables)"
    return None


class Namespace:
    """`with Namespace("name", "10.203.0.1") as ns:` — ns.host_ip here, ns.ip inside."""

    def __init__(self, name: str, host_ip: str):
        prefix = host_ip.rsplit(".", 1)[0]
        self.name = name
        self.host_ip = host_ip
        self.ip = f"{prefix}.{int(host_ip.rsplit('.', 1)[1]) + 1}"
        # Interface names are at most 15 characters: named after a checksum of the namespace's.
        tag = f"{zlib.crc32(name.encode()):08x}"
        self.host_if = f"pl{tag}h"
        self.ns_if = f"pl{tag}n"
        # This host's rules for the link live in a table of their own.
        self.nft_table = f"probelink_netns_{tag}"

    def run(self, *command: str, inside: bool = False, check: bool = True) -> None:
        full = ["ip", "netns", "exec", self.name, *command] if inside else list(command)
        subprocess.run(full, check=check, capture_output=True, text=True, timeout=20)

    def __enter__(self) -> Namespace:
        self.close()
        self.run("ip", "netns", "add", self.name)
        self.run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self.run("ip", "link", "set", self.ns_if, "netns", self.name)
        self.run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        self.run("ip", "link", "set", self.host_if, "up")
        self.run("ip", "addr", "add", f"{self.ip}/24", "dev", self.ns_if, inside=True)
        self.run("ip", "link", "set", self.ns_if, "up", inside=True)
        self.run("ip", "link", "set", "lo", "up", inside=True)
        return self

    def reach(self, address: str) -> None:
        """Route to one more address of this host (another link's) through this link."""
        self.run("ip", "route", "add", f"{address}/32", "via", self.host_ip, inside=True)

    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def shape(self, rate_kbit: int) -> None:
        """Cap both directions with a token bucket: 5 ms of burst (at least a full packet), 100 ms
        of queue. A larger bucket lets a browser's bandwidth probe through at line rate, and it
        then reads the link as far faster than it is."""
        burst = max(1600, rate_kbit * 1000 // 8 // 200)
        for inside, dev in ((True, self.ns_if), (False, self.host_if)):
            self.run(
                *("tc", "qdisc", "replace", "dev", dev, "root", "tbf"),
                *("rate", f"{rate_kbit}kbit", "burst", str(burst), "latency", "100ms"),
                inside=inside,
            )

    def unshape(self) -> None:
        for inside, dev in ((True, self.ns_if), (False, self.host_if)):
            self.run("tc", "qdisc", "del", "dev", dev, "root", inside=inside, check=False)

    def drop(self, per_mille: int, what: str = "") -> None:
        """Drop that share of the packets on the link, both ways (1000: all of them).

        Packets are dropped where they arrive (this host's input from the link, the namespace's
        input), as a lossy network would: a packet dropped on its way out would fail the
        sender's `sendto` (EPERM), and a browser sends it again. `what` narrows the rule to an
        nftables match (e.g. "meta l4proto udp").
        """
        self.undrop()
        action = f"numgen random mod 1000 < {per_mille} drop" if per_mille < 1000 else "drop"
        rule = f"{what} {action}".strip()
        for inside, dev in ((True, self.ns_if), (False, self.host_if)):
            script = (
                f"table inet {self.nft_table} {{\n"
                f"  chain in {{ type filter hook input priority 0; iifname {dev} {rule}; }}\n"
                "}\n"
            )
            prefix = self.exec_prefix() if inside else []
            subprocess.run(
                [*prefix, "nft", "-f", "-"],
                input=script,
                check=True,
                text=True,
                capture_output=True,
                timeout=20,
            )

    def block_udp(self) -> None:
        """Nothing but TCP in or out of the namespace, as behind a firewall that allows 443 only."""
        self.drop(1000, "meta l4proto udp")

    def undrop(self) -> None:
        for inside in (True, False):
            self.run("nft", "delete", "table", "inet", self.nft_table, inside=inside, check=False)

    def close(self) -> None:
        self.undrop()
        self.run("ip", "netns", "del", self.name, check=False)
        self.run("ip", "link", "del", self.host_if, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()
