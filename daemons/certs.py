"""``d7y certs``: a private CA for a cluster and certificates for its services.

    d7y certs init DIR [--scheduler NAME]... [--seed HOST_ID]... [--peer HOST_ID]...
    d7y certs issue DIR (--scheduler NAME | --seed HOST_ID | --peer HOST_ID)...

``init`` creates the CA (DIR/ca.crt, DIR/ca.key) and a certificate for each service
named (DIR/NAME.crt, DIR/NAME.key; one named ``scheduler`` unless --scheduler is given);
``issue``
adds certificates signed by the CA already in DIR. A certificate's common name is the
service's identity: the host ID (``ip-hostname``, ``-seed`` appended for a seed peer)
for peers and seed peers, which the scheduler holds them to (d7y.daemons.tls), and its
organizational unit the role. Keys are ECDSA P-256, written 0600 in a 0700 directory.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
ORGANIZATION = "d7y"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, role: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    # An hour back: a machine whose clock is a little behind still accepts it.
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)


def create_ca(directory: Path, *, days: int = 3650, common_name: str = "d7y cluster CA"):
    """Write DIR/ca.crt and DIR/ca.key; returns (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, "ca")
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def load_ca(directory: Path):
    """(certificate, key) of the CA in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    return cert, key


def issue(
    directory: Path, common_name: str, role: str, ca, *, days: int = 825, file_stem: str = ""
) -> tuple[Path, Path]:
    """Issue a certificate for ``common_name`` in ``role``, signed by ``ca`` (a
    (certificate, key) pair); writes DIR/STEM.crt and DIR/STEM.key (STEM defaults to
    the common name) and returns their paths. Valid for servers and clients alike."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = file_stem or common_name
    if not stem or "/" in stem or stem.startswith("."):
        raise ValueError(f"{stem!r} cannot name a certificate file: use a host ID or a name")
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _services(args: argparse.Namespace) -> list[tuple[str, str]]:
    return (
        [(name, "scheduler") for name in args.scheduler]
        + [(host_id, "seed") for host_id in args.seed]
        + [(host_id, "peer") for host_id in args.peer]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d7y certs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action, what in (
        ("init", "create a CA in DIR and certificates for the services named"),
        ("issue", "add certificates signed by the CA already in DIR"),
    ):
        p = sub.add_parser(action, help=what, description=what)
        p.add_argument("dir", type=Path, help="where the CA and certificates are written")
        p.add_argument("--scheduler", action="append", default=[], metavar="NAME",
                       help="a scheduler's certificate (repeatable)")  # fmt: skip
        p.add_argument("--seed", action="append", default=[], metavar="HOST_ID",
                       help="a seed peer's certificate, e.g. 10.0.0.5-seed1-seed")  # fmt: skip
        p.add_argument("--peer", action="append", default=[], metavar="HOST_ID",
                       help="a peer's certificate, e.g. 10.0.0.7-node7 (ip-hostname)")  # fmt: skip
        p.add_argument("--days", type=int, default=825, help="validity of the certificates")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    services = _services(args)
    try:
        if args.action == "init":
            if (directory / CA_KEY).exists():
                print(
                    f"d7y certs: {directory / CA_KEY} exists already; use 'd7y certs issue "
                    f"{directory} ...' to add certificates, or choose another directory",
                    file=sys.stderr,
                )
                return 2
            ca = create_ca(directory)
            print(f"CA: {directory / CA_CERT}")
            if not args.scheduler:  # every cluster has one
                services.insert(0, ("scheduler", "scheduler"))
        else:
            if not services:
                parser.error("name at least one service: --scheduler, --seed or --peer")
            if not (directory / CA_KEY).exists():
                print(
                    f"d7y certs: no CA in {directory} (no {CA_KEY}): run 'd7y certs init "
                    f"{directory}' first",
                    file=sys.stderr,
                )
                return 2
            ca = load_ca(directory)
        for name, role in services:
            cert_path, key_path = issue(directory, name, role, ca, days=args.days)
            print(f"{role}: {cert_path} {key_path}")
    except (OSError, ValueError) as exc:
        print(f"d7y certs: {exc}", file=sys.stderr)
        return 1
    return 0
