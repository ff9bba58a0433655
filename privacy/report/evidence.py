"""Where a value in a report comes from: what the ledger proves, and what someone declares.

Every statement a report makes carries one of these labels, so a data-protection
officer can tell a fact a third party can check from a claim they have to trust.
"""

from __future__ import annotations

LEDGER_VERIFIED = "ledger-verified"
LEDGER_UNVERIFIED = "ledger-unverified"
RECOMPUTED = "recomputed"
OWNER_SIGNED_PARTIAL = "owner-signed-partial"
OWNER_DECLARED = "owner-declared"
RUN_HISTORY = "run-history"
PRIVFL_DESIGN = "privfl-design"
CHECKED_NOW = "checked-at-report-time"
NOT_DECLARED = "not-declared"

DESCRIPTIONS = {
    LEDGER_VERIFIED: "read from signed, hash-chained ledger entries that passed verification (signatures, chain, "
                     "every stated epsilon recomputed)",
    RECOMPUTED: "derived in this report from the ledger's DP events with the accountant each entry names; "
                "anyone can recompute it from the events listed",
    LEDGER_UNVERIFIED: "read from a ledger that FAILED verification: not reliable",
    OWNER_SIGNED_PARTIAL: "the owner's signed statement in its latest entry; only part of the owner's chain was "
                          "given, so it was checked against a lower bound, not recomputed",
    OWNER_DECLARED: "declared by the data owner in its processing record; the ledger cannot confirm it",
    RUN_HISTORY: "from the run's history.json, written by the server; not signed",
    PRIVFL_DESIGN: "what privfl does by construction; not evidenced by the ledger itself",
    CHECKED_NOW: "checked on this machine when the report was generated",
    NOT_DECLARED: "not declared: add it to the processing record",
}

# Short labels for tables (HTML, PDF).
SHORT = {
    LEDGER_VERIFIED: "ledger",
    RECOMPUTED: "recomputed",
    LEDGER_UNVERIFIED: "UNVERIFIED",
    OWNER_SIGNED_PARTIAL: "owner-signed",
    OWNER_DECLARED: "declared",
    RUN_HISTORY: "history",
    PRIVFL_DESIGN: "design",
    CHECKED_NOW: "checked now",
    NOT_DECLARED: "missing",
}
