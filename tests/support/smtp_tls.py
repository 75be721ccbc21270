"""An SMTP relay on a real socket that can offer STARTTLS with a certificate made for the
test (its own CA, written as PEM files), and that records every AUTH attempt: enough to
see whether a client upgraded, verified, and whether a password ever reached the relay."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.netutil import free_port


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # what a client trusts
    cert_file: Path  # the relay's chain
    key_file: Path


def make_certificates(directory: Path, host: str = "127.0.0.1") -> Certificates:
    """A CA and a server certificate for `host` (an IP address SAN, plus `localhost`)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RRMM test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Certificates(directory / "ca.pem", directory / "relay.pem", directory / "relay.key")
    paths.ca_file.write_bytes(ca.public_bytes(pem))
    paths.cert_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    paths.key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class Received:
    recipients: list[str]
    tls: bool  # the transaction ran over TLS


@dataclass
class AuthAttempt:
    username: str
    password: str
    tls: bool


class _Handler:
    def __init__(self, relay: TlsRelay) -> None:
        self.relay = relay

    async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.relay.lock:
            self.relay.received.append(Received(list(envelope.rcpt_tos), session.ssl is not None))
        return "250 Message accepted"


class TlsRelay:
    """aiosmtpd on `host`, offering STARTTLS when `certificates` are given; accepts any
    AUTH (also in clear, so that a client's mistake would show) and remembers it."""

    def __init__(self, certificates: Certificates | None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.received: list[Received] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.lock = threading.Lock()
        context = None
        if certificates is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificates.cert_file, certificates.key_file)
        self.controller = Controller(
            _Handler(self),
            hostname=host,
            port=self.port,
            decode_data=False,
            tls_context=context,
            require_starttls=False,
            authenticator=self._authenticate,
            auth_require_tls=False,
        )

    def _authenticate(
        self, _server: Any, session: Any, _envelope: Any, _mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            with self.lock:
                self.auth_attempts.append(
                    AuthAttempt(
                        auth_data.login.decode(),
                        auth_data.password.decode(),
                        session.ssl is not None,
                    )
                )
        return AuthResult(success=True)

    def start(self) -> TlsRelay:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
