"""A tiny PKI for sdqkd networks, shared by the agent, the LKMS, the harness and the tests: one
CA, node certificates (server and client auth, SAN 127.0.0.1 and localhost, CN = node ID) and
SAE client certificates (CN = SAE ID), made with `cryptography`.

ECDSA P-256 keys: handshakes are several times cheaper than RSA-2048, which matters for the
ETSI 014 benchmark and for start-up of test networks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdqkd.private import write_private

DEFAULT_SANS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS identity: the CA that validates peers, our certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_config(cls, cfg: dict[str, str]) -> TlsFiles:
        return cls(Path(cfg["ca"]), Path(cfg["cert"]), Path(cfg["key"]))

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes."""
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


@dataclass(frozen=True)
class Ca:
    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        k = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(k, ec.EllipticCurvePrivateKey)
        return k


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(common_name: str = "sdqkd CA", days: int = 3650) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Ca(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _ca_public_key(ca_cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = ca_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):  # make_ca makes P-256 CAs only
        raise TypeError(f"CA key type {type(key).__name__} is not supported")
    return key


def issue(ca: Ca, common_name: str, *, server: bool, client: bool = True,
          sans: tuple[str, ...] = DEFAULT_SANS, days: int = 825) -> tuple[bytes, bytes]:
    """A leaf certificate signed by `ca`: (cert_pem, key_pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_cert = ca.cert
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    b = (x509.CertificateBuilder()
         .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(_ca_public_key(ca_cert)),
                        critical=False))
    if server:
        alt: list[x509.GeneralName] = []
        for s in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    if private:  # 0600 from the first byte, whatever the umask
        return write_private(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_ca(directory: Path, ca: Ca | None = None) -> tuple[Ca, Path]:
    """Create (or write) a CA under `directory`: ca.pem, ca.key. Returns (ca, ca.pem path)."""
    ca = ca or create_ca()
    _write(directory / "ca.key", ca.key_pem, private=True)
    return ca, _write(directory / "ca.pem", ca.cert_pem)


def write_identity(ca: Ca, ca_path: Path, directory: Path, common_name: str, *, server: bool,
                   sans: tuple[str, ...] = DEFAULT_SANS) -> TlsFiles:
    """Issue and write `<directory>/<cn>.pem` and `.key`; node certs: server=True, SAEs: False."""
    cert, key = issue(ca, common_name, server=server, sans=sans)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in common_name)
    return TlsFiles(ca_path, _write(directory / f"{safe}.pem", cert),
                    _write(directory / f"{safe}.key", key, private=True))


def cert_common_name(cert_pem_or_der: bytes) -> str:
    """Subject CN of a certificate (PEM or DER)."""
    if cert_pem_or_der.lstrip().startswith(b"-----"):
        cert = x509.load_pem_x509_certificate(cert_pem_or_der)
    else:
        cert = x509.load_der_x509_certificate(cert_pem_or_der)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
