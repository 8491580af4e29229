"""A new user's path: `probelink serve` with embedded defaults, `probelink token` for it."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from servers import cli_env, free_port

from server.audit import AuditFacts
from server.config import Settings
from server.consultations.store import open_store
from server.keyring import load_or_create

README = Path(__file__).resolve().parent.parent / "README.md"


def probelink(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=60
    )


def assert_owner_only(pid: int, data_dir: Path) -> None:
    """The server's records are its owner's, and so is whatever it creates later."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        assert "Umask:\t0077" in status.read_text()
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "probelink.sqlite3").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    port = free_port()
    env = cli_env(tmp_path / "var")
    with subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port), "--print-link"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        umask=0o022,  # a common default, under which new files are world-readable
    ) as process:
        yield from _until_stopped(process, port, env)


def _until_stopped(
    process: subprocess.Popen[str], port: int, env: dict[str, str]
) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(
                    f"probelink serve exited: {process.stderr.read() if process.stderr else ''}"
                )
            time.sleep(0.1)
    yield base, env, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)


async def test_serve_answers_health_and_a_cli_token_creates_a_consultation_and_invite(
    served: tuple[str, dict[str, str], subprocess.Popen[str]],
) -> None:
    base, env, process = served
    token = probelink("token", "--role", "coordinator", "--sub", "desk-1", env=env)
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["store"] == "sqlite"
        async with http.post(
            f"{base}/api/consultations",
            json={
                "clinical_question": "Lump?",
                "urgency": "urgent",
                "incomplete_reason": "test request",
            },
            headers=headers,
        ) as response:
            assert response.status == 201
            consultation = await response.json()
        async with http.post(
            f"{base}/api/consultations/{consultation['id']}/invites",
            json={"role": "operator", "name": "Bedside sonographer"},
            headers=headers,
        ) as response:
            assert response.status == 201
            invite = await response.json()
        assert invite["url"].startswith(f"{base}/join#token=")
        async with http.get(f"{base}/") as response:
            assert response.status == 200

    assert_owner_only(process.pid, Path(env["PROBELINK_DATA_DIR"]))

    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0
    assert f"serving on {base}" in out
    assert f"coordinator link (valid 12 h): {base}/#token=" in out
    assert "Lump" not in err and "Bedside sonographer" not in err  # no clinical text in logs


async def test_tokens_from_a_key_rotated_while_serving_are_accepted_without_restart(
    served: tuple[str, dict[str, str], subprocess.Popen[str]],
) -> None:
    base, env, _process = served

    def cli(*args: str) -> str:
        result = probelink(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    before = await asyncio.to_thread(cli, "token", "--role", "coordinator", "--sub", "desk-1")
    await asyncio.to_thread(cli, "rotate-key")
    after = await asyncio.to_thread(cli, "token", "--role", "coordinator", "--sub", "desk-2")
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    async with aiohttp.ClientSession() as http:
        for token in (after, before):
            async with http.get(
                f"{base}/api/consultations", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200, await response.text()
        # Join links the server signs from now on use the new key too.
        headers = {"Authorization": f"Bearer {before}"}
        async with http.post(
            f"{base}/api/consultations",
            json={
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
            },
            headers=headers,
        ) as response:
            consultation = await response.json()
        async with http.post(
            f"{base}/api/consultations/{consultation['id']}/invites",
            json={"role": "expert", "name": "Dr Lee"},
            headers=headers,
        ) as response:
            invite = await response.json()
    new_kid = jwt.get_unverified_header(after)["kid"]
    assert jwt.get_unverified_header(invite["token"])["kid"] == new_kid


def test_token_refuses_a_data_directory_without_a_key_ring(tmp_path: Path) -> None:
    for command in (("token", "--role", "coordinator", "--sub", "desk-1"), ("rotate-key",)):
        result = probelink(*command, env=cli_env(tmp_path / "elsewhere"))
        assert result.returncode == 2, command
        assert "no key ring" in result.stderr and "probelink serve" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert not (tmp_path / "elsewhere").exists()


def test_token_for_a_scoped_role_needs_its_consultation(tmp_path: Path) -> None:
    load_or_create(tmp_path)  # as `probelink serve` does on its first run
    refused = probelink("token", "--role", "operator", "--sub", "dr", env=cli_env(tmp_path))
    assert refused.returncode == 2
    assert "needs a consultation" in refused.stderr
    ok = probelink(
        "token",
        "--role",
        "operator",
        "--sub",
        "dr",
        "--consultation",
        "a" * 32,
        env=cli_env(tmp_path),
    )
    assert ok.returncode == 0 and ok.stdout.count(".") == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PROBELINK_PORT", "eighty"),
        ("PROBELINK_SECRET_KEY", "short"),
        ("PROBELINK_DATABASE_URL", "mysql://x"),
        ("PROBELINK_LOG_LEVEL", "LOUD"),
        ("PROBELINK_TOKEN_MAX_TTL_SECONDS", "3600"),  # shorter than a join link's token
        ("PROBELINK_DUE_MINUTES_ROUTINE", "999999999"),
    ],
)
def test_bad_setting_stops_start_up_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = probelink("serve", env=cli_env(tmp_path, **{variable: value}))
    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr
    assert value not in result.stderr or value == "LOUD"  # a secret is never echoed


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = probelink("serve", "--port", port, env=cli_env(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"probelink: cannot listen on 127.0.0.1:{port}: the address is already in use"
    )
    assert "coordinator link" not in result.stdout


def test_bad_site_data_files_stop_start_up_naming_the_file_and_entry(tmp_path: Path) -> None:
    terms = tmp_path / "terms.toml"
    terms.write_text('[[term]]\nphrase = "clot"\npreferred = "thrombus"\n')  # no "why"
    result = probelink("serve", env=cli_env(tmp_path / "data", PROBELINK_TERMINOLOGY=str(terms)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the terminology file {terms}, term 1" in result.stderr
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("[profile\n")
    result = probelink(
        "serve", env=cli_env(tmp_path / "data", PROBELINK_DEVICE_PROFILES=str(profiles))
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the device profiles {profiles} is not valid TOML" in result.stderr


def test_readme_documents_every_setting() -> None:
    readme = README.read_text()
    for name in Settings.model_fields:
        assert f"`PROBELINK_{name.upper()}`" in readme, name


async def test_audit_chain_detects_a_one_byte_edit_of_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    store = await open_store(f"sqlite+aiosqlite:///{path}")
    for i in range(5):
        await store.record_audit(
            AuditFacts("coord-7", "coordinator", f"step{i}", "x", "y", "ok", "127.0.0.1", {})
        )
    assert (await store.verify_audit()).ok
    await store.close()  # checkpoints the WAL into the main file

    data = bytearray(path.read_bytes())
    at = data.find(b"step3")
    assert at > 0
    data[at + 4] = ord("9")  # step3 -> step9: one byte
    path.write_bytes(bytes(data))

    store = await open_store(f"sqlite+aiosqlite:///{path}")
    check = await store.verify_audit()
    await store.close()
    assert not check.ok
    assert check.broken_seq == 4
    assert check.reason == "entry altered"


def test_serve_prints_no_token_unless_asked(tmp_path: Path) -> None:
    """Standard output ends up in the system journal: a 12-hour coordinator token must not."""
    port = free_port()
    env = cli_env(tmp_path / "var")
    with subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        next(_until_stopped(process, port, env))  # listening
        process.send_signal(signal.SIGTERM)
        out, _err = process.communicate(timeout=20)
    assert f"serving on http://127.0.0.1:{port}" in out
    assert "#token=" not in out and "eyJ" not in out
    assert "--print-link" in out
