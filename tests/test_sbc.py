"""Simulation-based calibration (Talts et al. 2018) of the joint transfer model.

Draw parameters from the prior, simulate a grid from them with the model
itself, fit, and record the rank of each true value among the posterior
draws. If the sampler and model are right, every rank is uniform. Slow:
run with ``pytest -m slow``; ``BT_SBC_SIMS`` sets the number of
simulations (default 100).
"""

import logging
import os

import jax
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS, Predictive, init_to_median
from scipy import stats

from bayes_transfer.models import design_grid, prepare, simulate_grid, transfer_model
from bayes_transfer.priors import resolve_priors

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
