"""privfl.pki: certificates with the promised extensions, key files, and real TLS handshakes on loopback."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from privfl import pki

HOSTS = ["localhost", "127.0.0.1", "::1"]


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("privfl test CA", days=2)


@pytest.fixture(scope="module")
def other_ca():
    return pki.create_ca("someone else's CA", days=2)


@pytest.fixture(scope="module")
def server(ca):
    return pki.issue_server_cert(ca, HOSTS, days=1)


@pytest.fixture(scope="module")
def client(ca):
    return pki.issue_client_cert(ca, "dpo-st-mary", days=1)


def ext(certificate: x509.Certificate, kind: type) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


# ---------------------------------------------------------------------------
# what the certificates say


def test_ca_certificate(ca):
    cert, key = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)  # self-signed
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "privfl test CA"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 2  # 2 days + 5 minutes of skew


def test_server_certificate(ca, server):
    cert, key = server
    cert.verify_directly_issued_by(ca.certificate)
    assert not ext(cert, x509.BasicConstraints).value.ca and ext(cert, x509.BasicConstraints).critical
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(DNSName) == ["localhost"]
    assert san.get_values_for_type(IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert (ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
            == ext(ca.certificate, x509.SubjectKeyIdentifier).value.digest)
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert cert.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    # cryptography's RFC 5280 path validation (a strict profile) accepts it for each host
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(DNSName("localhost"))
    verifier.verify(cert, [])
    for address in ("127.0.0.1", "::1"):
        PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(
            IPAddress(ipaddress.ip_address(address))).verify(cert, [])


def test_client_certificate(ca, client, other_ca):
    cert, _ = client
    cert.verify_directly_issued_by(ca.certificate)
    with pytest.raises(ValueError, match="Issuer"):
        cert.verify_directly_issued_by(other_ca.certificate)
    impostor = pki.create_ca("privfl test CA", days=1)  # same name, another key
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(impostor.certificate)
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not ext(cert, x509.BasicConstraints).value.ca
    uris = ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["privfl:auditor:dpo-st-mary"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dpo-st-mary"
    assert pki.certificate_identity(cert) == "dpo-st-mary"
    verified = PolicyBuilder().store(Store([ca.certificate])).build_client_verifier().verify(cert, [])
    assert verified.subjects is not None
    # a server certificate is no client certificate, and the other way round
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(DNSName("localhost")).verify(cert, [])


def test_identity_rules(ca):
    owner = pki.issue_client_cert(ca, "st-mary", days=1, role="owner")
    assert pki.client_identity_uri("st-mary", "owner") == "privfl:owner:st-mary"
    assert pki.certificate_identity(owner.certificate, role="owner") == "st-mary"
    assert pki.certificate_identity(owner.certificate) == "st-mary"  # no auditor URI: the common name
    server = pki.issue_server_cert(ca, ["ledger.example.org"], days=1)
    assert pki.certificate_identity(server.certificate) == "ledger.example.org"
    for bad in ("", "a b", "-x", "x" * 65, "dpo/../st-mary"):
        with pytest.raises(pki.PkiError, match="not usable"):
            pki.issue_client_cert(ca, bad, days=1)


def test_p384_and_bad_requests(ca, server):
    big = pki.create_ca("P-384 CA", days=1, curve="P-384")
    leaf = pki.issue_server_cert(big, ["localhost"], days=1)
    assert leaf.key.curve.name == "secp384r1"
    leaf.certificate.verify_directly_issued_by(big.certificate)
    with pytest.raises(pki.PkiError, match="curve"):
        pki.create_ca("x", curve="P-521")
    with pytest.raises(pki.PkiError, match="at least one host"):
        pki.issue_server_cert(ca, [], days=1)
    with pytest.raises(pki.PkiError, match="without a port"):
        pki.issue_server_cert(ca, ["localhost:50061"], days=1)
    with pytest.raises(pki.PkiError, match="days"):
        pki.issue_server_cert(ca, ["localhost"], days=0)
    with pytest.raises(pki.PkiError, match="not a CA"):
        pki.issue_client_cert(server, "someone", days=1)  # a server certificate cannot issue
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.issue_client_cert((ca.certificate, server.key), "someone", days=1)
    wild = pki.issue_server_cert(ca, ["*.ledger.example.org", "[::1]"], days=1).certificate
    assert ext(wild, x509.SubjectAlternativeName).value.get_values_for_type(DNSName) == ["*.ledger.example.org"]
    long = pki.issue_server_cert(ca, ["localhost"], days=10_000).certificate
    assert long.not_valid_after_utc == ca.certificate.not_valid_after_utc  # never outlives its CA


# ---------------------------------------------------------------------------
# files


def test_files_modes_and_no_overwrite(tmp_path, ca, server):
    cert_path, key_path = pki.write_pair(server, tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert pki.load_certificate(cert_path) == server.certificate
    assert pki.load_private_key(key_path).private_numbers() == server.key.private_numbers()
    before = key_path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pki.write_private_key(ca.key, key_path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pki.write_certificate(ca.certificate, cert_path)
    with pytest.raises(FileExistsError):
        pki.write_pair(ca, tmp_path / "new.pem", key_path)
    assert key_path.read_bytes() == before and not (tmp_path / "new.pem").exists()
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["server.key", "server.pem"]  # no temp files
    pki.write_certificate([server.certificate, ca.certificate], cert_path, overwrite=True)
    assert pki.load_certificates(cert_path) == [server.certificate, ca.certificate]


def test_key_file_is_0600_whatever_the_umask(tmp_path, ca):
    import os

    old = os.umask(0)
    try:
        path = pki.write_private_key(ca.key, tmp_path / "ca.key", passphrase="correct horse")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    with pytest.raises(pki.PkiError, match="encrypted; give its passphrase"):
        pki.load_private_key(path)
    with pytest.raises(pki.PkiError, match="wrong passphrase"):
        pki.load_private_key(path, "wrong")
    assert pki.load_private_key(path, "correct horse").private_numbers() == ca.key.private_numbers()


def test_loaders_say_what_is_wrong(tmp_path, ca, server):
    cert_path, key_path = pki.write_pair(ca, tmp_path / "ca.pem", tmp_path / "ca.key")
    loaded = pki.load_ca(cert_path, key_path)
    assert loaded.certificate == ca.certificate
    with pytest.raises(FileNotFoundError, match="no certificate file"):
        pki.load_certificate(tmp_path / "missing.pem")
    with pytest.raises(pki.PkiError, match="holds a private key"):
        pki.load_certificate(key_path)
    with pytest.raises(pki.PkiError, match="holds a certificate"):
        pki.load_private_key(cert_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(pki.PkiError, match="not a PEM certificate"):
        pki.load_certificate(garbage)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(pki.PkiError, match="cannot be read"):
        pki.load_certificate(broken)
    leaf_cert, leaf_key = pki.write_pair(server, tmp_path / "server.pem", tmp_path / "server.key")
    with pytest.raises(pki.PkiError, match="not a CA certificate"):
        pki.load_ca(leaf_cert, leaf_key)
    with pytest.raises(pki.PkiError, match="is not the private key"):
        pki.load_ca(cert_path, leaf_key)
    assert pki.load_ca_certificates(cert_path) == [ca.certificate]
    with pytest.raises(pki.PkiError, match="not a CA certificate"):
        pki.load_ca_certificates(leaf_cert)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from privfl.privacy.keys import save_private_key

    ed = save_private_key(ed25519.Ed25519PrivateKey.generate(), tmp_path / "owner.key")
    with pytest.raises(pki.PkiError, match="not an EC"):
        pki.load_private_key(ed)


# ---------------------------------------------------------------------------
# real TLS handshakes on loopback (Python's ssl module, OpenSSL)


class TlsServer:
    """A one-connection-at-a-time TLS echo server on 127.0.0.1 that records handshake failures."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.errors: list[Exception] = []
        self.peers: list[dict | None] = []

    def serve_one(self) -> threading.Thread:
        def run():
            try:
                raw, _ = self.sock.accept()
            except OSError as err:
                self.errors.append(err)
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    self.peers.append(conn.getpeercert())
                    conn.sendall(conn.recv(64))
            except (ssl.SSLError, OSError) as err:
                self.errors.append(err)
            finally:
                raw.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.sock.close()


def server_context(tmp_path: Path, server, client_ca=None) -> ssl.SSLContext:
    cert, key = pki.write_pair(server, tmp_path / "server.pem", tmp_path / "server.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=pki.certificate_pem(client_ca.certificate).decode())
    return context


def client_context(trusted, tmp_path: Path | None = None, client=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=pki.certificate_pem(trusted.certificate).decode())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if client is not None:
        cert, key = pki.write_pair(client, tmp_path / "client.pem", tmp_path / "client.key")
        context.load_cert_chain(cert, key)
    return context


def talk(port: int, context: ssl.SSLContext, hostname: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as conn:
            conn.sendall(b"ping")
            return conn.recv(64)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_tls_handshake_with_the_issued_server_certificate(tmp_path, ca, server, hostname):
    tls = TlsServer(server_context(tmp_path, server))
    try:
        thread = tls.serve_one()
        assert talk(tls.port, client_context(ca), hostname) == b"ping"
        thread.join(10)
        assert not tls.errors
    finally:
        tls.close()


def test_a_client_trusting_another_ca_refuses(tmp_path, server, other_ca):
    tls = TlsServer(server_context(tmp_path, server))
    try:
        thread = tls.serve_one()
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            talk(tls.port, client_context(other_ca), "localhost")
        thread.join(10)
    finally:
        tls.close()


def test_a_name_not_in_the_certificate_is_refused(tmp_path, ca, server):
    tls = TlsServer(server_context(tmp_path, server))
    try:
        thread = tls.serve_one()
        with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
            talk(tls.port, client_context(ca), "ledger.example.org")
        thread.join(10)
    finally:
        tls.close()


def test_mutual_tls(tmp_path, ca, server, client, other_ca):
    context = server_context(tmp_path, server, client_ca=ca)
    tls = TlsServer(context)
    try:
        # a client certificate from the CA: accepted, and the server sees who it is
        thread = tls.serve_one()
        assert talk(tls.port, client_context(ca, tmp_path, client), "localhost") == b"ping"
        thread.join(10)
        assert not tls.errors
        subject = dict(item for rdn in tls.peers[0]["subject"] for item in rdn)
        assert subject["commonName"] == "dpo-st-mary"
        assert ("URI", "privfl:auditor:dpo-st-mary") in tls.peers[0]["subjectAltName"]

        # no client certificate: the server refuses the handshake
        thread = tls.serve_one()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            talk(tls.port, client_context(ca), "localhost")
        thread.join(10)
        assert tls.errors and "certificate" in str(tls.errors[-1]).lower()

        # a client certificate from another CA: refused too
        stranger = pki.issue_client_cert(other_ca, "dpo-st-mary", days=1)
        folder = tmp_path / "stranger"
        folder.mkdir()
        thread = tls.serve_one()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            talk(tls.port, client_context(ca, folder, stranger), "localhost")
        thread.join(10)
        assert len(tls.errors) == 2 and "certificate verify failed" in str(tls.errors[-1])
    finally:
        tls.close()
