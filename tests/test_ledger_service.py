"""The read-only PrivacyLedger gRPC service over real (mutual) TLS on 127.0.0.1, and its generated code.

Certificates come from privfl.pki; ledgers are built with tests/ledger_helpers.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from privfl import pki
from privfl.privacy.keys import save_public_key
from privfl.privacy.ledger import Entry, FederationLedger, OwnerLedger, signature_problem
from privfl.privacy.ledger import service as service_module
from privfl.privacy.ledger.chain import GENESIS_HASH
from privfl.privacy.ledger.service import AccessPolicy, is_loopback, serve
from privfl.protos import ledger_pb2, ledger_pb2_grpc
from tests.ledger_helpers import build_ledger, charge, raw, without_guards

REPO = Path(__file__).resolve().parents[1]
PRIVFL = [sys.executable, "-c", "import sys; from privfl.cli import main; sys.exit(main())"]
OWNER = "hospital-a"


# ---------------------------------------------------------------------------
# certificates, ledgers, clients


class Pki:
    """A CA, the server's certificate, auditors' client certificates, and a stranger's CA (files and PEM)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = pki.create_ca("privfl test ledger CA", days=1)
        self.ca_pem = pki.certificate_pem(self.ca.certificate)
        self.ca_file = pki.write_certificate(self.ca.certificate, folder / "ca.pem")
        self.server_cert, self.server_key = pki.write_pair(
            pki.issue_server_cert(self.ca, ["localhost", "127.0.0.1", "::1"], days=1),
            folder / "server.pem", folder / "server.key")
        self.clients = {name: pki.issue_client_cert(self.ca, name, days=1)
                        for name in ("dpo-st-mary", "dpo-st-luke", "federation-dpo", "intruder")}
        self.other_ca = pki.create_ca("someone else's CA", days=1)
        self.stranger = pki.issue_client_cert(self.other_ca, "dpo-st-mary", days=1)  # right name, wrong CA

    def credentials(self, client: str | pki.CertifiedKey | None = None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(self.ca_pem)
        cert, key = self.clients[client] if isinstance(client, str) else client
        return grpc.ssl_channel_credentials(self.ca_pem, pki.private_key_pem(key), pki.certificate_pem(cert))

    def write_client(self, name: str) -> tuple[Path, Path]:
        return pki.write_pair(self.clients[name], self.folder / f"{name}.pem", self.folder / f"{name}.key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


class Client:
    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None) -> None:
        target = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target,
                                                                                                    credentials)
        self.stub = ledger_pb2_grpc.PrivacyLedgerStub(self.channel)

    def budget(self, owner: str = "", **kwargs) -> ledger_pb2.GetBudgetResponse:
        return self.stub.GetBudget(ledger_pb2.GetBudgetRequest(owner_id=owner, **kwargs), timeout=30)

    def entries(self, owner: str = "", **kwargs) -> list[ledger_pb2.SignedEntry]:
        return list(self.stub.ListEntries(ledger_pb2.ListEntriesRequest(owner_id=owner, **kwargs), timeout=30))

    def verify(self, **kwargs) -> ledger_pb2.VerifyResponse:
        return self.stub.Verify(ledger_pb2.VerifyRequest(**kwargs), timeout=30)

    def close(self) -> None:
        self.channel.close()


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


@pytest.fixture
def running(request):
    """running(path, **serve_kwargs) -> port; every server started is stopped after the test."""
    servers = []

    def start(path, **kwargs):
        server, port = serve(path, "127.0.0.1:0", **kwargs)
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def connect():
    clients = []

    def open_client(port, credentials=None):
        client = Client(port, credentials)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def owner_ledger(tmp_path):
    path = tmp_path / "owner.db"
    key = build_ledger(path, rounds=4, owner=OWNER)  # 4 charges and a refusal (entry 3)
    return path, key


@pytest.fixture
def tls_stub(owner_ledger, certs, running, connect):
    """TLS without client certificates (the pre-mutual-TLS setup), keys pinned."""
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, public_keys=key.public_key())
    return connect(port, certs.credentials()).stub, path, key, port


@pytest.fixture
def federation(tmp_path):
    """A federation ledger holding st-mary's (3 charges) and st-luke's (2 charges) receipts."""
    keys = {"st-mary": build_ledger(tmp_path / "st-mary.db", rounds=3, owner="st-mary", refusal=False),
            "st-luke": build_ledger(tmp_path / "st-luke.db", rounds=2, owner="st-luke", refusal=False)}
    path = tmp_path / "federation.db"
    with FederationLedger.open(path) as fed:
        for owner, key in keys.items():
            fed.register_owner(owner, key.public_key())
            with OwnerLedger.open_readonly(tmp_path / f"{owner}.db") as own:
                for entry in own.entries():
                    fed.append_received(entry.signed_bytes())
    return path, {o: k.public_key() for o, k in keys.items()}


def entry_bytes(path: Path, owner: str, sequence: int) -> bytes:
    db = raw(path)
    try:
        return db.execute("SELECT entry FROM entries WHERE owner_id = ? AND sequence = ?",
                          (owner, sequence)).fetchone()[0]
    finally:
        db.close()


def set_entry(path: Path, owner: str, sequence: int, data: bytes) -> None:
    without_guards(path, ("UPDATE entries SET entry = ? WHERE owner_id = ? AND sequence = ?", (data, owner, sequence)))


def cheaper(data: bytes) -> bytes:
    """The same entry claiming far more noise: the charge would compose to a much smaller epsilon."""
    entry = ledger_pb2.LedgerEntry.FromString(data)
    entry.poisson_subsampled_gaussian.noise_multiplier = 50.0
    return entry.SerializeToString()


def recomputed(path: Path, accountant: str = "rdp") -> float:
    with OwnerLedger.open_readonly(path) as ledger:
        return ledger.spent_epsilon(accountant)


# ---------------------------------------------------------------------------
# answers (TLS without client certificates)


def test_get_budget_over_tls(tls_stub, caplog):
    stub, path, key, _ = tls_stub
    reply = stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10)
    with OwnerLedger.open_readonly(path) as ledger:
        entries = ledger.entries()
        spent_rdp, spent_pld = ledger.spent_epsilon("rdp"), ledger.spent_epsilon("pld")
    assert reply.owner_id == OWNER and reply.accountant == "rdp"
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


def test_tls_without_client_ca_warns(owner_ledger, certs, running, caplog):
    path, _ = owner_ledger
    with caplog.at_level(logging.WARNING):
        running(path, tls_cert=certs.server_cert, tls_key=certs.server_key)
    assert "without --client-ca: any client that reaches port" in caplog.text
    assert "can read every entry" in caplog.text


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
    assert not reply.ok and reply.first_bad_sequence == 3 and reply.first_bad_owner_id == OWNER
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


# ---------------------------------------------------------------------------
# answers only from a verified ledger


def test_a_tampered_ledger_gets_no_budget(tls_stub):
    """The issue: a charge rewritten to claim more noise made GetBudget answer a far smaller epsilon."""
    stub, path, key, _ = tls_stub
    honest = recomputed(path)
    assert stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10).epsilon_spent == pytest.approx(honest, rel=1e-12)
    original = entry_bytes(path, OWNER, 2)
    set_entry(path, OWNER, 2, cheaper(original))
    assert recomputed(path) < honest  # what the unverified service used to answer
    err = refused(stub.GetBudget, ledger_pb2.GetBudgetRequest(), timeout=10)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith(f"ledger not intact: owner {OWNER}, entry 2: signature does not match"), \
        err.details()
    err = refused(lambda: list(stub.ListEntries(ledger_pb2.ListEntriesRequest(), timeout=10)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "entry 2" in err.details()
    set_entry(path, OWNER, 2, original)  # put back: intact again
    assert stub.GetBudget(ledger_pb2.GetBudgetRequest(), timeout=10).epsilon_spent == pytest.approx(honest, rel=1e-12)


def test_a_flipped_byte_in_the_file_gets_no_budget(owner_ledger, certs, running, connect):
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   public_keys=key.public_key())
    client = connect(port, certs.credentials("dpo-st-mary"))
    assert client.budget().charges == 4
    data = bytearray(path.read_bytes())
    signature = OwnerLedger.open_readonly(path).entries()[-1].signature
    offset = bytes(data).index(signature)
    data[offset + 7] ^= 0x10  # inside the head entry's signature, as stored in the file
    path.write_bytes(bytes(data))
    err = refused(client.budget)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == f"ledger not intact: owner {OWNER}, entry 5: signature does not match the entry bytes " \
                            "(entry or signature altered)"


def test_verification_is_cached_until_the_file_changes(owner_ledger, certs, running, connect, monkeypatch):
    path, key = owner_ledger
    calls = []
    from privfl.privacy import audit as audit_module  # the service answers from the one audit (audit_ledger)

    real_verify = audit_module.verify

    def counting_verify(*args, **kwargs):
        calls.append(kwargs.get("epsilon_check"))
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(audit_module, "verify", counting_verify)
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   public_keys=key.public_key())
    client = connect(port, certs.credentials("dpo-st-mary"))
    assert len(calls) == 1  # at start
    for _ in range(3):
        assert client.budget().charges == 4
    assert len(client.entries()) == 5
    assert len(calls) == 1  # unchanged file: the cached verification answers

    with OwnerLedger.open(path, OWNER, key) as ledger:  # the client appends while the service runs
        charge(ledger, 50)
        assert os.path.getsize(f"{path}-wal") > 0  # still in the write-ahead log
        reply = client.budget()
        assert len(calls) == 2 and reply.charges == 5 and reply.head_sequence == 6
        assert reply.epsilon_spent == pytest.approx(recomputed(path), rel=1e-12)
        client.budget()
        assert len(calls) == 2
    client.budget()  # closing checkpointed the log into the .db file: a change, verified again
    assert len(calls) == 3

    set_entry(path, OWNER, 4, cheaper(entry_bytes(path, OWNER, 4)))
    assert refused(client.budget).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused(client.budget).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(calls) == 4  # the failed verification is cached too
    assert not client.verify(epsilon_check="none").ok
    assert calls[-1] == "none" and len(calls) == 5


def test_an_edit_between_verification_and_reading_is_read_again(owner_ledger, certs, running, connect,
                                                                 monkeypatch):
    """The file changes after it was verified but before the entries are read: verify and read again."""
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   public_keys=key.public_key())
    client = connect(port, certs.credentials("dpo-st-mary"))
    real_open = service_module.LedgerStore.open_readonly
    original = entry_bytes(path, OWNER, 2)
    edits = []

    def open_after_an_edit(cls_path):
        if not edits:  # an attacker edits right after the (cached) verification said intact
            edits.append(1)
            set_entry(path, OWNER, 2, cheaper(original))
        return real_open(cls_path)

    monkeypatch.setattr(service_module.LedgerStore, "open_readonly", staticmethod(open_after_an_edit))
    err = refused(client.budget)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "entry 2" in err.details()


def test_an_edit_that_restores_the_timestamps_is_still_caught(owner_ledger, certs, running, connect):
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   public_keys=key.public_key())
    client = connect(port, certs.credentials("dpo-st-mary"))
    assert client.budget().charges == 4
    before = path.stat()
    set_entry(path, OWNER, 2, cheaper(entry_bytes(path, OWNER, 2)))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    err = refused(client.budget)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "entry 2" in err.details()


@pytest.mark.parametrize("rpc", ["budget", "entries"])
def test_answers_are_bound_to_the_verified_chain_even_if_the_file_state_lies(owner_ledger, certs, running,
                                                                             connect, monkeypatch, rpc):
    """Were the (size, mtime) cache key fooled, the entries read must still hash-link to the verified head."""
    path, key = owner_ledger
    monkeypatch.setattr(service_module, "_file_state", lambda _path: ("never changes",))
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   public_keys=key.public_key())
    client = connect(port, certs.credentials("dpo-st-mary"))
    assert client.budget().charges == 4
    set_entry(path, OWNER, 2, cheaper(entry_bytes(path, OWNER, 2)))
    err = refused(getattr(client, rpc))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "entry 2" in err.details()


# ---------------------------------------------------------------------------
# mutual TLS


def test_mutual_tls_needs_a_certificate_from_the_ca(owner_ledger, certs, running, connect):
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file)
    assert connect(port, certs.credentials("dpo-st-mary")).budget().charges == 4
    assert connect(port, certs.credentials("intruder")).budget().charges == 4  # no access list: any CA client
    for credentials in (certs.credentials(None), certs.credentials(certs.stranger)):
        err = refused(connect(port, credentials).budget)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        err = refused(ledger_pb2_grpc.PrivacyLedgerStub(channel).GetBudget, ledger_pb2.GetBudgetRequest(), timeout=3)
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# ---------------------------------------------------------------------------
# per-auditor scope


ACCESS = {"dpo-st-mary": ["st-mary"], "dpo-st-luke": ["st-luke"], "federation-dpo": ["*"]}


def test_a_scoped_auditor_reads_its_owner_only(federation, certs, running, connect):
    path, keys = federation
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   access=ACCESS, public_keys=keys)
    mary = connect(port, certs.credentials("dpo-st-mary"))
    reply = mary.budget("st-mary")
    assert reply.owner_id == "st-mary" and reply.charges == 3
    assert mary.budget().owner_id == "st-mary"  # the only owner it may read
    for owner in ("st-luke", "nobody"):  # denied before any lookup: no hint whether the owner is there
        err = refused(mary.budget, owner)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == f"client 'dpo-st-mary' may not read owner {owner!r}"
    assert {Entry.from_signed(s).owner_id for s in mary.entries()} == {"st-mary"}
    assert len(mary.entries()) == 3 and len(mary.entries(limit=2)) == 2
    assert refused(mary.entries, "st-luke").code() == grpc.StatusCode.PERMISSION_DENIED
    err = refused(mary.verify)  # the file also holds st-luke
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "outside your access" in err.details()

    dpo = connect(port, certs.credentials("federation-dpo"))  # "*": every owner
    assert dpo.budget("st-luke").charges == 2
    assert len(dpo.entries()) == 5 and dpo.verify().ok
    assert refused(dpo.budget).code() == grpc.StatusCode.INVALID_ARGUMENT  # two owners: name one

    intruder = connect(port, certs.credentials("intruder"))  # a certificate from the CA, not in the list
    for call in (intruder.budget, intruder.entries, intruder.verify):
        err = refused(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == "client 'intruder' is not in this ledger service's access list"

    # st-luke's chain is tampered with: nobody gets a number; only those who may read st-luke learn where
    set_entry(path, "st-luke", 1, cheaper(entry_bytes(path, "st-luke", 1)))
    err = refused(mary.budget, "st-mary")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "st-luke" not in err.details()
    assert "outside your access" in err.details()
    err = refused(dpo.budget, "st-mary")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("ledger not intact: owner st-luke, entry 1: signature does not match")
    assert refused(mary.budget, "st-luke").code() == grpc.StatusCode.PERMISSION_DENIED  # access first


def test_a_scoped_auditor_on_an_owner_ledger(owner_ledger, certs, running, connect):
    path, key = owner_ledger
    port = running(path, tls_cert=certs.server_cert, tls_key=certs.server_key, client_ca=certs.ca_file,
                   access={"dpo-st-mary": [OWNER], "dpo-st-luke": ["st-luke"]}, public_keys=key.public_key())
    mary = connect(port, certs.credentials("dpo-st-mary"))
    assert mary.budget().charges == 4 and mary.verify().ok  # the file holds only its owner: Verify allowed
    luke = connect(port, certs.credentials("dpo-st-luke"))
    for call in (luke.budget, luke.verify):
        assert refused(call).code() == grpc.StatusCode.PERMISSION_DENIED
    assert luke.entries() == []  # no owner of its own in this file


def test_access_policy_sources(tmp_path):
    assert AccessPolicy.parse_grant("dpo-st-mary=st-mary, st-luke") == ("dpo-st-mary", ["st-mary", "st-luke"])
    for bad in ("dpo-st-mary", "=st-mary", "dpo-st-mary=", "dpo-st-mary=,"):
        with pytest.raises(ValueError, match="ID=OWNER"):
            AccessPolicy.parse_grant(bad)
    access = tmp_path / "access.toml"
    access.write_text('[auditors]\n"dpo-st-mary" = ["st-mary"]\n"federation-dpo" = ["*"]\n')
    policy = AccessPolicy.from_toml(access)
    assert policy.scope("dpo-st-mary").owners == {"st-mary"} and policy.scope("federation-dpo").owners is None
    assert policy.scope("intruder") is None and policy.scope(None) is None
    for text, message in (('[auditor]\n"x" = ["y"]\n', r"\[auditors\]"), ('[auditors]\n"x" = "y"\n', "list"),
                          ('[auditors]\n"x" = []\n', "one or more"), ('[auditors]\n"a b" = ["y"]\n', "not usable"),
                          ("[auditors\n", "not valid TOML"), ("[auditors]\n", "empty")):
        access.write_text(text)
        with pytest.raises(ValueError, match=message):
            AccessPolicy.from_toml(access)
    with pytest.raises(FileNotFoundError):
        AccessPolicy.from_toml(tmp_path / "missing.toml")


def test_serve_refuses_inconsistent_settings(owner_ledger, certs):
    path, _ = owner_ledger
    with pytest.raises(ValueError, match="needs --client-ca"):
        serve(path, "127.0.0.1:0", tls_cert=certs.server_cert, tls_key=certs.server_key, access=ACCESS)
    with pytest.raises(ValueError, match="needs --client-ca"):
        serve(path, "127.0.0.1:0", insecure=True, access=ACCESS)
    with pytest.raises(ValueError, match="not both"):
        serve(path, "127.0.0.1:0", insecure=True, client_ca=certs.ca_file)
    with pytest.raises(pki.PkiError, match="holds a private key"):
        serve(path, "127.0.0.1:0", tls_cert=certs.server_cert, tls_key=certs.server_key,
              client_ca=certs.server_key)
    with pytest.raises(pki.PkiError, match="not a CA certificate"):
        serve(path, "127.0.0.1:0", tls_cert=certs.server_cert, tls_key=certs.server_key,
              client_ca=certs.server_cert)


def test_insecure_only_on_loopback(owner_ledger, certs):
    path, _ = owner_ledger
    cert, cert_key = certs.server_cert, certs.server_key
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


# ---------------------------------------------------------------------------
# the command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cli(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """Start 'privfl ledger serve ...'; returns the process and its output up to the 'serving' line."""
    process = subprocess.Popen([*PRIVFL, "ledger", "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "read-only on" in line:
            break
    return process, lines


def test_cli_serve_with_mutual_tls_and_an_access_list(federation, certs, tmp_path):
    path, keys = federation
    publics = [f"{o}={save_public_key(k, tmp_path / f'{o}.pub')}" for o, k in keys.items()]
    access = tmp_path / "access.toml"
    access.write_text('[auditors]\n"federation-dpo" = ["*"]\n')
    port = free_port()
    process, lines = start_cli(
        str(path), "--address", f"127.0.0.1:{port}", "--tls-cert", str(certs.server_cert),
        "--tls-key", str(certs.server_key), "--client-ca", str(certs.ca_file), "--access", str(access),
        "--auditor", "dpo-st-mary=st-mary", *[a for p in publics for a in ("--public-key", p)])
    try:
        assert "mutual TLS" in lines[-1] and "access list of 2 auditor(s)" in lines[-1], lines
        assert not any("without --client-ca" in line for line in lines)
        mary = Client(port, certs.credentials("dpo-st-mary"))
        dpo = Client(port, certs.credentials("federation-dpo"))
        try:
            assert mary.budget().owner_id == "st-mary"
            assert refused(mary.budget, "st-luke").code() == grpc.StatusCode.PERMISSION_DENIED
            reply = dpo.verify()
            assert reply.ok and reply.keys_independently_supplied
            assert refused(Client(port, certs.credentials(None)).budget).code() == grpc.StatusCode.UNAVAILABLE
        finally:
            mary.close()
            dpo.close()
    finally:
        process.terminate()
        process.wait(10)


def test_cli_serve_tls_warns_and_refuses_bad_settings(owner_ledger, certs, tmp_path):
    path, _ = owner_ledger
    access = tmp_path / "access.toml"
    access.write_text('[auditors]\n"dpo-st-mary" = ["st-mary"]\n')
    port = free_port()
    process, lines = start_cli(str(path), "--address", f"127.0.0.1:{port}", "--tls-cert", str(certs.server_cert),
                               "--tls-key", str(certs.server_key))
    try:
        assert "TLS, no client certificates" in lines[-1], lines
        assert any("without --client-ca: any client that reaches port" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(10)
    for args, message in ((["--address", "0.0.0.0:0", "--insecure"], "loopback"),
                          (["--address", "127.0.0.1:0", "--tls-cert", str(certs.server_cert), "--tls-key",
                            str(certs.server_key), "--auditor", "dpo-st-mary=st-mary"], "needs --client-ca"),
                          (["--address", "127.0.0.1:0", "--insecure", "--auditor", "dpo-st-mary"], "ID=OWNER"),
                          (["--address", "127.0.0.1:0", "--insecure", "--access", str(access),
                            "--auditor", "dpo-st-mary=st-luke"], "given twice")):
        result = subprocess.run([*PRIVFL, "ledger", "serve", str(path), *args], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr


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
    first = {
        "sequence": 1, "previous_hash": 2, "run_id": 3, "round": 4, "owner_id": 5, "kind": 6,
        "poisson_subsampled_gaussian": 7, "gaussian": 8, "clipping_norm": 9, "privacy_unit": 10, "delta": 11,
        "accountant": 12, "cumulative_epsilon": 13, "epsilon_budget": 14, "purpose": 15,
        "timestamp_unix_nanos": 16, "update_hash": 17, "refusal_reason": 18,
    }
    # fields keep their numbers; fields added later (new mechanisms) take new ones
    assert {name: numbers.get(name) for name in first} == first
    added = {name: n for name, n in numbers.items() if name not in first}
    assert all(n > max(first.values()) for n in added.values()), added
    assert {f.name: f.number for f in ledger_pb2.SignedEntry.DESCRIPTOR.fields} == {
        "entry": 1, "signature": 2, "key_fingerprint": 3}
    assert {f.name: f.number for f in ledger_pb2.PoissonSubsampledGaussian.DESCRIPTOR.fields} == {
        "noise_multiplier": 1, "sample_rate": 2, "steps": 3}
    assert dict(ledger_pb2.EntryKind.items()) == {"ENTRY_KIND_UNSPECIFIED": 0, "ENTRY_KIND_CHARGE": 1,
                                                 "ENTRY_KIND_REFUSAL": 2}
