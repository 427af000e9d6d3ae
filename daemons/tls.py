"""Mutual TLS between the services: the ``security.tls`` config section and the SSL
contexts built from it.

Every service of a cluster holds a certificate issued by the cluster's own CA
(``d7y certs init``). With ``security.tls.enabled`` a server (the scheduler's port, a
peer's piece port) speaks TLS and asks for the client's certificate; a client (the
scheduler client, the piece client) checks the server's. Trust is the CA: a certificate
from any other CA, or none where one is required, ends the connection in the handshake.

Identity: a certificate's subject common name is its holder's host ID (``ip-hostname``,
``-seed`` appended for a seed peer) and its organizational unit the role (``peer``,
``seed``, ``scheduler``). The scheduler accepts an AnnounceHost only for the host ID of
the connection's certificate, and a seed host only from a ``seed`` certificate, so a
cluster member cannot take over another host's ID (d7y.daemons.scheduler.server).
Host names are not checked by clients: peers reach each other by the addresses the
scheduler hands out, and membership in the cluster is what the certificate proves.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

from d7y.daemons.config import ConfigError, field

#: Roles a certificate's organizational unit may name.
ROLES = ("scheduler", "seed", "peer")


@dataclasses.dataclass
class TLSConfig:
    enabled: bool = field(
        False,
        "speak TLS on the protocol ports (scheduler port, piece port) and to them "
        "(scheduler and piece clients); every service of a cluster must agree",
    )
    ca_cert: Path | None = field(
        None, "PEM file of the cluster's CA (d7y certs init DIR writes DIR/ca.crt)"
    )
    cert: Path | None = field(
        None,
        "PEM certificate of this service, issued by ca_cert; a peer's common name must be "
        "its host ID (d7y certs init DIR --peer HOST_ID)",
    )
    key: Path | None = field(None, "PEM private key of cert")
    require_client_cert: bool = field(
        True,
        "servers refuse clients without a certificate from ca_cert (mutual TLS); off: a "
        "client may connect with none (its host is then bound to its connection only)",
    )


@dataclasses.dataclass
class SecurityConfig:
    tls: TLSConfig = dataclasses.field(
        default_factory=TLSConfig,
        metadata={"doc": "TLS between services (d7y certs init creates the files)"},
    )


def validate(cfg: TLSConfig, prefix: str = "security.tls") -> None:
    """ConfigError naming the key when TLS is on and a file is missing or unreadable,
    or the certificate and key do not match."""
    if not cfg.enabled:
        return
    for name in ("ca_cert", "cert", "key"):
        path = getattr(cfg, name)
        if path is None:
            raise ConfigError(
                f"config key '{prefix}.{name}' is needed when '{prefix}.enabled' is true: "
                f"create the files with 'd7y certs init DIR'"
            )
        if not Path(path).is_file():
            raise ConfigError(f"config key '{prefix}.{name}': no such file {str(path)!r}")
    try:
        server_context(cfg)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"config keys '{prefix}.*': cannot load the CA, certificate and key "
            f"({cfg.ca_cert}, {cfg.cert}, {cfg.key}): {exc}"
        ) from None


def _context(cfg: TLSConfig, purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cafile=str(cfg.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(cfg.cert), str(cfg.key))
    return context


def server_context(cfg: TLSConfig) -> ssl.SSLContext | None:
    """The servers' context (None when TLS is off): client certificates from the CA
    required (or optional, with ``require_client_cert`` off)."""
    if not cfg.enabled:
        return None
    context = _context(cfg, ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    # No session resumption: tickets would only cost bytes in every handshake and
    # memory on both ends of every connection.
    context.num_tickets = 0
    return context


def client_context(cfg: TLSConfig) -> ssl.SSLContext | None:
    """The clients' context (None when TLS is off): the server's certificate must come
    from the CA; this service presents its own."""
    if not cfg.enabled:
        return None
    context = _context(cfg, ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False  # see the module docstring: the CA is the check
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_identity(path: Path) -> tuple[str, str]:
    """(common name, organizational unit) of the PEM certificate at ``path``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())

    def first(oid) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATIONAL_UNIT_NAME)


def check_host_certificate(cfg: TLSConfig, host_id: str, *, seed: bool) -> None:
    """A peer's own certificate must name its host ID (and the seed role for a seed
    peer), or the scheduler would refuse its announcements: ConfigError saying so."""
    if not cfg.enabled or cfg.cert is None:
        return
    name, role = certificate_identity(cfg.cert)
    want_role = "seed" if seed else "peer"
    if name != host_id or role != want_role:
        raise ConfigError(
            f"config key 'security.tls.cert': {str(cfg.cert)!r} is for {role or 'no role'} "
            f"{name!r}, but this daemon is {want_role} host {host_id!r}; issue one with "
            f"'d7y certs issue DIR --{want_role} {host_id}'"
        )
