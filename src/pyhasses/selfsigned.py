"""A self-signed certificate for local use: ``python3 -m pyhasses.selfsigned DIR``.

Owns: writing ``DIR/cert.pem`` and ``DIR/key.pem`` (mode 0600) for
``localhost``, 127.0.0.1 and ::1, made with ``cryptography``.  Must not
touch: the daemon.  The certificate is valid from one hour ago for ``--days``
days (default 365).  It is an end-entity certificate (``CA:FALSE``) signed by
its own key: ``curl --cacert DIR/cert.pem`` and Python's ``cafile=`` trust it
as it is, and Firefox lets one add an exception for it, which it refuses for
a CA certificate used as a server's (``CA_CERT_USED_AS_END_ENTITY``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys

NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


def make_pair(days: int = 365, common_name: str = "localhost", not_before=None):
    """(certificate PEM, key PEM) for ``NAMES`` and ``ADDRESSES``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyhasses self-signed")])
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    alt_names = [x509.DNSName(n) for n in NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m pyhasses.selfsigned",
        description="Write DIR/cert.pem and DIR/key.pem, a self-signed certificate "
                    "for localhost, 127.0.0.1 and ::1.")
    parser.add_argument("dir", metavar="DIR", help="directory to write into (created if missing)")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error("--days must be positive")
    try:
        os.makedirs(args.dir, exist_ok=True)
        cert_pem, key_pem = make_pair(args.days)
        cert_path = os.path.join(args.dir, "cert.pem")
        key_path = os.path.join(args.dir, "key.pem")
        write_private(key_path, key_pem)
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
    except OSError as exc:
        print(f"pyhasses.selfsigned: cannot write into {args.dir}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {cert_path} and {key_path} (localhost, 127.0.0.1, ::1; {args.days} days)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
