"""`GET /api/vocabulary`: the words the pages offer, from the rules that check them.

The pages used to carry their own copies of the guidance directions and the DVT segments and
grades, which would drift from what the server accepts; now they ask once at start. The lexicon
(server/consultations/lexicon.py) comes from here too: a breast lesion's descriptors and the
BI-RADS categories, what each examined venous segment shows; each as `[{value, label}]`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.consultations.applications import CATEGORIES, Application, category_label
from server.consultations.lexicon import (
    COMPRESSIBILITY_LABELS,
    LESION_CHOICES,
    SEGMENT_CHOICES,
    SEGMENT_LABELS,
    choices,
)
from server.live.room import CUE_DIRECTIONS
from server.web.edge import authenticate


def vocabulary() -> dict[str, Any]:
    return {
        "guidance": {cue.value: list(directions) for cue, directions in CUE_DIRECTIONS.items()},
        "dvt": {
            "segments": [{"value": s.value, "label": t} for s, t in SEGMENT_LABELS.items()],
            "compressibility": [
                {"value": c.value, "label": t} for c, t in COMPRESSIBILITY_LABELS.items()
            ],
            # What each examined segment shows: thrombus, flow, extent.
            "findings": {name: choices(kind) for name, kind in SEGMENT_CHOICES.items()},
        },
        "breast": {
            "lesion": {name: choices(kind) for name, kind in LESION_CHOICES.items()},
            "categories": [
                {"value": c, "label": category_label(Application.BREAST, c)}
                for c in CATEGORIES[Application.BREAST]
            ],
        },
    }


async def get_vocabulary(request: web.Request) -> web.Response:
    """Any valid token: the vocabulary holds no patient data, but the API answers only callers."""
    authenticate(request)
    return web.json_response(vocabulary())


def routes(table: web.RouteTableDef) -> None:
    table.get("/api/vocabulary")(get_vocabulary)
