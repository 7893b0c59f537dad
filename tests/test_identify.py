"""Refusing grids that cannot identify a law's parameters."""

import numpy as np
import numpyro.distributions as dist
import pytest

from bayes_transfer.identify import NotIdentifiedError, check_identifiable
from bayes_transfer.models import design_grid, prepare, simulate_grid

KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TRANSFER = dict(KAPLAN, k=90.0, alpha=0.18, beta=0.38, omega=0.0)
SIZES, DATA = np.geomspace(1e5, 3e6, 3), np.geomspace(6e4, 3e7, 3)


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


def test_an_unidentified_gap_constant_names_the_prior_site_that_would_fit_it():
    """C_0 is sampled as C_0_term (its term at the grid centre): the refusal names that site,
    and a prior given for it turns the refusal into a warning."""
    import pandas as pd

    from bayes_transfer.models import simulate_losses
    from test_quantities import GAP_TRUE

    parts = [design_grid([1e6], DATA, sources=("text",), target="python", pretrain_tokens=p) for p in (1e6, 1e7)]
    design = pd.concat(parts).drop_duplicates(["source", "data_tokens", "pretrain_tokens"])
    tuned_only = simulate_losses(design[design["source"] != "none"], "transfer_gap", GAP_TRUE)
    data = prepare(tuned_only, "transfer_gap", n_params=1e6)
    with pytest.raises(NotIdentifiedError, match=r"C_0 cannot be identified.*priors=\{'C_0_term': \.\.\.\}"):
        check_identifiable(data, {})
    with pytest.warns(UserWarning, match="C_0 cannot be identified.*the prior you gave"):
        check_identifiable(data, {"C_0_term": dist.LogNormal(0.0, 1.0)})
