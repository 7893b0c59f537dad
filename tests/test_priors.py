"""Default priors: overridable by name, independent of the published values, and plausible in what they predict."""

import jax
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive

from bayes_transfer import published
from bayes_transfer.models import design_grid, model_for, prepare, simulate_grid
from bayes_transfer.priors import default_priors, describe, resolve_priors

KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TRANSFER = dict(KAPLAN, k=90.0, alpha=0.18, beta=0.38, omega=0.0)


def transfer_grid():
    design = design_grid(np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3), sources=("text",), target="python")
    return simulate_grid(design, "transfer", TRANSFER)


def test_unknown_prior_name_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown prior 'gamma'.*known: .*alpha.*beta.*transfer_ratio"):
        resolve_priors("transfer", overrides={"gamma": dist.Normal()})
    with pytest.raises(ValueError, match="must be a numpyro distribution"):
        resolve_priors("transfer", overrides={"beta": 0.4})
    with pytest.raises(ValueError, match="'nu' must be a positive number"):
        resolve_priors("kaplan", overrides={"nu": -1})
    with pytest.raises(ValueError, match="'tau_beta' must be a positive number"):
        resolve_priors("transfer", overrides={"tau_beta": -0.1})
    p = resolve_priors("transfer", "chinchilla", {"beta": dist.LogNormal(0.0, 0.1), "nu": dist.Gamma(2.0, 0.1),
                                                  "tau_beta": 0.0})
    assert isinstance(p["beta"], dist.LogNormal) and "E" in p and "L0" not in p and p["tau_beta"] == 0.0


def test_few_groups_fix_the_spreads_the_sites_name():
    """With 2-4 pairs the pair spreads are fixed (too few to learn); from 5 they are learnt;
    a target-level site and an override keep theirs."""
    learnt = resolve_priors("transfer", groups={"target": 3, "pair": 5})
    assert isinstance(learnt["tau_alpha"], dist.Gamma) and isinstance(learnt["tau_transfer_ratio"], dist.Gamma)
    for pairs in (2, 4):
        few = resolve_priors("transfer", groups={"target": 3, "pair": pairs})
        assert few["tau_alpha"] == 0.5 and few["tau_transfer_ratio"] == 1.0 and few["tau_beta"] == 0.05
        assert isinstance(few["tau_L0"], dist.Gamma)  # scratch sites vary by target: learnt
    assert isinstance(resolve_priors("transfer")["tau_alpha"], dist.Gamma)  # no groups given: the defaults
    mine = dist.Gamma(5.0, 5.0)
    assert resolve_priors("transfer", overrides={"tau_alpha": mine}, groups={"pair": 2})["tau_alpha"] is mine
    gap = resolve_priors("transfer_gap", groups={"target": 3, "pair": 3})
    assert gap["tau_alpha_p"] == 0.5 and gap["tau_A_p_term"] == 1.0 and gap["tau_G_term"] == 1.0
    assert isinstance(gap["tau_alpha_f"], dist.Gamma)  # a site without a few-group spread keeps its learnt one


@pytest.mark.parametrize("law, scratch", [("transfer", "kaplan"), ("transfer", "chinchilla"), ("transfer_gap", "kaplan"),
                                          ("data_constrained", "kaplan")])
def test_priors_do_not_depend_on_published_values(law, scratch, monkeypatch):
    before = {k: describe(v) for k, v in default_priors(law, scratch).items()}
    for table in (published.SCRATCH, published.TRANSFER):
        for entry in table.values():
            monkeypatch.setitem(entry, "values", {k: v * 7.0 for k, v in entry["values"].items()})
    assert {k: describe(v) for k, v in default_priors(law, scratch).items()} == before


def test_prior_predictive_losses_are_plausible():
    """Losses simulated from the priors alone: mostly between a very good model and a uniform guess."""
    g = transfer_grid()
    for law in ("kaplan", "transfer"):
        data = prepare(g, law)
        draws = Predictive(model_for(law), num_samples=400)(jax.random.PRNGKey(0), data, resolve_priors(law))
        loss = np.exp(np.asarray(draws["log_loss"]))
        assert np.isfinite(loss).mean() > 0.99
        inside = (loss > 0.05) & (loss < np.log(256) * 2)  # nats per byte
        assert inside.mean() > 0.8, law
        # wide: the prior does not decide the loss at any run
        spread = np.quantile(np.log(loss), 0.95, axis=0) - np.quantile(np.log(loss), 0.05, axis=0)
        assert spread.min() > 1.0, law
