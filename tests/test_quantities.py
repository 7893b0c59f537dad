"""Posterior quantities against closed forms on known parameter draws.

The fits here are small posteriors built by hand (xarray Datasets with the
core's parameter names), so every expected value is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayes_transfer import laws
from bayes_transfer import quantities as q

KAPLAN_TRUE = dict(N_c=5e13, D_c=2e13, alpha_N=0.08, alpha_D=0.1)
CHIN_TRUE = dict(E=0.8, A=40.0, B=300.0, alpha_N=0.3, alpha_D=0.35)
TRANSFER_TRUE = dict(k=2e4, alpha=0.18, beta=0.38, omega=0.0)
GAP_TRUE = dict(A_p=30.0, alpha_p=0.3, G=2.0, alpha_f=0.25, E=0.7, C_0=12.0)
SIZES = np.array([1e5, 1e6, 1e7])
DATA = np.array([1e5, 1e6, 1e7])


@dataclass
class FakeFit:
    posterior: xr.Dataset
    grid: SimpleNamespace
    law: str
    converged: bool = True


def runs_table(sources=("text",), sizes=SIZES, data=DATA, pretrain=(0,), target="python"):
    rows = []
    for n in sizes:
        for d in data:
            rows.append(dict(target=target, source="none", n_params=n, data_tokens=d,
                             pretrain_tokens=0, seed=0, loss=1.0))
            for s in sources:
                for p in pretrain:
                    rows.append(dict(target=target, source=s, n_params=n, data_tokens=d,
                                     pretrain_tokens=p, seed=0, loss=1.0))
    return pd.DataFrame(rows)


def draws(value, shape, spread=0.0, rng=None):
    """Posterior draws around `value`: identical if spread is 0, else lognormal."""
    if spread == 0:
        return np.full(shape, float(value))
    return float(value) * np.exp(spread * rng.standard_normal(shape))


def fake_fit(law="transfer", scratch="kaplan", pairs=("text->python",), chains=2, n_draws=400,
             spread=0.0, seed=0, overrides=None, runs=None, noise=(0.02, 5.0)):
    """A posterior with the core's names, dims and coords; values from the *_TRUE dicts."""
    rng = np.random.default_rng(seed)
    overrides = overrides or {}
    targets = sorted({p.split("->")[1] for p in pairs}) or ["python"]
    coords = {"chain": np.arange(chains), "draw": np.arange(n_draws)}
    data_vars = {}
    if law != "transfer_gap":
        base = KAPLAN_TRUE if scratch == "kaplan" else CHIN_TRUE
        coords["target"] = targets
        for name, value in base.items():
            values = overrides.get(name, draws(value, (chains, n_draws, len(targets)), spread, rng))
            data_vars[name] = (("chain", "draw", "target"), values)
    if law in ("transfer", "transfer_gap"):
        coords["pair"] = list(pairs)
        base = TRANSFER_TRUE if law == "transfer" else GAP_TRUE
        for name, value in base.items():
            values = overrides.get(name, draws(value, (chains, n_draws, len(pairs)), spread, rng))
            data_vars[name] = (("chain", "draw", "pair"), values)
    data_vars["sigma"] = (("chain", "draw"), np.full((chains, n_draws), noise[0]))
    data_vars["nu"] = (("chain", "draw"), np.full((chains, n_draws), noise[1]))
    post = xr.Dataset(data_vars, coords=coords)
    if "pair" in coords:
        post = post.assign_coords(pair_source=("pair", [p.split("->")[0] for p in pairs]),
                                  pair_target=("pair", [p.split("->")[1] for p in pairs]))
    if runs is None:
        sources = sorted({p.split("->")[0] for p in pairs}) if law != "kaplan" else ()
        runs = runs_table(sources=sources,
                          pretrain=(1e6, 1e7, 1e8) if law == "transfer_gap" else (1e8,))
    return FakeFit(posterior=post, grid=SimpleNamespace(runs=runs, data_label="bytes", loss_unit="nats/byte"), law=law)


# ---------------------------------------------------------------- D_T and multiplier


def test_transferred_data_is_the_law_on_every_draw():
    fit = fake_fit(spread=0.1, overrides={"omega": np.full((2, 400, 1), 0.05)})
    N, D_F = [1e5, 1e6, 1e7], [1e5, 1e6]
    d_t = q.transferred_data(fit, N, D_F, pair="text->python")
    assert d_t.dims == ("chain", "draw", "N", "D_F")
    post = fit.posterior.sel(pair="text->python")
    for i, n in enumerate(N):
        for j, d in enumerate(D_F):
            expect = post["k"].values * d ** post["alpha"].values * n ** post["beta"].values - 0.05 * d
            np.testing.assert_allclose(d_t.values[:, :, i, j], expect, rtol=1e-12)
    assert d_t.attrs["units"] == "bytes"


def test_transfer_law_matches_the_core_jax_law():
    fit = fake_fit()
    d_t = q.transferred_data(fit, 3e6, 2e5, pair="text->python")
    t = TRANSFER_TRUE
    expect = float(laws.transferred_data(2e5, 3e6, t["k"], t["alpha"], t["beta"]))
    np.testing.assert_allclose(d_t.values, expect, rtol=1e-6)


def test_multiplier_and_beta_two_alpha_rule():
    # With beta = 2 alpha and omega = 0, 10x the parameters is worth 100x the data:
    # D_T(10N, D_F) = D_T(N, 100 D_F).
    fit = fake_fit(overrides={"beta": np.full((2, 400, 1), 0.36)})
    a = q.transferred_data(fit, 1e7, 1e4, pair="text->python")
    b = q.transferred_data(fit, 1e6, 1e6, pair="text->python")
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12)
    m = q.effective_multiplier(fit, 1e6, [1e4, 1e6], pair="text->python")
    d_t = q.transferred_data(fit, 1e6, [1e4, 1e6], pair="text->python")
    np.testing.assert_allclose(m.values, 1 + d_t.values / np.array([1e4, 1e6]), rtol=1e-12)


def test_all_pairs_without_naming_one():
    fit = fake_fit(pairs=("text->python", "code->python"), spread=0.05)
    d_t = q.transferred_data(fit, 1e6, 1e6)
    assert d_t.sizes["pair"] == 2
    one = q.transferred_data(fit, 1e6, 1e6, pair="code->python")
    np.testing.assert_allclose(d_t.sel(pair="code->python").values, one.values)


# ---------------------------------------------------------------- ossification


def test_ossification_probability_closed_form():
    # omega uniform on a fine lattice in [0, 1): D_T < 0 iff omega > k D_F^(alpha-1) N^beta,
    # so P = 1 - threshold exactly (up to the lattice step).
    n_draws = 1000
    omega = (np.arange(2 * n_draws).reshape(2, n_draws, 1) + 0.5) / (2 * n_draws)
    fit = fake_fit(n_draws=n_draws, overrides={"omega": omega, "k": np.full((2, n_draws, 1), 500.0)})
    N, D_F = np.array([1e5, 1e6]), np.array([1e6, 1e7, 1e8])
    prob = q.ossification_probability(fit, N, D_F, pair="text->python")
    t = TRANSFER_TRUE
    thresh = 500.0 * D_F[None, :] ** (t["alpha"] - 1) * N[:, None] ** t["beta"]
    np.testing.assert_allclose(prob.values, np.clip(1 - thresh, 0, 1), atol=1 / (2 * n_draws))
    assert prob.values.max() > 0.5 and prob.values.min() < 0.5  # the map spans both regimes


def test_gap_multiplier_is_the_data_scratch_needs_to_match_and_its_limit_is_the_gap():
    fit = fake_fit(law="transfer_gap")
    g = GAP_TRUE
    m = q.gap_multiplier(fit, [1e7, np.inf], pair="text->python")
    # scratch on m x D_F reaches the loss fine-tuning on D_F after p reaches, at every D_F
    for d_f in (1e4, 1e6):
        tuned = laws.transfer_gap(1e7, d_f, g["A_p"], g["alpha_p"], g["G"], g["alpha_f"], g["E"])
        scratch = laws.gap_scratch(float(m.sel(p=1e7).median()) * d_f, g["C_0"], g["alpha_f"], g["E"])
        assert float(scratch) == pytest.approx(float(tuned), rel=1e-9)
    limit = (g["C_0"] / g["G"]) ** (1 / g["alpha_f"])
    assert float(m.sel(p=np.inf).median()) == pytest.approx(limit, rel=1e-9)
    assert bool(m["extrapolated"].sel(p=np.inf)) and not bool(m["extrapolated"].sel(p=1e7))
    with pytest.raises(ValueError, match="p must be"):
        q.gap_multiplier(fit, 0.0, pair="text->python")
    with pytest.raises(ValueError, match="needs a 'transfer_gap' fit"):
        q.gap_multiplier(fake_fit(), 1e7)


def test_ossification_under_the_gap_law():
    # Pre-training hurts iff A_p p^-alpha_p + G > C_0.
    c0 = np.where(np.arange(800).reshape(2, 400, 1) < 200, 1.0, 1e3)  # a quarter of draws: C_0 tiny
    fit = fake_fit(law="transfer_gap", overrides={"C_0": c0})
    prob = q.ossification_probability(fit, None, 1e6, pair="text->python", p=1e7)
    assert float(prob) == pytest.approx(0.25)


# ---------------------------------------------------------------- low-data boundary


@pytest.mark.parametrize("scratch", ["kaplan", "chinchilla"])
def test_low_data_boundary_is_one_percent_above_the_floor(scratch):
    fit = fake_fit(law=scratch, scratch=scratch, pairs=(), spread=0.05)
    N = np.array([1e5, 1e6, 1e7])
    boundary = q.low_data_boundary(fit, N)
    post = fit.posterior
    d_n = 10 * boundary
    law, n = laws.scratch(scratch), xr.DataArray(N, dims="N", coords={"N": N})
    loss, floor = law.loss(n, d_n, post), law.floor(n, post)
    np.testing.assert_allclose((loss / floor).values, 1.01, rtol=1e-9)
    # bigger models need more data to converge
    assert np.all(np.diff(boundary.median(("chain", "draw")).values) > 0)


# ---------------------------------------------------------------- predicted loss


def test_finetuned_loss_inverts_back_to_effective_data():
    fit = fake_fit(overrides={"omega": np.full((2, 400, 1), 0.1)})
    N, D_F = 2e6, 3e5
    loss = q.predicted_loss(fit, N, D_F, pair="text->python")
    t, k = TRANSFER_TRUE, KAPLAN_TRUE
    d_e = 0.9 * D_F + t["k"] * D_F ** t["alpha"] * N ** t["beta"]
    expect = float(laws.kaplan(N, d_e, **k))
    np.testing.assert_allclose(loss.values, expect, rtol=1e-5)
    back = laws.KAPLAN.invert(N, loss, fit.posterior.sel(target="python"))
    np.testing.assert_allclose(back.values, d_e, rtol=1e-8)
    scratch = q.predicted_loss(fit, N, D_F, p=0, pair="text->python")
    np.testing.assert_allclose(scratch.values, float(laws.kaplan(N, D_F, **k)), rtol=1e-5)
    assert np.all(scratch.values > loss.values)


def test_gap_loss_matches_the_core_law_and_scratch_branch():
    fit = fake_fit(law="transfer_gap")
    p = np.array([0.0, 1e6, 1e8])
    loss = q.predicted_loss(fit, None, 1e6, p=p, pair="text->python")
    g = GAP_TRUE
    pretrained = laws.transfer_gap(p[1:], 1e6, g["A_p"], g["alpha_p"], g["G"], g["alpha_f"], g["E"])
    scratch = laws.gap_scratch(1e6, g["C_0"], g["alpha_f"], g["E"])
    np.testing.assert_allclose(loss.values[0, 0], np.r_[float(scratch), np.asarray(pretrained)], rtol=1e-5)
    # p beyond the grid's 1e8 and N off the grid's sizes are extrapolation
    flagged = q.predicted_loss(fit, 1e5, 1e6, p=[1e7, 1e9], pair="text->python")
    assert flagged["extrapolated"].values.tolist() == [False, True]
    assert bool(q.predicted_loss(fit, 1e9, 1e6, p=1e7)["extrapolated"])


def test_chinchilla_scratch_prediction():
    fit = fake_fit(law="chinchilla", pairs=(), scratch="chinchilla")
    c = CHIN_TRUE
    loss = q.predicted_loss(fit, 1e6, 1e7, target="python")
    expect = c["E"] + c["A"] * 1e6 ** -c["alpha_N"] + c["B"] * 1e7 ** -c["alpha_D"]
    np.testing.assert_allclose(loss.values, expect, rtol=1e-12)


def test_predictive_band_has_the_noise_scale():
    sigma, nu = 0.05, 6.0
    fit = fake_fit(n_draws=5000, noise=(sigma, nu))
    mean = q.predicted_loss(fit, 1e6, 1e6, pair="text->python")
    pred = q.predicted_loss(fit, 1e6, 1e6, pair="text->python", predictive=True, seed=1)
    resid = np.log(pred.values) - np.log(mean.values)
    # Student-t: sd = sigma sqrt(nu / (nu - 2)); 10,000 draws put the sample sd within ~3%
    assert resid.std() == pytest.approx(sigma * np.sqrt(nu / (nu - 2)), rel=0.06)
    b_mean, b_pred = q.band(mean), q.band(pred)
    assert float(b_pred.upper - b_pred.lower) > float(b_mean.upper - b_mean.lower)


# ---------------------------------------------------------------- extrapolation, band, errors


def test_extrapolation_flag_marks_points_outside_the_grid():
    fit = fake_fit()
    d_t = q.transferred_data(fit, [1e5, 1e7, 1e8], [1e5, 1e9], pair="text->python")
    flags = d_t["extrapolated"].transpose("N", "D_F").values
    assert flags.tolist() == [[False, True], [False, True], [True, True]]
    assert d_t.attrs["extrapolated"] is True
    inside = q.transferred_data(fit, 1e6, 1e6, pair="text->python")
    assert inside.attrs["extrapolated"] is False
    assert q.band(d_t)["extrapolated"].shape == (3, 2)


def test_band_quantiles():
    da = xr.DataArray(np.arange(1000.0).reshape(2, 500), dims=("chain", "draw"))
    b = q.band(da, prob=0.9)
    assert float(b["mean"]) == pytest.approx(499.5)
    assert float(b["lower"]) == pytest.approx(np.quantile(np.arange(1000.0), 0.05))
    assert float(b["upper"]) == pytest.approx(np.quantile(np.arange(1000.0), 0.95))
    with pytest.raises(ValueError, match="prob"):
        q.band(da, prob=1.5)


def test_observed_transferred_data_recovers_exact_points():
    runs = runs_table()
    fit = fake_fit(runs=runs, overrides={"omega": np.full((2, 400, 1), 0.02)})
    ft = runs["source"] != "none"
    loss = q.predicted_loss(fit, 1.0, 1.0, pair="text->python")  # shape check only
    assert loss.dims == ("chain", "draw")
    for i in np.flatnonzero(ft):
        r = runs.iloc[i]
        runs.loc[i, "loss"] = float(q.predicted_loss(fit, r.n_params, r.data_tokens, pair="text->python")[0, 0])
    points = q.observed_transferred_data(fit)
    t = TRANSFER_TRUE
    expect = t["k"] * points.data_tokens ** t["alpha"] * points.n_params ** t["beta"] - 0.02 * points.data_tokens
    np.testing.assert_allclose(points.D_T_median, expect, rtol=1e-6)
    assert (points.share_unbounded == 0).all()
    # a loss below the scratch floor has unbounded D_E: reported, not dropped
    runs.loc[np.flatnonzero(ft)[0], "loss"] = 1e-3
    points = q.observed_transferred_data(fit)
    assert points.share_unbounded.iloc[0] == 1.0 and len(points) == ft.sum()


@pytest.mark.parametrize("call, message", [
    (lambda f: q.transferred_data(f, -1, 1e6), "N must be finite and > 0"),
    (lambda f: q.transferred_data(f, 1e6, [[1e6]]), "D_F must be a number or a 1-d"),
    (lambda f: q.transferred_data(f, 1e6, 1e6, pair="x->y"), "unknown pair"),
    (lambda f: q.predicted_loss(f, 1e6, 1e6, p=1e9), "no pre-training-size dependence"),
])
def test_bad_input_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(fake_fit())


def test_quantities_refuse_the_wrong_law():
    with pytest.raises(ValueError, match="needs a 'transfer' fit"):
        q.transferred_data(fake_fit(law="kaplan", pairs=()), 1e6, 1e6)
    with pytest.raises(ValueError, match="needs p"):
        q.predicted_loss(fake_fit(law="transfer_gap"), None, 1e6)


def test_predictive_noise_uses_the_scale_of_the_run_kind():
    fit = fake_fit(n_draws=4000)
    sig = np.broadcast_to([0.01, 0.2], (2, 4000, 2))
    fit.posterior["sigma"] = (("chain", "draw", "kind"), sig)
    fit.posterior = fit.posterior.assign_coords(kind=["scratch", "finetuned"])
    spread = {}
    for p in (0, None):
        mean = q.predicted_loss(fit, 1e6, 1e6, p=p, pair="text->python")
        pred = q.predicted_loss(fit, 1e6, 1e6, p=p, pair="text->python", predictive=True)
        spread[p] = float(np.log(pred / mean).std())
    assert spread[0] == pytest.approx(0.01 * np.sqrt(5 / 3), rel=0.1)
    assert spread[None] == pytest.approx(0.2 * np.sqrt(5 / 3), rel=0.1)


def test_gap_scratch_branch_is_not_extrapolation_in_p():
    fit = fake_fit(law="transfer_gap")
    flags = q.predicted_loss(fit, None, [1e5, 1e9], p=[0.0, 1e7], pair="text->python")["extrapolated"]
    assert flags.transpose("D_F", "p").values.tolist() == [[False, False], [True, True]]


def test_a_gap_fit_describes_only_its_model_size():
    runs = runs_table(sizes=[1e6, 1e8], pretrain=(1e6, 1e7, 1e8), data=[1e5, 1e6])
    fit = fake_fit(law="transfer_gap", runs=runs)
    fit.config = {"n_params": 1e6}
    assert set(q.fit_runs(fit)["n_params"]) == {1e6}
    assert q.grid_ranges(fit)["N"] == (1e6, 1e6)
    assert bool(q.predicted_loss(fit, 1e8, 1e5, p=1e7)["extrapolated"])
