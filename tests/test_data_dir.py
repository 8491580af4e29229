"""Clinical records and keys on disk are readable by the service account only."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.config import load_settings
from server.consultations.store import open_store
from server.keyring import load_or_create


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default umask (022), under which new files are world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
async def test_app_creates_its_data_directory_and_records_owner_only(
    tmp_path: Path, aiohttp_client: Callable[..., Any]
) -> None:
    data_dir = tmp_path / "new" / "var"
    client = await aiohttp_client(create_app(load_settings(data_dir=data_dir)))
    assert (await client.get("/healthz")).status == 200
    assert mode(data_dir) == 0o700
    assert mode(data_dir.parent) == 0o700  # created by us too
    assert mode(data_dir / "keys") == 0o700
    assert mode(data_dir / "keys" / "jwt.json") == 0o600
    records = data_dir / "probelink.sqlite3"
    for path in (records, Path(f"{records}-wal"), Path(f"{records}-shm")):
        assert mode(path) == 0o600, path


@pytest.mark.usefixtures("permissive_umask")
async def test_opening_an_existing_world_readable_sqlite_file_restricts_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.sqlite3"
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    await store.close()
    path.chmod(0o644)
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    try:
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-wal")) == 0o600
    finally:
        await store.close()


async def test_an_existing_data_directory_open_to_others_is_kept_with_a_warning(
    tmp_path: Path, aiohttp_client: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o750)
    with caplog.at_level(logging.WARNING):
        await aiohttp_client(create_app(load_settings(data_dir=data_dir)))
    assert mode(data_dir) == 0o750  # the administrator's choice
    assert any("other users" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("permissive_umask")
def test_the_first_key_ring_creates_an_owner_only_data_directory(tmp_path: Path) -> None:
    load_or_create(tmp_path / "var")
    assert mode(tmp_path / "var") == 0o700
    assert mode(tmp_path / "var" / "keys") == 0o700
