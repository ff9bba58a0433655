"""The read-only ``PrivacyLedger`` gRPC service (``privfl ledger serve``).

An institution runs it next to its client so an auditor can query the ledger over
TLS: the budget (recomputed from the stored events), the signed entries verbatim
(to verify offline with the owner's public key), and a server-side ``Verify``.
Every request opens the ledger file read-only (SQLite ``mode=ro``), so the service
can never alter it, and it can run while the client keeps appending.
Plaintext (``insecure``) is accepted only on a loopback address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privfl.privacy.ledger.chain import entry_hash
from privfl.privacy.ledger.entry import CHARGE, UNIT_TO_PROTO, decode_entry
from privfl.privacy.ledger.errors import LedgerError, UnsupportedEvent
from privfl.privacy.ledger.owner import compute_epsilon
from privfl.privacy.ledger.store import LedgerStore
from privfl.privacy.ledger.verify import EPSILON_CHECKS, verify
from privfl.protos import ledger_pb2, ledger_pb2_grpc


class LedgerService(ledger_pb2_grpc.PrivacyLedgerServicer):
    def __init__(self, path: str | Path,
                 public_keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.path = Path(path)
        self.public_keys = public_keys
        LedgerStore.open_readonly(self.path).close()  # fail at start, not at the first request

    def _owner(self, store: LedgerStore, requested: str, context: grpc.ServicerContext) -> str:
        owners = store.owner_ids()
        if requested:
            if requested not in owners:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no entries for owner {requested!r} in this ledger")
            return requested
        own = store.meta().get("owner_id")
        if own:
            return own
        if len(owners) == 1:
            return owners[0]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"this ledger holds {len(owners)} owners; name one (owner_id)")

    def GetBudget(self, request, context):  # noqa: N802 (gRPC's name)
        store = LedgerStore.open_readonly(self.path)
        try:
            owner = self._owner(store, request.owner_id, context)
            entries = [decode_entry(r.entry) for r in store.rows(owner)]
        finally:
            store.close()
        response = ledger_pb2.GetBudgetResponse(owner_id=owner)
        if not entries:
            return response
        last = entries[-1]
        charges = [e for e in entries if e.kind == CHARGE]
        accountant = request.accountant or (charges[-1].accountant if charges else last.accountant)
        try:
            spent = compute_epsilon(accountant, [e.event for e in charges], last.delta)
        except (UnsupportedEvent, ValueError) as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        response.accountant = accountant
        response.delta = last.delta
        response.epsilon_spent = spent
        response.epsilon_budget = last.epsilon_budget
        response.epsilon_remaining = max(0.0, last.epsilon_budget - spent)
        response.charges = len(charges)
        response.refusals = len(entries) - len(charges)
        response.head_sequence = last.sequence
        response.head_hash = entry_hash(last.entry_bytes)
        response.privacy_unit = UNIT_TO_PROTO.get(last.privacy_unit, 0)
        return response

    def ListEntries(self, request, context):  # noqa: N802
        store = LedgerStore.open_readonly(self.path)
        try:
            owner = request.owner_id or None
            if owner is not None:
                self._owner(store, owner, context)
            after = max(0, request.start_sequence - 1)
            for row in store.rows(owner, after_sequence=after, limit=request.limit or None):
                yield ledger_pb2.SignedEntry(entry=row.entry, signature=row.signature,
                                             key_fingerprint=row.key_fingerprint)
        finally:
            store.close()

    def Verify(self, request, context):  # noqa: N802
        mode = request.epsilon_check or "all"
        if mode not in EPSILON_CHECKS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"epsilon_check must be one of {', '.join(EPSILON_CHECKS)}")
        report = verify(self.path, self.public_keys, epsilon_check=mode)
        response = ledger_pb2.VerifyResponse(
            ok=report.ok, entries_checked=report.entries_checked,
            keys_independently_supplied=report.keys_independently_supplied, notes=report.notes)
        response.key_fingerprints.update(report.key_fingerprints)
        if report.problem is not None:
            response.first_bad_owner_id = report.problem.owner_id
            response.first_bad_sequence = report.problem.sequence or 0
            response.reason = str(report.problem)
        return response


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    path: str | Path,
    address: str,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    insecure: bool = False,
    public_keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey] | None = None,
    max_workers: int = 4,
) -> tuple[grpc.Server, int]:
    """Start serving ``path`` read-only at ``address``; returns (server, bound port).

    TLS needs ``tls_cert`` (PEM chain) and ``tls_key`` (PEM private key);
    ``insecure=True`` serves plaintext and is refused unless the address is loopback.
    The caller stops the server (``server.stop(grace)``).
    """
    if insecure:
        if tls_cert or tls_key:
            raise ValueError("choose TLS (--tls-cert/--tls-key) or --insecure, not both")
        if not is_loopback(address):
            raise ValueError(f"refusing to serve a ledger without TLS on {address}: --insecure is for "
                             "loopback addresses (127.0.0.1, ::1, localhost) only")
    elif not (tls_cert and tls_key):
        raise ValueError("serving needs --tls-cert and --tls-key (or --insecure on a loopback address)")
    service = LedgerService(path, public_keys)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    ledger_pb2_grpc.add_PrivacyLedgerServicer_to_server(service, server)
    try:
        if insecure:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            port = server.add_secure_port(address, credentials)
    except RuntimeError as err:  # grpc raises when it cannot bind
        raise LedgerError(f"could not listen on {address}: {err}") from None
    if not port:
        raise LedgerError(f"could not listen on {address}")
    server.start()
    return server, port
