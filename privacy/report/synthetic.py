"""A synthetic federation's ledgers, built with the real ledger APIs (tests, benchmarks, demos).

``build_synthetic_federation(folder, owners=100, rounds=50)`` enrols ``owners`` data
owners (Ed25519 keys in ``folder/keys``), and for every round charges each owner's own
ledger (``folder/ledgers/<owner>.db``) with a DP-SGD event and hands the signed entry
to the federation ledger (``folder/ledgers/federation.db``), as a client and the
server do.  Owners differ in size, hence in sampling rate, so the small ones run out
of budget: their client refuses the next release (a signed refusal, sent as a receipt
too) and is not asked again.  Nothing here is random: the same arguments give the same
events (keys and timestamps differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privfl.privacy.events import PoissonSubsampledGaussian, SampledWithoutReplacementGaussian
from privfl.privacy.keys import generate_owner_keys, load_private_key
from privfl.privacy.ledger import BudgetExceeded, FederationLedger, OwnerLedger, update_hash
from privfl.privacy.planning import dp_sgd_round
from privfl.server.run_dir import FEDERATION_LEDGER, LEDGERS


@dataclass(frozen=True)
class SyntheticFederation:
    folder: Path
    ledgers: Path  # folder of <owner>.db and federation.db
    keys: Path  # folder of <owner>.key / <owner>.pub
    owners: tuple[str, ...]
    run_id: str
    charges: int
    refusals: int

    @property
    def federation_ledger(self) -> Path:
        return self.ledgers / FEDERATION_LEDGER


def owner_size(index: int) -> int:
    """Records held by the owner with this index: 120 to about 2,000, spread out."""
    return 120 + (index * 373) % 1900


def build_synthetic_federation(
    folder: str | Path,
    owners: int = 100,
    rounds: int = 50,
    *,
    accountant: str = "rdp",
    noise_multiplier: float = 2.0,
    batch_size: int = 64,
    epsilon_budget: float = 8.0,
    delta: float = 1e-5,
    run_id: str = "synthetic-run-1",
    purpose: str = "synthetic federation (privfl report benchmark)",
    owner_ledgers: bool = True,
    owner_level: str | None = None,
    owner_noise_multiplier: float = 8.0,
    owner_epsilon_budget: float = 6.0,
) -> SyntheticFederation:
    """Write the ledgers and keys of a synthetic federation into ``folder``.

    ``owner_ledgers=False`` keeps each owner's ledger in ``folder/owners-scratch`` (still
    written: the entries are signed there) and leaves only the federation ledger under
    ``ledgers/``.
    """
    if owner_level not in (None, "poisson", "fixed"):
        raise ValueError(f"owner_level must be None, 'poisson' or 'fixed', got {owner_level!r}")
    owner_event = None
    if owner_level == "poisson":
        owner_event = PoissonSubsampledGaussian(owner_noise_multiplier, min(1.0, 10 / owners), 1)
    elif owner_level == "fixed":
        owner_event = SampledWithoutReplacementGaussian(owner_noise_multiplier, min(10, owners), owners, 1)
    folder = Path(folder)
    ledgers, keys = folder / LEDGERS, folder / "keys"
    scratch = ledgers if owner_ledgers else folder / "owners-scratch"
    ledgers.mkdir(parents=True, exist_ok=True)
    names = tuple(f"owner-{i:03d}" for i in range(owners))
    charges = refusals = 0
    with FederationLedger.open(ledgers / FEDERATION_LEDGER) as federation:
        for index, owner in enumerate(names):
            files = generate_owner_keys(keys, owner)
            federation.register_owner(owner, load_private_key(files.private_key).public_key())
            event = dp_sgd_round(noise_multiplier, owner_size(index), batch_size, 1)  # one local epoch a round
            with OwnerLedger.open(scratch / f"{owner}.db", owner, load_private_key(files.private_key)) as ledger:
                for rnd in range(1, rounds + 1):
                    if owner_event is not None:  # the coordinator's owner-level charge, before its draw
                        try:
                            entry = ledger.charge(f"{run_id}/owner", rnd, owner_event, clipping_norm=1.0, delta=delta,
                                                  epsilon_budget=owner_epsilon_budget, accountant="rdp",
                                                  purpose=purpose, privacy_unit="owner")
                            charges += 1
                        except BudgetExceeded as err:
                            entry = ledger.refuse(f"{run_id}/owner", rnd, str(err).split(";")[0], delta=delta,
                                                  epsilon_budget=owner_epsilon_budget, accountant="rdp",
                                                  event=owner_event, purpose=purpose, clipping_norm=1.0,
                                                  privacy_unit="owner")
                            refusals += 1
                        federation.append_received(entry.signed_bytes(), check_epsilon=False)
                    try:
                        entry = ledger.charge(run_id, rnd, event, clipping_norm=1.0, delta=delta,
                                              epsilon_budget=epsilon_budget, accountant=accountant, purpose=purpose,
                                              update_hash=update_hash(f"{owner}/{rnd}".encode()))
                        charges += 1
                    except BudgetExceeded as err:
                        entry = ledger.refuse(run_id, rnd, str(err).split(";")[0], delta=delta,
                                              epsilon_budget=epsilon_budget, accountant=accountant, event=event,
                                              purpose=purpose, clipping_norm=1.0)
                        refusals += 1
                    federation.append_received(entry.signed_bytes(), check_epsilon=False)
                    if not entry.is_charge:
                        break  # the server stops asking an owner that refused for lack of budget
    return SyntheticFederation(folder, ledgers, keys, names, run_id, charges, refusals)
