"""The read-only ``PrivacyLedger`` gRPC service (``privfl ledger serve``).

An institution runs it next to its client so an auditor can query the ledger over
TLS: the budget (recomputed from the stored events), the signed entries verbatim
(to verify offline with the owner's public key), and a server-side ``Verify``.
Every request opens the ledger file read-only (SQLite ``mode=ro``), so the service
can never alter it, and it can run while the client keeps appending.

Answers come from a verified ledger.  Before ``GetBudget`` or ``ListEntries``
answers, the whole file is checked with :func:`privfl.privacy.ledger.verify` (the
public keys the service was started with; else the keys the file records):
signatures, hash chains, stated epsilons, schema.  When the file is not intact
both refuse with ``FAILED_PRECONDITION`` and the first problem
("ledger not intact: owner st-mary, entry 7: the signature does not match ..."),
never a number.  A verification is cached under the state of the ``.db`` file and
its ``-wal`` (inode, size, mtime in ns; the .db's ctime), so a busy auditor does
not re-verify a large ledger on every call, while any change to either file (an
append, an edit, a checkpoint) re-verifies.  The state is taken again after the
entries are read, and the entries read must hash-link to the verified chain heads
(for ``GetBudget``, which reads whole chains, that makes them byte for byte the
verified entries, whatever the timestamps say): otherwise the file is verified
and read again, so an answer never rests on unverified bytes.  ``Verify``
reports what is wrong instead of refusing.

Transport.  TLS (``tls_cert``/``tls_key``), and with ``client_ca`` mutual TLS:
every client must present a certificate issued by that CA (``privfl.pki``
``issue_client_cert``), else the handshake fails.  TLS without ``client_ca`` logs
a warning: any client that reaches the port can read every entry.  Plaintext
(``insecure``) is accepted only on a loopback address.

Access list (per-auditor scope; needs ``client_ca``).  The client's identity is
read from its verified certificate (:func:`privfl.pki.certificate_identity`: the
``privfl:auditor:<id>`` URI SAN, else the common name).  With an access list
configured (``access={"dpo-st-mary": ["st-mary"]}``, ``--auditor``, ``--access``):

- an identity not in the list is denied everything (``PERMISSION_DENIED``);
- ``"*"`` among an identity's owners grants every owner;
- ``GetBudget``/``ListEntries`` naming an owner outside the identity's scope are
  ``PERMISSION_DENIED`` (before any lookup, so the answer does not reveal whether
  that owner is in the ledger); ``ListEntries`` without an owner returns only the
  permitted owners' entries; ``GetBudget`` without an owner picks the only
  permitted owner present;
- ``Verify`` (a report on the whole file, naming owners, keys and entries) is
  allowed only when every owner the file holds (entries and keys) is permitted,
  else ``PERMISSION_DENIED``; a scoped auditor of a federation ledger learns
  whether the ledger is intact from ``GetBudget``;
- when the file is not intact and the first problem lies in an owner outside the
  caller's scope, the refusal says so without naming that owner or entry.

Without an access list every client that passes the transport reads everything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import threading
import tomllib
from collections.abc import Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from privfl import pki
from privfl.logs import get_logger
from privfl.privacy.ledger.chain import entry_hash
from privfl.privacy.budget import unit_spend
from privfl.privacy.ledger.entry import CHARGE, UNIT_FROM_PROTO, UNIT_TO_PROTO, decode_entry, unit_of
from privfl.privacy.ledger.errors import LedgerError, NotALedgerError, UnsupportedEvent
from privfl.privacy.ledger.store import LedgerStore
from privfl.privacy.ledger.verify import EPSILON_CHECKS, VerificationReport
from privfl.protos import ledger_pb2, ledger_pb2_grpc

log = get_logger("ledger.service")

ALL_OWNERS = "*"
READ_ATTEMPTS = 3  # verify-then-read rounds before giving up on a ledger that keeps changing
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

PublicKeys = Ed25519PublicKey | Mapping[str, Ed25519PublicKey] | None


# ---------------------------------------------------------------------------
# who may read what


@dataclass(frozen=True)
class Scope:
    """What one caller may read: ``owners`` None = every owner."""

    identity: str | None
    owners: frozenset[str] | None

    def allows(self, owner: str) -> bool:
        return self.owners is None or owner in self.owners

    @property
    def restricted(self) -> bool:
        return self.owners is not None


UNRESTRICTED = Scope(None, None)


class AccessPolicy:
    """Client identity -> the owners whose entries and budgets it may read.

    Sources: a mapping (``{"dpo-st-mary": ["st-mary"]}``), ``--auditor ID=OWNER[,OWNER...]``
    flags (:meth:`parse_grant`) and a TOML file (:meth:`from_toml`)::

        # access.toml: which auditor (client certificate identity) reads which owners
        [auditors]
        "dpo-st-mary" = ["st-mary"]
        "federation-dpo" = ["*"]          # every owner

    An identity not listed is denied everything.
    """

    def __init__(self, grants: Mapping[str, Iterable[str]]) -> None:
        checked: dict[str, frozenset[str] | None] = {}
        for identity, owners in grants.items():
            checked[self._check_identity(identity)] = self._check_owners(identity, owners)
        if not checked:
            raise ValueError("the access list is empty: it would deny every client (omit it to allow all)")
        self.grants = checked

    @staticmethod
    def _check_identity(identity: object) -> str:
        if not isinstance(identity, str) or not _IDENTITY.match(identity):
            raise ValueError(f"auditor identity {identity!r} is not usable: 1-64 letters, digits, '.', '_' or '-', "
                             "as in the client certificate (privfl.pki.issue_client_cert)")
        return identity

    @staticmethod
    def _check_owners(identity: str, owners: Iterable[str]) -> frozenset[str] | None:
        if isinstance(owners, str) or not isinstance(owners, Iterable):
            raise ValueError(f"auditor {identity!r}: give a list of owner ids, e.g. [\"st-mary\"]")
        owners = list(owners)
        if not owners or not all(isinstance(o, str) and o.strip() for o in owners):
            raise ValueError(f"auditor {identity!r}: give one or more owner ids (or \"*\" for every owner)")
        return None if ALL_OWNERS in owners else frozenset(o.strip() for o in owners)

    @staticmethod
    def parse_grant(text: str) -> tuple[str, list[str]]:
        """``"dpo-st-mary=st-mary,st-luke"`` -> ``("dpo-st-mary", ["st-mary", "st-luke"])``."""
        identity, sep, owners = text.partition("=")
        names = [o.strip() for o in owners.split(",") if o.strip()]
        if not sep or not identity.strip() or not names:
            raise ValueError(f"--auditor {text!r}: write ID=OWNER[,OWNER...] (ID as in the auditor's client "
                             "certificate, OWNER an owner id or '*' for every owner)")
        return identity.strip(), names

    @staticmethod
    def read_toml(path: str | Path) -> dict[str, list[str]]:
        """The ``[auditors]`` table of an access file, checked."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no access file at {path}")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid TOML ({err})") from None
        extra = sorted(set(data) - {"auditors"})
        if extra or not isinstance(data.get("auditors"), dict):
            raise ValueError(f"{path}: expected one table [auditors] with lines \"ID\" = [\"OWNER\", ...]"
                             + (f"; unexpected {', '.join(extra)}" if extra else ""))
        grants = {}
        for identity, owners in data["auditors"].items():
            if not isinstance(owners, list):
                raise ValueError(f"{path}: auditor {identity!r} must map to a list of owner ids, "
                                 f"e.g. \"{identity}\" = [\"st-mary\"]")
            grants[identity] = owners
        return grants

    @classmethod
    def from_toml(cls, path: str | Path) -> AccessPolicy:
        return cls(cls.read_toml(path))

    def scope(self, identity: str | None) -> Scope | None:
        """The caller's scope, or None when the identity is not in the list."""
        if identity is None or identity not in self.grants:
            return None
        return Scope(identity, self.grants[identity])


def peer_identity(context: grpc.ServicerContext) -> str | None:
    """The identity in the verified client certificate of this call (mutual TLS), else None."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if pems:
        try:
            return pki.certificate_identity(x509.load_pem_x509_certificate(pems[0]))
        except (pki.PkiError, ValueError):
            return None
    names = auth.get("x509_common_name")
    return names[0].decode("utf-8", "replace") if names else None


# ---------------------------------------------------------------------------
# the servicer


class _Reread(Exception):
    """What was read is not what was verified (the file changed in between): verify and read again."""


def _file_state(path: Path) -> tuple:
    """What changes whenever the ledger's bytes do: the .db file and its -wal.

    Inode, size and mtime of both; the .db's ctime too (an edit whose mtime was put
    back with ``touch -d`` still moves the ctime).  Not the -wal's ctime: SQLite
    touches it when a connection opens.  An empty -wal holds nothing, like a
    missing one (a read-only connection creates an empty one); a checkpoint that
    empties it rewrites the .db, which changes.
    """
    try:
        db = os.stat(path)
    except FileNotFoundError:
        db_state = None
    else:
        db_state = (db.st_ino, db.st_size, db.st_mtime_ns, db.st_ctime_ns)
    try:
        wal = os.stat(f"{path}-wal")
    except FileNotFoundError:
        wal_state = None
    else:
        wal_state = (wal.st_ino, wal.st_size, wal.st_mtime_ns) if wal.st_size else None
    return db_state, wal_state


def _unverified(rows: Iterable, report: VerificationReport) -> bool:
    """True when ``rows`` (in chain order) are not part of the chains ``report`` verified.

    Each row must lie at or below its owner's verified head (and be that head when
    at its sequence), and each row must link (previous_hash) to the row before it
    where they are consecutive.  A whole chain read this way is, byte for byte, the
    chain that was verified, whatever the file's timestamps say.
    """
    previous = None
    for row in rows:
        head = report.heads.get(row.owner_id)
        if head is None or row.sequence > head[0]:
            return True
        if row.sequence == head[0] and entry_hash(row.entry).hex() != head[1]:
            return True
        if previous is not None and previous.owner_id == row.owner_id and row.sequence == previous.sequence + 1:
            try:
                link = ledger_pb2.LedgerEntry.FromString(row.entry).previous_hash
            except DecodeError:
                return True
            if link != entry_hash(previous.entry):
                return True
        previous = row
    return False


class LedgerService(ledger_pb2_grpc.PrivacyLedgerServicer):
    """The servicer; :func:`serve` runs it.  ``verifications`` counts verify() runs (the cache's misses)."""

    def __init__(self, path: str | Path, public_keys: PublicKeys = None, *,
                 access: AccessPolicy | Mapping[str, Iterable[str]] | None = None,
                 epsilon_check: str = "all", registry: str | Path | None = None,
                 coordinator_key: Ed25519PublicKey | None = None) -> None:
        if epsilon_check not in EPSILON_CHECKS:
            raise ValueError(f"epsilon_check must be one of {', '.join(EPSILON_CHECKS)}")
        self.path = Path(path)
        self.registry = Path(registry) if registry is not None else None  # the trust root's anchored heads
        self.coordinator_key = coordinator_key
        self.public_keys = public_keys
        self.epsilon_check = epsilon_check
        self.access = access if isinstance(access, AccessPolicy) or access is None else AccessPolicy(access)
        self.verifications = 0
        self._cache: dict[str, tuple[tuple, VerificationReport, tuple | None]] = {}
        self._lock = threading.Lock()
        LedgerStore.open_readonly(self.path).close()  # fail at start, not at the first request
        # Verify once now: a wrong kind of key fails here, and the cache is warm.
        _, report = self.verification(epsilon_check)
        if not report.ok:
            log.warning("%s does not verify (%s); GetBudget and ListEntries refuse until it does",
                        self.path, report.problem)

    # -- verification cache ------------------------------------------------------

    def verification(self, epsilon_check: str | None = None) -> tuple[tuple, VerificationReport]:
        """(file state, report) for the file as it is now; verifies only when the file changed."""
        mode = epsilon_check or self.epsilon_check
        with self._lock:
            from privfl.privacy.audit import audit_ledger

            state = _file_state(self.path)  # what readers compare with; the registry's state keys the cache too
            anchors = _file_state(self.registry) if self.registry else None
            cached = self._cache.get(mode)
            if cached is not None and cached[0] == state and cached[2] == anchors:
                return cached[0], cached[1]
            report = audit_ledger(self.path, self.public_keys, registry=self.registry,
                                  coordinator_key=self.coordinator_key, epsilon_check=mode)
            self.verifications += 1
            if _file_state(self.path) == state and (_file_state(self.registry) if self.registry else None) == anchors:
                self._cache[mode] = (state, report, anchors)
            return state, report

    def forget(self) -> None:
        """Drop the cached verifications: the next request verifies the file again."""
        with self._lock:
            self._cache.clear()

    def _intact(self, scope: Scope, context: grpc.ServicerContext) -> tuple[tuple, VerificationReport]:
        state, report = self.verification()
        if not report.ok:
            problem = report.problem
            if problem is not None and problem.owner_id and not scope.allows(problem.owner_id):
                reason = ("an entry or key of an owner outside your access is bad; ask the ledger's operator "
                          "to run 'privfl ledger verify'")
            else:
                reason = str(problem)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"ledger not intact: {reason}")
        return state, report

    def _read_verified(self, scope: Scope, context: grpc.ServicerContext, read):
        """``read(store, report)`` on a verified file that did not change from verification to reading.

        ``read`` raises :class:`_Reread` when what it read is not what was verified.
        """
        for _ in range(READ_ATTEMPTS):
            state, report = self._intact(scope, context)
            try:
                store = LedgerStore.open_readonly(self.path)
            except (NotALedgerError, FileNotFoundError) as err:
                if _file_state(self.path) == state:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"ledger not readable: {err}")
                continue
            try:
                result = read(store, report)
            except _Reread:
                continue
            finally:
                store.close()
            if _file_state(self.path) == state:
                return result
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      "the ledger changed while it was being verified and read; try again")

    # -- access ------------------------------------------------------------------

    def _scope(self, context: grpc.ServicerContext) -> Scope:
        if self.access is None:
            return UNRESTRICTED
        identity = peer_identity(context)
        scope = self.access.scope(identity)
        if scope is None:
            who = "a client without a certificate identity" if identity is None else f"client {identity!r}"
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} is not in this ledger service's access list")
        return scope

    @staticmethod
    def _deny(owner: str, scope: Scope, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"client {scope.identity!r} may not read owner {owner!r}")

    def _owner(self, store: LedgerStore, requested: str, scope: Scope, context: grpc.ServicerContext) -> str:
        if requested:
            if not scope.allows(requested):
                self._deny(requested, scope, context)
            if requested not in store.owner_ids():
                context.abort(grpc.StatusCode.NOT_FOUND, f"no entries for owner {requested!r} in this ledger")
            return requested
        own = store.meta().get("owner_id")
        if own:
            if not scope.allows(own):
                self._deny(own, scope, context)
            return own
        owners = [o for o in store.owner_ids() if scope.allows(o)]
        if len(owners) == 1:
            return owners[0]
        if scope.restricted:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"name an owner (owner_id); you may read {', '.join(sorted(scope.owners))}")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"this ledger holds {len(owners)} owners; name one (owner_id)")

    # -- RPCs --------------------------------------------------------------------

    def GetBudget(self, request, context):  # noqa: N802 (gRPC's name)
        """The owner's spend in one privacy unit, recomputed from the charges of a ledger that verified."""
        scope = self._scope(context)
        if request.owner_id and not scope.allows(request.owner_id):
            self._deny(request.owner_id, scope, context)

        def read(store: LedgerStore, report: VerificationReport):
            owner = self._owner(store, request.owner_id, scope, context)
            rows = list(store.rows(owner))  # one SELECT: one snapshot
            read_head = (rows[-1].sequence, entry_hash(rows[-1].entry).hex()) if rows else None
            if read_head != report.heads.get(owner) or _unverified(rows, report):
                self.forget()  # not the chain that was verified: verify again, then read again
                raise _Reread
            return owner, [decode_entry(r.entry) for r in rows]

        owner, entries = self._read_verified(scope, context, read)
        response = ledger_pb2.GetBudgetResponse(owner_id=owner)
        if not entries:
            return response
        # Per privacy unit (privfl.privacy.budget.unit_spend, the one definition of "spent"): the requested unit,
        # else the unit of the owner's last charge; the two units are never composed together.
        charges = [e for e in entries if e.kind == CHARGE]
        unit = UNIT_FROM_PROTO.get(request.privacy_unit) or unit_of(charges[-1] if charges else entries[-1])
        try:
            spend = unit_spend(entries, unit, request.accountant)
        except (UnsupportedEvent, ValueError) as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        last = entries[-1]
        response.head_sequence = last.sequence
        response.head_hash = entry_hash(last.entry_bytes)
        response.privacy_unit = UNIT_TO_PROTO.get(unit, 0)
        if spend is None:  # no entry of that unit: nothing spent, and no budget stated for it
            return response
        response.accountant = spend.accountant
        response.delta = spend.delta
        response.epsilon_spent = spend.epsilon
        response.epsilon_budget = spend.budget
        response.epsilon_remaining = spend.remaining
        response.charges = spend.charges
        response.refusals = spend.refusals
        return response

    def ListEntries(self, request, context):  # noqa: N802
        """The signed entries of a ledger that verified, restricted to the caller's owners."""
        scope = self._scope(context)
        if request.owner_id and not scope.allows(request.owner_id):
            self._deny(request.owner_id, scope, context)
        after = max(0, request.start_sequence - 1)
        limit = request.limit or None

        def read(store: LedgerStore, report: VerificationReport):
            if request.owner_id:
                owners = [self._owner(store, request.owner_id, scope, context)]
            elif scope.restricted:
                owners = [o for o in store.owner_ids() if scope.allows(o)]
            else:
                return list(store.rows(None, after_sequence=after, limit=limit))
            rows = []
            for owner in owners:
                remaining = None if limit is None else limit - len(rows)
                if remaining == 0:
                    break
                rows.extend(store.rows(owner, after_sequence=after, limit=remaining))
            return rows

        def read_checked(store: LedgerStore, report: VerificationReport):
            rows = read(store, report)
            if _unverified(rows, report):
                self.forget()
                raise _Reread
            return rows

        for row in self._read_verified(scope, context, read_checked):
            yield ledger_pb2.SignedEntry(entry=row.entry, signature=row.signature,
                                         key_fingerprint=row.key_fingerprint)

    def Verify(self, request, context):  # noqa: N802
        """The verification report; for a scoped caller only when the file holds only its owners."""
        mode = request.epsilon_check or "all"
        if mode not in EPSILON_CHECKS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"epsilon_check must be one of {', '.join(EPSILON_CHECKS)}")
        scope = self._scope(context)
        if scope.restricted:
            others = sorted(o for o in self._owners_in_file() if not scope.allows(o))
            if others:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"client {scope.identity!r} may not verify this ledger: it also holds owners outside "
                              "your access (GetBudget tells whether the ledger is intact)")
        _, report = self.verification(mode)
        response = ledger_pb2.VerifyResponse(
            ok=report.ok, entries_checked=report.entries_checked,
            keys_independently_supplied=report.keys_independently_supplied, notes=report.notes)
        # (a scoped caller reaches here only for a file of its own owners; filter all the same)
        response.key_fingerprints.update({o: fp for o, fp in report.key_fingerprints.items() if scope.allows(o)})
        problem = report.problem
        if problem is not None and problem.owner_id and not scope.allows(problem.owner_id):
            response.reason = "an entry or key of an owner outside your access is bad"
        elif problem is not None:
            response.first_bad_owner_id = problem.owner_id
            response.first_bad_sequence = problem.sequence or 0
            response.reason = str(problem)
        return response

    def _owners_in_file(self) -> set[str]:
        """Every owner the file names (entries, keys, metadata); empty when it cannot be read."""
        try:
            store = LedgerStore.open_readonly(self.path)
        except (NotALedgerError, FileNotFoundError):
            return set()
        try:
            owners = set(store.owner_ids()) | {owner for _, owner, _ in store.keys()}
            own = store.meta().get("owner_id")
            return owners | ({own} if own else set())
        except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError):  # damaged: Verify reports it
            return set()
        finally:
            store.close()


# ---------------------------------------------------------------------------
# serving


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
    client_ca: str | Path | None = None,
    access: AccessPolicy | Mapping[str, Iterable[str]] | None = None,
    insecure: bool = False,
    public_keys: PublicKeys = None,
    epsilon_check: str = "all",
    max_workers: int = 4,
    registry: str | Path | None = None,
    coordinator_key: Ed25519PublicKey | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving ``path`` read-only at ``address``; returns (server, bound port).

    TLS needs ``tls_cert`` (PEM chain) and ``tls_key`` (PEM private key); with
    ``client_ca`` (PEM CA certificate(s)) clients must present a certificate issued
    by it (mutual TLS); ``access`` (identity -> owners, see :class:`AccessPolicy`)
    limits each client to its owners and needs ``client_ca``.  ``insecure=True``
    serves plaintext and is refused unless the address is loopback.
    ``epsilon_check``: how much of the stated epsilons the verification behind
    every answer recomputes (``"all"``, ``"last"``, ``"none"``).  ``registry`` (with
    ``coordinator_key``): the coordinator's registry; the ledger must hold every head it
    anchored (:func:`privfl.privacy.audit.audit_ledger`), else nothing is answered.
    The caller stops the server (``server.stop(grace)``).
    """
    if insecure:
        if tls_cert or tls_key or client_ca:
            raise ValueError("choose TLS (--tls-cert/--tls-key[/--client-ca]) or --insecure, not both")
        if not is_loopback(address):
            raise ValueError(f"refusing to serve a ledger without TLS on {address}: --insecure is for "
                             "loopback addresses (127.0.0.1, ::1, localhost) only")
    elif not (tls_cert and tls_key):
        raise ValueError("serving needs --tls-cert and --tls-key (or --insecure on a loopback address)")
    if access is not None and not client_ca:
        raise ValueError("an access list (--auditor/--access) needs --client-ca: a client's identity comes from "
                         "its certificate, and without mutual TLS there is none")
    if access is not None and not isinstance(access, AccessPolicy):
        access = AccessPolicy(access)
    credentials = None
    if not insecure:
        key_pem, cert_pem = Path(tls_key).read_bytes(), Path(tls_cert).read_bytes()
        if client_ca:
            pki.load_ca_certificates(client_ca)  # a clear error for a file that is not a CA certificate
            credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)],
                                                      root_certificates=Path(client_ca).read_bytes(),
                                                      require_client_auth=True)
        else:
            credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    service = LedgerService(path, public_keys, access=access, epsilon_check=epsilon_check, registry=registry,
                            coordinator_key=coordinator_key)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    ledger_pb2_grpc.add_PrivacyLedgerServicer_to_server(service, server)
    try:
        port = server.add_insecure_port(address) if insecure else server.add_secure_port(address, credentials)
    except RuntimeError as err:  # grpc raises when it cannot bind
        raise LedgerError(f"could not listen on {address}: {err}") from None
    if not port:
        raise LedgerError(f"could not listen on {address}")
    server.start()
    if not insecure and not client_ca:
        log.warning("serving %s over TLS without --client-ca: any client that reaches port %d can read every "
                    "entry (give --client-ca CA.pem to require client certificates)", path, port)
    return server, port
