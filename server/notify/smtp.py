"""Sending a notice by e-mail: one SMTP conversation per message through aiosmtplib."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from server.config_notify import NotifySettings, SmtpTls
from server.notify.model import DeliveryFailed, DeliveryRefused

# Connect, TLS, AUTH, and each command: a mail server that does not answer by then is down.
SMTP_TIMEOUT_SECONDS = 15.0
PERMANENT_FAILURE_CODE = 500


class Mailer:
    """The site's SMTP server, as the settings describe it."""

    def __init__(self, settings: NotifySettings):
        assert settings.smtp_host is not None and settings.smtp_from is not None
        self.host = settings.smtp_host
        self.port = settings.smtp_port_in_use
        self.tls = settings.smtp_tls
        self.username = settings.smtp_username
        self.password = (
            settings.smtp_password.get_secret_value() if settings.smtp_password else None
        )
        # The envelope sender, and the From: of every message.
        self.sender = settings.smtp_from

    async def send(self, message: EmailMessage, recipient: str) -> None:
        """Deliver to the server; `DeliveryRefused` when it refuses the recipient for good,
        `DeliveryFailed` for anything that may pass later."""
        try:
            await aiosmtplib.send(
                message,
                sender=self.sender,
                recipients=[recipient],
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.tls is SmtpTls.TLS,
                # STARTTLS is required when asked for, never tried otherwise (a plain relay).
                start_tls=self.tls is SmtpTls.STARTTLS,
                timeout=SMTP_TIMEOUT_SECONDS,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            if codes and all(code >= PERMANENT_FAILURE_CODE for code in codes):
                raise DeliveryRefused(
                    f"the mail server refused the recipient ({codes[0]})"
                ) from None
            raise DeliveryFailed(f"the mail server deferred the recipient ({codes})") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryFailed(f"the mail server answered {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"the mail server is unreachable ({type(exc).__name__})") from None
