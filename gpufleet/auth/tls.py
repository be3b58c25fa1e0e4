"""TLS for a network: a private CA and a server certificate, generated once, and the client side.

``gpufleet up --tls`` calls :func:`ensure_server_tls` (or takes ``--tls-cert``/``--tls-key``); clients
verify the server against the CA (``Access(url, creds, tls_ca)``), so a machine that joins over the
internet knows it talks to this network's server and nobody else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from events.errors import GpufleetError

__all__ = ["ServerTls", "TlsError", "ensure_server_tls"]


class TlsError(GpufleetError):
    """Certificates could not be made or read."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The files a TLS server needs, and the CA its clients verify it with."""

    cert: Path
    key: Path
    ca: Path | None


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def ensure_server_tls(directory: Path, hosts: list[str] | None = None, *, days: int = 825) -> ServerTls:
    """A CA (``ca.pem``) and a server certificate for ``hosts`` (plus localhost and this host).

    Made once and kept; a later call with new hosts re-issues the server certificate from the same CA,
    so clients keep trusting it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    names = sorted({"localhost", "127.0.0.1", "::1", socket.gethostname(), *(hosts or [])})
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    try:
        if ca_cert_path.exists() and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet network CA")])
            ca_cert = (
                x509.CertificateBuilder()
                .subject_name(ca_name)
                .issuer_name(ca_name)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .sign(ca_key, hashes.SHA256())
            )
            _write(ca_key_path, ca_key.private_bytes(pem, private, plain), 0o600)
            _write(ca_cert_path, ca_cert.public_bytes(pem), 0o644)
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            listed = {str(v) for v in have.get_values_for_type(x509.DNSName)}
            listed |= {str(v) for v in have.get_values_for_type(x509.IPAddress)}
            fresh = cert.not_valid_after_utc > now + dt.timedelta(days=30)
            if fresh and set(names) <= listed:
                return ServerTls(cert_path, key_path, ca_cert_path)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpufleet nats-server")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        _write(key_path, key.private_bytes(pem, private, plain), 0o600)
        _write(cert_path, cert.public_bytes(pem), 0o644)
    except (OSError, ValueError) as e:
        raise TlsError(f"cannot make TLS certificates in {directory}: {e}") from e
    return ServerTls(cert_path, key_path, ca_cert_path)
