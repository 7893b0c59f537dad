"""Prior sensitivity: the headline numbers refitted under priors twice as wide."""

import warnings

import numpy as np
import numpyro.distributions as dist
import pytest

from bayes_transfer import fit
from bayes_transfer.models import design_grid, simulate_grid
from bayes_transfer.quantities import fit_centre
from bayes_transfer.sensitivity import prior_sensitivity, widened

# Far from the published values (alpha 0.18, beta 0.38): transfer that grows
# fast with D_F and barely with N; D_T / D_F is about 2 at the grid's centre.
TRUTH = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3, k=130.0, alpha=0.6, beta=0.1, omega=0.0)


def test_widened_doubles_the_width_where_each_prior_is_drawn():
    w = widened(dist.LogNormal(0.4, 0.75))
    assert float(w.loc) == 0.4 and float(w.scale) == 1.5
    assert float(widened(dist.HalfNormal(0.1)).scale) == pytest.approx(0.2)
    b, wb = dist.Beta(1.0, 18.0), widened(dist.Beta(1.0, 18.0))
    assert float(wb.mean) == pytest.approx(float(b.mean))  # the same mean, more spread
    assert float(wb.variance) > 1.8 * float(b.variance)
    assert widened(0.05) == 0.05  # a fixed value stays fixed
    with pytest.raises(ValueError, match="no rule to widen a Gamma"):
        widened(dist.Gamma(2.0, 4.0))


def test_a_well_measured_multiplier_does_not_move_when_the_priors_widen():
    design = design_grid(np.geomspace(1e5, 3e6, 4), np.geomspace(3e4, 3e7, 5), sources=("text",), target="python")
    grid = simulate_grid(design, "transfer", TRUTH, sigma=0.01, seed=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")
        # the mechanics are under test here, not convergence at test-sized settings
        base = fit(grid, "transfer", chains=2, draws=400, warmup=400, progress=False).accept_unconverged()
        table, wide = prior_sensitivity(base)
    assert wide.config["priors"]["alpha"] == "LogNormal(loc=-1.386, scale=2)"
    assert wide.config["priors"]["sigma"] == base.config["priors"]["sigma"]  # noise priors kept
    assert wide.config["priors"]["tau_beta"] == base.config["priors"]["tau_beta"]
    assert list(table["quantity"][:3]) == ["alpha[text->python]", "beta[text->python]", "k[text->python]"]
    m = table.iloc[3]
    N, D = fit_centre(base)
    true_m = 1 + TRUTH["k"] * D ** TRUTH["alpha"] * N ** TRUTH["beta"] / D
    assert 2 < true_m < 4  # a multiplier worth measuring
    # recovered: the truth within one 90% interval's width of each median (log scale)
    assert abs(np.log(m["median"] / true_m)) < np.log(m["upper"] / m["lower"])
    assert abs(np.log(m["wide median"] / true_m)) < np.log(m["wide upper"] / m["wide lower"])
    assert m["shift / width"] < 0.3 and 0.5 < m["width ratio"] < 1.5  # a prior-driven one would near double


def test_a_scratch_law_reports_each_parameter_both_ways():
    design = design_grid(np.geomspace(1e5, 3e6, 4), np.geomspace(3e4, 3e7, 4), target="python")
    grid = simulate_grid(design, "kaplan", dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3), sigma=0.01)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")
        base = fit(grid, "kaplan", chains=1, draws=300, warmup=300, target_accept=0.95, mass_matrix="dense",
                   progress=False).accept_unconverged()
        table, wide = prior_sensitivity(base)
    # the refit samples as the fit did, at a finer step: half the fit's shortfall of acceptance from 1
    assert {k: wide.sampler[k] for k in ("draws", "target_accept", "mass_matrix")} == \
        {"draws": 300, "target_accept": pytest.approx(0.975), "mass_matrix": "dense"}
    assert list(table["quantity"]) == ["N_c[python]", "D_c[python]", "alpha_N[python]", "alpha_D[python]"]
    assert wide.config["priors"]["alpha_D"] == "LogNormal(loc=-1.386, scale=2)"
    assert (table["lower"] < table["median"]).all() and (table["median"] < table["upper"]).all()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")
        _, longer = prior_sensitivity(base, draws=150)  # a refit with other sampler settings
    assert {k: longer.sampler[k] for k in ("draws", "warmup", "target_accept")} == \
        {"draws": 150, "warmup": 300, "target_accept": pytest.approx(0.975)}
    with pytest.raises(ValueError, match="MAP point estimate"):
        prior_sensitivity(fit(grid, "kaplan", method="map", map_steps=200, progress=False))
