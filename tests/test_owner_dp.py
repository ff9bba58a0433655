"""Owner-level DP-FedAvg (privfl.server.owner_dp): clipping bounds an owner's influence, the
noise has the accounted scale, sampling and events match, adaptive clipping tracks the
target quantile, configurations that cannot run are refused."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from privfl.privacy.accountants import adaptive_clipping_noise
from privfl.privacy.events import (
    PoissonSubsampledGaussian,
    SampledWithoutReplacementGaussian,
)
from privfl.server.owner_dp import (
    OwnerDpConfigError,
    OwnerLevelDP,
    OwnerSampling,
    check_owner_dp,
    clip_to_norm,
    sum_clipped_updates,
)


class ZeroNoise:
    """An rng whose Gaussian draws are all zero: checks the noiseless part of a release."""

    def normal(self, loc: float = 0.0, scale: float = 1.0, size=None):
        return np.zeros(size) if size is not None else 0.0


def _model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": (rng.normal(size=(5, 4)) * scale).astype(np.float32),
            "b": (rng.normal(size=4) * scale).astype(np.float32)}


def _norm(arrays) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in arrays.values()))


def _diff(a, b) -> dict[str, np.ndarray]:
    return {k: a[k].astype(np.float64) - b[k].astype(np.float64) for k in a}


# -- clipping bounds one owner's influence -----------------------------------------------


@pytest.mark.parametrize("sampling", [OwnerSampling.fixed(10), OwnerSampling.poisson(0.1)])
def test_one_huge_malicious_update_moves_the_model_by_at_most_c_over_the_cohort(sampling):
    rng = np.random.default_rng(1)
    clip, population = 0.5, 100
    dp = OwnerLevelDP(noise_multiplier=1.0, clipping_norm=clip, sampling=sampling)
    global_model = _model(rng)
    honest = [{k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in global_model.items()}
              for _ in range(9)]
    direction = _model(rng)
    scale = 1e6 / _norm(direction)
    malicious = {k: global_model[k] + (direction[k] * scale).astype(np.float32) for k in global_model}
    assert _norm(_diff(malicious, global_model)) == pytest.approx(1e6, rel=1e-3)

    without_sum, without_count = sum_clipped_updates(honest, clip, reference=global_model)
    with_sum, with_count = sum_clipped_updates(honest + [malicious], clip, reference=global_model)
    assert without_count == 9 and with_count == 9  # the malicious update was clipped
    without = dp.aggregate(global_model, without_sum, without_count, population, rng=ZeroNoise())
    with_ = dp.aggregate(global_model, with_sum, with_count, population, rng=ZeroNoise())
    moved = _norm(_diff(with_, without))
    cohort = sampling.expected_cohort(population)
    assert cohort == 10
    assert moved <= clip / cohort * (1 + 1e-5)
    assert moved == pytest.approx(clip / cohort, rel=1e-3)  # it does use its full (clipped) weight


def test_clip_scales_to_the_norm_and_says_whether_it_was_under_it():
    rng = np.random.default_rng(2)
    delta = _model(rng, scale=10.0)
    clipped, under = clip_to_norm(delta, 1.0)
    assert not under and _norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert clipped["w"].dtype == np.float32
    np.testing.assert_allclose(clipped["w"] / delta["w"], clipped["b"][0] / delta["b"][0], rtol=1e-5)  # one scale
    _, under = clip_to_norm({k: v / 1e3 for k, v in delta.items()}, 1.0)
    assert under
    zero, under = clip_to_norm({"w": np.zeros(3)}, 1.0)  # Flower's clip_inputs_inplace divides by the norm here
    assert under and not zero["w"].any()
    record, under = OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(1)).clip(ArrayRecord({"w": Array(np.full(4, 3.0))}))
    assert not under and _norm(record) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        clip_to_norm({"w": np.array([1.0, np.nan])}, 1.0)


def test_sum_clipped_updates_refuses_mismatched_updates_and_sums_nothing_to_nothing():
    assert sum_clipped_updates([], 1.0) == ({}, 0)
    with pytest.raises(ValueError, match="update 1"):
        sum_clipped_updates([{"w": np.zeros(3)}, {"w": np.zeros(4)}], 1.0)
    with pytest.raises(ValueError, match="update 0"):
        sum_clipped_updates([{"v": np.zeros(3)}], 1.0, reference={"w": np.zeros(3)})
    records = [ArrayRecord({"w": Array(np.full(4, 1.0))}), ArrayRecord({"w": Array(np.full(4, 0.1))})]
    total, count = sum_clipped_updates(records, 1.0)
    np.testing.assert_allclose(total["w"], np.full(4, 0.5 + 0.1))  # [1,1,1,1] has norm 2: scaled by 1/2
    assert count == 1


# -- noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive", [False, True])
def test_noise_on_the_sum_has_standard_deviation_z_delta_times_c(adaptive):
    z, clip, population, size = 1.3, 0.7, 50, 200_000
    dp = OwnerLevelDP(noise_multiplier=z, clipping_norm=clip, sampling=OwnerSampling.fixed(40), adaptive=adaptive)
    z_delta = dp.update_noise_multiplier(population)
    assert z_delta == (adaptive_clipping_noise(z, 40 / 20) if adaptive else z)
    assert dp.noise_stddev(population) == pytest.approx(z_delta * clip)
    global_model = {"w": np.zeros(size, np.float64)}
    new = dp.aggregate(global_model, None, 20, population, rng=np.random.default_rng(3))
    noise = new["w"] * 40  # back on the scale of the sum
    sigma = z_delta * clip
    n = noise.size
    chi2 = float(np.sum((noise / sigma) ** 2))
    assert abs(chi2 / n - 1) < 6 * math.sqrt(2 / n)  # fixed rng: deterministic, and 6 sigma wide
    assert abs(noise.mean()) < 6 * sigma / math.sqrt(n)
    assert noise.std() == pytest.approx(sigma, rel=0.01)


def test_noise_comes_from_the_os_entropy_not_numpys_global_state():
    dp = OwnerLevelDP(noise_multiplier=1.0, clipping_norm=1.0, sampling=OwnerSampling.fixed(2))
    releases = []
    for _ in range(2):
        np.random.seed(0)
        releases.append(dp.aggregate({"w": np.zeros(8)}, {"w": np.zeros(8)}, 2, 4)["w"])
    assert not np.array_equal(releases[0], releases[1])


def test_an_empty_cohort_still_releases_noise_in_the_models_dtype():
    dp = OwnerLevelDP(noise_multiplier=1.0, clipping_norm=1.0, sampling=OwnerSampling.poisson(0.5))
    new = dp.aggregate({"w": np.zeros(8, np.float32)}, {}, 0, 4, rng=np.random.default_rng(4))
    assert new["w"].dtype == np.float32 and np.abs(new["w"]).sum() > 0
    with pytest.raises(ValueError, match="not the global model's"):
        dp.aggregate({"w": np.zeros(8)}, {"w": np.zeros(7)}, 0, 4)


# -- sampling and events -----------------------------------------------------------------


@pytest.mark.parametrize("make_rng", [lambda: random.Random(5), lambda: np.random.default_rng(5)])
def test_poisson_draws_have_the_expected_cohort_and_fixed_draws_exactly_m(make_rng):
    population = list(range(101, 201))
    poisson, fixed = OwnerSampling.poisson(0.2), OwnerSampling.fixed(7)
    assert poisson.expected_cohort(100) == pytest.approx(20) and fixed.expected_cohort(100) == 7
    rng = make_rng()
    sizes = []
    for _ in range(2000):
        drawn = poisson.draw(population, rng)
        assert drawn == sorted(set(drawn)) and set(drawn) <= set(population)
        sizes.append(len(drawn))
    # mean of 2000 Binomial(100, 0.2): sd 4 / sqrt(2000) = 0.09; the rng is fixed
    assert np.mean(sizes) == pytest.approx(20, abs=0.5)
    assert np.var(sizes) == pytest.approx(100 * 0.2 * 0.8, rel=0.15)
    seen = set()
    for _ in range(200):
        drawn = fixed.draw(population, rng)
        assert len(drawn) == 7 == len(set(drawn)) and set(drawn) <= set(population)
        seen.update(drawn)
    assert len(seen) > 90  # every owner can be drawn
    assert len(OwnerSampling.fixed(3).draw([1, 2, 3, 4])) == 3  # default: SystemRandom
    with pytest.raises(OwnerDpConfigError, match="m = 7"):
        fixed.draw(population[:5], rng)


def test_events_are_privfls_types_with_the_accounted_noise_multiplier():
    event = OwnerSampling.poisson(0.1).event(1.1, 100, rounds=3)
    assert event == PoissonSubsampledGaussian(1.1, 0.1, 3)
    event = OwnerSampling.fixed(10).event(1.1, 100)
    assert event == SampledWithoutReplacementGaussian(1.1, 10, 100, 1)
    dp = OwnerLevelDP(noise_multiplier=1.1, clipping_norm=1.0, sampling=OwnerSampling.fixed(40), adaptive=True)
    assert dp.update_noise_multiplier(100) > 1.1
    assert dp.event(100) == SampledWithoutReplacementGaussian(1.1, 40, 100, 1)  # z, never z_delta


# -- adaptive clipping -------------------------------------------------------------------


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.5), (0.8, 30.0)])
def test_adaptive_clipping_moves_c_to_the_target_quantile_of_the_update_norms(quantile, start):
    rng = np.random.default_rng(6)
    population = 100
    owner_norms = np.linspace(1.0, 10.0, population)  # owner i's update always has this norm
    target = float(np.quantile(owner_norms, quantile))
    dp = OwnerLevelDP(noise_multiplier=0.5, clipping_norm=start, sampling=OwnerSampling.fixed(40), adaptive=True,
                      target_quantile=quantile)
    global_model = {"w": np.zeros(6)}
    trail = []
    for _ in range(300):
        sampled = dp.sampling.draw(range(population), rng)
        updates = []
        for owner in sampled:
            direction = rng.normal(size=6)
            updates.append({"w": direction / np.linalg.norm(direction) * owner_norms[owner]})
        clipped_sum, unclipped = dp.clipped_sum(updates)
        dp.aggregate(global_model, clipped_sum, unclipped, population, rng=rng)
        trail.append(dp.clipping_norm)
    settled = float(np.mean(trail[-100:]))
    assert settled == pytest.approx(target, rel=0.1)
    assert dp.update_noise_multiplier() == adaptive_clipping_noise(0.5, 40 / 20)


def test_adaptive_clipping_uses_a_given_count_stddev_and_poisson_needs_the_population():
    dp = OwnerLevelDP(1.0, 1.0, OwnerSampling.poisson(0.5), adaptive=True)
    with pytest.raises(OwnerDpConfigError, match="population_size"):
        dp.update_noise_multiplier()
    assert dp.count_stddev(400) == 10 and dp.update_noise_multiplier(400) == adaptive_clipping_noise(1.0, 10)
    dp = OwnerLevelDP(1.0, 1.0, OwnerSampling.poisson(0.5), adaptive=True, clipped_count_stddev=3.0)
    assert dp.update_noise_multiplier() == adaptive_clipping_noise(1.0, 3.0)
    with pytest.raises(ValueError, match="count"):
        dp.aggregate({"w": np.zeros(2)}, {}, None, 10)


# -- state -------------------------------------------------------------------------------


def test_state_restores_the_clipping_norm_and_refuses_a_bad_one():
    dp = OwnerLevelDP(1.0, 2.5, OwnerSampling.fixed(4), adaptive=True, clipped_count_stddev=1.0)
    dp.aggregate({"w": np.zeros(2)}, {"w": np.zeros(2)}, 4, 10, rng=np.random.default_rng(7))
    state = dp.state()
    import json

    again = OwnerLevelDP(1.0, 2.5, OwnerSampling.fixed(4), adaptive=True, clipped_count_stddev=1.0)
    again.restore(json.loads(json.dumps(state)))
    assert again.clipping_norm == dp.clipping_norm != 2.5
    for bad in ({}, {"clipping_norm": 0.0}, {"clipping_norm": float("nan")}):
        with pytest.raises(ValueError):
            again.restore(bad)


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(("build", "match"), [
    (lambda: OwnerLevelDP(0.0, 1.0, OwnerSampling.fixed(2)), "noise multiplier"),
    (lambda: OwnerLevelDP(-1.0, 1.0, OwnerSampling.fixed(2)), "noise multiplier"),
    (lambda: OwnerLevelDP(1.0, 0.0, OwnerSampling.fixed(2)), "clipping norm"),
    (lambda: OwnerLevelDP(1.0, -2.0, OwnerSampling.fixed(2)), "clipping norm"),
    (lambda: OwnerSampling.poisson(0.0), r"\(0, 1\]"),
    (lambda: OwnerSampling.poisson(1.5), r"\(0, 1\]"),
    (lambda: OwnerSampling.fixed(0), "m >= 1"),
    (lambda: OwnerSampling("uniform"), "unknown owner sampling"),
    (lambda: OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(2), adaptive=True, target_quantile=1.0), "quantile"),
    (lambda: OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(2), adaptive=True, target_quantile=0.0), "quantile"),
    (lambda: OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(2), adaptive=True, clipped_count_stddev=0.5), "2 sigma_b"),
    (lambda: OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(2), adaptive=True, clip_learning_rate=0), "learning rate"),
])
def test_configurations_that_cannot_run_are_refused_saying_why(build, match):
    with pytest.raises(OwnerDpConfigError, match=match):
        build()


def test_population_dependent_checks():
    with pytest.raises(OwnerDpConfigError, match="m = 12 owners needs at least 12"):
        check_owner_dp(OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(12)), 10)
    # default sigma_b = expected cohort / 20 = 0.5: 2 sigma_b = 1 <= z = 1
    dp = OwnerLevelDP(1.0, 1.0, OwnerSampling.poisson(0.1), adaptive=True)
    with pytest.raises(OwnerDpConfigError, match="its default, expected cohort / 20"):
        check_owner_dp(dp, 100)
    check_owner_dp(dp, 1000)  # expected cohort 100: sigma_b 5
    with pytest.raises(OwnerDpConfigError, match="2 sigma_b"):  # fixed m = 10: sigma_b 0.5 <= z / 2
        OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(10), adaptive=True).update_noise_multiplier()
    with pytest.raises(OwnerDpConfigError, match="population"):
        check_owner_dp(OwnerLevelDP(1.0, 1.0, OwnerSampling.fixed(1)), 0)
