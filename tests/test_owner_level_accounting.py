"""Owner-level DP (DP-FedAvg): Poisson and fixed-size owner sampling, Gaussian without sampling.

References are dp-accounting's own accountants composing the same dp_event objects:

- Poisson owner sampling, R rounds: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``
  under ADD_OR_REMOVE_ONE (RdpAccountant at privfl's orders; PLDAccountant);
- fixed-size, m of N owners: ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``
  under REPLACE_ONE.  The halving: one owner replaced moves a sum of updates clipped
  to C by up to 2C, and dp-accounting 0.6.0's RDP code takes the inner noise
  multiplier as noise over the replace-one sensitivity (google/differential-privacy
  issue #378); test_fixed_size_needs_the_replace_one_sensitivity shows why.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant as DpRdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from privfl.privacy.accountants import (
    NotComposable, accounted_noise_multiplier, adaptive_clipping_noise, get_accountant,
)
from privfl.privacy.accountants.opacus_backed import RDP_ORDERS
from privfl.privacy.events import (
    ADD_OR_REMOVE_ONE, REPLACE_ONE, Gaussian, PoissonSubsampledGaussian, SampledWithoutReplacementGaussian,
    dp_accounting_relation, merge_repeats, neighbouring_relation, to_dp_accounting,
)
from privfl.privacy.ledger.entry import OWNER, decode_entry, encode_entry
from privfl.privacy.ledger.epsilon import PrefixEpsilons
from privfl.privacy.ledger.errors import LedgerError, UnsupportedEvent
from privfl.privacy.ledger.owner import compute_epsilon
from privfl.protos import ledger_pb2

DELTA = 1e-5
Poisson, FixedSize = PoissonSubsampledGaussian, SampledWithoutReplacementGaussian
Relation = dp_accounting.NeighboringRelation
logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's fractional-order series warnings

# (q, z, rounds): an owner sampled with probability q per round, noise multiplier z
POISSON_POINTS = [(0.1, 1.0, 50), (0.05, 1.5, 200), (0.3, 2.0, 20), (0.01, 0.8, 1000)]
# (m, N, z, rounds)
FIXED_SIZE_POINTS = [(10, 100, 2.0, 50), (5, 100, 1.5, 200), (100, 1000, 3.0, 100)]


def _dp_rdp(events, relation=Relation.ADD_OR_REMOVE_ONE) -> float:
    accountant = DpRdpAccountant(orders=list(RDP_ORDERS), neighboring_relation=relation)
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(DELTA)


def _fixed_size_reference(event: FixedSize) -> dp_accounting.DpEvent:
    inner = dp_accounting.GaussianDpEvent(event.noise_multiplier / 2)
    step = dp_accounting.SampledWithoutReplacementDpEvent(event.population_size, event.sample_size, inner)
    return dp_accounting.SelfComposedDpEvent(step, event.steps)


# -- agreement with dp-accounting ------------------------------------------------------


@pytest.mark.parametrize(("q", "z", "rounds"), POISSON_POINTS)
def test_poisson_owner_sampling_matches_dp_accounting(q, z, rounds):
    event = Poisson(z, q, rounds)  # owner-level: the same event, steps = rounds
    reference = to_dp_accounting(event)
    assert get_accountant("rdp").epsilon([event], DELTA) == pytest.approx(_dp_rdp([reference]), rel=0.01)
    pld_reference = PLDAccountant().compose(reference).get_epsilon(DELTA)
    assert get_accountant("pld").epsilon([event], DELTA) == pytest.approx(pld_reference, rel=0.01)


@pytest.mark.parametrize(("m", "n", "z", "rounds"), FIXED_SIZE_POINTS)
def test_fixed_size_owner_sampling_matches_dp_accounting_rdp(m, n, z, rounds):
    event = FixedSize(z, m, n, rounds)
    reference = _dp_rdp([_fixed_size_reference(event)], Relation.REPLACE_ONE)
    assert get_accountant("rdp").epsilon([event], DELTA) == pytest.approx(reference, rel=0.01)


def test_fixed_size_needs_the_replace_one_sensitivity():
    # All N owners every round (m = N): no sampling, so dp-accounting's PLD under
    # REPLACE_ONE is (to its 1e-4 grid) the exact epsilon of the Gaussian mechanism
    # with sensitivity 2C.  An RDP bound is never below the exact value: ours is
    # above it; dp-accounting's RDP with the unhalved noise is far below it (issue #378).
    for z, rounds in [(2.0, 1), (4.0, 10)]:
        event = FixedSize(z, 50, 50, rounds)
        exact = PLDAccountant(neighboring_relation=Relation.REPLACE_ONE).compose(
            dp_accounting.GaussianDpEvent(z), rounds).get_epsilon(DELTA)
        ours = get_accountant("rdp").epsilon([event], DELTA)
        assert exact <= ours < 1.1 * exact
        assert _dp_rdp([to_dp_accounting(event)], Relation.REPLACE_ONE) < 0.6 * exact


@pytest.mark.parametrize(("z", "releases"), [(2.0, 1), (5.0, 10), (10.0, 50)])
def test_gaussian_without_sampling_matches_dp_accounting(z, releases):
    events = [Gaussian(z)] * releases
    reference = dp_accounting.GaussianDpEvent(z)
    rdp_reference = DpRdpAccountant(orders=list(RDP_ORDERS)).compose(reference, releases).get_epsilon(DELTA)
    pld_reference = PLDAccountant().compose(reference, releases).get_epsilon(DELTA)
    assert get_accountant("rdp").epsilon(events, DELTA) == pytest.approx(rdp_reference, rel=0.01)
    assert get_accountant("pld").epsilon(events, DELTA) == pytest.approx(pld_reference, rel=0.01)
    # the same mechanism as Poisson sampling at rate 1
    assert get_accountant("rdp").epsilon(events, DELTA) == get_accountant("rdp").epsilon(
        [Poisson(z, 1.0, releases)], DELTA)


def test_poisson_and_fixed_size_differ_for_the_same_expected_cohort():
    # 10 of 100 owners a round, 50 rounds: Poisson at q = m / N vs exactly m.
    rdp = get_accountant("rdp")
    poisson = rdp.epsilon([Poisson(2.0, 0.1, 50)], DELTA)
    fixed = rdp.epsilon([FixedSize(2.0, 10, 100, 50)], DELTA)
    assert fixed > 2 * poisson  # replace-one (sensitivity 2C) vs add-or-remove-one (C)
    assert poisson == pytest.approx(1.84, abs=0.01) and fixed == pytest.approx(9.43, abs=0.01)


# -- composition: incremental, merging, refusals -----------------------------------------


def _compose(accountant, events):
    composition = accountant.composition()
    for event in events:
        composition.add(event)
    return composition


@pytest.mark.parametrize("events", [
    [FixedSize(2.0, 10, 100, 5), FixedSize(2.0, 10, 100, 7), FixedSize(3.0, 20, 100, 4), FixedSize(0.5, 1, 10, 0)],
    [Gaussian(4.0), Poisson(1.0, 0.1, 30), Gaussian(4.0), Poisson(4.0, 1.0, 2)],
])
def test_incremental_composition_equals_batch(events):
    for name in ("rdp", "pld"):
        accountant = get_accountant(name)
        if not accountant.supports(events):
            continue
        for i in range(1, len(events) + 1):
            assert _compose(accountant, events[:i]).epsilon(DELTA) == pytest.approx(
                accountant.epsilon(events[:i], DELTA), rel=1e-9)


fixed_settings = st.tuples(st.sampled_from([1.0, 2.5]), st.sampled_from([(5, 50), (10, 50), (50, 50)]))


@given(st.lists(st.tuples(fixed_settings, st.integers(0, 40)), max_size=20))
def test_merging_fixed_size_preserves_steps_per_setting(raw):
    events = [FixedSize(z, m, n, k) for (z, (m, n)), k in raw]
    merged = merge_repeats(events)

    def key(e):
        return e.noise_multiplier, e.sample_size, e.population_size

    assert len({key(e) for e in merged}) == len(merged) and all(e.steps > 0 for e in merged)
    for e in merged:
        assert e.steps == sum(x.steps for x in events if key(x) == key(e))
    assert sum(e.steps for e in merged) == sum(x.steps for x in events)


def test_merging_is_exact_for_the_new_events():
    rdp = get_accountant("rdp")
    assert rdp.epsilon([FixedSize(2.0, 10, 100, 10)] * 30, DELTA) == pytest.approx(
        rdp.epsilon([FixedSize(2.0, 10, 100, 300)], DELTA), rel=1e-12)
    assert merge_repeats([Gaussian(3.0)] * 4 + [Poisson(3.0, 1.0, 2)]) == [Poisson(3.0, 1.0, 6)]
    for name in ("rdp", "pld"):
        accountant = get_accountant(name)
        assert accountant.epsilon([Gaussian(3.0)] * 6, DELTA) == pytest.approx(
            accountant.epsilon([Poisson(3.0, 1.0, 6)], DELTA), rel=1e-12)
    assert merge_repeats([FixedSize(1.0, 1, 2, 0), Gaussian(1.0)]) == [Poisson(1.0, 1.0, 1)]


def test_mixing_neighbouring_relations_is_refused():
    mixed = [Poisson(2.0, 0.1, 10), FixedSize(2.0, 10, 100, 10)]
    assert Poisson.neighbouring == Gaussian.neighbouring == ADD_OR_REMOVE_ONE
    assert FixedSize.neighbouring == REPLACE_ONE
    assert dp_accounting_relation(FixedSize(1.0, 1, 2, 1)) is Relation.REPLACE_ONE
    with pytest.raises(NotComposable, match="mix neighbouring relations"):
        neighbouring_relation(mixed)
    for name in ("rdp", "pld", "prv"):
        accountant = get_accountant(name)
        assert not accountant.supports(mixed)
        with pytest.raises(NotComposable):
            accountant.epsilon(mixed, DELTA)
    rdp = get_accountant("rdp")
    assert rdp.supports(mixed[1:]) and rdp.supports([Gaussian(1.0), mixed[0]])
    composition = _compose(rdp, [Gaussian(3.0), mixed[0]])
    before = composition.epsilon(DELTA)
    with pytest.raises(TypeError, match="mix neighbouring relations"):
        composition.add(mixed[1])
    assert composition.epsilon(DELTA) == before  # the refused event left no trace
    # the ledger maps the refusal to UnsupportedEvent
    with pytest.raises(UnsupportedEvent):
        compute_epsilon("rdp", mixed, DELTA)
    prefix = PrefixEpsilons()
    prefix.add_charge(mixed[0])
    prefix.epsilon("rdp", DELTA)
    with pytest.raises(UnsupportedEvent):
        prefix.add_charge(mixed[1])


class NotAnEvent:
    noise_multiplier, sample_rate, steps, neighbouring = 1.0, 0.1, 1, ADD_OR_REMOVE_ONE


@pytest.mark.parametrize("name", ["rdp", "pld", "prv"])
def test_unknown_events_are_refused(name):
    accountant = get_accountant(name)
    assert not accountant.supports(NotAnEvent()) and not accountant.supports([Poisson(1.0, 0.1, 1), NotAnEvent()])
    with pytest.raises(NotComposable, match="no accountant here knows"):
        accountant.epsilon([NotAnEvent()], DELTA)
    with pytest.raises(TypeError):
        accountant.composition().add(NotAnEvent())
    with pytest.raises(TypeError):
        merge_repeats([NotAnEvent()])
    assert accountant.supports(Poisson(1.0, 0.1, 1)) and accountant.supports([])


def test_each_accountant_refuses_what_it_cannot_compose():
    rdp, pld, prv = (get_accountant(n) for n in ("rdp", "pld", "prv"))
    fixed = FixedSize(2.0, 10, 100, 5)
    assert rdp.supports(fixed) and rdp.supports(Gaussian(1.0))
    assert pld.supports(Gaussian(1.0)) and not pld.supports(fixed)
    assert not prv.supports(Gaussian(1.0)) and not prv.supports(fixed)
    with pytest.raises(NotComposable, match="use rdp for fixed-size owner sampling"):
        pld.composition().add(fixed)
    with pytest.raises(NotComposable, match="'rdp' for fixed-size"):
        prv.epsilon([fixed], DELTA)
    with pytest.raises(NotComposable, match="Gaussian"):
        prv.epsilon([Gaussian(1.0)], DELTA)
    with pytest.raises(UnsupportedEvent):
        compute_epsilon("pld", [fixed], DELTA)


def test_no_noise_or_no_rounds():
    rdp = get_accountant("rdp")
    assert rdp.epsilon([FixedSize(0.0, 1, 10, 1)], DELTA) == math.inf
    assert rdp.epsilon([Gaussian(0.0)], DELTA) == math.inf
    assert get_accountant("pld").epsilon([Gaussian(0.0)], DELTA) == math.inf
    assert rdp.epsilon([FixedSize(1.0, 1, 10, 0)], DELTA) == 0.0
    assert _compose(rdp, [FixedSize(1.0, 1, 10, 0)]).epsilon(DELTA) == 0.0


# -- the event and its conversion ------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0, sample_size=1, population_size=2, steps=1),
    dict(noise_multiplier=math.inf, sample_size=1, population_size=2, steps=1),
    dict(noise_multiplier=1.0, sample_size=0, population_size=2, steps=1),
    dict(noise_multiplier=1.0, sample_size=3, population_size=2, steps=1),
    dict(noise_multiplier=1.0, sample_size=1, population_size=2, steps=-1),
    dict(noise_multiplier=1.0, sample_size=1.0, population_size=2, steps=1),
    dict(noise_multiplier=1.0, sample_size=1, population_size=2, steps=1.5),
])
def test_invalid_fixed_size_events_are_refused(kwargs):
    with pytest.raises(ValueError):
        FixedSize(**kwargs)


def test_conversion_to_dp_accounting():
    assert to_dp_accounting(Gaussian(2.0)) == dp_accounting.GaussianDpEvent(2.0)
    assert to_dp_accounting(Poisson(2.0, 0.1, 7)) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(2.0)), 7)
    assert to_dp_accounting(FixedSize(2.0, 10, 100, 7)) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(100, 10, dp_accounting.GaussianDpEvent(2.0)), 7)
    assert FixedSize(2.0, 10, 100, 7).sample_rate == 0.1 and Gaussian(1.0).steps == 1
    with pytest.raises(TypeError):
        to_dp_accounting(NotAnEvent())


# -- the ledger's wire format ----------------------------------------------------------------


def _entry_bytes(event, **overrides) -> bytes:
    fields = dict(sequence=1, previous_hash=bytes(32), run_id="run", round=3, owner_id="hospital-a", kind="charge",
                  event=event, clipping_norm=0.5, privacy_unit=OWNER, delta=DELTA, accountant="rdp",
                  cumulative_epsilon=9.43, epsilon_budget=10.0, purpose="", update_hash=bytes(32),
                  refusal_reason="", timestamp_unix_nanos=1)
    fields.update(overrides)
    return encode_entry(**fields)


def test_fixed_size_event_round_trips_through_the_ledger():
    event = FixedSize(2.0, 10, 100, 1)
    entry = decode_entry(_entry_bytes(event))
    assert entry.event == event and entry.mechanism == "sampled_without_replacement_gaussian"
    assert entry.privacy_unit == OWNER
    assert get_accountant("rdp").epsilon([entry.event] * 50, DELTA) == pytest.approx(9.43, abs=0.01)
    for other in (Gaussian(3.0), Poisson(1.0, 0.1, 5)):
        assert decode_entry(_entry_bytes(other)).event == other


def test_the_new_mechanism_has_its_own_field_numbers():
    numbers = {f.name: f.number for f in ledger_pb2.LedgerEntry.DESCRIPTOR.fields}
    assert numbers["poisson_subsampled_gaussian"] == 7 and numbers["gaussian"] == 8
    assert numbers["sampled_without_replacement_gaussian"] == 19
    oneof = ledger_pb2.LedgerEntry.DESCRIPTOR.oneofs_by_name["event"]
    assert [f.name for f in oneof.fields] == ["poisson_subsampled_gaussian", "gaussian",
                                              "sampled_without_replacement_gaussian", "non_private_release"]
    assert numbers["non_private_release"] == 20  # added later: the next free number, never a reused one
    assert {f.name: f.number for f in ledger_pb2.SampledWithoutReplacementGaussian.DESCRIPTOR.fields} == {
        "noise_multiplier": 1, "sample_size": 2, "population_size": 3, "steps": 4}


def test_an_invalid_fixed_size_event_on_the_wire_is_a_ledger_error():
    message = ledger_pb2.LedgerEntry.FromString(_entry_bytes(FixedSize(2.0, 10, 100, 1)))
    message.sampled_without_replacement_gaussian.sample_size = 101  # more than the population
    with pytest.raises(LedgerError, match="sample_size"):
        decode_entry(message.SerializeToString())


def test_old_entries_keep_their_bytes():
    # Adding a oneof member changes nothing in how existing mechanisms serialize.
    data = _entry_bytes(Poisson(1.875, 1 / 3, 6))
    message = ledger_pb2.LedgerEntry.FromString(data)
    assert message.SerializeToString() == data
    assert message.WhichOneof("event") == "poisson_subsampled_gaussian"
    assert "sampled_without_replacement_gaussian" not in {f.name for f, _ in message.ListFields()}


# -- planning --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "shape"), [
    ("rdp", lambda z: FixedSize(z, 10, 100, 50)),
    ("rdp", Gaussian(0.0)),  # an event with a placeholder noise multiplier
    ("pld", lambda z: [Gaussian(z)] * 10),
    ("rdp", Poisson(0.0, 0.1, 50)),
])
def test_planning_meets_the_target(name, shape):
    accountant = get_accountant(name)
    z = accountant.plan_noise_multiplier(shape, target_epsilon=3.0, delta=DELTA)

    def epsilon_at(sigma):
        planned = shape(sigma) if callable(shape) else dataclasses.replace(shape, noise_multiplier=sigma)
        return accountant.epsilon(planned if isinstance(planned, list) else [planned], DELTA)

    assert epsilon_at(z) <= 3.0
    assert epsilon_at(z * 0.99) > 3.0  # within 1% of the least noise


def test_planning_agrees_with_the_poisson_planner_and_counts_what_was_spent():
    pld = get_accountant("pld")
    assert pld.plan_noise_multiplier(Poisson(0.0, 0.05, 100), target_epsilon=2.0, delta=DELTA) == \
        pld.noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=100)
    rdp = get_accountant("rdp")
    alone = rdp.plan_noise_multiplier(lambda z: Gaussian(z), target_epsilon=3.0, delta=DELTA)
    after = rdp.plan_noise_multiplier(lambda z: Gaussian(z), target_epsilon=3.0, delta=DELTA,
                                      spent=[Gaussian(3.0)])
    assert after > alone
    with pytest.raises(NotComposable, match="use rdp"):
        pld.plan_noise_multiplier(lambda z: FixedSize(z, 10, 100, 5), target_epsilon=3.0, delta=DELTA)
    with pytest.raises(NotComposable, match="mix"):
        rdp.plan_noise_multiplier(lambda z: FixedSize(z, 10, 100, 5), target_epsilon=3.0, delta=DELTA,
                                  spent=[Gaussian(3.0)])
    with pytest.raises(ValueError):
        rdp.plan_noise_multiplier(lambda z: Gaussian(z), target_epsilon=0.0, delta=DELTA)


# -- adaptive clipping -------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.floats(0.05, 50.0), st.floats(0.01, 1e4))
def test_adaptive_clipping_noise_round_trips(z, count_stddev):
    if 2 * count_stddev <= z * (1 + 1e-9):
        with pytest.raises(ValueError, match="count_stddev"):
            adaptive_clipping_noise(z, count_stddev)
        return
    z_delta = adaptive_clipping_noise(z, count_stddev)
    assert z_delta >= z  # the count costs some of the budget: more noise on the updates
    assert accounted_noise_multiplier(z_delta, count_stddev) == pytest.approx(z, rel=1e-9)
    assert adaptive_clipping_noise(accounted_noise_multiplier(z_delta, count_stddev), count_stddev) == \
        pytest.approx(z_delta, rel=1e-6)


def test_adaptive_clipping_edge_cases():
    # z = 1, sigma_b = 5: z_delta^-2 = 1 - 1/100 -> z_delta = 1.00504
    assert adaptive_clipping_noise(1.0, 5.0) == pytest.approx((1 - 0.01) ** -0.5, rel=1e-12)
    assert adaptive_clipping_noise(1.3, math.inf) == 1.3  # no count released: fixed clipping
    assert accounted_noise_multiplier(1.3, math.inf) == 1.3
    with pytest.raises(ValueError, match="too small"):
        adaptive_clipping_noise(1.0, 0.5)  # 2 sigma_b == z: nothing left for the updates
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            adaptive_clipping_noise(bad, 5.0)
        with pytest.raises(ValueError):
            accounted_noise_multiplier(bad, 5.0)
    with pytest.raises(ValueError):
        accounted_noise_multiplier(1.0, 0.0)


def test_the_ledger_records_the_accounted_noise_multiplier():
    # Plan z for the budget; the server adds z_delta to the updates and sigma_b to the
    # count (sigma_b = expected cohort / 20); the ledger records z, and the epsilon
    # recomputed from the ledger is the planned one.
    rdp = get_accountant("rdp")
    q, rounds = 0.1, 50
    z = rdp.plan_noise_multiplier(lambda s: Poisson(s, q, rounds), target_epsilon=4.0, delta=DELTA)
    count_stddev = 1000 * q / 20  # 1,000 owners: an expected cohort of 100
    z_delta = adaptive_clipping_noise(z, count_stddev)
    recorded = Poisson(accounted_noise_multiplier(z_delta, count_stddev), q, 1)
    assert recorded.noise_multiplier == pytest.approx(z, rel=1e-12) and z_delta > z
    events = [decode_entry(_entry_bytes(recorded, round=r)).event for r in range(rounds)]
    assert rdp.epsilon(events, DELTA) == pytest.approx(rdp.epsilon([Poisson(z, q, rounds)], DELTA), rel=1e-9)
    assert rdp.epsilon(events, DELTA) <= 4.0 + 1e-9
