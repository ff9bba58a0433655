"""The server's check of every owner's receipt, and the federation ledger it feeds.

An update is accepted only with a receipt that is the owner's signed ledger entry
for *this* experiment and round, verified against the owner's registered public key, for
exactly the release the server asked for (noise, clipping, local epochs), and whose
update hash matches the arrays that arrived.  A genuine entry is kept in the
federation ledger even when the update is rejected: the owner did spend it.
"""

from __future__ import annotations

import math
from pathlib import Path

from flwr.app import Message

from privfl.logs import get_logger
from privfl import protocol
from privfl.privacy.keys import KeyFileError, load_public_key, owner_key_paths
from privfl.privacy.ledger import Entry, FederationLedger, LedgerError, ReceiptRejected
from privfl.protocol import PrivacyReceipt, TrainingPlan

log = get_logger("server")


class ReceiptCheck:
    def __init__(self, ledger: FederationLedger | None, owner_keys_dir: Path, plan: TrainingPlan,
                 experiment_id: str) -> None:
        """``ledger`` is None only in a non-private run, which accepts no signed receipts."""
        self.ledger, self.owner_keys_dir, self.plan = ledger, owner_keys_dir, plan
        self.experiment_id = experiment_id
        self._owner_of_node: dict[int, str] = {}

    def accept(self, reply: Message, server_round: int) -> PrivacyReceipt:
        """The owner's receipt for this round, verified; raises ReceiptRejected otherwise."""
        content = reply.content
        if protocol.PRIVACY not in content.config_records:
            raise ReceiptRejected("reply carries no privacy receipt")
        record = content[protocol.PRIVACY]
        if protocol.UNSIGNED_REFUSAL in record:
            if protocol.ARRAYS in content.array_records:
                raise ReceiptRejected("an unsigned refusal came with an update")
            owner = str(record.get(protocol.OWNER_ID, "")) or f"node-{reply.metadata.src_node_id}"
            return PrivacyReceipt.unsigned_refusal(owner, str(record[protocol.UNSIGNED_REFUSAL]))
        if record.get(protocol.NON_PRIVATE):
            if self.plan.dp:
                raise ReceiptRejected("a non-private update in a DP run")
            return PrivacyReceipt.non_private(self._bind(reply, str(record[protocol.OWNER_ID])))
        if self.ledger is None:
            raise ReceiptRejected("a signed DP receipt in a non-private run")
        signed = record.get(protocol.SIGNED_ENTRY)
        if not isinstance(signed, bytes) or not signed:
            raise ReceiptRejected("the receipt is not a signed ledger entry")
        try:
            claimed = Entry.from_signed(signed)
        except LedgerError as err:
            raise ReceiptRejected(str(err)) from None
        self._bind(reply, claimed.owner_id)
        self._register_key(claimed.owner_id)
        entry = self.ledger.append_received(signed)  # checks the signature and the owner's chain
        self._check_release(entry, server_round, content)
        return PrivacyReceipt.from_entry(entry)

    def _bind(self, reply: Message, owner_id: str) -> str:
        """One node speaks for one owner for the whole run."""
        node = reply.metadata.src_node_id
        known = self._owner_of_node.setdefault(node, owner_id)
        if known != owner_id:
            raise ReceiptRejected(f"node {node} spoke for owner {known}, now claims to be {owner_id}")
        return owner_id

    def _register_key(self, owner_id: str) -> None:
        """Register the owner's public key from the federation's key folder on first sight."""
        if self.ledger.public_key(owner_id) is not None:
            return
        public_path = owner_key_paths(self.owner_keys_dir, owner_id)[1]
        try:
            key = load_public_key(public_path)
        except (KeyFileError, FileNotFoundError):
            raise ReceiptRejected(
                f"owner {owner_id} has no registered public key ({public_path} is missing or unreadable)"
            ) from None
        self.ledger.register_owner(owner_id, key)
        log.info("registered owner %s's public key from %s", owner_id, public_path)

    def _check_release(self, entry: Entry, server_round: int, content: object) -> None:
        where = f"owner {entry.owner_id}, entry {entry.sequence}"
        if entry.run_id != self.experiment_id or entry.round != server_round:
            raise ReceiptRejected(
                f"{where} is for experiment {entry.run_id} round {entry.round}, not experiment {self.experiment_id} "
                f"round {server_round}")
        if not entry.is_charge:
            if protocol.ARRAYS in content.array_records:  # type: ignore[attr-defined]
                raise ReceiptRejected(f"{where} is a refusal, yet an update came with it")
            return
        event = entry.event
        plan = self.plan
        if event is None or entry.mechanism != "poisson_subsampled_gaussian":
            raise ReceiptRejected(f"{where} charges {entry.mechanism or 'no mechanism'}, not DP-SGD")
        if event.noise_multiplier != plan.noise_multiplier or entry.clipping_norm != plan.max_grad_norm:
            raise ReceiptRejected(
                f"{where} ran noise {event.noise_multiplier} / clipping {entry.clipping_norm}; the server asked for "
                f"noise {plan.noise_multiplier} / clipping {plan.max_grad_norm}")
        if not math.isclose(event.steps * event.sample_rate, plan.local_epochs, rel_tol=1e-9):
            raise ReceiptRejected(
                f"{where} took {event.steps} steps at rate {event.sample_rate}: not {plan.local_epochs} local epochs")
        arrays = content.array_records.get(protocol.ARRAYS)  # type: ignore[attr-defined]
        if arrays is None or protocol.update_digest(arrays.to_torch_state_dict()) != entry.update_hash:
            raise ReceiptRejected(f"{where}: the update that arrived is not the one the owner charged for")
