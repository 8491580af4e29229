"""A real Orthanc with its DICOMweb plugin for tests: loopback only, free ports, a temp dir.

It can be stopped and started again on the same ports and storage, to play a PACS that is down.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_SECONDS = 30


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return ORTHANC is not None and DICOMWEB_PLUGIN.exists()


class OrthancServer:
    def __init__(self, directory: Path):
        self.directory = directory
        self.http_port = free_tcp_port()
        self.dicom_port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.config = directory / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "PROBELINK-TEST",
                    "StorageDirectory": str(directory / "storage"),
                    "IndexDirectory": str(directory / "index"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "HttpBindAddress": "127.0.0.1",
                    "DicomBindAddress": "127.0.0.1",
                    "Plugins": [str(DICOMWEB_PLUGIN)],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    "StorageCompression": False,
                }
            )
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> None:
        assert ORTHANC is not None
        with (self.directory / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                [ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited; see {self.directory / 'orthanc.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str, accept: str = "application/dicom+json") -> bytes:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return bytes(answer.read())
