"""Accounting: our composition equals Opacus's own accountants, and only ever grows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from privfl.privacy.accountants import ACCOUNTANT_NAMES, get_accountant
from privfl.privacy.accountants.opacus_backed import RDP_ORDERS
from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.events import merge_repeats

noise = st.floats(0.5, 5.0)
rate = st.floats(0.001, 1.0)
steps = st.integers(1, 200)


def _opacus_epsilon(accountant, rounds, delta):
    for event in rounds:
        for _ in range(event.steps):
            accountant.step(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate)
    return accountant.get_epsilon(delta=delta)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(noise, rate, st.integers(1, 30)), min_size=1, max_size=4))
def test_rdp_matches_opacus_stepping_through_every_step(rounds):
    events = [Event(s, q, k) for s, q, k in rounds]
    ours = get_accountant("rdp").epsilon(events, 1e-5)
    assert ours == pytest.approx(_opacus_epsilon(RDPAccountant(), events, 1e-5), rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(noise, rate, st.integers(1, 30)), min_size=1, max_size=4))
def test_rdp_of_poisson_events_is_bit_for_bit_opacus_analysis(rounds):
    # Existing ledgers' stored epsilons must recompute to the same bits after the
    # accountants learned new mechanisms.
    events = [Event(s, q, k) for s, q, k in rounds]
    merged = merge_repeats(events)
    curve = sum([rdp_analysis.compute_rdp(q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=1,
                                          orders=RDP_ORDERS) * e.steps for e in merged])
    expected, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=curve, delta=1e-5)
    assert get_accountant("rdp").epsilon(events, 1e-5) == float(expected)
    composition = get_accountant("rdp").composition()
    for event in events:
        composition.add(event)
    assert composition.epsilon(1e-5) == pytest.approx(float(expected), rel=1e-12)


def test_prv_matches_opacus():
    events = [Event(1.875, 1 / 3, 6)] * 10
    ours = get_accountant("prv").epsilon(events, 1e-5)
    assert ours == pytest.approx(_opacus_epsilon(PRVAccountant(), events, 1e-5), rel=1e-6)


def test_known_value_from_notes():
    # ../shared/NOTES.md: 60 steps, q = 1/3, sigma = 1.875, delta = 1e-5 -> Opacus RDP 7.99, PRV 7.33.
    events = [Event(1.875, 1 / 3, 60)]
    assert get_accountant("rdp").epsilon(events, 1e-5) == pytest.approx(7.99, abs=0.01)
    assert get_accountant("prv").epsilon(events, 1e-5) == pytest.approx(7.33, abs=0.01)


@settings(max_examples=20, deadline=None)
@given(noise, rate, steps, st.integers(2, 8))
def test_epsilon_grows_monotonically_over_rounds(sigma, q, k, rounds):
    accountant = get_accountant("rdp")
    history = [accountant.epsilon([Event(sigma, q, k)] * r, 1e-5) for r in range(rounds + 1)]
    assert history[0] == 0
    assert all(b > a for a, b in zip(history, history[1:]))


@given(st.lists(st.tuples(st.sampled_from([1.0, 2.0]), st.sampled_from([0.1, 0.5]), steps), max_size=20))
def test_merging_repeats_preserves_total_steps_per_setting(raw):
    events = [Event(s, q, k) for s, q, k in raw]
    merged = merge_repeats(events)
    assert len({(e.noise_multiplier, e.sample_rate) for e in merged}) == len(merged)
    for e in merged:
        assert e.steps == sum(x.steps for x in events if (x.noise_multiplier, x.sample_rate) ==
                              (e.noise_multiplier, e.sample_rate))


def test_merging_is_exact_for_rdp():
    a = get_accountant("rdp").epsilon([Event(1.0, 0.1, 10)] * 30, 1e-5)
    b = get_accountant("rdp").epsilon([Event(1.0, 0.1, 300)], 1e-5)
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("name", ACCOUNTANT_NAMES)
def test_planned_noise_meets_the_target(name):
    accountant = get_accountant(name)
    sigma = accountant.noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.1, steps=100)
    assert accountant.epsilon([Event(sigma, 0.1, 100)], 1e-5) <= 3.0 + 1e-6


def test_no_noise_means_no_guarantee():
    assert get_accountant("rdp").epsilon([Event(0.0, 0.5, 1)], 1e-5) == float("inf")


def test_no_events_no_spend():
    assert get_accountant("rdp").epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize("kwargs", [dict(noise_multiplier=-1.0, sample_rate=0.5, steps=1),
                                    dict(noise_multiplier=1.0, sample_rate=0.0, steps=1),
                                    dict(noise_multiplier=1.0, sample_rate=1.5, steps=1),
                                    dict(noise_multiplier=1.0, sample_rate=0.5, steps=-1)])
def test_invalid_events_are_refused(kwargs):
    with pytest.raises(ValueError):
        Event(**kwargs)


def test_unknown_accountant():
    with pytest.raises(ValueError, match="unknown accountant 'gdp'"):
        get_accountant("gdp")
