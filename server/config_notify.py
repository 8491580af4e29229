"""The settings of notifications: SMTP, the signed webhook, who is told and when. Part of the
one `Settings` (config.py), read the same way. Nothing set: notifications are off."""

from __future__ import annotations

import enum

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from server.config_live import ENV_PREFIX, http_url, is_loopback
from server.email_address import check_address, parse_addresses

# The webhook's HMAC key is shared with the receiving system: as long as a signing key.
WEBHOOK_SECRET_MIN_BYTES = 32
LEAD_MINUTES_MAX = 365 * 24 * 60
# Implicit TLS, STARTTLS, plain: the usual submission ports.
SMTP_PORT_DEFAULT = {"tls": 465, "starttls": 587, "none": 25}


class SmtpTls(enum.StrEnum):
    """How the SMTP connection is protected: STARTTLS (required), TLS from the start, none."""

    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


class NotifySettings(BaseSettings):
    """Notifications' fields of `Settings`."""

    smtp_host: str | None = Field(
        None, description="SMTP server that notifications are sent through (unset: no e-mail)."
    )
    smtp_port: int | None = Field(
        None, ge=1, le=65535, description="Its port (default: 587, 465 with TLS, 25 with none)."
    )
    smtp_tls: SmtpTls = Field(
        SmtpTls.STARTTLS,
        description="starttls (required, the default), tls (from the start) or none.",
    )
    smtp_username: str | None = Field(None, description="SMTP login, if the server wants one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_from: str | None = Field(None, description="Sender address of notifications.")
    notify_coordinator_emails: str = Field(
        "",
        description="Comma-separated addresses of the coordinators told of every request "
        "(the experts are told at the address registered with their credentials).",
    )
    notify_webhook_url: str | None = Field(
        None,
        description="http(s) URL that every notification is POSTed to as signed JSON (a "
        "hospital's paging or chat system); needs PROBELINK_NOTIFY_WEBHOOK_SECRET.",
    )
    notify_webhook_secret: SecretStr | None = Field(
        None,
        description="Key of the webhook's HMAC-SHA256 signature (X-Probelink-Signature), "
        f"at least {WEBHOOK_SECRET_MIN_BYTES} bytes, shared with the receiver.",
    )
    notify_before_due_minutes: int = Field(
        30,
        ge=1,
        le=LEAD_MINUTES_MAX,
        description="An open request this close to its due time is notified once more.",
    )
    notify_scan_seconds: int = Field(
        30, ge=1, le=3600, description="How often each node looks for requests coming due."
    )

    @field_validator("smtp_host", "smtp_username", "notify_webhook_url", "smtp_from")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (any(c.isspace() or c in "/@:" for c in value.strip("[]"))):
            raise ValueError("must be a host name or an IP address")
        return value

    @field_validator("smtp_from")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    @field_validator("notify_coordinator_emails")
    @classmethod
    def _coordinators(cls, value: str) -> str:
        parse_addresses(value)
        return value

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = http_url(value)
        if url.username is not None or url.fragment:
            raise ValueError("must have no user or fragment (the signature authenticates)")
        return value

    @field_validator("notify_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < WEBHOOK_SECRET_MIN_BYTES:
            raise ValueError(f"must be at least {WEBHOOK_SECRET_MIN_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _webhook_signed(self) -> NotifySettings:
        # An unsigned webhook would let anyone who can reach the receiver page the experts.
        if self.notify_webhook_url is not None and self.notify_webhook_secret is None:
            raise ValueError(
                f"{ENV_PREFIX}NOTIFY_WEBHOOK_URL is set but {ENV_PREFIX}NOTIFY_WEBHOOK_SECRET is "
                "not: every webhook is signed, set a secret shared with the receiver"
            )
        if self.notify_webhook_secret is not None and self.notify_webhook_url is None:
            raise ValueError(
                f"{ENV_PREFIX}NOTIFY_WEBHOOK_SECRET is set but {ENV_PREFIX}NOTIFY_WEBHOOK_URL "
                "is not: say where notifications are posted"
            )
        return self

    @model_validator(mode="after")
    def _smtp_complete(self) -> NotifySettings:
        mail = f"{ENV_PREFIX}SMTP_HOST"
        if self.smtp_host is None:
            for name, value in (
                ("SMTP_FROM", self.smtp_from),
                ("SMTP_USERNAME", self.smtp_username),
                ("SMTP_PASSWORD", self.smtp_password),
                ("SMTP_PORT", self.smtp_port),
                ("NOTIFY_COORDINATOR_EMAILS", self.notify_coordinator_emails.strip() or None),
            ):
                if value is not None:
                    raise ValueError(
                        f"{ENV_PREFIX}{name} is set but {mail} is not: name the SMTP server"
                    )
            return self
        if self.smtp_from is None:
            raise ValueError(f"{mail} is set but {ENV_PREFIX}SMTP_FROM (the sender) is not")
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError(f"{ENV_PREFIX}SMTP_USERNAME and {ENV_PREFIX}SMTP_PASSWORD go together")

        if (
            self.smtp_username is not None
            and self.smtp_tls is SmtpTls.NONE
            and not is_loopback(self.smtp_host)
        ):
            raise ValueError(
                f"{ENV_PREFIX}SMTP_TLS=none with a login would send the password in clear to "
                f"{self.smtp_host}: use starttls or tls"
            )
        return self

    @property
    def coordinator_emails(self) -> tuple[str, ...]:
        return parse_addresses(self.notify_coordinator_emails)

    @property
    def notify_enabled(self) -> bool:
        """Whether anything is to be sent at all (else no outbox is written or read)."""
        return self.smtp_host is not None or self.notify_webhook_url is not None

    @property
    def smtp_port_in_use(self) -> int:
        return self.smtp_port or SMTP_PORT_DEFAULT[self.smtp_tls.value]
