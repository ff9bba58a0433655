"""The read-only PrivacyLedger gRPC service over real TLS on 127.0.0.1, and its generated code."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from privfl.privacy.keys import save_public_key
from privfl.privacy.ledger import Entry, OwnerLedger, signature_problem
from privfl.privacy.ledger.chain import GENESIS_HASH
from privfl.privacy.ledger.service import is_loopback, serve
from privfl.protos import ledger_pb2, ledger_pb2_grpc
from tests.ledger_helpers import build_ledger, without_guards

REPO = Path(__file__).resolve().parents[1]
PRIVFL = [sys.executable, "-c", "import sys; from privfl.cli import main; sys.exit(main())"]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def ledger_and_cert(tmp_path):
    path = tmp_path / "owner.db"
    key = build_ledger(path, rounds=4)
    cert, cert_key = self_signed_certificate(tmp_path)
    return path, key, cert, cert_key


@pytest.fixture
def tls_stub(ledger_and_cert):
    path, key, cert, cert_key = ledger_and_cert
    server, port = serve(path, "127.0.0.1:0", tls_cert=cert, tls_key=cert_key, public_keys=key.public_key())
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert.read_bytes()))
    try:
        yield ledger_pb2_grpc.PrivacyLedgerStub(channel), path, key, port
    finally:
        channel.close()
        server.stop(grace=None)


def test_get_budget_over_tls(tls_stub):
    stub, path, key, _ = tls_stub
    reply = stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10)
    with OwnerLedger.open_readonly(path) as ledger:
        entries = ledger.entries()
        spent_rdp, spent_pld = ledger.spent_epsilon("rdp"), ledger.spent_epsilon("pld")
    assert reply.owner_id == "hospital-a" and reply.accountant == "rdp"
    assert reply.epsilon_spent == pytest.approx(spent_rdp, rel=1e-12)
    assert reply.epsilon_budget == 1000.0
    assert reply.epsilon_remaining == pytest.approx(1000.0 - spent_rdp)
    assert (reply.charges, reply.refusals) == (4, 1)
    assert reply.head_sequence == 5 and reply.head_hash == entries[-1].hash
    assert reply.privacy_unit == ledger_pb2.PRIVACY_UNIT_RECORD
    pld = stub.GetBudget(ledger_pb2.GetBudgetRequest(accountant="pld"), timeout=30)
    assert pld.epsilon_spent == pytest.approx(spent_pld, rel=1e-12) and pld.epsilon_spent < reply.epsilon_spent
    with pytest.raises(grpc.RpcError) as err:
        stub.GetBudget(ledger_pb2.GetBudgetRequest(owner_id="nobody"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_entries_streams_the_signed_bytes(tls_stub):
    stub, path, key, _ = tls_stub
    received = list(stub.ListEntries(ledger_pb2.ListEntriesRequest(), timeout=10))
    assert len(received) == 5
    previous = None
    for signed in received:  # an auditor verifies offline with the owner's public key
        assert signature_problem(signed, key.public_key()) is None
        entry = Entry.from_signed(signed)
        assert entry.previous_hash == (GENESIS_HASH if previous is None else previous.hash)
        previous = entry
    page = list(stub.ListEntries(ledger_pb2.ListEntriesRequest(start_sequence=2, limit=2), timeout=10))
    assert [Entry.from_signed(s).sequence for s in page] == [2, 3]


def test_verify_rpc_reports_tampering(tls_stub):
    stub, path, key, _ = tls_stub
    reply = stub.Verify(ledger_pb2.VerifyRequest(), timeout=30)
    assert reply.ok and reply.entries_checked == 5 and reply.keys_independently_supplied
    entry = bytearray(OwnerLedger.open_readonly(path).entries()[2].entry_bytes)
    entry[5] ^= 1
    without_guards(path, ("UPDATE entries SET entry = ? WHERE sequence = 3", (bytes(entry),)))
    reply = stub.Verify(ledger_pb2.VerifyRequest(epsilon_check="last"), timeout=30)
    assert not reply.ok and reply.first_bad_sequence == 3 and reply.first_bad_owner_id == "hospital-a"
    with pytest.raises(grpc.RpcError) as err:
        stub.Verify(ledger_pb2.VerifyRequest(epsilon_check="sometimes"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_service_never_writes(tls_stub):
    stub, path, _, _ = tls_stub
    before = path.read_bytes()
    stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10)
    list(stub.ListEntries(ledger_pb2.ListEntriesRequest(), timeout=10))
    stub.Verify(ledger_pb2.VerifyRequest(), timeout=30)
    assert path.read_bytes() == before
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_plaintext_client_cannot_talk_to_the_tls_server(tls_stub):
    _, _, _, port = tls_stub
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            ledger_pb2_grpc.PrivacyLedgerStub(channel).GetBudget(ledger_pb2.GetBudgetRequest(), timeout=3)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_insecure_only_on_loopback(ledger_and_cert):
    path, _, cert, cert_key = ledger_and_cert
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:1") and not is_loopback("10.0.0.5:1") and not is_loopback("example.org:1")
    with pytest.raises(ValueError, match="loopback"):
        serve(path, "0.0.0.0:0", insecure=True)
    with pytest.raises(ValueError, match="--tls-cert"):
        serve(path, "127.0.0.1:0")
    with pytest.raises(ValueError, match="not both"):
        serve(path, "127.0.0.1:0", insecure=True, tls_cert=cert, tls_key=cert_key)
    server, port = serve(path, "127.0.0.1:0", insecure=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = ledger_pb2_grpc.PrivacyLedgerStub(channel).GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10)
        assert reply.charges == 4
    finally:
        server.stop(grace=None)


def test_cli_serve_over_tls(ledger_and_cert, tmp_path):
    path, key, cert, cert_key = ledger_and_cert
    public = save_public_key(key, tmp_path / "owner.pub")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*PRIVFL, "ledger", "serve", str(path), "--address", f"127.0.0.1:{port}",
         "--tls-cert", str(cert), "--tls-key", str(cert_key), "--public-key", str(public)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert "serving" in line and "TLS" in line, line
        channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert.read_bytes()))
        reply = ledger_pb2_grpc.PrivacyLedgerStub(channel).Verify(ledger_pb2.VerifyRequest(), timeout=30)
        channel.close()
        assert reply.ok and reply.keys_independently_supplied
    finally:
        process.terminate()
        process.wait(10)
    refused = subprocess.run([*PRIVFL, "ledger", "serve", str(path),
                              "--address", "0.0.0.0:0", "--insecure"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "loopback" in refused.stderr


# ---------------------------------------------------------------------------
# generated code


def test_generated_code_imports_as_privfl_protos():
    grpc_source = (REPO / "protos" / "ledger_pb2_grpc.py").read_text()
    assert "from privfl.protos import ledger_pb2 as" in grpc_source
    assert "\nimport ledger_pb2" not in grpc_source
    assert ledger_pb2.DESCRIPTOR.name == "privfl/protos/ledger.proto"
    assert ledger_pb2.DESCRIPTOR.package == "privfl.ledger.v1"


def test_regenerating_gives_identical_files(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e '.[dev]')")
    import grpc_tools

    from privfl.protos import ledger_pb2_grpc as generated

    version = getattr(grpc_tools, "__version__", None)
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    except Exception:
        pass
    if version != generated.GRPC_GENERATED_VERSION:
        pytest.skip(f"grpcio-tools {version} differs from the {generated.GRPC_GENERATED_VERSION} that generated "
                    "the checked-in files")
    result = subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--check"],
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, result.stdout + result.stderr


def test_entry_fields_never_renumbered():
    """The wire numbers are a promise to every ledger ever written (DESIGN principle 3)."""
    numbers = {f.name: f.number for f in ledger_pb2.LedgerEntry.DESCRIPTOR.fields}
    assert numbers == {
        "sequence": 1, "previous_hash": 2, "run_id": 3, "round": 4, "owner_id": 5, "kind": 6,
        "poisson_subsampled_gaussian": 7, "gaussian": 8, "clipping_norm": 9, "privacy_unit": 10, "delta": 11,
        "accountant": 12, "cumulative_epsilon": 13, "epsilon_budget": 14, "purpose": 15,
        "timestamp_unix_nanos": 16, "update_hash": 17, "refusal_reason": 18,
    }
    assert {f.name: f.number for f in ledger_pb2.SignedEntry.DESCRIPTOR.fields} == {
        "entry": 1, "signature": 2, "key_fingerprint": 3}
    assert {f.name: f.number for f in ledger_pb2.PoissonSubsampledGaussian.DESCRIPTOR.fields} == {
        "noise_multiplier": 1, "sample_rate": 2, "steps": 3}
    assert dict(ledger_pb2.EntryKind.items()) == {"ENTRY_KIND_UNSPECIFIED": 0, "ENTRY_KIND_CHARGE": 1,
                                                 "ENTRY_KIND_REFUSAL": 2}
