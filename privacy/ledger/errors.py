"""What can go wrong with a ledger, as exception types a caller can tell apart."""

from __future__ import annotations


class LedgerError(Exception):
    """A ledger operation that cannot be done; the message says why and how to mend it."""


class NotALedgerError(LedgerError):
    """The file is not a privfl ledger (or not the kind expected)."""


class MissingLedger(LedgerError):
    """No ledger where one must already exist: only enrolment creates an owner's ledger."""


class LedgerKeyMismatch(LedgerError):
    """The key offered does not belong to this ledger or owner."""


class BudgetExceeded(LedgerError):
    """A charge would take the owner past its epsilon budget; nothing was written."""

    def __init__(self, message: str, *, projected_epsilon: float, epsilon_budget: float) -> None:
        super().__init__(message)
        self.projected_epsilon = projected_epsilon
        self.epsilon_budget = epsilon_budget


class ChargeConflict(LedgerError):
    """The release (run, round, owner) is already charged with a different DP event."""


class UnsupportedEvent(LedgerError):
    """The accountant does not know the event's mechanism, so it refuses to compute epsilon."""


class ReceiptRejected(LedgerError):
    """A signed entry received from an owner was refused by the federation ledger."""
