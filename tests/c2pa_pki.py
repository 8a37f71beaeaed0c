"""A self-made CA and an ES256 signer it issued, made on the spot: the C2PA tests' and bench's signing key.

Never committed: each run makes its own in a temporary folder. The leaf carries what the C2PA SDK asks of a
signing certificate (c2pa-python 0.38 refuses one without SKI/AKI: "the certificate is invalid"): KeyUsage
digitalSignature, EKU emailProtection, SubjectKeyIdentifier and AuthorityKeyIdentifier. Loaded by path from
bench/c2pa_cost.py, so it imports nothing of the test suite.
"""

from __future__ import annotations

import datetime as dt
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_pki(folder, *, name: str = "signer"):
    """A self-made CA and an ES256 leaf it issued: (chain.pem path, key.pem path (mode 600), key PEM bytes)."""
    now = dt.datetime.now(dt.timezone.utc)

    def named(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raycolor tests")])

    def cert(subject, key, issuer, issuer_key, extensions):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=30)))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = named(f"raycolor test CA ({name})")
    ca = cert(ca_name, ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),  # keyCertSign, cRLSign
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    ])
    leaf = cert(named(f"raycolor test {name}"), key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),  # digitalSignature
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    ])
    folder.mkdir(parents=True, exist_ok=True)
    chain = folder / "chain.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path = folder / "key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, even briefly
    os.write(fd, pem)
    os.close(fd)
    return chain, key_path, pem


def write_toml(path, cert, key, alg: str = "es256"):
    """A --sign TOML naming ``cert`` and ``key`` (paths; relative ones are from the TOML's folder)."""
    path.write_text(f'alg = "{alg}"\nsign_cert = "{cert}"\nprivate_key = "{key}"\n')
    return path
