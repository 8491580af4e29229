"""Builds the aiohttp application: routes, Socket.IO, store, keys; start-up and clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from server import __version__
from server.auth import Keys, TokenPolicy
from server.config import Settings
from server.consultations import http as consultations_http
from server.consultations import record
from server.consultations.http import turnaround_summary
from server.consultations.store import open_store
from server.dicom.profiles import load_profiles
from server.dicom.text_check import TextCheck, TextCheckUnavailable, find_tessdata
from server.errors import ConfigError
from server.experts import http as experts_http
from server.files import ensure_private_dir
from server.imaging import device_setup
from server.imaging import http as images_http
from server.imaging.archive import Archive
from server.imaging.captures import BUILD_CONCURRENCY, KeyImages
from server.imaging.dicom_node import DicomNode
from server.imaging.identity import load_deid_key
from server.imaging.pacs import Dicomweb, PacsPusher
from server.imaging.store import KeyImageLog
from server.keyring import (
    KEYRING_RELATIVE_PATH,
    KeyRing,
    KeyRingFile,
    from_secret,
    load,
    load_or_create,
)
from server.live.hub import NAMESPACE, Reaper, open_live, room_of
from server.live.log import RoomLog
from server.live.media_calls import serve_media_calls
from server.live.queue_namespace import QueueNamespace
from server.live.server import close_manager, create_sio
from server.live.signaling import LiveNamespace
from server.media.capture import CineBuffer
from server.media.feedback import BitratePolicy
from server.media.hooks import receive
from server.media.relay import Relay
from server.metrics import create_metrics
from server.notify.outbox import Notifier
from server.outcomes import http as outcomes_http
from server.outcomes.http import LEDGER_CLOCK, LedgerClock, refresh_ledger_metrics
from server.reports import http as reports_http
from server.reports.model import load_terminology
from server.reports.pdf import find_fonts
from server.reports.store import ReportLog
from server.shutdown import step
from server.web import pages, session, vocabulary
from server.web.edge import client_address_middleware
from server.web.keys import (
    DICOM_NODE,
    KEY_IMAGES,
    KEYRING,
    LIVE,
    METRICS,
    NOTIFIER,
    REFUSALS,
    RELAY,
    REPORT_LOG,
    ROOM_LOG,
    SETTINGS,
    SIO,
    STORE,
    TERMINOLOGY,
    TOKEN_POLICY,
)
from server.web.middleware import access_middleware, api_headers, errors_middleware
from server.web.refusal_audit import flush_refusals
from server.web.refusals import RefusalBursts

log = logging.getLogger(__name__)

MEDIA_STATS_INTERVAL_SECONDS = 3.0
HEALTH_PROBE_SECONDS = 2.0
# A burst of refused requests from one actor and address is one audit entry per this window.
REFUSAL_BURST_SECONDS = 60.0
REFUSAL_FLUSH_SECONDS = 1.0
# How soon a device profile saved on another node comes into use on this one.
PROFILE_REFRESH_SECONDS = 5.0


def routes() -> web.RouteTableDef:
    """Every feature's HTTP routes."""
    table = web.RouteTableDef()
    for feature in (
        consultations_http,
        record,
        images_http,
        device_setup,
        experts_http,
        reports_http,
        outcomes_http,
        vocabulary,
        session,
    ):
        feature.routes(table)
    return table


def load_keyring(settings: Settings) -> KeyRing:
    """The server's signing keys: the configured secret, or the data directory's existing ring."""
    if settings.secret_key is not None:
        return from_secret(settings.secret_key.get_secret_value())
    return load(settings.data_dir)


def serving_keys(settings: Settings) -> Keys:
    """The keys a server uses: the configured secret, or the ring file (created on first run)."""
    if settings.secret_key is not None:
        return from_secret(settings.secret_key.get_secret_value())
    load_or_create(settings.data_dir)
    return KeyRingFile(settings.data_dir / KEYRING_RELATIVE_PATH)


def token_policy(settings: Settings) -> TokenPolicy:
    return TokenPolicy(
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        leeway_seconds=settings.token_leeway_seconds,
        max_ttl_seconds=settings.token_max_ttl_seconds,
    )


def create_app(settings: Settings) -> web.Application:
    """One application per settings; every long-lived resource opens in a cleanup context."""
    # The data directory holds clinical records and keys: its owner only.
    ensure_private_dir(settings.data_dir)
    app = web.Application(
        middlewares=[client_address_middleware, errors_middleware, access_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app.on_response_prepare.append(api_headers)
    app[SETTINGS] = settings
    app[METRICS] = create_metrics()
    app[LEDGER_CLOCK] = LedgerClock()
    app[KEYRING] = serving_keys(settings)
    app[TOKEN_POLICY] = token_policy(settings)
    app[TERMINOLOGY] = load_terminology(settings.terminology)
    # The report PDF's fonts: missing, start-up stops now rather than a signature later.
    find_fonts(settings.report_fonts)
    app[REFUSALS] = RefusalBursts(REFUSAL_BURST_SECONDS)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_key_images_ctx(settings))
    if settings.notify_enabled:
        app.cleanup_ctx.append(_notify_ctx)

    sio = create_sio(settings)
    namespace = LiveNamespace(app)
    sio.register_namespace(namespace)
    sio.register_namespace(QueueNamespace(app))
    sio.attach(app)
    app[SIO] = sio
    app.cleanup_ctx.append(_live_ctx(namespace))
    app.cleanup_ctx.append(_relay_ctx)
    app.on_shutdown.append(close_live)
    if settings.dicom_port is not None:
        app.cleanup_ctx.append(_dicom_node_ctx)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.add_routes(routes())
    pages.add_routes(app)
    return app


async def close_live(app: web.Application) -> None:
    """Listening has stopped: end the live connections first, so that nothing waits on them (a
    browser's Socket.IO connection would otherwise hold the server open). The media stays up
    for the requests in flight (a capture reads the relay's frames); `_relay_ctx` closes it."""
    sio, relay = app[SIO], app[RELAY]
    connections = len(sio.eio.sockets)
    rooms = len(relay.rooms)
    log.info(
        "shutting down",
        extra={"live_connections": connections, "media_rooms": rooms},
    )
    # Clients are told the server went away and reconnect (to another node, behind a balancer).
    if connections:
        await step("live connections closed", sio.eio.disconnect())


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[SETTINGS].sqlalchemy_url)
    app[STORE] = store
    app[REPORT_LOG] = ReportLog(store)
    app[ROOM_LOG] = RoomLog(store.engine)
    log.info("records store open", extra={"dialect": store.dialect})
    flusher = asyncio.create_task(_flush_refusals_forever(app), name="refusal-bursts")
    yield
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    await step("refusal counts written", flush_refusals(app, drain=True))
    await step("records store closed", store.close())


async def _notify_ctx(app: web.Application) -> AsyncIterator[None]:
    """Notifications (PROBELINK_SMTP_HOST, PROBELINK_NOTIFY_WEBHOOK_URL): the outbox's sender
    and the due-soon scanner, stopped before the store closes."""
    settings = app[SETTINGS]
    notifier = Notifier(settings, settings.base_url, app[STORE], app[METRICS])
    app[NOTIFIER] = notifier
    notifier.start()
    yield
    await step("notifications stopped (the outbox keeps what is left)", notifier.stop())


async def _flush_refusals_forever(app: web.Application) -> None:
    while True:
        await asyncio.sleep(REFUSAL_FLUSH_SECONDS)
        await flush_refusals(app)


async def _refresh_profiles_forever(key_images: KeyImages) -> None:
    """Profiles saved on another node come into use here within PROFILE_REFRESH_SECONDS."""
    while True:
        await asyncio.sleep(PROFILE_REFRESH_SECONDS)
        try:
            await key_images.refresh_profiles()
        except Exception:
            log.warning(
                "device profiles could not be read from the records store; kept those read before"
            )


def _key_images_ctx(
    settings: Settings,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """Captures: profiles and key are read at once, so a bad one stops start-up."""
    profiles = load_profiles(settings.device_profiles)
    text = _text_check(settings)
    key = load_deid_key(settings)
    archive = Archive(settings.data_dir)
    archive.open()

    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        metrics = app[METRICS]
        key_images = KeyImages(
            settings,
            KeyImageLog(app[STORE]),
            app[ROOM_LOG],
            archive,
            profiles,
            key,
            text,
            metrics,
        )
        app[KEY_IMAGES] = key_images
        key_images.selections.resume()
        await key_images.refresh_profiles()
        profiles_reader = asyncio.create_task(
            _refresh_profiles_forever(key_images), name="device-profiles"
        )
        pacs = pusher = None
        if settings.dicomweb_url is not None:
            pacs = Dicomweb(settings.dicomweb_url)
            pacs.open()
            pusher = PacsPusher(
                pacs,
                key_images.records,
                archive,
                lambda outcome: metrics.pacs_pushes.labels(outcome).inc(),
            )
            key_images.pacs = pacs
            key_images.on_outbox = pusher.kick
            pusher.start()
        yield
        profiles_reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await profiles_reader
        await step("key object selections finished", key_images.close())
        if pusher is not None:
            await step("PACS pushes stopped (the outbox keeps what is left)", pusher.stop())
        if pacs is not None:
            await step("PACS client closed", pacs.close())
        text.close()

    return context


def _text_check(settings: Settings) -> TextCheck:
    """The safety net under the masks, its model loaded now: without it nothing is captured,
    so a missing model stops start-up with what to install."""
    try:
        text = TextCheck(find_tessdata(settings.tessdata), workers=BUILD_CONCURRENCY)
        text.warm()
    except TextCheckUnavailable as exc:
        raise ConfigError(str(exc)) from None
    return text


async def _dicom_node_ctx(app: web.Application) -> AsyncIterator[None]:
    """The DICOM node (scanners' C-STORE and worklist C-FIND), when PROBELINK_DICOM_PORT is set."""
    try:
        node = DicomNode(
            app[SETTINGS], app[STORE], app[KEY_IMAGES], app[LIVE], asyncio.get_running_loop()
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    await asyncio.to_thread(node.start)
    app[DICOM_NODE] = node
    yield
    await step("DICOM node stopped", asyncio.to_thread(node.stop))


def _live_ctx(
    reaper: Reaper,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """The live rooms' presence and room bus (memory, or Redis when configured)."""

    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with open_live(app[SETTINGS], app[SIO], app[STORE], app[ROOM_LOG], reaper) as live:
            app[LIVE] = live
            if live.calls is not None:
                serve_media_calls(app, live.calls)
            yield
        await step("Socket.IO Redis manager closed", close_manager(app[SIO]))

    return context


def _cine_factory(settings: Settings) -> Callable[[str, Callable[[], None]], CineBuffer]:
    def make(codec: str, request_keyframe: Callable[[], None]) -> CineBuffer:
        return CineBuffer(
            codec,
            seconds=settings.clip_seconds_max,
            max_bytes=int(settings.cine_buffer_mib * 1024 * 1024),
            request_keyframe=request_keyframe,
            keyframe_every=settings.capture_keyframe_seconds,
            recording_seconds=settings.recording_seconds_max,
        )

    return make


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    receive.check_version()
    settings = app[SETTINGS]
    policy = BitratePolicy(
        floor_kbps=settings.video_bitrate_floor_kbps,
        ceiling_kbps=settings.video_bitrate_ceiling_kbps,
        start_kbps=settings.video_bitrate_start_kbps,
    )
    address = str(settings.media_address) if settings.media_address is not None else None
    relay = Relay(_cine_factory(settings), policy, media_address=address)
    app[RELAY] = relay
    reporter = asyncio.create_task(_report_media_stats(app), name="media-stats")
    yield
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    await step("media closed", relay.close())


async def _report_media_stats(app: web.Application) -> None:
    """Every few seconds: tell each room how its media flows, and export it on /metrics."""
    metrics, relay, sio = app[METRICS], app[RELAY], app[SIO]
    shown: set[tuple[str, str, str]] = set()
    while True:
        await asyncio.sleep(MEDIA_STATS_INTERVAL_SECONDS)
        try:
            report = await relay.statistics()
            current = set()
            for consultation_id, entries in report.items():
                await sio.emit(
                    "media_stats",
                    {"participants": entries},
                    room=room_of(consultation_id),
                    namespace=NAMESPACE,
                )
                for entry in entries:
                    labels = (consultation_id, entry["id"], entry["role"])
                    current.add(labels)
                    for stat, gauge in metrics.media.items():
                        if entry.get(stat) is not None:
                            gauge.labels(*labels).set(entry[stat])
            for labels in shown - current:
                for gauge in metrics.media.values():
                    with contextlib.suppress(KeyError):
                        gauge.remove(*labels)
            shown = current
            metrics.peer_connections.set(relay.peer_connections())
            await app[LIVE].keep_media(list(relay.rooms))
        except Exception:
            log.exception("media statistics failed")


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness, per component; 503 when this node cannot take work.

    The node can take work when its records store answers, its Redis (if configured) answers
    and its archive has room for captures. The PACS outbox backlog is reported, not judged: a
    PACS that is down delays pushes, it loses nothing.
    """
    app = request.app
    settings, store = app[SETTINGS], app[STORE]
    components: dict[str, dict[str, Any]] = {}
    components["store"] = await _probe(store.ping(), dialect=store.dialect)
    redis = app[LIVE].redis
    if redis is not None:
        components["redis"] = await _probe(redis.ping())
    free = shutil.disk_usage(app[KEY_IMAGES].archive.root).free
    components["archive"] = {
        "ok": free >= settings.archive_min_free_mib * 1024 * 1024,
        "free_mib": free // (1024 * 1024),
    }
    if settings.dicomweb_url is not None and components["store"]["ok"]:
        with contextlib.suppress(Exception):  # the store's own probe already says why
            pending = await app[KEY_IMAGES].records.outbox_backlog()
            components["pacs_outbox"] = {"ok": True, "pending": pending}
    ready = all(c["ok"] for c in components.values())
    body = {
        "status": "ok" if ready else "unavailable",
        "version": __version__,
        "store": store.dialect,
        "components": components,
    }
    return web.json_response(body, status=200 if ready else 503)


async def _probe(check: Awaitable[Any], **facts: Any) -> dict[str, Any]:
    """One component's health: did it answer within the probe's time, and with what."""
    try:
        async with asyncio.timeout(HEALTH_PROBE_SECONDS):
            await check
    except Exception as exc:
        log.warning(
            "health check: a component does not answer", extra={"error": type(exc).__name__}
        )
        return {"ok": False, **facts}
    return {"ok": True, **facts}


async def metrics(request: web.Request) -> web.Response:
    try:
        await turnaround_summary(request.app)
    except Exception:
        # The other metrics still matter when the store does not answer.
        log.exception("turnaround metrics not refreshed")
    try:
        await refresh_ledger_metrics(request.app)
    except Exception:
        log.exception("second-opinion ledger metrics not refreshed")
    if NOTIFIER in request.app:
        try:
            await request.app[NOTIFIER].count_pending()
        except Exception:
            log.exception("notification backlog not counted")
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})
