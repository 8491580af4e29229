"""The settings of the live room and its media: rates and admission, TURN, captures from the
stream, the video bitrate policy. Part of the one `Settings` (config.py), read the same way."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, IPvAnyAddress, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

ENV_PREFIX = "PROBELINK_"
PORT_MAX = 65535
# stun:/stuns:/turn:/turns: URLs as browsers and aiortc take them (RFC 7064, RFC 7065).
ICE_URL_PATTERN = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)
# The TURN REST API secret is an HMAC-SHA1 key shared with coturn: as long as a signing key.
TURN_SECRET_MIN_BYTES = 32
# TURN credentials outlive the longest consultation a little: a participant who reconnects or
# restarts ICE in the middle of a scan allocates a new relay with the credential it holds, and
# coturn checks the expiry at each new allocation (a running one is refreshed past it).
TURN_TTL_SECONDS_DEFAULT = 4 * 3600
TURN_TTL_SECONDS_MAX = 24 * 3600


def http_url(value: str) -> SplitResult:
    """`value` split, if it is an http:// or https:// URL with a host; else ValueError."""
    try:
        url = urlsplit(value)
        port = url.port  # raises on a port that is not a number below 65536
    except ValueError:
        raise ValueError("must be an http:// or https:// URL") from None
    if url.scheme not in ("http", "https") or not url.hostname or port == 0:
        raise ValueError("must be an http:// or https:// URL with a host")
    return url


class LiveSettings(BaseSettings):
    """The live room's and the media relay's fields of `Settings`."""

    node_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
        description="This node's name among the nodes sharing Redis (unset: a random one per "
        "start); the node that carries a consultation's media is named by it.",
    )
    media_address: IPvAnyAddress | None = Field(
        None,
        description="The address this node's media is reached at, where it is not the address "
        "of one of its own interfaces (a node behind one-to-one NAT, or with several): the "
        "relay's answers give it in their host candidates, in place of the interface addresses "
        "of its family (as Janus's nat_1_1_mapping, mediasoup's announcedIp).",
    )
    presence_ttl_seconds: int = Field(
        15, ge=3, le=300, description="How long a silent node's participants stay listed (Redis)."
    )
    pointer_hz: float = Field(
        60, gt=0, le=1000, description="Pointer events per second a socket may send."
    )
    events_per_second: float = Field(
        20, gt=0, le=10_000, description="Other live-room events per second a socket may send."
    )
    event_burst: int = Field(
        40, ge=1, le=100_000, description="Burst of live-room events allowed above the rate."
    )
    live_sockets_per_address: int = Field(
        200,
        ge=1,
        description="Live-room connections one client address may hold on a node (a hospital's"
        " network address may carry many people).",
    )
    live_sockets_max: int = Field(
        2000, ge=1, description="Live-room connections a node holds in all."
    )
    live_connects_per_second: float = Field(
        5, gt=0, le=10_000, description="Live-room connects per second from one client address."
    )
    live_connect_burst: int = Field(
        30, ge=1, le=100_000, description="Burst of connects from one address above that rate."
    )
    turn_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated stun:, stuns:, turn: and turns: URLs handed to every "
        "participant as ICE servers (default: none, host candidates only).",
    )
    turn_secret: SecretStr | None = Field(
        None,
        description="Secret shared with coturn (`static-auth-secret`) to sign TURN credentials; "
        "required with turn: or turns: URLs.",
    )
    turn_ttl_seconds: int = Field(
        TURN_TTL_SECONDS_DEFAULT,
        ge=300,
        le=TURN_TTL_SECONDS_MAX,
        description="Lifetime of a TURN credential.",
    )
    clip_seconds_default: float = Field(
        6.0, gt=0, le=120, description="Length of a clip saved after the fact."
    )
    clip_seconds_max: float = Field(
        20.0, gt=0, le=120, description="Seconds of video kept per publisher for clips."
    )
    cine_buffer_mib: float = Field(
        6.0, gt=0, le=256, description="Memory kept per publisher for clips (MiB)."
    )
    recording_seconds_max: float = Field(
        60.0, gt=0, le=600, description="Longest prospective recording (start .. stop)."
    )
    capture_keyframe_seconds: float = Field(
        2.0,
        ge=0.5,
        le=60,
        description="Ask the operator for a keyframe this often, bounding what a capture decodes.",
    )
    video_bitrate_start_kbps: int = Field(
        1000,
        ge=100,
        le=20_000,
        description="Bitrate the bedside's encoder starts at (kbit/s; browsers default to 300).",
    )
    video_bitrate_floor_kbps: int = Field(
        1000,
        ge=100,
        le=20_000,
        description="A congested expert's downlink lowers the bedside's video bitrate, but not "
        "below this (kbit/s): one poor link does not degrade the others below it.",
    )
    video_bitrate_ceiling_kbps: int = Field(
        4000,
        ge=100,
        le=50_000,
        description="Most the bedside's video may use (kbit/s), whatever its link carries.",
    )
    quality_floor_fps: float = Field(
        15,
        gt=0,
        le=60,
        description="Below this frame rate (or the source's resolution) for "
        "PROBELINK_QUALITY_FLOOR_SECONDS, the expert is told the picture is below diagnostic "
        "quality.",
    )
    quality_floor_seconds: float = Field(
        2, gt=0, le=60, description="How long the picture may stay below the floor unsaid."
    )

    @model_validator(mode="after")
    def _bitrates_in_order(self) -> LiveSettings:
        if not (self.video_bitrate_floor_kbps <= self.video_bitrate_ceiling_kbps):
            raise ValueError(
                "PROBELINK_VIDEO_BITRATE_FLOOR_KBPS must not exceed "
                "PROBELINK_VIDEO_BITRATE_CEILING_KBPS"
            )
        if not (self.video_bitrate_start_kbps <= self.video_bitrate_ceiling_kbps):
            raise ValueError(
                "PROBELINK_VIDEO_BITRATE_START_KBPS must not exceed "
                "PROBELINK_VIDEO_BITRATE_CEILING_KBPS"
            )
        return self

    @field_validator("turn_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("turn_urls")
    @classmethod
    def _ice_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            match = ICE_URL_PATTERN.fullmatch(url)
            if match is None:
                raise ValueError(
                    f"{url!r} is not a stun:, stuns:, turn: or turns: URL "
                    "(scheme:host[:port][?transport=udp|tcp])"
                )
            if match["port"] is not None and not 0 < int(match["port"]) <= PORT_MAX:
                raise ValueError(f"{url!r}: the port must be 1 to {PORT_MAX}")
            if match["transport"] is not None and match["scheme"].startswith("stun"):
                raise ValueError(f"{url!r}: only turn: and turns: URLs take a transport")
        return value

    @field_validator("turn_secret")
    @classmethod
    def _turn_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < TURN_SECRET_MIN_BYTES:
            raise ValueError(f"must be at least {TURN_SECRET_MIN_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _clips_fit(self) -> LiveSettings:
        if self.clip_seconds_default > self.clip_seconds_max:
            raise ValueError(
                f"{ENV_PREFIX}CLIP_SECONDS_DEFAULT must not exceed {ENV_PREFIX}CLIP_SECONDS_MAX"
            )
        return self

    @model_validator(mode="after")
    def _turn_has_secret(self) -> LiveSettings:
        # Otherwise every participant would get TURN URLs without a credential coturn accepts.
        if self.turn_secret is None and any(u.startswith("turn") for u in self.turn_urls):
            raise ValueError(
                f"{ENV_PREFIX}TURN_SECRET is required when {ENV_PREFIX}TURN_URLS has turn: or "
                "turns: URLs (the static-auth-secret of coturn)"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
