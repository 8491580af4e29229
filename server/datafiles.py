"""The site-extensible TOML data files (device profiles, terminology): one way to read them.

A bad file stops start-up with a `ConfigError` naming the file and what is wrong.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from server.errors import ConfigError


def read_tables(path: Path, table: str, what: str) -> list[Any]:
    """The `[[table]]` entries of a data file; `what` names it in errors ("device profiles")."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the {what} {path} is not valid TOML: {exc}") from None
    entries = doc.get(table, [])
    if not isinstance(entries, list) or set(doc) - {table}:
        raise ConfigError(f"the {what} {path} must hold only [[{table}]] tables")
    return entries


def norm(text: str) -> str:
    """Compare names without case and with spaces collapsed."""
    return " ".join(text.split()).casefold()
