"""Models: data preparation, priors, the log density against a hand computation, simulation."""

import jax
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.handlers import substitute, trace
from scipy import stats

from bayes_transfer import laws
from bayes_transfer.fit import NotIdentifiedError, check_identifiable
from bayes_transfer.models import design_grid, model_for, prepare, simulate_grid, simulate_losses
from bayes_transfer.priors import default_priors, resolve_priors

KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TRANSFER = dict(KAPLAN, k=90.0, alpha=0.18, beta=0.38, omega=0.0)
SIZES, DATA = np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3)


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


def test_unknown_prior_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown prior 'gamma'.*known: .*alpha.*beta.*k"):
        resolve_priors("transfer", overrides={"gamma": dist.Normal()})
    with pytest.raises(ValueError, match="must be a numpyro distribution"):
        resolve_priors("transfer", overrides={"beta": 0.4})
    with pytest.raises(ValueError, match="'nu' must be a positive number"):
        resolve_priors("kaplan", overrides={"nu": -1})
    p = resolve_priors("transfer", "chinchilla", {"beta": dist.LogNormal(0.0, 0.1), "nu": dist.Gamma(2.0, 0.1)})
    assert isinstance(p["beta"], dist.LogNormal) and "E" in p and "L0" not in p


def test_default_priors_centred_on_published_values():
    p = default_priors("transfer")
    for name, value in (("k", 1.9e4), ("alpha", 0.18), ("beta", 0.38), ("alpha_N", 0.076), ("alpha_D", 0.103)):
        assert float(np.exp(p[name].loc)) == pytest.approx(value)


def _fixed_values(data, priors, point):
    """Run the model once with given latent values; return its trace."""
    model = model_for(data.law)
    return trace(substitute(model, data=point)).get_trace(data, priors, y=data.y)


def test_transfer_log_density_matches_hand_computation():
    g = transfer_grid(sigma=0.02, seed=3)
    data = prepare(g, "transfer")
    priors = resolve_priors("transfer")
    truth = {"L0_mu": 1.4, "w_mu": 0.3, "alpha_N_mu": 0.15, "alpha_D_mu": 0.3, "alpha_mu": 0.2, "beta_mu": 0.4, "omega": np.array([0.05]), "sigma": np.array([0.02, 0.03])}
    # k's site is log D_T at the centre, shifted by the prior means (priors.py)
    shift = priors["alpha"].mean * data.log_D0 + priors["beta"].mean * data.log_N0
    truth["k_mu"] = float(np.exp(np.log(3e5) - shift))
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
    m_ap, m_af = priors["alpha_p"].mean, priors["alpha_f"].mean
    lf0, lp0 = data.log_D0, data.log_p0
    point = {
        "alpha_f_mu": 0.2, "E_mu": 0.6, "alpha_p_mu": 0.3, "sigma": np.array([0.01, 0.02]),
        "C_0_mu": float(np.exp(np.log(40.0) - 0.2 * lf0 + m_af * lf0)),
        "A_p_mu": float(np.exp(np.log(50.0) - 0.3 * lp0 - 0.2 * lf0 + m_ap * lp0 + m_af * lf0)),
        "G_mu": float(np.exp(np.log(5.0) - 0.2 * lf0 + m_af * lf0)),
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
    from numpyro.infer import Predictive

    g = transfer_grid()
    for law in ("kaplan", "transfer"):
        data = prepare(g, law)
        draws = Predictive(model_for(law), num_samples=50)(jax.random.PRNGKey(0), data, resolve_priors(law))
        assert draws["log_loss"].shape == (50, len(data.y))
        assert np.isfinite(draws["log_loss"]).mean() > 0.99


def test_identifiability_names_the_parameter():
    design = design_grid(SIZES, DATA, sources=("text",))
    design = design[(design["source"] == "none") | (design["n_params"] == SIZES[0])]
    g = simulate_grid(design, "transfer", TRANSFER)
    data = prepare(g, "transfer")
    with pytest.raises(NotIdentifiedError, match=r"beta cannot be identified for pair 'text->target'.*single model size"):
        check_identifiable(data, {})
    with pytest.warns(UserWarning, match="beta cannot be identified.*the prior you gave"):
        check_identifiable(data, {"beta": dist.LogNormal(-1.0, 0.1)})
    one_d = simulate_grid(design_grid(SIZES, DATA[:1]), "kaplan", KAPLAN)
    with pytest.raises(NotIdentifiedError, match="alpha_D cannot be identified for target 'target'"):
        check_identifiable(prepare(one_d, "kaplan"), {})
