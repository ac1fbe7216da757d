import numpy as np
import pytest

from tvaccine.evaluation.stats import (auc_interval, cohen_kappa, confusion, curve_auc, hierarchical_rate,
                                       newcombe_paired, paired_difference, wilson)


def _outcomes(rng, n_seeds, n_prompts, p, seed_sd=0.0):
    """seed -> prompt id -> bool, each seed's rate drawn around p (seed-to-seed variation)."""
    out = {}
    for s in range(n_seeds):
        ps = float(np.clip(p + rng.normal(0, seed_sd), 0, 1)) if seed_sd else p
        out[s] = {f"q{i}": bool(rng.random() < ps) for i in range(n_prompts)}
    return out


def test_wilson_known_values():
    lo, hi = wilson(0, 40)
    assert lo == 0 and hi == pytest.approx(8.76, abs=0.005)
    lo, hi = wilson(40, 40)
    assert hi == 100 and lo == pytest.approx(91.24, abs=0.005)
    assert wilson(30, 100) == pytest.approx((21.89, 39.58), abs=0.005)
    assert wilson(30, 100, level=0.99)[0] < wilson(30, 100)[0]  # wider at a higher level
    with pytest.raises(ValueError, match="n must be at least 1"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson(5, 4)


def test_hierarchical_rate_value_is_the_mean_of_the_seed_rates():
    outcomes = {0: {i: i < 2 for i in range(10)}, 1: {i: i < 6 for i in range(20)}}  # 20% and 30%
    r = hierarchical_rate(outcomes, resamples=500)
    assert r["value"] == pytest.approx(25.0) and r["n_seeds"] == 2 and r["n"] == 30
    assert r["ci95"][0] < 25 < r["ci95"][1]
    assert r == hierarchical_rate(outcomes, resamples=500)  # seeded
    with pytest.raises(ValueError, match="seed 1 has no prompts"):
        hierarchical_rate({0: {0: True}, 1: {}})


def test_hierarchical_rate_is_never_zero_width_at_the_ends():
    none = hierarchical_rate({s: {i: False for i in range(40)} for s in range(3)}, resamples=200)
    assert none["value"] == 0 and none["ci95"][0] == 0 and none["ci95"][1] == pytest.approx(wilson(0, 120)[1])
    one = hierarchical_rate({0: {i: True for i in range(40)}}, resamples=200)
    assert one["ci95"][1] == 100 and one["ci95"][0] == pytest.approx(91.24, abs=0.005)


def test_more_seed_variation_widens_the_interval():
    rng = np.random.default_rng(3)
    flat = _outcomes(rng, 5, 60, 0.3)
    spread = {0: {i: i < 6 for i in range(60)}, 1: {i: i < 30 for i in range(60)}, 2: flat[2], 3: flat[3],
              4: {i: i < 12 for i in range(60)}}  # seeds at 10%, 50%, ~30%, ~30%, 20%
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(hierarchical_rate(spread, resamples=500)) > 1.3 * width(hierarchical_rate(flat, resamples=500))


@pytest.mark.parametrize("n_seeds,n_prompts,p,seed_sd", [(1, 40, 0.3, 0.0), (3, 40, 0.3, 0.05)])
def test_hierarchical_interval_covers_the_true_rate_at_about_the_nominal_rate(n_seeds, n_prompts, p, seed_sd):
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(200):
        lo, hi = hierarchical_rate(_outcomes(rng, n_seeds, n_prompts, p, seed_sd), resamples=200, rng_seed=k)["ci95"]
        hits += lo <= 100 * p <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_difference_covers_the_true_difference():
    rng = np.random.default_rng(1)
    hits = 0
    for k in range(200):
        a, b = {}, {}
        for s in range(2):
            u, same = rng.random(50), rng.random(50) < 0.8
            a[s] = {i: bool(u[i] < 0.4) for i in range(50)}  # rate 0.4
            b[s] = {i: bool(u[i] < 0.3 if same[i] else rng.random() < 0.3) for i in range(50)}  # rate 0.3
        d = paired_difference(a, b, resamples=200, rng_seed=k)
        hits += d["ci_low"] <= 10 <= d["ci_high"]
    assert 0.88 <= hits / 200 <= 0.99


def test_pairing_narrows_the_interval_when_outcomes_are_correlated():
    rng = np.random.default_rng(2)
    a, b, shuffled = {}, {}, {}
    for s in range(3):
        u = rng.random(80)
        a[s] = {i: bool(u[i] < 0.5) for i in range(80)}
        b[s] = {i: bool(u[i] < 0.4) for i in range(80)}  # b harmful ⇒ a harmful: strongly correlated
        order = rng.permutation(80)
        shuffled[s] = {i: b[s][int(order[i])] for i in range(80)}  # same rates, pairing broken
    paired, unpaired = paired_difference(a, b, resamples=500), paired_difference(a, shuffled, resamples=500)
    assert paired["value"] == pytest.approx(unpaired["value"])
    assert paired["ci_high"] - paired["ci_low"] < 0.7 * (unpaired["ci_high"] - unpaired["ci_low"])
    assert paired["n_pairs"] == 240 and paired["n_seeds"] == 3


def test_paired_difference_is_not_zero_width_when_a_and_b_agree():
    same = {0: {i: False for i in range(40)}, 1: {i: False for i in range(40)}}
    d = paired_difference(same, same, resamples=200)
    assert d["value"] == 0 and d["ci_low"] < 0 < d["ci_high"]
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(newcombe_paired(0, 0, 0, 80))


def test_newcombe_paired():
    lo, hi = newcombe_paired(0, 0, 0, 40)  # no disagreements: ± the Wilson half-width of 0/40
    assert (lo, hi) == pytest.approx((-wilson(0, 40)[1], wilson(0, 40)[1]))
    lo, hi = newcombe_paired(10, 12, 3, 25)
    assert lo < 100 * 9 / 50 < hi
    assert newcombe_paired(10, 3, 12, 25) == pytest.approx((-hi, -lo))  # swapping a and b mirrors it
    # positive correlation (many agreements) narrows it against the same margins with fewer agreements
    assert newcombe_paired(20, 5, 0, 25)[1] - newcombe_paired(20, 5, 0, 25)[0] \
        < newcombe_paired(10, 15, 10, 15)[1] - newcombe_paired(10, 15, 10, 15)[0]


def test_paired_difference_names_what_is_missing():
    a = {0: {"q1": True, "q2": False}, 1: {"q1": True}}
    with pytest.raises(ValueError, match=r"seeds differ: only in a: \['1'\]"):
        paired_difference(a, {0: {"q1": True, "q2": True}})
    with pytest.raises(ValueError, match=r"seed 0: prompt ids differ: 1 only in a \['q2'\], 1 only in b \['q3'\]"):
        paired_difference(a, {0: {"q1": True, "q3": True}, 1: {"q1": False}})


def test_curve_auc():
    assert curve_auc([0, 10, 20, 40], [10, 20, 30, 50]) == pytest.approx(30.0)  # a line: its midpoint
    assert curve_auc([0, 1, 3], [0, 100, 100]) == pytest.approx((50 + 200) / 3)
    assert curve_auc([5], [42.0]) == 42.0
    with pytest.raises(ValueError, match="strictly increasing"):
        curve_auc([0, 2, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="3 steps but 2 values"):
        curve_auc([0, 1, 2], [0, 1])


def test_auc_interval():
    steps = [0, 50, 100]
    rng = np.random.default_rng(4)
    outcomes = {s: {step: {i: bool(rng.random() < step / 100) for i in range(40)} for step in steps}
                for s in range(2)}
    r = auc_interval(outcomes, steps, resamples=500)
    per_seed = [curve_auc(steps, [100 * np.mean(list(outcomes[s][t].values())) for t in steps]) for s in outcomes]
    assert r["value"] == pytest.approx(np.mean(per_seed)) and r["n_seeds"] == 2 and r["n"] == 80
    assert r["ci95"][0] < r["value"] < r["ci95"][1]
    flat = auc_interval({0: {t: {i: False for i in range(40)} for t in steps}}, steps, resamples=200)
    assert flat["value"] == 0 and flat["ci95"][1] > 0  # never zero-width
    with pytest.raises(ValueError, match=r"seed 0 has no outcomes for step\(s\) \[100\]"):
        auc_interval({0: {0: {1: True}, 50: {1: True}}}, steps)
    with pytest.raises(ValueError, match="step 50 has other prompt ids"):
        auc_interval({0: {0: {1: True}, 50: {2: True}, 100: {1: True}}}, steps)



# --- agreement between two judges ------------------------------------------------------------------------------

def test_confusion_counts_each_cell():
    a = [True, True, False, False, True]
    b = [True, False, True, False, True]
    assert confusion(a, b) == {"both": 2, "only_a": 1, "only_b": 1, "neither": 1}
    with pytest.raises(ValueError, match="3 verdicts against 2"):
        confusion([True] * 3, [True] * 2)


def test_kappa_of_a_hand_computed_table():
    # observed agreement (20 + 15) / 50 = 0.7; A says yes 25/50, B 30/50, so chance = .5 * .6 + .5 * .4 = 0.5;
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    k = cohen_kappa(both=20, only_a=5, only_b=10, neither=15)
    assert k["n"] == 50 and k["agreement"] == pytest.approx(0.7) and k["kappa"] == pytest.approx(0.4)
    assert k["ci95"][0] < 0.4 < k["ci95"][1] and k["note"] == ""
    # Cohen's large-sample standard error sqrt(po (1 - po) / n) / (1 - pe) = 0.13: the interval is about ±0.26
    assert 0.35 < k["ci95"][1] - k["ci95"][0] < 0.7
    assert cohen_kappa(20, 5, 10, 15) == k  # seeded


def test_kappa_is_1_for_identical_verdicts_and_minus_1_for_opposite_ones():
    same = cohen_kappa(**confusion([True, False, True, False], [True, False, True, False]))
    assert same["kappa"] == 1.0 and same["agreement"] == 1.0
    assert cohen_kappa(both=0, only_a=5, only_b=5, neither=0)["kappa"] == -1.0


def test_kappa_is_about_0_for_independent_judges():
    rng = np.random.default_rng(1)
    a, b = rng.random(4000) < 0.3, rng.random(4000) < 0.6
    k = cohen_kappa(**confusion(a.tolist(), b.tolist()))
    assert abs(k["kappa"]) < 0.04 and k["ci95"][0] < 0 < k["ci95"][1]
    assert k["agreement"] == pytest.approx(0.3 * 0.6 + 0.7 * 0.4, abs=0.03)  # high raw agreement by chance alone


def test_kappa_is_undefined_when_both_judges_are_constant():
    for table in ({"both": 7, "only_a": 0, "only_b": 0, "neither": 0},   # both flag everything
                  {"both": 0, "only_a": 7, "only_b": 0, "neither": 0}):  # one flags everything, the other nothing
        k = cohen_kappa(**table)
        assert k["kappa"] is None and k["ci95"] == [None, None] and "undefined" in k["note"]
    one = cohen_kappa(both=9, only_a=0, only_b=1, neither=0)  # A flags all, B all but one: 90% agreement
    assert one["kappa"] == 0.0 and one["agreement"] == 0.9 and "kappa is 0" in one["note"]
    assert cohen_kappa(0, 0, 0, 0)["kappa"] is None
