"""The one logger set-up: one JSON object per line on stderr, quiet by default.

Loggers are per module (`logging.getLogger(__name__)`); facts go in `extra=`
so they become fields. Log opaque ids only: never a patient detail, a token or
a request body.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Libraries that are chatty at INFO.
_QUIET_LIBRARIES = (
    "aiohttp.access",
    "engineio",
    "socketio",
    "aioice",
    "aiortc",
    "asyncio",
    "highdicom",  # narrates every object it builds
    "pynetdicom",  # narrates every association and message
    "fontTools",  # narrates each report PDF's font subsetting, glyph by glyph
)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
