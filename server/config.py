"""The one settings object, read once from `PROBELINK_*` environment variables.

Every setting has an embedded default so that `probelink serve` runs on one
machine with nothing configured. A value that fails its type or rule stops the
server at start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from server.config_live import ENV_PREFIX, LiveSettings, http_url, is_loopback
from server.config_notify import NotifySettings
from server.errors import ConfigError

SQLITE_FILE_NAME = "probelink.sqlite3"
SECRET_KEY_MIN_BYTES = 32
# Lifetime of the coordinator link `probelink serve` prints (and of `probelink token`'s default).
COORDINATOR_LINK_TTL_SECONDS = 12 * 3600
# Longest time from request to due: a year (a larger one overflows dates).
DUE_MINUTES_MAX = 365 * 24 * 60


class Settings(LiveSettings, NotifySettings):
    """probelink's settings; the README has a table of all of them."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(
        Path("var"), description="Directory for the SQLite records, the key ring and the archive."
    )
    host: str = Field("127.0.0.1", description="Address `probelink serve` listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port `probelink serve` listens on.")
    public_url: str | None = Field(
        None,
        description="Base URL that join links point to (default: http://HOST:PORT); https:// "
        "unless its host is loopback.",
    )
    allow_insecure_public_url: bool = Field(
        False,
        description="Allow an http:// public URL (or HOST) that is not loopback: tokens and "
        "patient data then cross the network in clear (a LAN demo only).",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks of reverse proxies (e.g. `127.0.0.1`)"
        " whose `X-Forwarded-For` names the client: its address is then what the audit log"
        " records and admission counts. Empty: the connection's own address.",
    )
    database_url: str | None = Field(
        None,
        description="Records store: a postgresql:// URL to share records between nodes "
        "(default: SQLite file under the data directory).",
    )
    redis_url: str | None = Field(
        None, description="redis:// URL: fan Socket.IO out across nodes (default: in-process)."
    )
    redis_prefix: str = Field(
        "probelink",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of every Redis key and channel, so deployments can share a Redis.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Token signing key (at least 32 bytes). Default: a random key generated on "
        "first run and kept in DATA_DIR/keys/jwt.json.",
    )
    token_issuer: str = Field("probelink", min_length=1, description="JWT `iss` claim.")
    token_audience: str = Field("probelink", min_length=1, description="JWT `aud` claim.")
    token_leeway_seconds: int = Field(
        30, ge=0, le=300, description="Clock skew tolerated on `exp` and `iat`."
    )
    invite_ttl_seconds: int = Field(
        86400, ge=60, le=30 * 86400, description="Lifetime of a join link's token."
    )
    token_max_ttl_seconds: int = Field(
        30 * 86400,
        ge=60,
        description="Longest lifetime a token may have (`exp` - `iat`); at least the invite TTL "
        "and 12 h (the coordinator link).",
    )
    archive_min_free_mib: int = Field(
        512,
        ge=0,
        description="Below this much free space on the archive's disk, `/healthz` answers 503"
        " (the node should take no more work).",
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest JSON request body."
    )
    due_minutes_emergency: int = Field(
        60,
        ge=1,
        le=DUE_MINUTES_MAX,
        description="Time from request to due for an emergency consultation.",
    )
    due_minutes_urgent: int = Field(
        240,
        ge=1,
        le=DUE_MINUTES_MAX,
        description="Time from request to due for an urgent consultation.",
    )
    due_minutes_routine: int = Field(
        2880,
        ge=1,
        le=DUE_MINUTES_MAX,
        description="Time from request to due for a routine consultation.",
    )
    device_profiles: Path | None = Field(
        None,
        description="A site's device profiles file (TOML, the format of "
        "server/dicom/device_profiles.toml): where each device burns in text, to mask it.",
    )
    tessdata: Path | None = Field(
        None,
        description="The folder holding tesseract's English model (eng.traineddata) for the "
        "burned-in text check under the masks (default: TESSDATA_PREFIX, then Debian's "
        "/usr/share/tesseract-ocr/5/tessdata); start-up stops when it cannot be loaded.",
    )
    terminology: Path | None = Field(
        None,
        description="A site's reporting terminology (TOML, the format of "
        "server/reports/terminology.toml): ambiguous phrases and their preferred terms, read "
        "first.",
    )
    report_fonts: Path | None = Field(
        None,
        description="The folder holding the report PDF's fonts, DejaVuSans.ttf and "
        "DejaVuSans-Bold.ttf (default: Debian's /usr/share/fonts/truetype/dejavu, package "
        "fonts-dejavu-core); start-up stops when they are missing.",
    )
    deid_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC that derives pseudonyms and DICOM UIDs (default: "
        "generated on first run under the data directory); the same on every node.",
    )
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb base URL of the PACS (STOW-RS at URL/studies); unset: archive "
        "locally only.",
    )
    dicom_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the DICOM node (Storage SCP for scanners' images, Modality "
        "Worklist SCP), on the same address as HTTP; unset: no DICOM node.",
    )
    dicom_host: str | None = Field(
        None,
        description="Address the DICOM node listens on (default: PROBELINK_HOST). DICOM has "
        "no TLS here: keep it inside the hospital's network.",
    )
    dicom_ae_title: str = Field(
        "PROBELINK",
        description="The DICOM node's AE title (1-16 characters, no backslash).",
    )
    dicom_peers: str = Field(
        "",
        description="The scanners allowed to call the DICOM node: comma-separated "
        "AE_TITLE@host entries (host: an IP address or a name resolved at start); an "
        "association from any other is rejected.",
    )
    consultation_quota_mib: int = Field(
        2048,
        ge=1,
        le=1 << 20,
        description="Most a consultation's archived DICOM objects may take (MiB): a capture or "
        "prior import that would go over it is refused (413 quota_exceeded).",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field("json", description="`json` (one object per line) or `text`.")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError("must be json or text")
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < SECRET_KEY_MIN_BYTES:
            raise ValueError(f"must be at least {SECRET_KEY_MIN_BYTES} bytes")
        return value

    @field_validator("deid_secret")
    @classmethod
    def _deid_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < SECRET_KEY_MIN_BYTES:
            raise ValueError(f"must be at least {SECRET_KEY_MIN_BYTES} bytes")
        return value

    @field_validator("dicomweb_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        if not ae_title_ok(value):
            raise ValueError("must be 1-16 printable ASCII characters, no backslash")
        return value.strip()

    @field_validator("dicom_peers")
    @classmethod
    def _peers(cls, value: str) -> str:
        parse_peers(value)
        return value

    @property
    def dicom_peer_list(self) -> tuple[tuple[str, str], ...]:
        return parse_peers(self.dicom_peers)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        try:
            parse_networks(value)
        except ValueError:
            raise ValueError("must be comma-separated IP addresses or networks") from None
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.trusted_proxies)

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        url = http_url(value)
        if url.username is not None or url.query or url.fragment:
            raise ValueError("must have no user, query or fragment")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _token_lifetimes_fit(self) -> Settings:
        # Otherwise every invite (or the coordinator link) would fail to be signed.
        if self.token_max_ttl_seconds < max(self.invite_ttl_seconds, COORDINATOR_LINK_TTL_SECONDS):
            raise ValueError(
                f"{ENV_PREFIX}TOKEN_MAX_TTL_SECONDS must be at least "
                f"{ENV_PREFIX}INVITE_TTL_SECONDS ({self.invite_ttl_seconds}) and 12 h "
                f"({COORDINATOR_LINK_TTL_SECONDS}), the coordinator link's lifetime"
            )
        return self

    @model_validator(mode="after")
    def _dicom_peers_named(self) -> Settings:
        if self.dicom_port is not None and not self.dicom_peer_list:
            raise ValueError(
                f"{ENV_PREFIX}DICOM_PORT is set but {ENV_PREFIX}DICOM_PEERS names no scanner: "
                "list the ones allowed to send, as AE_TITLE@host, comma-separated"
            )
        return self

    @model_validator(mode="after")
    def _public_url_secure(self) -> Settings:
        # Browsers on another machine would send bearer tokens, and get patient data, in clear.
        if self.allow_insecure_public_url:
            return self
        if self.public_url is None:
            if not is_loopback(self.host):
                raise ValueError(
                    f"{ENV_PREFIX}HOST {self.host} is not a loopback address and "
                    f"{ENV_PREFIX}PUBLIC_URL is unset: join links would be http:// on the network."
                    f" Put a TLS proxy in front (docs/deployment.md) and set {ENV_PREFIX}PUBLIC_URL"
                    f" to its https:// URL, or set {ENV_PREFIX}ALLOW_INSECURE_PUBLIC_URL=1 for a"
                    " LAN demo"
                )
            return self
        url = urlsplit(self.public_url)
        if url.scheme == "http" and not is_loopback(url.hostname or ""):
            raise ValueError(
                f"{ENV_PREFIX}PUBLIC_URL must be https:// when its host is not loopback (tokens "
                "and patient data would cross the network in clear): put a TLS proxy in front "
                f"(docs/deployment.md), or set {ENV_PREFIX}ALLOW_INSECURE_PUBLIC_URL=1 for a LAN "
                "demo"
            )
        return self

    @property
    def base_url(self) -> str:
        """Where clients reach this server; join links are built on it."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def sqlalchemy_url(self) -> str:
        """The records store URL with its async driver named."""
        url = self.database_url
        if url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / SQLITE_FILE_NAME).resolve()}"
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
        return url

    def due_minutes(self) -> dict[str, int]:
        """Minutes from request to due, by urgency."""
        return {
            "emergency": self.due_minutes_emergency,
            "urgent": self.due_minutes_urgent,
            "routine": self.due_minutes_routine,
        }


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ae_title_ok(value: str) -> bool:
    """An AE title: 1-16 printable ASCII characters, not all spaces, no backslash."""
    return (
        0 < len(value) <= 16
        and bool(value.strip())
        and all(" " <= c <= "~" and c != "\\" for c in value)
    )


def parse_peers(value: str) -> tuple[tuple[str, str], ...]:
    """`AE_TITLE@host, ...` as (AE title, host) pairs; ValueError naming the bad entry."""
    peers = []
    for n, entry in enumerate((e.strip() for e in value.split(",")), 1):
        if not entry:
            continue
        title, at, host = entry.rpartition("@")
        if not at or not ae_title_ok(title) or not host or any(c.isspace() for c in host):
            raise ValueError(f"entry {n} must be AE_TITLE@host (AE title: 1-16 characters)")
        peers.append((title.strip(), host))
    return tuple(peers)


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip()) for v in value.split(",") if v.strip())


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; a bad value names its variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["loc"]:  # one variable; otherwise the message names those involved
                name = "_".join(str(part) for part in err["loc"]).upper()
                message = f"{ENV_PREFIX}{name}: {message}"
            problems.append(message)
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}") from None
