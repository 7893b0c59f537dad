"""Models: data preparation, the log density against a hand computation, simulation, calibration."""

import logging
import os
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from numpyro.handlers import substitute, trace
from numpyro.infer import MCMC, NUTS, Predictive, init_to_median
from scipy import stats

from bayes_transfer import laws
from bayes_transfer.grid import load_grid
from bayes_transfer.models import design_grid, model_for, prepare, simulate_grid, simulate_losses, transfer_model
from bayes_transfer.priors import resolve_priors

KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TRANSFER = dict(KAPLAN, k=90.0, alpha=0.18, beta=0.38, omega=0.0)
SIZES, DATA = np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3)


def no_pretrain_effect(data):
    return {"sigma_pretrain": 0.01, "pretrain_z": np.zeros(len(data.pretrain_runs))}


def transfer_grid(**kw):
    return simulate_grid(design_grid(SIZES, DATA, sources=("text",), target="python"), "transfer", TRANSFER, **kw)


def test_prepare_centres_and_indexes():
    g = transfer_grid()
    d = prepare(g, "transfer")
    assert d.targets == ["python"] and d.pairs == [("text", "python")] and d.kinds == ["scratch", "finetuned"]
    assert abs(d.x_N.mean()) < 1e-12 and abs(d.x_D.mean()) < 1e-12
    np.testing.assert_allclose(d.log_N0, np.log(SIZES).mean())
    assert (d.pair_idx[d.runs["source"] == "none"] == -1).all() and (d.pair_idx[d.runs["source"] == "text"] == 0).all()
    np.testing.assert_allclose(np.exp(d.y), d.runs["loss"])
    scratch_only = prepare(g, "kaplan")
    assert len(scratch_only.runs) == 9 and scratch_only.kinds == ["scratch"]


def test_prepare_refuses_grids_a_law_cannot_use():
    scratch = simulate_grid(design_grid(SIZES, DATA), "kaplan", KAPLAN)
    with pytest.raises(ValueError, match="needs fine-tuned runs"):
        prepare(scratch, "transfer")
    g = transfer_grid()
    with pytest.raises(ValueError, match="needs from-scratch runs of each target; none for \\['python'\\]"):
        prepare(g.finetuned, "transfer")
    with pytest.raises(ValueError, match="fixed model size"):
        prepare(g, "transfer_gap")
    with pytest.raises(ValueError, match="unknown law"):
        prepare(g, "power")
    with pytest.raises(ValueError, match="no runs with n_params=7"):
        prepare(g, "transfer_gap", n_params=7)


def _fixed_values(data, priors, point):
    """Run the model once with given latent values; return its trace."""
    model = model_for(data.law)
    return trace(substitute(model, data=point)).get_trace(data, priors, y=data.y)


def test_transfer_log_density_matches_hand_computation():
    g = transfer_grid(sigma=0.02, seed=3)
    data = prepare(g, "transfer")
    priors = resolve_priors("transfer")
    truth = {"L0_mu": 1.4, "w_mu": 0.3, "alpha_N_mu": 0.15, "alpha_D_mu": 0.3, "alpha_mu": 0.2, "beta_mu": 0.4,
             "omega": np.array([0.05]), "sigma": np.array([0.02, 0.03]), **no_pretrain_effect(data)}
    # the transfer site is D_T / D_F at the grid centre: D_T(N0, D0) = 3e5
    truth["transfer_ratio_mu"] = 3e5 / np.exp(data.log_D0)
    tr = _fixed_values(data, priors, truth)
    N_c, D_c = float(tr["N_c"]["value"][0]), float(tr["D_c"]["value"][0])
    k = float(tr["k"]["value"][0])
    assert k == pytest.approx(3e5 / np.exp(0.2 * data.log_D0 + 0.4 * data.log_N0), rel=1e-9)
    runs = data.runs
    N, D = runs["n_params"].to_numpy(), runs["data_tokens"].to_numpy()
    ft = (runs["source"] != "none").to_numpy()
    D_E = np.where(ft, D * 0.95 + k * D**0.2 * N**0.4, D)
    mu = np.log(np.asarray(laws.kaplan(N, D_E, N_c, D_c, 0.15, 0.3)))
    sd = np.where(ft, 0.03, 0.02)
    expected = stats.t.logpdf(np.log(runs["loss"]), df=4, loc=mu, scale=sd)
    got = np.asarray(tr["log_loss"]["fn"].log_prob(tr["log_loss"]["value"]))
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # the centred Kaplan parameters map back to the loss at the centre
    assert float(laws.kaplan(np.exp(data.log_N0), np.exp(data.log_D0), N_c, D_c, 0.15, 0.3)) == pytest.approx(1.4)


def test_gap_model_log_density_matches_hand_computation():
    design = pd.DataFrame(
        [dict(target="python", source=s, n_params=1e6, data_tokens=f, pretrain_tokens=p, seed=0)
         for s, ps in (("none", [0.0]), ("text", [1e6, 1e7, 1e8])) for p in ps for f in (1e5, 1e6, 1e7)]
    )
    truth = dict(A_p=50.0, alpha_p=0.3, G=5.0, alpha_f=0.2, E=0.6, C_0=40.0)
    g = simulate_grid(design, "transfer_gap", truth, sigma=0.01, seed=0)
    data = prepare(g, "transfer_gap")
    priors = resolve_priors("transfer_gap")
    lf0, lp0 = data.log_D0, data.log_p0
    # the coefficients are sampled as their terms at the grid centre (p0, f0)
    point = {
        "alpha_f_mu": 0.2, "E_mu": 0.6, "alpha_p_mu": 0.3, "sigma": np.array([0.01, 0.02]), **no_pretrain_effect(data),
        "C_0_term_mu": 40.0 * np.exp(-0.2 * lf0),
        "A_p_term_mu": 50.0 * np.exp(-0.3 * lp0 - 0.2 * lf0),
        "G_term_mu": 5.0 * np.exp(-0.2 * lf0),
    }
    tr = _fixed_values(data, priors, point)
    for name, value in truth.items():
        assert float(tr[name]["value"][0]) == pytest.approx(value, rel=1e-9)
    runs = data.runs
    ft = (runs["source"] != "none").to_numpy()
    f, p = runs["data_tokens"].to_numpy(), runs["pretrain_tokens"].to_numpy()
    mu = np.where(ft, laws.transfer_gap(np.where(ft, p, 1.0), f, 50.0, 0.3, 5.0, 0.2, 0.6), laws.gap_scratch(f, 40.0, 0.2, 0.6))
    expected = stats.t.logpdf(np.log(runs["loss"]), df=4, loc=np.log(mu), scale=np.where(ft, 0.02, 0.01))
    np.testing.assert_allclose(np.asarray(tr["log_loss"]["fn"].log_prob(tr["log_loss"]["value"])), expected, rtol=1e-9)


def test_simulation_without_noise_is_the_law():
    df = simulate_losses(design_grid(SIZES, DATA, sources=("text",)), "transfer", dict(TRANSFER, omega=0.1), sigma=0.0)
    N, D = df["n_params"].to_numpy(), df["data_tokens"].to_numpy()
    ft = (df["source"] == "text").to_numpy()
    D_E = np.where(ft, 0.9 * D + 90.0 * D**0.18 * N**0.38, D)
    np.testing.assert_allclose(df["loss"], laws.kaplan(N, D_E, **KAPLAN), rtol=1e-12)


def test_prior_predictive_runs_and_is_finite():
    g = transfer_grid()
    for law in ("kaplan", "transfer"):
        data = prepare(g, law)
        draws = Predictive(model_for(law), num_samples=50)(jax.random.PRNGKey(0), data, resolve_priors(law))
        assert draws["log_loss"].shape == (50, len(data.y))
        assert np.isfinite(draws["log_loss"]).mean() > 0.99


# ---------------------------------------------------------------- simulation-based calibration
# Talts et al. 2018: draw parameters from the prior, simulate a grid from them
# with the model itself, fit, and record the rank of each true value among the
# posterior draws; with a right sampler and model every rank is uniform. Slow:
# run with ``pytest -m slow``; ``BT_SBC_SIMS`` sets the number of simulations.

SIMS = int(os.environ.get("BT_SBC_SIMS", "100"))
DRAWS, THIN, BINS = 400, 4, 10  # 100 thinned draws: ranks 0..100
CHECKED = ("alpha_N", "alpha_D", "N_c", "D_c", "k", "alpha", "beta", "omega", "sigma")


@pytest.mark.slow
def test_transfer_model_ranks_are_uniform():
    base = simulate_grid(
        design_grid(np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3), sources=("text",), target="python"),
        "transfer",
        dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3, k=90.0, alpha=0.18, beta=0.38),
    )
    data = prepare(base, "transfer")
    priors = resolve_priors("transfer")

    def model(y=None):
        transfer_model(data, priors, y)

    truths = Predictive(model, num_samples=SIMS)(jax.random.PRNGKey(2024))
    # one compilation for every simulation: y is the only model argument
    mcmc = MCMC(
        NUTS(model, target_accept_prob=0.9, init_strategy=init_to_median(num_samples=15)),
        num_warmup=400,
        num_samples=DRAWS,
        jit_model_args=True,
        progress_bar=False,
    )
    ranks = {name: [] for name in CHECKED}
    for i in range(SIMS):
        if i and i % 40 == 0:
            # each run leaves ~700 memory maps of compiled code behind; the
            # kernel's default limit (65,530) aborts the process near run 90
            jax.clear_caches()
        mcmc.run(jax.random.PRNGKey(i), y=truths["log_loss"][i], extra_fields=("diverging",))
        post = mcmc.get_samples()
        logging.getLogger(__name__).info("simulation %d: %d divergences", i, int(mcmc.get_extra_fields()["diverging"].sum()))
        for name in CHECKED:
            draws = np.asarray(post[name])[::THIN].reshape(DRAWS // THIN, -1)[:, 0]
            ranks[name].append(int((draws < np.asarray(truths[name][i]).reshape(-1)[0]).sum()))
    n_ranks = DRAWS // THIN + 1
    failures = []
    for name, r in ranks.items():
        counts = np.histogram(r, bins=BINS, range=(0, n_ranks))[0]
        p = stats.chisquare(counts).pvalue
        if p < 0.001 / len(CHECKED):
            failures.append(f"{name}: chi-square p={p:.2g}, bin counts {counts.tolist()}")
    assert not failures, "non-uniform SBC ranks: " + "; ".join(failures)


def test_censored_runs_contribute_the_probability_of_their_bound():
    """A censored run's log-likelihood is log P(log L <= recorded) under the Student-t, not the density."""
    runs = simulate_losses(design_grid(SIZES, DATA, sources=("text",), target="python"), "transfer", TRANSFER, seed=2)
    runs["censored"] = False
    runs.loc[[1, 12], "censored"] = True
    g = simulate_grid(runs.drop(columns="loss"), "transfer", TRANSFER, seed=2)
    data = prepare(g, "transfer")
    assert data.censored.tolist() == runs["censored"].tolist()
    priors = resolve_priors("transfer")
    point = {"L0_mu": 1.4, "w_mu": 0.3, "alpha_N_mu": 0.15, "alpha_D_mu": 0.3, "alpha_mu": 0.2, "beta_mu": 0.4,
             "omega": np.array([0.0]), "sigma": np.array([0.02, 0.03]), "transfer_ratio_mu": 1.0,
             **no_pretrain_effect(data)}
    site = _fixed_values(data, priors, point)["log_loss"]
    got = np.asarray(site["fn"].log_prob(site["value"]))
    mu, sd = np.asarray(site["fn"].base.loc), np.asarray(site["fn"].base.scale)
    y = np.log(data.runs["loss"].to_numpy())
    expected = np.where(data.censored, stats.t.logcdf(y, df=4, loc=mu, scale=sd), stats.t.logpdf(y, df=4, loc=mu, scale=sd))
    np.testing.assert_allclose(got, expected, rtol=1e-7)


@pytest.mark.parametrize("df", [1.5, 4.0, 30.0])
def test_student_t_log_cdf_and_its_gradient_match_the_closed_form_everywhere(df):
    """Both tails and the centre, where NumPyro's CDF has a NaN gradient (a divergence for NUTS)."""
    import jax.numpy as jnp

    from bayes_transfer.models import student_t_log_cdf
    t = np.array([-1e4, -300.0, -3.0, -1.0 - 1e-9, -1.0, -0.5, -1e-9, 1e-12, 0.3, 1.0, 1.0 + 1e-9, 5.0, 50.0, 1e3])
    value = np.asarray(student_t_log_cdf(jnp.asarray(t), df))
    grad = np.asarray(jax.vmap(jax.grad(lambda x: student_t_log_cdf(x, df)))(jnp.asarray(t)))
    at_zero = float(jax.grad(lambda x: student_t_log_cdf(x, df))(0.0))
    np.testing.assert_allclose(value, stats.t.logcdf(t, df), rtol=1e-12)
    np.testing.assert_allclose(grad, np.exp(stats.t.logpdf(t, df) - stats.t.logcdf(t, df)), rtol=1e-12)
    assert np.isfinite(at_zero)


def test_censored_likelihood_has_a_finite_gradient_where_a_run_sits_on_its_prediction():
    """An exact run exactly at its prediction once gave a NaN gradient through the discarded CDF branch."""
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from bayes_transfer.models import UpperBounded
    value, censored = jnp.array([1.0, 1.2, 0.7]), jnp.array([1, 2])  # runs 1 and 2 censored

    def log_lik(loc):
        return UpperBounded(dist.StudentT(4.0, loc, 0.05), censored).log_prob(value).sum()

    for loc in ([1.0, 1.2, 0.7], [1.0 + 1e-12, 1.0, 0.9]):
        assert np.isfinite(np.asarray(jax.grad(log_lik)(jnp.array(loc)))).all(), loc


def test_first_evaluation_best_and_capped_runs_are_censored():
    import xarray as xr

    from bayes_transfer.models import censored_runs

    runs = pd.DataFrame({"run": ["a", "b", "c"], "status": ["ok", "capped", "ok"]})
    curves = xr.Dataset({"curve_loss": (("run", "eval"), [[2.0, 2.1, np.nan], [3.0, 2.5, 2.4], [2.5, 2.2, 2.3]])},
                        coords={"run": ["a", "b", "c"]})
    grid = type("G", (), {"curves": curves})()
    assert censored_runs(grid, runs).tolist() == [True, True, False]


def test_a_run_best_at_its_first_evaluation_after_step_0_is_censored():
    import xarray as xr

    from bayes_transfer.models import censored_runs

    # the trainer evaluates at step 0 (the untrained or pre-trained model): that point is not the run's own
    runs = pd.DataFrame({"run": ["d", "e", "f"], "status": ["ok", "ok", "ok"]})
    curves = xr.Dataset({"curve_loss": (("run", "eval"), [[1.9, 2.0, 2.1], [3.0, 2.5, 2.4], [3.0, 2.2, 2.4]]),
                         "curve_tokens": (("run", "eval"), [[0, 16, 32]] * 3)}, coords={"run": ["d", "e", "f"]})
    grid = type("G", (), {"curves": curves})()
    assert censored_runs(grid, runs).tolist() == [True, False, True]


def test_runs_of_one_pre_training_run_share_its_effect():
    from bayes_transfer.models import pretrain_groups

    runs = pd.DataFrame({"source": ["none", "text", "text", "text", "code"], "n_params": [1e5, 1e5, 1e5, 1e6, 1e5]})
    ft = (runs["source"] != "none").to_numpy()
    idx, labels = pretrain_groups(runs, ft)
    assert idx.tolist() == [-1, 1, 1, 2, 0] and len(labels) == 3
    # a grid that records the pre-training run (two seeds of one size) keeps them apart
    runs["pretrain_run"] = ["", "pre.a", "pre.b", "pre.c", "pre.d"]
    idx, labels = pretrain_groups(runs, ft)
    assert idx.tolist() == [-1, 0, 1, 2, 3] and labels == ["pre.a", "pre.b", "pre.c", "pre.d"]


def test_few_targets_are_sampled_non_centred_and_pairs_centred():
    from numpyro.handlers import seed

    def sites(grid, law):
        data, priors = prepare(grid, law), resolve_priors(law)
        return set(trace(seed(model_for(law), 0)).get_trace(data, priors, y=data.y))

    two_pairs = simulate_grid(design_grid(np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3), sources=("text", "code"),
                                          target="python"), "transfer", dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15,
                                                                             alpha_D=0.3, k=90.0, alpha=0.18, beta=0.38))
    names = sites(two_pairs, "transfer")
    # the transfer ratio is centred; alpha and beta are loose by nature and always non-centred (their Site)
    assert "transfer_ratio_u" in names and "transfer_ratio_u_decentered" not in names
    assert "alpha_u_decentered" in names
    runs = pd.concat([design_grid(np.geomspace(1e5, 1e7, 3), np.geomspace(1e6, 1e8, 3)).assign(target=t)
                      for t in ("web", "code", "books")], ignore_index=True)
    three = simulate_grid(runs, "chinchilla", dict(E=0.7, A=60.0, B=40.0, alpha_N=0.3, alpha_D=0.25), seed=0)
    assert "alpha_D_u_decentered" in sites(three, "chinchilla")


def test_padding_to_a_bucket_leaves_the_log_density_unchanged():
    """The sampler pads runs (and censored runs) to bucket sizes so that grids of nearby sizes
    share compiled programs; the ghost runs must carry no likelihood. The shipped main grid has
    censored runs, so padding also places censored positions on ghosts."""
    from numpyro import handlers
    from numpyro.infer.util import log_density

    from bayes_transfer.models import CENSORED_BUCKET, RUN_BUCKET, padded

    grid = load_grid(Path(__file__).resolve().parents[1] / "data" / "grids" / "cpu_text_to_python.nc", include_capped=True)
    data = prepare(grid, "transfer")
    pad = padded(data)
    assert len(pad.y) % RUN_BUCKET == 0 and len(pad.censored_idx) % CENSORED_BUCKET == 0
    assert len(pad.censored_idx) > len(data.censored_idx) and pad.ghost.sum() == len(pad.y) - len(data.y)
    assert pad.ghost[pad.censored_idx[len(data.censored_idx):]].all()
    priors = resolve_priors("transfer", "kaplan", {}, data.groups)
    model = model_for("transfer")
    for seed in (1, 2):
        trace = handlers.trace(handlers.seed(model, seed)).get_trace(data, priors)
        values = {k: s["value"] for k, s in trace.items() if s["type"] == "sample" and k != "log_loss"}
        exact = float(log_density(model, (data, priors), {"y": data.y}, values)[0])
        assert float(log_density(model, (pad, priors), {"y": pad.y}, values)[0]) == pytest.approx(exact, rel=1e-12)
        # masked ghosts are evaluated at a placeholder: their terms must not make the gradient NaN
        grad = jax.grad(lambda v: log_density(model, (pad, priors), {"y": pad.y}, v)[0])(values)
        assert all(np.isfinite(np.asarray(g)).all() for g in grad.values())
