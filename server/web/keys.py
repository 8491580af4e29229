"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import socketio

    from server.auth import Keys, Principal, TokenPolicy
    from server.config import Settings
    from server.consultations.access import Standing
    from server.consultations.store import Store
    from server.imaging.captures import KeyImages
    from server.imaging.dicom_node import DicomNode
    from server.live.hub import Live
    from server.live.log import RoomLog
    from server.media.relay import Relay
    from server.metrics import Metrics
    from server.notify.outbox import Notifier
    from server.reports.model import Term
    from server.reports.store import ReportLog
    from server.web.refusals import RefusalBursts

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
KEYRING: web.AppKey[Keys] = web.AppKey("keyring")
TOKEN_POLICY: web.AppKey[TokenPolicy] = web.AppKey("token_policy")
STORE: web.AppKey[Store] = web.AppKey("store")
# The versions of each consultation's report, in the records store.
REPORT_LOG: web.AppKey[ReportLog] = web.AppKey("report_log")
# The live room's sequenced events and open marks, in the records store.
ROOM_LOG: web.AppKey[RoomLog] = web.AppKey("room_log")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SIO: web.AppKey[socketio.AsyncServer] = web.AppKey("sio")
LIVE: web.AppKey[Live] = web.AppKey("live")
RELAY: web.AppKey[Relay] = web.AppKey("relay")
KEY_IMAGES: web.AppKey[KeyImages] = web.AppKey("key_images")
TERMINOLOGY: web.AppKey[tuple[Term, ...]] = web.AppKey("terminology")
REFUSALS: web.AppKey[RefusalBursts] = web.AppKey("refusals")
DICOM_NODE: web.AppKey[DicomNode] = web.AppKey("dicom_node")
# Notifications, when configured (absent: off).
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")

# Set on a request once its token is verified.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
# A consultation token's standing, once read for the request (None: no such consultation).
STANDING: web.RequestKey[Standing | None] = web.RequestKey("standing")
