"""Whether beta is shared across sources is answered by PSIS-LOO, not assumed."""

import warnings

import numpy as np
import pytest

from bayes_transfer.compare import compare_beta_sharing
from bayes_transfer.models import design_grid, simulate_grid

KAPLAN = dict(N_c=1.5e6, D_c=1.5e6, alpha_N=0.15, alpha_D=0.3)
TEXT, CODE = ("text", "python"), ("code", "python")
FAST = dict(chains=2, draws=400, warmup=400, progress=False)


def grid(beta):
    truth = dict(KAPLAN, k={TEXT: 30.0, CODE: 300.0}, alpha={TEXT: 0.3, CODE: 0.15}, beta=beta, omega=0.0)
    design = design_grid(np.geomspace(1e5, 3e6, 4), np.geomspace(6e4, 3e7, 4), sources=("text", "code"), target="python")
    return simulate_grid(design, "transfer", truth, sigma=0.01, seed=11)


def compare(beta):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fit of law .* did not converge")
        table, fits = compare_beta_sharing(grid(beta), **FAST)
    return table


@pytest.mark.slow
def test_per_source_beta_wins_where_the_sources_differ():
    table = compare({TEXT: 0.6, CODE: 0.15})
    assert table.index[0] == "beta per source"
    gap = table.loc["shared beta", "elpd_diff"]
    assert gap > 2 * table.loc["shared beta", "dse"] and table.loc["beta per source", "weight"] > 0.9


@pytest.mark.slow
def test_shared_beta_is_not_rejected_where_it_is_shared():
    table = compare(0.38)
    # the simpler model is as good: the per-source one gains nothing beyond noise
    gain = table.loc["shared beta", "elpd_diff"] if table.index[0] == "beta per source" else 0.0
    assert gain < 2 * max(table.loc["shared beta", "dse"], 1.0)
    assert table.loc["shared beta", "weight"] > 0.2


def test_comparison_needs_two_pairs():
    one = simulate_grid(design_grid([1e5, 1e6], [1e5, 1e6], sources=("text",), target="python"), "transfer",
                        dict(KAPLAN, k=30.0, alpha=0.3, beta=0.38, omega=0.0))
    with pytest.raises(ValueError, match="two or more pairs"):
        compare_beta_sharing(one)
