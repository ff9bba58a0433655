"""The three accountants agree with their reference implementations (within 1%).

- PLD: ours (dp-accounting PLD at a coarser grid) vs dp-accounting's PLDAccountant
  at its default grid, composing the same DpEvents;
- RDP: ours (Opacus's analysis) vs dp-accounting's RdpAccountant at the same orders;
- PRV: ours vs Opacus's PRVAccountant stepped step by step, and vs PLD (both tight).
"""

from __future__ import annotations

import logging
import math
import time

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant as DpRdpAccountant
from opacus.accountants import PRVAccountant

from privfl.cli import main
from privfl.privacy.accountants import ACCOUNTANT_NAMES, get_accountant
from privfl.privacy.accountants.opacus_backed import RDP_ORDERS
from privfl.privacy.accountants.pld import COARSE_INTERVAL, FINE_BELOW_EPSILON
from privfl.privacy.events import Gaussian, SampledWithoutReplacementGaussian
from privfl.privacy.events import PoissonSubsampledGaussian as Event

DELTA = 1e-5

# (events, delta): realistic DP-SGD settings, from one to several distinct settings.
CASES = [
    ([Event(1.875, 1 / 3, 60)], 1e-5),  # ../shared/NOTES.md: PLD 7.32, PRV 7.33
    ([Event(2.3, 0.1, 200)], 1e-5),
    ([Event(1.0, 0.01, 2000)], 1e-6),
    ([Event(13.4, 1.0, 80)], 1e-5),  # full batch
    ([Event(1.2, 0.05, 100), Event(1.5, 0.02, 300), Event(0.9, 0.05, 50)], 1e-5),
    ([Event(5.0, 0.01, 100)], 1e-5),  # small epsilon: the fine grid
]


def _dp_event(event: Event) -> dp_accounting.DpEvent:
    step = dp_accounting.PoissonSampledDpEvent(event.sample_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, event.steps)


def _reference_pld(events, delta):
    accountant = PLDAccountant()  # dp-accounting's default grid, 1e-4
    for event in events:
        accountant.compose(_dp_event(event))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("events", "delta"), CASES)
def test_pld_matches_dp_accounting(events, delta):
    ours = get_accountant("pld").epsilon(events, delta)
    reference = _reference_pld(events, delta)
    assert ours == pytest.approx(reference, rel=0.01)
    assert ours >= reference * (1 - 1e-9)  # a coarser pessimistic grid only ever rounds up


@pytest.mark.parametrize(("events", "delta"), CASES[:5])
def test_rdp_matches_dp_accounting_at_the_same_orders(events, delta):
    reference = DpRdpAccountant(orders=list(RDP_ORDERS))
    logging.getLogger("absl").setLevel(logging.ERROR)  # its fractional-order series warnings
    for event in events:
        reference.compose(_dp_event(event))
    assert get_accountant("rdp").epsilon(events, delta) == pytest.approx(reference.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize(("events", "delta"), [CASES[0], CASES[4]])
def test_prv_matches_opacus_and_pld(events, delta):
    opacus = PRVAccountant()
    for event in events:
        for _ in range(event.steps):
            opacus.step(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate)
    ours = get_accountant("prv").epsilon(events, delta)
    assert ours == pytest.approx(opacus.get_epsilon(delta=delta), rel=0.01)
    assert ours == pytest.approx(get_accountant("pld").epsilon(events, delta), rel=0.01)


def test_known_values_from_notes():
    events = [Event(1.875, 1 / 3, 60)]
    assert get_accountant("pld").epsilon(events, DELTA) == pytest.approx(7.32, abs=0.01)
    assert get_accountant("rdp").epsilon(events, DELTA) > get_accountant("pld").epsilon(events, DELTA)


def test_pld_basics():
    pld = get_accountant("pld")
    assert pld.name == "pld" and "pld" in ACCOUNTANT_NAMES
    assert pld.epsilon([], DELTA) == 0.0
    assert pld.epsilon([Event(0.0, 0.1, 5)], DELTA) == math.inf
    assert pld.epsilon([Event(1.0, 0.1, 0)], DELTA) == 0.0
    one = pld.epsilon([Event(1.1, 0.05, 100)], DELTA)
    assert pld.epsilon([Event(1.1, 0.05, 50)] * 2, DELTA) == pytest.approx(one, rel=1e-9)  # merging is exact
    assert pld.epsilon([Event(1.1, 0.05, 100)] * 2, DELTA) > one
    assert pld.epsilon([Event(1.1, 0.05, 100)], 1e-3) < one
    # Gaussian without sampling: Poisson sampling at rate 1 (everyone included)
    assert pld.epsilon([Gaussian(2.0)] * 3, DELTA) == pytest.approx(pld.epsilon([Event(2.0, 1.0, 3)], DELTA), rel=1e-12)
    assert pld.supports([Gaussian(2.0), Event(1.0, 0.1, 5)])
    fixed_size = SampledWithoutReplacementGaussian(1.0, 10, 100, 5)
    assert not pld.supports(fixed_size)
    with pytest.raises(TypeError, match="use rdp for fixed-size owner sampling"):  # refuse, never guess
        pld.epsilon([fixed_size], DELTA)


def test_pld_composition_equals_epsilon_prefix_by_prefix():
    pld = get_accountant("pld")
    events = [Event(4.0, 0.01, 50), Event(4.0, 0.01, 50), Event(1.0, 0.05, 100), Event(2.0, 0.1, 30)]
    composition = pld.composition()
    crossed_fine_grid = False
    for i, event in enumerate(events, 1):
        composition.add(event)
        expected = pld.epsilon(events[:i], DELTA)
        crossed_fine_grid |= expected < FINE_BELOW_EPSILON
        assert composition.epsilon(DELTA) == pytest.approx(expected, rel=1e-6)
    assert crossed_fine_grid and expected > FINE_BELOW_EPSILON  # both grids were exercised


def test_pld_planning_meets_and_nearly_reaches_the_target():
    pld = get_accountant("pld")
    sigma = pld.noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.05, steps=500)
    assert pld.epsilon([Event(sigma, 0.05, 500)], DELTA) <= 2.0
    assert pld.epsilon([Event(sigma * 0.99, 0.05, 500)], DELTA) > 2.0  # within 1% of the least noise
    assert sigma < get_accountant("rdp").noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.05,
                                                          steps=500)


def test_pld_is_reasonably_fast():
    pld = get_accountant("pld")
    events = [Event(1.0 + 0.05 * (i % 10), 0.02, 25) for i in range(1000)]  # 1,000 rounds, 10 settings
    start = time.perf_counter()
    pld.epsilon(events, DELTA)
    assert time.perf_counter() - start < 5.0
    assert COARSE_INTERVAL == 1e-3


def test_cli_offers_pld(capsys):
    assert main(["accountant", "epsilon", "--noise-multiplier", "1.875", "--sample-rate", str(1 / 3),
                 "--steps", "60", "--delta", "1e-5", "--accountant", "pld"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(7.32, abs=0.01)
    assert main(["accountant", "plan", "--epsilon", "3", "--sample-rate", "0.1", "--steps", "100",
                 "--delta", "1e-5", "--accountant", "pld"]) == 0
    sigma = float(capsys.readouterr().out)
    assert get_accountant("pld").epsilon([Event(sigma, 0.1, 100)], 1e-5) <= 3.0 + 1e-6
