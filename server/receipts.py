"""The coordinator's check of every owner's receipt, and the ledgers it feeds.

An update is accepted only with a receipt that is the owner's signed ledger entry for
*this* experiment and round, verified against the owner's registered public key,
continuing the head the coordinator last anchored for that owner (its registry),
for exactly the release the coordinator asked for (noise, clipping, local epochs),
and whose update hash matches the arrays that arrived.  A genuine entry is kept even
when the update is then dropped: the owner did spend it.

Nothing is written per reply: at the end of the round every accepted receipt (with
its bridge) goes into the experiment's federation ledger and is anchored there and in
the registry, each file in one transaction (:meth:`ReceiptCheck.commit`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import Message

from privfl import protocol
from privfl.logs import get_logger
from privfl.privacy.accountants import get_accountant
from privfl.privacy.keys import KeyFileError, check_owner_id, load_public_key, owner_key_paths
from privfl.privacy.ledger import Entry, FederationLedger, LedgerError, ReceiptRejected
from privfl.privacy.ledger.federation import AnchorMismatch, Checked, event_bound_problem
from privfl.privacy.ledger.identity import answer_problem
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.privacy.planning import dp_sgd_round
from privfl.protocol import OWNER_CHARGE_STAGE, TRAIN_STAGE, OwnerRound, PrivacyReceipt, TrainingPlan

log = get_logger("server")


class ReleaseMismatch(ReceiptRejected):
    """A genuine, signed receipt for another release than the one asked for: kept, its update dropped."""

    def __init__(self, message: str, accepted: Accepted) -> None:
        super().__init__(message)
        self.accepted = accepted


@dataclass(frozen=True)
class Accepted:
    """A reply's receipt, read and verified; ``checked`` is None for unsigned and non-private ones."""

    receipt: PrivacyReceipt
    checked: Checked | None = None
    # The records a record-level DP charge implies (batch size / sample rate): the most this owner's update
    # may weigh in FedAvg, whatever count it claims.  None: no such charge (refusal, non-private, owner-level).
    records: int | None = None


class ReceiptCheck:
    def __init__(self, ledger: FederationLedger | None, registry: CoordinatorRegistry | None, owner_keys_dir: Path,
                 plan: TrainingPlan, experiment_id: str, coordinator_key: Ed25519PrivateKey | None = None) -> None:
        """``ledger`` and ``registry`` are None only in a non-private run, which accepts no signed receipts."""
        self.ledger, self.registry, self.owner_keys_dir, self.plan = ledger, registry, owner_keys_dir, plan
        self.experiment_id = experiment_id
        self.coordinator_key = coordinator_key
        self._owner_of_node: dict[int, str] = {}

    # -- who a node speaks for ---------------------------------------------------------

    def owner_of(self, node: int) -> str | None:
        return self._owner_of_node.get(node)

    def label(self, node: int) -> str:
        """The name a node's words are kept under: its bound owner, else the node itself (never a claimed owner)."""
        return self._owner_of_node.get(node) or f"node-{node}"

    def bind(self, node: int, owner_id: str) -> str:
        """One node speaks for one owner for the whole experiment.

        Called only once the owner's key has vouched for the node: a signed answer to the
        coordinator's query (:meth:`bind_answer`) or a verified ledger entry (:meth:`accept`).
        """
        known = self._owner_of_node.setdefault(node, owner_id)
        if known != owner_id:
            raise ReceiptRejected(f"node {node} spoke for owner {known}, now claims to be {owner_id}")
        return owner_id

    def bind_answer(self, node: int, answer: Any, experiment_id: str, nonce: str) -> tuple[str, int]:
        """Bind ``node`` to the owner its query answer names, if that owner's key signed the answer over ``nonce``.

        Returns (owner id, the head sequence it reports); raises ReceiptRejected saying why
        not (a malformed answer, an owner without a registered key, a signature that is not the owner's).
        """
        owner, sequence = answer.get(protocol.OWNER_ID), answer.get(protocol.HEAD_SEQUENCE)
        head_hash, signature = answer.get(protocol.HEAD_HASH), answer.get(protocol.ANSWER_SIGNATURE)
        if not isinstance(owner, str) or not isinstance(head_hash, str) or not isinstance(sequence, int) \
                or isinstance(sequence, bool) or not 0 <= sequence < 2**63:
            raise ReceiptRejected(f"node {node}'s answer to the query is malformed (owner id {owner!r:.80}, head "
                                  f"{sequence!r:.40} {head_hash!r:.80})")
        try:
            check_owner_id(owner)
        except ValueError as err:
            raise ReceiptRejected(f"node {node}'s answer to the query: {err}") from None
        if not isinstance(signature, bytes) or not signature:
            raise ReceiptRejected(f"node {node} answered as owner {owner} without signing the query's nonce")
        problem = answer_problem(self._owner_key(owner), signature, experiment_id, nonce, owner, sequence, head_hash)
        if problem:
            raise ReceiptRejected(f"node {node} answered as owner {owner}: {problem}")
        return self.bind(node, owner), sequence

    def anchored_head(self, owner_id: str) -> tuple[int, bytes] | None:
        """The last head of ``owner_id`` the coordinator accepted, in any experiment."""
        return self.registry.head(owner_id) if self.registry is not None else None

    # -- one reply ---------------------------------------------------------------------

    def accept(self, reply: Message, server_round: int, *, owner_round: OwnerRound | None = None,
               stage: str = TRAIN_STAGE) -> Accepted:
        """The owner's receipt for this round, verified; raises ReceiptRejected otherwise.

        ``owner_round``: the owner-level mechanism of this round (owner-level rounds):
        at ``stage`` owner-charge the receipt must charge its event; at the train stage it
        is either the owner-level charge (no DP-SGD) or a DP-SGD charge of the clipped
        update (both units).  Under secure aggregation no update is seen, so none is hashed.
        """
        content = reply.content
        node = reply.metadata.src_node_id
        if protocol.PRIVACY not in content.config_records:
            raise ReceiptRejected("reply carries no privacy receipt")
        record = content[protocol.PRIVACY]
        if protocol.UNSIGNED_REFUSAL in record:
            if protocol.ARRAYS in content.array_records:
                raise ReceiptRejected("an unsigned refusal came with an update")
            return Accepted(PrivacyReceipt.unsigned_refusal(self.label(node), self.unsigned_reason(node, record)))
        if record.get(protocol.NON_PRIVATE):
            if self.plan.dp:
                raise ReceiptRejected("a non-private update in a DP run")
            owner = self.owner_of(node)
            if owner is None or record.get(protocol.OWNER_ID, owner) != owner:
                raise ReceiptRejected(f"a non-private update from node {node}, which no owner's key vouched for "
                                      f"as owner {record.get(protocol.OWNER_ID)!r}")
            return Accepted(PrivacyReceipt.non_private(owner))
        if self.ledger is None:
            raise ReceiptRejected("a signed DP receipt in a non-private run")
        signed = record.get(protocol.SIGNED_ENTRY)
        if not isinstance(signed, bytes) or not signed:
            raise ReceiptRejected("the receipt is not a signed ledger entry")
        bridge = record.get(protocol.BRIDGE, [])
        if not isinstance(bridge, list) or not all(isinstance(b, bytes) for b in bridge):
            raise ReceiptRejected("the receipt's bridge is not a list of signed ledger entries")
        elided = record.get(protocol.BRIDGE_ELIDED, [])  # other experiments' entries: hashes only
        if not isinstance(elided, list) or not all(isinstance(b, bytes) for b in elided):
            raise ReceiptRejected("the receipt's elided bridge is not a list of entry hashes")
        try:
            claimed = Entry.from_signed(signed)
            check_owner_id(claimed.owner_id)
        except (LedgerError, ValueError) as err:
            raise ReceiptRejected(str(err)) from None
        known = self.owner_of(node)
        if known is not None and known != claimed.owner_id:
            raise ReceiptRejected(f"node {node} spoke for owner {known}, now claims to be {claimed.owner_id}")
        self._register_key(claimed.owner_id)
        try:  # signatures, chain and anchor: cheap; the epsilon is composed only once the release is the one asked
            checked = self.ledger.check_received(signed, bridge=bridge, anchored=self.anchored_head(claimed.owner_id),
                                                 elided=elided, check_epsilon=False)
        except AnchorMismatch as err:
            self.bind(node, claimed.owner_id)  # signatures held: the owner's key vouches for this node
            if claimed.is_charge or protocol.ARRAYS in content.array_records:
                raise
            # A signed refusal from a ledger that lost its anchored head: the owner released nothing and says
            # why; keep its word in the history, but the broken chain goes into no ledger.
            log.error("owner %s refused with a ledger that does not continue its anchored head: %s",
                      claimed.owner_id, err)
            return Accepted(PrivacyReceipt.from_entry(claimed))
        self.bind(node, checked.entry.owner_id)  # the owner's key vouches for this node
        accepted = Accepted(PrivacyReceipt.from_entry(checked.entry), checked)
        try:
            owner_key = OwnerRound.charge_key(self.experiment_id)
            refusal_here = not checked.entry.is_charge and checked.entry.run_id in (owner_key, self.experiment_id)
            if owner_round is not None and (checked.entry.run_id == owner_key or refusal_here):
                self._check_owner_charge(checked.entry, server_round, content, owner_round, stage)
            elif stage == OWNER_CHARGE_STAGE:
                raise ReceiptRejected(f"owner {checked.entry.owner_id}, entry {checked.entry.sequence} is not an "
                                      "owner-level charge")
            else:
                self._check_release(checked.entry, server_round, content,
                                    secure=owner_round is not None and owner_round.secure)
        except ReceiptRejected as err:
            self.ledger.check_stated_epsilon(checked)  # kept only if its stated epsilon holds (ReceiptRejected)
            raise ReleaseMismatch(str(err), accepted) from None
        self.ledger.check_stated_epsilon(checked)
        entry = checked.entry
        if entry.is_charge and entry.privacy_unit != "owner" and entry.mechanism == "poisson_subsampled_gaussian":
            accepted = dataclasses.replace(accepted, records=self.plan.batch_size * round(1 / entry.event.sample_rate))
        return accepted

    @staticmethod
    def unsigned_reason(node: int, record: Any) -> str:
        """An unsigned refusal's reason, with the owner it names (a claim no key vouches for)."""
        reason = str(record.get(protocol.UNSIGNED_REFUSAL, "no reason given"))[:2000]
        claimed = record.get(protocol.OWNER_ID, "")
        return f"{reason} (unsigned; node {node} names owner {str(claimed)[:200]!r})" if claimed else reason

    def _check_owner_charge(self, entry: Entry, server_round: int, content: object, terms: OwnerRound,
                            stage: str) -> None:
        where = f"owner {entry.owner_id}, entry {entry.sequence}"
        if entry.round != server_round:
            raise ReceiptRejected(f"{where} is for owner-level round {entry.round}, not {server_round}")
        if not entry.is_charge:
            if protocol.ARRAYS in content.array_records:  # type: ignore[attr-defined]
                raise ReceiptRejected(f"{where} is a refusal, yet an update came with it")
            return
        if entry.privacy_unit != "owner" or entry.event != terms.event() or entry.clipping_norm != terms.clipping_norm:
            raise ReceiptRejected(f"{where} charges {entry.event} ({entry.privacy_unit}, clip {entry.clipping_norm}), "
                                  f"not the round's owner-level {terms.event()} (clip {terms.clipping_norm})")
        if stage == OWNER_CHARGE_STAGE and protocol.ARRAYS in content.array_records:  # type: ignore[attr-defined]
            raise ReceiptRejected(f"{where}: an update came with an owner-level charge, before the draw")

    def commit(self, server_round: int, accepted: list[tuple[Accepted, str]]) -> None:
        """Keep a round's verified receipts and anchor each: federation ledger, then registry."""
        signed = [(a.checked, outcome) for a, outcome in accepted if a.checked is not None and not a.checked.duplicate]
        if not signed or self.ledger is None or self.registry is None or self.coordinator_key is None:
            return
        records = self.ledger.record_round(signed, self.coordinator_key, self.experiment_id, server_round)
        self.registry.record(records)

    def _owner_key(self, owner_id: str) -> Ed25519PublicKey:
        """The owner's registered public key (registering it on first sight); raises ReceiptRejected if none."""
        if self.ledger is not None:
            self._register_key(owner_id)
            return self.ledger.public_key(owner_id)
        return self._folder_key(owner_id)

    def _folder_key(self, owner_id: str) -> Ed25519PublicKey:
        public_path = owner_key_paths(self.owner_keys_dir, owner_id)[1]
        try:
            return load_public_key(public_path)
        except (KeyFileError, OSError):
            raise ReceiptRejected(
                f"owner {owner_id} has no registered public key ({public_path} is missing or unreadable)"
            ) from None

    def _register_key(self, owner_id: str) -> None:
        """Register the owner's public key from the coordinator's key folder on first sight."""
        if self.ledger.public_key(owner_id) is not None:
            return
        public_path = owner_key_paths(self.owner_keys_dir, owner_id)[1]
        key = self._folder_key(owner_id)
        try:
            if self.registry is not None:
                self.registry.register_owner(owner_id, key)  # a key other than the first one ever seen is refused
        except LedgerError as err:
            raise ReceiptRejected(str(err)) from None
        self.ledger.register_owner(owner_id, key)
        log.info("registered owner %s's public key from %s", owner_id, public_path)

    def _check_release(self, entry: Entry, server_round: int, content: object, *, secure: bool = False) -> None:
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
        if not plan.owner_planned and event.noise_multiplier != plan.noise_multiplier:
            raise ReceiptRejected(f"{where} ran noise {event.noise_multiplier}; the server asked for noise "
                                  f"{plan.noise_multiplier}")
        if entry.clipping_norm != plan.max_grad_norm:
            raise ReceiptRejected(f"{where} clipped at {entry.clipping_norm}; the server asked for {plan.max_grad_norm}")
        if not math.isclose(event.steps * event.sample_rate, plan.local_epochs, rel_tol=1e-9):
            raise ReceiptRejected(
                f"{where} took {event.steps} steps at rate {event.sample_rate}: not {plan.local_epochs} local epochs")
        problem = event_bound_problem(event)
        if problem:
            raise ReceiptRejected(f"{where}: {problem}")
        # The round's DP-SGD event has one home (privacy.planning.dp_sgd_round): the coordinator does not know the
        # owner's n, so it asks that the event be that rule's for some number of batches (steps are bounded above).
        batches = max(1, round(1 / event.sample_rate))
        shape = dp_sgd_round(event.noise_multiplier, batches * plan.batch_size, plan.batch_size, plan.local_epochs)
        if event.steps != shape.steps or not math.isclose(event.sample_rate, shape.sample_rate, rel_tol=1e-9):
            raise ReceiptRejected(f"{where} sampled at rate {event.sample_rate}, not 1 / batches of {plan.batch_size}")
        if plan.owner_planned:  # each owner planned its own noise for the target; it must not be below it
            whole_run = dataclasses.replace(event, steps=event.steps * max(plan.num_rounds, 1))
            problem = event_bound_problem(whole_run)
            if problem:
                raise ReceiptRejected(f"{where}: over the run's {plan.num_rounds} rounds {problem}")
            try:
                allowed = get_accountant(entry.accountant).epsilon([whole_run], entry.delta)
            except (ValueError, TypeError) as err:
                raise ReceiptRejected(f"{where}: its accountant {entry.accountant!r} cannot compose it: {err}") from None
            if not event.noise_multiplier > 0 or allowed > plan.target_epsilon * (1 + 1e-3):
                raise ReceiptRejected(f"{where} ran noise {event.noise_multiplier}: its {plan.num_rounds} rounds "
                                      f"would cost epsilon {allowed:.4g}, more than the target {plan.target_epsilon:g}")
        if secure:  # summed by SecAgg+: the coordinator never sees the update it could hash
            return
        arrays = content.array_records.get(protocol.ARRAYS)  # type: ignore[attr-defined]
        if arrays is None or protocol.update_digest(arrays.to_torch_state_dict()) != entry.update_hash:
            raise ReceiptRejected(f"{where}: the update that arrived is not the one the owner charged for")
