"""Posting a notice to the webhook: the JSON body, signed with HMAC-SHA256 of its bytes."""

from __future__ import annotations

import aiohttp

from server.notify.model import SIGNATURE_HEADER, DeliveryFailed, signature

WEBHOOK_TIMEOUT_SECONDS = 15.0


class Webhook:
    """The receiver at PROBELINK_NOTIFY_WEBHOOK_URL; one client session while the app runs."""

    def __init__(self, url: str, secret: bytes):
        self.url = url
        self.secret = secret
        self.session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, body: bytes) -> None:
        """Deliver `body`; `DeliveryFailed` unless the receiver answers 2xx."""
        assert self.session is not None
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body),
        }
        try:
            # No redirects: the signed body goes to the configured URL only.
            async with self.session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"the webhook answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"the webhook is unreachable ({type(exc).__name__})") from None
