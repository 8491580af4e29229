"""Prometheus metrics, one registry per application (so tests can run many apps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server import __version__

MEDIA_STATS = ("bitrate_in_kbps", "bitrate_out_kbps", "frame_rate", "packet_loss_percent", "rtt_ms")
LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CAPTURE_BUCKETS_SECONDS = (0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Metrics:
    """The application's metrics and the registry that exports them."""

    registry: CollectorRegistry
    http_requests: Counter
    http_latency: Histogram
    auth_refusals: Counter
    live_refusals: Counter
    consultations_created: Counter
    invites_created: Counter
    # Media statistics per participant of a live consultation (labels removed when it ends).
    media: dict[str, Gauge]
    peer_connections: Gauge
    # Key images made (kind: still, clip; source: relay, upload) and how long until durable.
    key_images: Counter
    capture_seconds: Histogram
    # PACS pushes by outcome (sent, failed).
    pacs_pushes: Counter
    # Captures refused by the safety net under the masks (text that looks like patient data).
    text_refusals: Counter
    # Turnaround per stage (quantile 0.5, 0.9) and overdue requests, refreshed at each scrape.
    turnaround: Gauge
    overdue: Gauge
    # Notifications by channel (email, webhook) and outcome (sent, failed, dropped, refused),
    # and the deliveries waiting in the outbox (as this node last counted them).
    notifications: Counter
    notifications_pending: Gauge
    # The second-opinion ledger per application, over every signed report (no reader labels):
    # see server/outcomes/ledger.py and show_ledger.
    ledger: dict[str, Gauge]

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def show_ledger(self, applications: dict[str, dict[str, Any]]) -> None:
        """Set the ledger's gauges from its figures per application; a figure that is None (no
        case to count) is left out, never NaN."""
        gauges = self.ledger
        for gauge in gauges.values():
            gauge.clear()
        for app, f in applications.items():
            gauges["second_opinions"].labels(app).set(f["second_opinions"])
            for measure in ("percent", "kappa", "n"):
                _set(gauges["agreement"].labels(app, measure), f["category_agreement"][measure])
            for kind in ("major", "minor"):
                _set(gauges["discordance"].labels(app, kind), f["discordance"][kind]["rate"])
            if "downgraded" in f:
                _set(gauges["downgraded"].labels(app), f["downgraded"]["rate"])
            for figure in ("ppv_biopsy", "repeat_scan_confirmed"):
                for read, p in f.get(figure, {}).items():
                    low, high = p["ci95"] or (None, None)
                    for bound, value in (
                        ("value", p["value"]),
                        ("ci95_low", low),
                        ("ci95_high", high),
                    ):
                        _set(gauges[figure].labels(app, read, bound), value)
                    for count in ("n", "positives"):
                        gauges["cases"].labels(app, figure, read, count).set(p[count])


def _set(child: Any, value: float | None) -> None:
    if value is not None:
        child.set(value)


def create_metrics() -> Metrics:
    registry = CollectorRegistry()
    Gauge("probelink_build_info", "Build information.", ["version"], registry=registry).labels(
        __version__
    ).set(1)
    return Metrics(
        registry=registry,
        http_requests=Counter(
            "probelink_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=registry,
        ),
        http_latency=Histogram(
            "probelink_http_request_seconds",
            "HTTP request handling time by route.",
            ["route"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        ),
        live_refusals=Counter(
            "probelink_live_refusals",
            "Live-room connections refused by admission control, by reason code.",
            ["code"],
            registry=registry,
        ),
        auth_refusals=Counter(
            "probelink_auth_refusals",
            "Requests refused by authentication or authorization, by reason code.",
            ["code"],
            registry=registry,
        ),
        consultations_created=Counter(
            "probelink_consultations_created",
            "Consultations requested.",
            ["urgency"],
            registry=registry,
        ),
        invites_created=Counter(
            "probelink_invites_created", "Join links issued.", ["role"], registry=registry
        ),
        media={
            stat: Gauge(
                f"probelink_media_{stat}",
                f"Live media {stat.replace('_', ' ')} per participant.",
                ["consultation", "participant", "role"],
                registry=registry,
            )
            for stat in MEDIA_STATS
        },
        peer_connections=Gauge(
            "probelink_media_peer_connections", "Open WebRTC peer connections.", registry=registry
        ),
        key_images=Counter(
            "probelink_key_images",
            "Key images archived, by kind and source.",
            ["kind", "source"],
            registry=registry,
        ),
        capture_seconds=Histogram(
            "probelink_capture_seconds",
            "Capture request to durable, recorded key image.",
            ["kind"],
            buckets=CAPTURE_BUCKETS_SECONDS,
            registry=registry,
        ),
        pacs_pushes=Counter(
            "probelink_pacs_pushes", "PACS pushes by outcome.", ["outcome"], registry=registry
        ),
        text_refusals=Counter(
            "probelink_burned_in_text_refusals",
            "Captures and files refused because text that looks like patient data was left "
            "after masking, by source (relay, upload, video_upload, scanner, prior) and kind "
            "(name, identifier, date).",
            ["source", "kind"],
            registry=registry,
        ),
        turnaround=Gauge(
            "probelink_turnaround_seconds",
            "Turnaround of second opinions by stage (median and 90th percentile).",
            ["stage", "quantile"],
            registry=registry,
        ),
        overdue=Gauge(
            "probelink_consultations_overdue",
            "Consultations past their due time: open now (open), or signed after it (signed_late).",
            ["kind"],
            registry=registry,
        ),
        notifications=Counter(
            "probelink_notifications",
            "Notification deliveries by channel (email, webhook) and outcome (sent; failed, to "
            "be retried; dropped, the request closed first; refused for good by the mail server).",
            ["channel", "outcome"],
            registry=registry,
        ),
        notifications_pending=Gauge(
            "probelink_notifications_pending",
            "Notification deliveries waiting in the outbox.",
            registry=registry,
        ),
        ledger=_ledger_gauges(registry),
    )


def _ledger_gauges(registry: CollectorRegistry) -> dict[str, Gauge]:
    """The second-opinion ledger's figures (README: "The second-opinion ledger")."""
    read = ["application", "read", "bound"]
    return {
        "second_opinions": Gauge(
            "probelink_second_opinions",
            "Signed second opinions with a first read.",
            ["application"],
            registry=registry,
        ),
        "agreement": Gauge(
            "probelink_category_agreement",
            "Category agreement with the first read: percent, Cohen's kappa, pairs compared (n).",
            ["application", "measure"],
            registry=registry,
        ),
        "discordance": Gauge(
            "probelink_discordance_ratio",
            "Share of second opinions stating a major or minor discrepancy with the first read.",
            ["application", "kind"],
            registry=registry,
        ),
        "downgraded": Gauge(
            "probelink_downgraded_ratio",
            "Share of first reads at BI-RADS 4-5 the second opinion put at 2-3.",
            ["application"],
            registry=registry,
        ),
        "ppv_biopsy": Gauge(
            "probelink_ppv_biopsy",
            "PPV of a biopsy recommendation (BI-RADS 4-5) by read, with its Wilson 95% interval.",
            read,
            registry=registry,
        ),
        "repeat_scan_confirmed": Gauge(
            "probelink_repeat_scan_confirmed",
            "Share of DVT calls a repeat scan agreed with, by read, with its Wilson 95% interval.",
            read,
            registry=registry,
        ),
        "cases": Gauge(
            "probelink_ledger_cases",
            "The counts behind the ledger's proportions (n, positives).",
            ["application", "figure", "read", "count"],
            registry=registry,
        ),
    }
