"""A real coturn (`turnserver`) for tests: loopback only, free ports, everything under a temp dir.

With `tls=True` it also has a TLS listener (`turns:`) with a certificate made by the test,
signed by a CA of its own (`TurnServer.ca_path`, for a client that must trust it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

TURNSERVER = shutil.which("turnserver")
START_TIMEOUT_SECONDS = 15
STOP_TIMEOUT_SECONDS = 10
PORT_ATTEMPTS = 20
STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
STUN_BINDING_REQUEST = b"\x00\x01\x00\x00"
STUN_BINDING_SUCCESS = b"\x01\x01"
REALM = "probelink.test"
TLS_HANDSHAKE_TIMEOUT_SECONDS = 2
CERTIFICATE_DAYS = 2

# The test-only configuration: loopback peers are allowed (both peers of a test live on
# 127.0.0.1), no TLS unless asked for, no CLI, and the pid file and user database under the
# temp dir.
TEST_CONFIG = """\
listening-ip={ip}
relay-ip={ip}
listening-port={port}
use-auth-secret
static-auth-secret={secret}
realm={realm}
fingerprint
allow-loopback-peers
{tls}
no-dtls
no-cli
no-tcp-relay
no-rfc5780
no-software-attribute
pidfile={dir}/turnserver.pid
userdb={dir}/turndb
log-file=stdout
simple-log
"""


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (coturn listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(PORT_ATTEMPTS):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                with socket.socket(family, socket.SOCK_STREAM) as tcp:
                    tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` (for a TLS listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as tcp:
        tcp.bind((host, 0))
        return int(tcp.getsockname()[1])


def make_certificate(directory: Path, ip: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `ip` (the TURN URL's host) signed by it, made here.

    Returns the paths of the CA certificate, the server certificate (PEM) and its key (PEM,
    mode 0600). `cryptography` comes with aiortc (DTLS), so nothing more is installed for it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probelink test TURN CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address(ip))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "turn-cert.pem"
    key_path = directory / "turn-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # The chain coturn serves: its certificate, then the CA's.
    cert_path.write_bytes(
        server.public_bytes(serialization.Encoding.PEM)
        + ca.public_bytes(serialization.Encoding.PEM)
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def tls_answers(host: str, port: int, ca_path: Path) -> bool:
    """Whether a TLS handshake with `host:port` succeeds, the certificate checked against the CA."""
    context = ssl.create_default_context(cafile=str(ca_path))
    try:
        with (
            socket.create_connection((host, port), timeout=TLS_HANDSHAKE_TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except OSError:
        return False


def stun_answers(host: str, port: int) -> bool:
    """Whether a STUN Binding request over UDP gets a success response."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transaction = secrets.token_bytes(12)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        try:
            sock.sendto(STUN_BINDING_REQUEST + STUN_MAGIC_COOKIE + transaction, (host, port))
            data = sock.recv(2048)
        except OSError:
            return False
    return data[:2] == STUN_BINDING_SUCCESS and data[8:20] == transaction


class TurnServer:
    """`turnserver` in a child process; `with TurnServer(dir) as t:` waits until it answers STUN.

    With `config_file`, that file is used (e.g. the production one) and the loopback
    listener, ports, secret (unless `give_secret` is false) and files are given on the
    command line, which overrides it; `extra_args` are added to the command line.

    With `tls`, coturn also listens for TLS over TCP on `tls_port` (`tls_url()`), with a
    certificate for `ip` made in `directory` and signed by the CA at `ca_path`; it is up once
    it answers STUN on `port` and completes a TLS handshake on `tls_port`.
    """

    def __init__(
        self,
        directory: Path,
        config_file: Path | None = None,
        ip: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        give_secret: bool = True,
        tls: bool = False,
    ):
        self.directory = directory
        self.config_file = config_file
        self.extra_args = extra_args
        self.give_secret = give_secret
        # Where clients reach it and where it relays from.
        self.ip = ip
        self.port = free_udp_tcp_port(ip)
        self.secret = secrets.token_hex(32)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "turnserver.log"
        self.tls = tls
        self.tls_port: int | None = None
        self.ca_path: Path | None = None
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        if tls:
            self.tls_port = free_tcp_port(ip)
            while self.tls_port == self.port:
                self.tls_port = free_tcp_port(ip)
            self.ca_path, self.cert_path, self.key_path = make_certificate(directory, ip)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"turn:{host}:{self.port}?transport=udp"

    def tls_url(self) -> str:
        """The `turns:` URL of the TLS listener (TURN over TLS over TCP)."""
        assert self.tls_port is not None, "started without tls=True"
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"turns:{host}:{self.tls_port}?transport=tcp"

    def _tls_options(self) -> list[str]:
        """coturn's TLS options: none (`no-tls`), or the listener, its certificate and key."""
        if not self.tls:
            return ["no-tls"]
        return [
            f"tls-listening-port={self.tls_port}",
            f"cert={self.cert_path}",
            f"pkey={self.key_path}",
        ]

    def _command(self) -> list[str]:
        assert TURNSERVER is not None
        if self.config_file is None:
            config = self.directory / "turnserver.conf"
            config.write_text(
                TEST_CONFIG.format(
                    ip=self.ip,
                    port=self.port,
                    secret=self.secret,
                    realm=REALM,
                    dir=self.directory,
                    tls="\n".join(self._tls_options()),
                )
            )
            config.chmod(0o600)
            return [TURNSERVER, "-c", str(config), *self.extra_args]
        return [
            TURNSERVER,
            "-c",
            str(self.config_file),
            f"--listening-ip={self.ip}",
            f"--relay-ip={self.ip}",
            f"--listening-port={self.port}",
            *([f"--static-auth-secret={self.secret}"] if self.give_secret else []),
            *(f"--{option}" for option in self._tls_options()),
            f"--pidfile={self.directory}/turnserver.pid",
            f"--userdb={self.directory}/turndb",
            *self.extra_args,
        ]

    def _answers(self) -> bool:
        if not stun_answers(self.ip, self.port):
            return False
        if self.tls_port is None or self.ca_path is None:
            return True
        if tls_answers(self.ip, self.tls_port, self.ca_path):
            return True
        time.sleep(0.1)
        return False

    def __enter__(self) -> TurnServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._answers():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited early:\n{self.log}")
        self.stop()
        raise RuntimeError(
            f"turnserver did not answer within {START_TIMEOUT_SECONDS} s:\n{self.log}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def __exit__(self, *exc: object) -> None:
        self.stop()
