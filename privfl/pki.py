"""A small X.509 PKI for privfl's TLS endpoints, built with ``cryptography`` alone.

What it is for: a private certificate authority that an institution (or a
federation) runs itself, to give TLS certificates to its own endpoints: the
ledger service (``privfl ledger serve``), the Flower SuperLink, and the
*clients* of those services under mutual TLS (an auditor, a SuperNode).  It is
not a general CA: no revocation lists, no intermediates, one key type.

Keys are ECDSA on P-256 (default) or P-384 and certificates are signed with
SHA-256 (P-256) or SHA-384 (P-384): what gRPC (BoringSSL), OpenSSL and Python's
``ssl`` all accept.  Certificates follow the RFC 5280 profile that strict
verifiers (OpenSSL's ``X509_V_FLAG_X509_STRICT``, ``cryptography.x509.verification``)
require:

- CA (:func:`create_ca`): BasicConstraints CA:true, path length 0 (critical);
  KeyUsage keyCertSign, cRLSign, digitalSignature (critical); SubjectKeyIdentifier;
  AuthorityKeyIdentifier (its own key);
- server (:func:`issue_server_cert`): BasicConstraints CA:false (critical); KeyUsage
  digitalSignature (critical); ExtendedKeyUsage serverAuth; SubjectAlternativeName
  with every host as a DNS name or IP address; SubjectKeyIdentifier;
  AuthorityKeyIdentifier (the CA's key);
- client (:func:`issue_client_cert`): as a server's, but ExtendedKeyUsage clientAuth
  and SubjectAlternativeName the URI ``privfl:<role>:<id>``.

Client identity.  A client certificate names its holder (an auditor, an owner)
twice: as the subject common name and as a URI subject alternative name
``privfl:<role>:<id>`` (role ``auditor`` by default, e.g. ``privfl:auditor:dpo-st-mary``).
:func:`certificate_identity` reads it back: the URI SAN when there is one
(exactly one for the role, else the certificate is refused as ambiguous), else
the common name.  Ids are 1-64 letters, digits, ``.``, ``_`` or ``-`` (64: the
X.509 limit on a common name), starting with a letter or digit.

Files (PEM).  :func:`write_private_key` creates the key file exclusively with
mode 0600 (never overwrites, whatever the caller's umask; optional passphrase);
:func:`write_certificate` writes certificates with mode 0644 and also refuses
to overwrite unless asked.  Both write a temporary file in the same folder,
fsync it and link it into place, so a reader never sees half a file.  The
loaders raise :class:`PkiError` (a ``ValueError``) that says what is wrong with
the file, or ``FileNotFoundError``; :func:`load_ca_certificates` reads a trust
file (a server's ``--client-ca``, a client's root) and refuses one that holds a
certificate that is not a CA's.

Example (a CA, a server certificate for loopback and an auditor's client certificate)::

    from privfl import pki

    ca = pki.create_ca("st-mary ledger CA", days=3650)
    server = pki.issue_server_cert(ca, ["localhost", "127.0.0.1", "::1"], days=825)
    auditor = pki.issue_client_cert(ca, "dpo-st-mary", days=365)
    pki.write_pair(ca, "ca.pem", "ca.key")
    pki.write_pair(server, "server.pem", "server.key")
    pki.write_pair(auditor, "dpo-st-mary.pem", "dpo-st-mary.key")
    pki.certificate_identity(auditor.certificate)        # 'dpo-st-mary'
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privfl.privacy.files import write_file_atomically

__all__ = [
    "CURVES", "CertifiedKey", "PkiError", "URI_SCHEME",
    "create_ca", "issue_server_cert", "issue_client_cert", "certificate_identity", "client_identity_uri",
    "certificate_pem", "private_key_pem",
    "write_private_key", "write_certificate", "write_pair",
    "load_certificate", "load_certificates", "load_ca_certificates", "load_private_key", "load_ca",
]

CURVES = {"P-256": (ec.SECP256R1, hashes.SHA256), "P-384": (ec.SECP384R1, hashes.SHA384)}
URI_SCHEME = "privfl"
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before they were made
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ROLE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class PkiError(ValueError):
    """A certificate, key or request that cannot be used; the message says why and how to mend it."""


class CertifiedKey(NamedTuple):
    """A certificate and its private key; unpacks as ``cert, key = ...``."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# ---------------------------------------------------------------------------
# issuing


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _new_key(curve: str) -> ec.EllipticCurvePrivateKey:
    if curve not in CURVES:
        raise PkiError(f"unknown curve {curve!r}; use one of {', '.join(CURVES)}")
    return ec.generate_private_key(CURVES[curve][0]())


def _hash_for(key: ec.EllipticCurvePrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise PkiError(f"days must be a whole number of days >= 1, got {days!r}")
    return days


def _check_name(common_name: str, what: str) -> str:
    if not isinstance(common_name, str) or not common_name.strip() or len(common_name) > 64:
        raise PkiError(f"the {what} must be 1-64 characters, got {common_name!r}")
    return common_name


def _check_id(identity: str) -> str:
    if not isinstance(identity, str) or not _ID.match(identity):
        raise PkiError(f"identity {identity!r} is not usable in a client certificate: use 1-64 letters, digits, "
                       "'.', '_' or '-', starting with a letter or digit")
    return identity


def _as_ca(ca: CertifiedKey | tuple) -> CertifiedKey:
    try:
        certificate, key = ca
    except (TypeError, ValueError):
        raise PkiError("ca must be a (certificate, private key) pair, e.g. what create_ca or load_ca returns") from None
    if not isinstance(certificate, x509.Certificate) or not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("ca must be a (certificate, EC private key) pair, e.g. what create_ca or load_ca returns")
    _require_ca(certificate, "the issuing certificate")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise PkiError("the CA's private key does not belong to the CA certificate")
    return CertifiedKey(certificate, key)


def _require_ca(certificate: x509.Certificate, what: str) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PkiError(f"{what} ({certificate.subject.rfc4514_string()}) is not a CA certificate "
                       "(BasicConstraints CA:true); create one with privfl.pki.create_ca")


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int,
             not_after_limit: datetime.datetime | None = None) -> x509.CertificateBuilder:
    now = _now()
    not_after = now + datetime.timedelta(days=_check_days(days))
    if not_after_limit is not None and not_after > not_after_limit:
        not_after = not_after_limit  # a certificate never outlives its CA
    if not_after <= now:
        raise PkiError(f"the CA expired on {not_after_limit:%Y-%m-%d}; create a new CA")
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def create_ca(common_name: str, days: int = 3650, *, curve: str = "P-256",
              organization: str | None = None) -> CertifiedKey:
    """A new self-signed certificate authority: ``(certificate, private key)``.

    Path length 0: it signs end-entity certificates only, never another CA.
    """
    _check_name(common_name, "CA's common name")
    key = _new_key(curve)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, _check_name(organization, "organization")))
    name = x509.Name(attributes)
    certificate = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, _hash_for(key))
    )
    return CertifiedKey(certificate, key)


_LEAF_KEY_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                encipher_only=False, decipher_only=False)


def _issue(ca: CertifiedKey | tuple, subject: x509.Name, days: int, curve: str | None,
           usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> CertifiedKey:
    ca = _as_ca(ca)
    key = _new_key(curve or ("P-384" if ca.key.curve.key_size >= 384 else "P-256"))
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value \
        if _has(ca.certificate, x509.SubjectKeyIdentifier) else None
    aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski) if ca_ski is not None
           else x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()))
    certificate = (
        _builder(subject, ca.certificate.subject, key.public_key(), days, ca.certificate.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.key, _hash_for(ca.key))
    )
    return CertifiedKey(certificate, key)


def _has(certificate: x509.Certificate, extension: type) -> bool:
    try:
        certificate.extensions.get_extension_for_class(extension)
    except x509.ExtensionNotFound:
        return False
    return True


def _host_name(host: str) -> x509.GeneralName:
    if not isinstance(host, str) or not host.strip():
        raise PkiError(f"a host must be a DNS name or an IP address, got {host!r}")
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    wildcard = labels[0] == "*" and len(labels) > 2
    if (len(text) > 253 or not all(_DNS_LABEL.match(label) for label in labels[1 if wildcard else 0:])
            or all(label.isdigit() for label in labels)):
        raise PkiError(f"{host!r} is neither an IP address nor a DNS name (give hosts without a port or scheme, "
                       "e.g. 'localhost', 'ledger.example.org', '127.0.0.1', '::1')")
    return x509.DNSName(text.rstrip(".").lower())


def issue_server_cert(ca: CertifiedKey | tuple, hosts: Sequence[str], days: int = 825, *,
                      common_name: str | None = None, curve: str | None = None) -> CertifiedKey:
    """A TLS server certificate signed by ``ca``, valid for every name in ``hosts``.

    ``hosts``: DNS names (``"localhost"``, ``"superlink.example.org"``, ``"*.example.org"``)
    and IP addresses (``"127.0.0.1"``, ``"::1"``), in any mix; each becomes a
    subjectAltName entry (clients match the name they dial against these, never the
    common name).  The common name defaults to the first host.  ``curve`` defaults
    to the CA's.  Validity: ``days`` from now, but never past the CA's own end.
    """
    if isinstance(hosts, str):
        hosts = [hosts]
    hosts = list(hosts)
    if not hosts:
        raise PkiError("a server certificate needs at least one host (a DNS name or an IP address)")
    names: list[x509.GeneralName] = []
    for host in hosts:
        name = _host_name(host)
        if name not in names:
            names.append(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            _check_name(common_name or str(names[0].value), "common name"))])
    return _issue(ca, subject, days, curve, ExtendedKeyUsageOID.SERVER_AUTH, names)


def client_identity_uri(identity: str, role: str = "auditor") -> str:
    """The URI subjectAltName a client certificate carries: ``privfl:<role>:<identity>``."""
    if not isinstance(role, str) or not _ROLE.match(role):
        raise PkiError(f"role {role!r} must be 1-32 lower-case letters, digits or '-', starting with a letter")
    return f"{URI_SCHEME}:{role}:{_check_id(identity)}"


def issue_client_cert(ca: CertifiedKey | tuple, common_name: str, days: int = 365, *,
                      role: str = "auditor", curve: str | None = None) -> CertifiedKey:
    """A TLS client certificate (mutual TLS) for ``common_name``, signed by ``ca``.

    The identity (an auditor's or owner's id) is the subject common name and also
    the URI subjectAltName ``privfl:<role>:<common_name>``; a server reads it back
    with :func:`certificate_identity`.  Extended key usage: clientAuth only, so the
    certificate cannot serve as a server's.
    """
    uri = client_identity_uri(common_name, role)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _issue(ca, subject, days, curve, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.UniformResourceIdentifier(uri)])


def certificate_identity(certificate: x509.Certificate, role: str = "auditor") -> str | None:
    """Who a client certificate names: the id in its ``privfl:<role>:<id>`` URI SAN, else its common name.

    None when it names no one.  Raises :class:`PkiError` when it holds several URI
    SANs for ``role`` (ambiguous: refuse rather than pick one).  This does not
    check the certificate's signature: call it on a certificate the TLS layer has
    already verified against the CA.
    """
    prefix = f"{URI_SCHEME}:{role}:"
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(prefix)]
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) > 1:
        raise PkiError(f"the certificate names several {role}s ({', '.join(uris)}); it identifies no one")
    if uris:
        identity = uris[0][len(prefix):]
        return identity if _ID.match(identity) else None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------------------
# PEM files


def certificate_pem(certificates: x509.Certificate | Iterable[x509.Certificate]) -> bytes:
    """PEM text of one certificate or a chain (leaf first), e.g. for ``grpc.ssl_*_credentials``."""
    if isinstance(certificates, x509.Certificate):
        certificates = [certificates]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: str | bytes | None = None) -> bytes:
    """PEM PKCS#8, encrypted when a passphrase is given (gRPC needs it unencrypted)."""
    secret = _passphrase(passphrase)
    encryption = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _passphrase(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    data = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not data:
        raise PkiError("the passphrase is empty; give a non-empty one or none at all")
    return data


def _write(path: str | Path, data: bytes, mode: int, overwrite: bool, what: str) -> Path:
    return write_file_atomically(path, data, mode, overwrite=overwrite, what=what)


def write_private_key(key: ec.EllipticCurvePrivateKey, path: str | Path,
                      passphrase: str | bytes | None = None) -> Path:
    """Create ``path`` holding ``key`` (PEM PKCS#8) with mode 0600; never overwrites an existing file.

    gRPC and most TLS servers need the key unencrypted: a passphrase suits the CA's key.
    """
    return _write(path, private_key_pem(key, passphrase), 0o600, False, "a private key")


def write_certificate(certificates: x509.Certificate | Iterable[x509.Certificate], path: str | Path, *,
                      overwrite: bool = False) -> Path:
    """Write a certificate (or a chain, leaf first) as PEM with mode 0644; refuses to overwrite unless asked."""
    return _write(path, certificate_pem(certificates), 0o644, overwrite, "a certificate")


def write_pair(certified: CertifiedKey | tuple, certificate_path: str | Path, key_path: str | Path,
               passphrase: str | bytes | None = None) -> tuple[Path, Path]:
    """Write a certificate (0644) and its key (0600); refuses, writing neither, if either file exists."""
    certificate, key = certified
    for path in (Path(key_path), Path(certificate_path)):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; refusing to overwrite it (move it away first)")
    key_written = write_private_key(key, key_path, passphrase)
    try:
        return write_certificate(certificate, certificate_path), key_written
    except BaseException:
        key_written.unlink()
        raise


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    return path.read_bytes()


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in file order (a chain: leaf first)."""
    data = _read(path, "certificate file")
    if b"PRIVATE KEY-----" in data and b"CERTIFICATE-----" not in data:
        raise PkiError(f"{path} holds a private key, not a certificate; give the certificate (.pem/.crt) file")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise PkiError(f"{path} is not a PEM certificate file (no '-----BEGIN CERTIFICATE-----' block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise PkiError(f"{path}: a certificate in it cannot be read ({err})") from None


def load_certificate(path: str | Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    return load_certificates(path)[0]


def load_ca_certificates(path: str | Path) -> list[x509.Certificate]:
    """The CA certificate(s) of a trust file (e.g. ``--client-ca``): every certificate in it must be a CA."""
    certificates = load_certificates(path)
    for certificate in certificates:
        _require_ca(certificate, f"a certificate in {path}")
    return certificates


def load_private_key(path: str | Path, passphrase: str | bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (PKCS#8 or SEC1), decrypting it with ``passphrase`` when encrypted."""
    data = _read(path, "private key file")
    if b"PRIVATE KEY-----" not in data:
        what = "a certificate" if b"CERTIFICATE-----" in data else "no PEM private key"
        raise PkiError(f"{path} holds {what}; give the private key (.key) file")
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase(passphrase))
    except TypeError:  # cryptography: "not encrypted" / "password was not given"
        if passphrase is None:
            raise PkiError(f"{path} is encrypted; give its passphrase") from None
        raise PkiError(f"{path} is not encrypted; load it without a passphrase") from None
    except ValueError as err:
        if b"ENCRYPTED" in data:
            raise PkiError(f"{path}: wrong passphrase (the key could not be decrypted)") from None
        raise PkiError(f"{path} is not a readable PEM private key ({err})") from None
    except UnsupportedAlgorithm as err:
        raise PkiError(f"{path}: unsupported key algorithm ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an EC (ECDSA) key; "
                       "privfl.pki issues P-256/P-384 keys")
    return key


def load_ca(certificate_path: str | Path, key_path: str | Path,
            passphrase: str | bytes | None = None) -> CertifiedKey:
    """A CA written by :func:`write_pair`: checks it is a CA, self-signed, and that the key belongs to it."""
    certificate = load_certificate(certificate_path)
    _require_ca(certificate, str(certificate_path))
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{certificate_path} is not a self-signed CA certificate") from None
    key = load_private_key(key_path, passphrase)
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():
        raise PkiError(f"{key_path} is not the private key of {certificate_path}")
    return CertifiedKey(certificate, key)
