"""Certificates for the proxy: its CA, per-host leaf certificates, upstream trust.

A hijacked CONNECT tunnel is TLS the proxy terminates itself, with a certificate for the
host the client asked for, signed by the CA the operator configured (``proxy.ca_cert``,
``proxy.ca_key``) and installed in the clients' trust store. Leaf certificates are made
on first use and cached per host (a bounded LRU), each with its own SSLContext.
Upstream TLS is verified against the system's store plus ``proxy.upstream_ca_bundle``,
unless ``proxy.insecure_skip_verify`` says otherwise.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from d7y.daemons.certs import create_ca

#: Leaf certificates kept (one per host name).
LEAF_CACHE_SIZE = 1024
LEAF_VALIDITY = datetime.timedelta(days=365)
CA_VALIDITY = datetime.timedelta(days=3650)
#: Leaves are back-dated a little: a client whose clock is slightly behind accepts them.
CLOCK_SKEW = datetime.timedelta(hours=1)


class CAError(ValueError):
    """The configured CA cannot be used; the message names the file and the fix."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_ca(directory: Path, common_name: str = "d7y proxy CA") -> tuple[Path, Path]:
    """Create ``ca.crt`` and ``ca.key`` (mode 0600) in ``directory``; refuses to
    overwrite an existing pair. Returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise CAError(f"{str(path)!r} exists already: remove it or pick another directory")
    create_ca(directory, common_name=common_name)  # the services' CA maker (d7y certs)
    return cert_path, key_path


class LeafCertificates:
    """Issues and caches server SSLContexts per host, signed by the proxy's CA."""

    def __init__(
        self,
        ca_cert: Path,
        ca_key: Path,
        *,
        cache_size: int = LEAF_CACHE_SIZE,
        on_issue: Callable[[], object] | None = None,
    ) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise CAError(
                f"proxy.ca_cert {str(ca_cert)!r} is not a PEM certificate: {exc}"
            ) from None
        try:
            key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(
                f"proxy.ca_key {str(ca_key)!r} is not an unencrypted PEM private key: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_key_type()):
            raise CAError(f"proxy.ca_key {str(ca_key)!r}: use an EC or RSA key")
        if key.public_key().public_numbers() != self._ca.public_key().public_numbers():
            raise CAError(
                f"proxy.ca_key {str(ca_key)!r} does not belong to proxy.ca_cert {str(ca_cert)!r}"
            )
        self._ca_key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())  # one key for all leaves
        self._cache: collections.OrderedDict[str, ssl.SSLContext] = collections.OrderedDict()
        self._cache_size = cache_size
        self._on_issue = on_issue

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server context presenting a certificate for ``host`` (a name or an IP)."""
        host = host.lower()
        context = self._cache.get(host)
        if context is not None:
            self._cache.move_to_end(host)
            return context
        context = self._make_context(host)
        self._cache[host] = context
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return context

    def _make_context(self, host: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])  # the tunnel speaks HTTP/1.1 only
        # load_cert_chain reads files only: write the pair to a private temporary file.
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as tmp:  # mode 0600
            tmp.write(self.leaf_pem(host))
            tmp.flush()
            context.load_cert_chain(tmp.name)
        return context

    def leaf_pem(self, host: str) -> bytes:
        """A new leaf certificate for ``host`` signed by the CA, then the CA's
        certificate, then the leaf's private key, in one PEM (what a TLS server loads)."""
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._ca.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + LEAF_VALIDITY, self._ca.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        if self._on_issue is not None:
            self._on_issue()
        return (
            cert.public_bytes(serialization.Encoding.PEM)
            + self._ca.public_bytes(serialization.Encoding.PEM)
            + self._leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _rsa_key_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPrivateKey


def upstream_context(ca_bundle: Path | None, insecure_skip_verify: bool) -> ssl.SSLContext:
    """The client context for upstream https: the system's trust plus ``ca_bundle``;
    no verification at all with ``insecure_skip_verify``."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context
