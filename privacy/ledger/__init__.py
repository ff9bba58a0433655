"""The privacy ledger: every privacy-consuming release, per data owner, signed and chained.

- :class:`OwnerLedger` — an owner's own ledger (the record that counts): ``charge``
  before release, ``refuse``, ``events``, ``spent_epsilon``, ``is_charged``;
- :class:`FederationLedger` — the server's view: owners' receipts verified and kept
  verbatim (``register_owner``, ``append_received``);
- :func:`verify` — walk a ledger file and report the first bad entry;
- :class:`Entry` — one decoded signed entry; ``entry.signed_bytes()`` is the receipt
  that travels with an update, ``Entry.from_signed(bytes)`` reads one back.

Wire and storage format: ``protos/ledger.proto`` (``privfl.protos.ledger_pb2``).
"""

from privfl.privacy.ledger.chain import GENESIS_HASH, entry_hash, update_hash
from privfl.privacy.ledger.entry import CHARGE, OWNER, RECORD, REFUSAL, Entry, decode_entry
from privfl.privacy.ledger.errors import (
    BudgetExceeded,
    ChargeConflict,
    LedgerError,
    LedgerKeyMismatch,
    MissingLedger,
    NotALedgerError,
    ReceiptRejected,
    UnsupportedEvent,
)
from privfl.privacy.ledger.federation import FederationLedger
from privfl.privacy.ledger.owner import OwnerLedger, compute_epsilon
from privfl.privacy.ledger.signing import SIGNING_CONTEXT, sign_entry, signature_problem
from privfl.privacy.ledger.verify import Problem, VerificationReport, verify

__all__ = [
    "CHARGE", "OWNER", "RECORD", "REFUSAL", "GENESIS_HASH", "SIGNING_CONTEXT",
    "BudgetExceeded", "ChargeConflict", "Entry", "FederationLedger", "LedgerError", "LedgerKeyMismatch",
    "MissingLedger", "NotALedgerError", "OwnerLedger", "Problem", "ReceiptRejected", "UnsupportedEvent",
    "VerificationReport",
    "compute_epsilon", "decode_entry", "entry_hash", "sign_entry", "signature_problem", "update_hash", "verify",
]
