"""`recommend` against numeric optimisation and the closed form of docs/laws.md."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from bayes_transfer import quantities as q
from bayes_transfer.allocate import (FINETUNE, PARAMS, PRETRAIN, cost_params_from_flops,
                                     gap_optimal_pretrain, recommend)
from test_quantities import GAP_TRUE, fake_fit


def gap_loss(p, f, g=GAP_TRUE):
    return (g["A_p"] * p ** -g["alpha_p"] + g["G"]) * f ** -g["alpha_f"] + g["E"]


@pytest.mark.parametrize("G, c_p, c_f", [(2.0, 1e-6, 1e-3), (0.01, 1e-5, 1e-4), (50.0, 1e-7, 1e-2)])
def test_closed_form_optimum_matches_numeric_minimisation(G, c_p, c_f):
    g = dict(GAP_TRUE, G=G)
    C = 1e4
    p, f = gap_optimal_pretrain(C, c_p, c_f, g["A_p"], g["alpha_p"], g["G"], g["alpha_f"])
    res = minimize_scalar(lambda lp: gap_loss(np.exp(lp), (C - c_p * np.exp(lp)) / c_f, g),
                          bounds=(np.log(C / c_p) - 40, np.log(C / c_p) - 1e-9), method="bounded",
                          options={"xatol": 1e-10})
    np.testing.assert_allclose(p, np.exp(res.x), rtol=1e-4)
    # the optimality condition itself
    ratio = c_f * f / (c_p * p)
    np.testing.assert_allclose(ratio, g["alpha_f"] / g["alpha_p"] * (1 + G * p ** g["alpha_p"] / g["A_p"]),
                               rtol=1e-9)


def test_gap_recommendation_on_a_known_posterior():
    fit = fake_fit(law="transfer_gap")  # every draw at the true parameters
    start = dict(n_params=1e6, data_tokens=1e6, pretrain_tokens=1e7)
    budget, c_f, c_p = 500.0, 1e-4, 1e-6
    rec = recommend(fit, budget=budget, cost_finetune=c_f, cost_pretrain=c_p, current=start)
    # numeric optimum of the incremental split
    res = minimize_scalar(lambda s: gap_loss(1e7 + s * budget / c_p, 1e6 + (1 - s) * budget / c_f),
                          bounds=(0, 1), method="bounded", options={"xatol": 1e-10})
    np.testing.assert_allclose(rec.optimal_share.values, res.x, rtol=1e-5)
    bayes = rec.table[rec.table.plan.str.startswith("split (Bayes)")].iloc[0]
    assert bayes.spend_pretrain / budget == pytest.approx(res.x, abs=0.005)
    assert bayes.expected_loss == pytest.approx(res.fun, rel=1e-5)
    assert rec.best == bayes.plan
    # with no uncertainty the point estimate choice costs nothing
    assert rec.regret_of_point_estimate == pytest.approx(0.0, abs=1e-12)
    all_f = rec.table.set_index("plan").loc[f"all on {FINETUNE}"]
    assert all_f.expected_loss == pytest.approx(gap_loss(1e7, 1e6 + budget / c_f))
    assert all_f.data_tokens == pytest.approx(1e6 + budget / c_f)
    assert any(PARAMS in n and "one model size" in n for n in rec.notes)


def test_gap_from_scratch_compares_the_scratch_branch():
    # Starting with no pre-training: if C_0 is small, staying from scratch can win.
    fit = fake_fit(law="transfer_gap", overrides={"C_0": np.full((2, 400, 1), 0.5)})
    rec = recommend(fit, budget=100.0, cost_finetune=1e-4, cost_pretrain=1e-6,
                    current=dict(data_tokens=1e6, pretrain_tokens=0))
    assert np.all(rec.optimal_share.values == 0.0)
    assert rec.best == f"all on {FINETUNE}"
    # an optimum at the end of the budget line is that all-on plan, not a duplicate split row
    assert not rec.table.plan.str.startswith("split").any()
    assert rec.point_estimate_choice == rec.best and rec.regret_of_point_estimate == 0
    assert rec.table.set_index("plan").loc[rec.best, "note"] == "Bayes choice, point-estimate choice"


def test_transfer_recommendation_matches_numeric_optimum_of_expected_loss():
    fit = fake_fit(spread=0.15, seed=3)
    start = dict(n_params=1e6, data_tokens=1e5, pretrain_tokens=1e8)
    budget, c_f, c_n = 1000.0, 1e-3, 1e-3
    rec = recommend(fit, budget=budget, cost_finetune=c_f, cost_params=c_n, current=start)
    t = rec.table.set_index("plan")
    assert f"all on {PRETRAIN}" not in t.index
    assert any(PRETRAIN in n and "transfer_gap" in n for n in rec.notes)

    def expected(s):
        loss = q.predicted_loss(fit, 1e6 + s * budget / c_n, 1e5 + (1 - s) * budget / c_f, pair="text->python")
        return float(loss.mean())

    res = minimize_scalar(expected, bounds=(0, 1), method="bounded", options={"xatol": 1e-6})
    bayes = rec.table[rec.table.plan.str.startswith("split (Bayes)")].iloc[0]
    assert bayes.spend_params / budget == pytest.approx(res.x, abs=0.006)
    assert bayes.expected_loss == pytest.approx(res.fun, rel=1e-4)
    # the Bayes choice has the lowest expected loss and regret of all plans
    assert bayes.expected_loss == pytest.approx(rec.table.expected_loss.min())
    assert bayes.expected_regret == pytest.approx(rec.table.expected_regret.min())
    assert rec.regret_of_point_estimate >= 0
    assert rec.table.p_best.sum(skipna=True) == pytest.approx(1.0)
    assert np.isnan(rec.table.set_index("plan").loc[rec.point_estimate_choice, "p_best"])
    # each draw's optimum spreads: the posterior over the allocation is not a point
    share = rec.optimal_share.values
    assert share.std() > 0 and 0 <= share.min() and share.max() <= 1


def test_more_data_beats_nothing_and_outputs_state_units():
    fit = fake_fit()
    rec = recommend(fit, budget=10.0, cost_finetune=1e-4, currency="USD")
    md = rec.to_markdown()
    for text in ("USD per fine-tuning token", "nats/byte", "Assumptions", "held fixed", rec.best):
        assert text in md
    assert rec.best == f"all on {FINETUNE}"  # the only plan without prices for others
    assert rec.table.extrapolated.iloc[0]  # 1e7 + 1e5 bytes is beyond the grid's 1e7


def test_cost_params_from_flops():
    assert cost_params_from_flops(1e-18, 1e9, 1e8) == pytest.approx(6 * 1.1e9 * 1e-18)


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=0, cost_finetune=1e-3), "budget must be a positive"),
    (dict(budget=-5, cost_finetune=1e-3), "budget must be a positive"),
    (dict(budget=float("nan"), cost_finetune=1e-3), "budget must be a positive"),
    (dict(budget="lots", cost_finetune=1e-3), "budget must be a number"),
    (dict(budget=10, cost_finetune=0), "cost_finetune must be a positive"),
    (dict(budget=10, cost_finetune=1e-3, cost_params=-1), "cost_params must be a positive"),
    (dict(budget=1e-3, cost_finetune=1.0), "buys less than one unit"),
    (dict(budget=10, cost_finetune=1e-3, current=dict(n_params=0)), "current n_params must be"),
    (dict(budget=10, cost_finetune=1e-3, current=dict(size=5)), "unknown key"),
    (dict(budget=10, cost_finetune=1e-3, pair="x->y"), "unknown pair"),
])
def test_bad_budgets_and_costs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recommend(fake_fit(), **kwargs)


def test_several_pairs_need_one_named():
    fit = fake_fit(pairs=("text->python", "code->python"))
    with pytest.raises(ValueError, match="name one with pair"):
        recommend(fit, budget=10, cost_finetune=1e-3)
    assert recommend(fit, budget=10, cost_finetune=1e-3, pair="code->python").best
