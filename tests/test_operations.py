"""Running it: a restart of serve.sh in seconds, a log line per step of the day, a prompt stop."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt
from live_client import Participant
from media_bots import CounterVideoTrack, expert_bot, operator_bot
from phantom import BREAST_REQUEST, phantom_png
from servers import Server, cli_env, free_port, live_session

ROOT = Path(__file__).resolve().parent.parent
# What the issue asks of a stop with clients connected, and of a restart with nothing changed.
STOP_SECONDS = 5
RESTART_SECONDS = 10
SIGNABLE = {
    "findings": "Oval circumscribed anechoic lesion with posterior enhancement: a simple cyst.",
    "category": "2",
    "recommendation": "Routine screening.",
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "adequate"},
}


def _call(url: str, token: str, method: str, body: Any = None, ctype: str = "") -> Any:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = ctype or "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


def _consultation(token: str) -> str:
    consultation: str = jwt.decode(token, options={"verify_signature": False})["consultation"]
    return consultation


def _lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_stop_with_live_clients_takes_under_five_seconds_and_the_log_tells_the_day(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path / "var")
    with Server(env) as server:
        coordinator = subprocess.run(  # noqa: ASYNC221 (the server runs in its own process)
            [sys.executable, "-m", "server", "token", "--role", "coordinator", "--sub", "desk-1"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        operator_token, expert_token = live_session(server, coordinator, BREAST_REQUEST)
        operator = await operator_bot(
            await Participant(server.url, operator_token).connect(), CounterVideoTrack()
        )
        expert = await expert_bot(await Participant(server.url, expert_token).connect())
        try:
            await operator.negotiate()
            await expert.negotiate()
            await expert.wait_packets("video", 10)
            cid = _consultation(expert_token)
            # A capture and a signature in another consultation, through the API as the pages
            # make them (signing lets that room's bedside go; this room stays live).
            _, other_expert = live_session(server, coordinator, BREAST_REQUEST)
            signed_cid = _consultation(other_expert)
            base = f"{server.url}/api/consultations/{signed_cid}"
            made = await asyncio.to_thread(
                _call, f"{base}/captures", other_expert, "POST", phantom_png(2), "image/png"
            )
            body = {**SIGNABLE, "key_image_ids": [made["key_image_id"]]}
            await asyncio.to_thread(_call, f"{base}/report", other_expert, "PUT", body)
            await asyncio.to_thread(_call, f"{base}/report/sign", other_expert, "POST")

            # Ctrl-C with the room live: media flows, both participants connected.
            assert server.process is not None
            started = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            while server.process.poll() is None:
                assert time.monotonic() - started < STOP_SECONDS, "still running after 5 s"
                await asyncio.sleep(0.05)
            assert server.process.returncode == 0
            # The clients are told: their connection ends rather than hanging.
            await expert.participant.wait_for("disconnect", within=5)
            await operator.participant.wait_for("disconnect", within=5)
        finally:
            await operator.close()
            await expert.close()
        server.stop()

    lines = _lines(server.err)
    messages = [line["message"] for line in lines]
    joined = [line for line in lines if line["message"] == "joined"]
    assert sorted(line["role"] for line in joined) == ["expert", "operator"]
    assert all(line["consultation"] == cid and line["participant"] for line in joined)
    captured = next(line for line in lines if line["message"] == "captured")
    assert captured["key_image"] == made["key_image_id"] and captured["role"] == "expert"
    signed = next(line for line in lines if line["message"] == "report signed")
    assert signed["consultation"] == signed_cid
    stopping = next(line for line in lines if line["message"] == "shutting down")
    assert stopping["live_connections"] == 2 and stopping["media_rooms"] == 1
    steps = [line["step"] for line in lines if line["message"] == "shutdown step done"]
    assert {"live connections closed", "media closed", "records store closed"} <= set(steps)
    assert sorted(line["role"] for line in lines if line["message"] == "left") == [
        "expert",
        "operator",
    ]
    assert messages[-1] == "stopped"
    # Quiet: the signed report's PDF does not narrate its font subsetting (a line per table,
    # with the glyphs the report's text used).
    assert not [line for line in lines if line["logger"].startswith("fontTools")]
    # Ids and roles only: no participant's name, no clinical text.
    for secret in ("Bedside", "Dr Test", "lump", "simple cyst", "BI-RADS"):
        assert secret.lower() not in server.err.lower()


def _serve_sh(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], str, float]:
    """Start scripts/serve.sh; return it, its output until the link, and the seconds it took."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve.sh"), "--port", str(port)],
        env=cli_env(data_dir),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "coordinator link" in line:
            return process, "".join(seen), time.monotonic() - started
    process.wait(timeout=10)
    raise AssertionError(f"serve.sh printed no link:\n{''.join(seen)}")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=STOP_SECONDS * 2)
    return rest


def test_serve_sh_restarts_in_seconds_when_nothing_changed(tmp_path: Path) -> None:
    port = free_port()
    # The first start may install (a fresh checkout); the restart must not.
    first, _, _ = _serve_sh(tmp_path / "var", port)
    _stop(first)
    again, output, seconds = _serve_sh(tmp_path / "var", port)
    output += _stop(again)
    assert again.returncode == 0, output
    assert seconds < RESTART_SECONDS, f"restart took {seconds:.1f} s:\n{output}"
    assert "installing" not in output, output
    # No packaging warnings (setuptools' about the layout, pip's); the server's own log lines
    # are JSON and have levels of their own.
    printed = [line for line in output.splitlines() if not line.startswith("{")]
    assert not [line for line in printed if "warning" in line.lower()], output
