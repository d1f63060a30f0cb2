"""Self-signed development certificate for localhost, 127.0.0.1 and ::1.

Uses the ``cryptography`` package (a runtime dependency of uringws).  :func:`generate` returns PEM bytes;
:func:`ensure_devcert` caches a pair in a per-user data directory and reuses it until it nears expiry, so
browsers that were told to trust it once keep trusting it.  Never use it for anything but local development.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCert", "default_directory", "ensure_devcert", "fingerprint", "generate"]

DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")
VALID_DAYS = 365
# Regenerate when fewer days than this remain, so a long-running dev server does not expire mid-session.
RENEW_DAYS = 30
CERT_FILE = "devcert.pem"
KEY_FILE = "devkey.pem"


@dataclass(frozen=True)
class DevCert:
    """Paths of a cached development certificate and key, and the certificate's SHA-256 fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str  # "AB:CD:..." upper-case hex, as browsers show it
    not_after: datetime.datetime


def generate(valid_days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """Return ``(cert_pem, key_pem)`` for a new self-signed ECDSA P-256 certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "uringws development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in DNS_NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdate a little so clocks that are slightly behind still accept it.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint of a PEM certificate as colon-separated upper-case hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def default_directory() -> Path:
    """``$XDG_DATA_HOME/uringws`` or ``~/.local/share/uringws`` (the XDG base-directory default)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "uringws"


def _usable(cert_path: Path, key_path: Path) -> datetime.datetime | None:
    """Return the expiry of a cached pair if it can be reused, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return None
    not_after = cert.not_valid_after_utc
    if not_after - datetime.datetime.now(datetime.UTC) < datetime.timedelta(days=RENEW_DAYS):
        return None
    return not_after


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so a concurrent reader never sees half a PEM file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_devcert(directory: str | os.PathLike[str] | None = None) -> DevCert:
    """Return a cached development certificate from ``directory``, creating or renewing it if needed."""
    d = Path(directory) if directory is not None else default_directory()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = d / CERT_FILE, d / KEY_FILE
    not_after = _usable(cert_path, key_path)
    if not_after is None:
        cert_pem, key_pem = generate()
        # Key first: a reader that finds a new cert always finds its key.
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
        not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    return DevCert(cert_path, key_path, fingerprint(cert_path.read_bytes()), not_after)
