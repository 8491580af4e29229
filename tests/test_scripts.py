"""The install scripts work from a minimal Debian image, where even python3 may be missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
# What common.sh needs besides python3 (which this machine has, so it is left out of PATH).
TOOLS = ("bash", "grep", "id")


def test_ensure_venv_installs_python3_when_it_is_missing(tmp_path: Path) -> None:
    if not Path("/usr/bin/dpkg-query").exists():
        pytest.skip("not a Debian system (no dpkg-query)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(found)
    # dpkg-query over an empty package database: nothing is installed yet.
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").touch()
    dpkg_query = bin_dir / "dpkg-query"
    dpkg_query.write_text(f'#!/bin/sh\nexec /usr/bin/dpkg-query --admindir="{admin}" "$@"\n')
    dpkg_query.chmod(0o755)
    # as_root records what would be run as root and fails (no root needed here).
    script = f"""
        source {SCRIPTS / "common.sh"}
        as_root() {{ echo "$*" >> {tmp_path / "as_root.log"}; return 1; }}
        ensure_venv ""
    """
    result = subprocess.run(
        ["/usr/bin/bash", "-c", script],
        env={"PATH": str(bin_dir)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0  # python3 is still missing: nothing was installed
    assert "installing Debian packages: python3 python3-venv" in result.stderr
    ran = (tmp_path / "as_root.log").read_text().splitlines()
    assert ran == [
        "env DEBIAN_FRONTEND=noninteractive apt-get update -q",
        "env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"
        " python3 python3-venv",
    ]
