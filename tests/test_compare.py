"""Whether beta is shared across sources is answered by PSIS-LOO, not assumed."""

import warnings

import numpy as np
import pytest

from types import SimpleNamespace

import pandas as pd

from bayes_transfer.compare import compare_beta_sharing, sharing_verdict, sources_per_target
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
    return table, fits


@pytest.mark.slow
def test_per_source_beta_wins_where_the_sources_differ():
    table, fits = compare({TEXT: 0.6, CODE: 0.15})
    assert table.index[0] == "beta per source"
    gap = table.loc["shared beta", "elpd_diff"]
    assert gap > 2 * table.loc["shared beta", "dse"] and table.loc["beta per source", "weight"] > 0.9
    assert sharing_verdict(table, fits).startswith("The data prefer beta per source")


@pytest.mark.slow
def test_shared_beta_is_not_rejected_where_it_is_shared():
    table, fits = compare(0.38)
    # the simpler model is as good: the per-source one gains nothing beyond noise
    gain = table.loc["shared beta", "elpd_diff"] if table.index[0] == "beta per source" else 0.0
    assert gain < 2 * max(table.loc["shared beta", "dse"], 1.0)
    assert table.loc["shared beta", "weight"] > 0.2
    assert "a shared beta is not rejected" in sharing_verdict(table, fits)


def test_comparison_needs_two_pairs():
    one = simulate_grid(design_grid([1e5, 1e6], [1e5, 1e6], sources=("text",), target="python"), "transfer",
                        dict(KAPLAN, k=30.0, alpha=0.3, beta=0.38, omega=0.0))
    with pytest.raises(ValueError, match="two or more pairs"):
        compare_beta_sharing(one)


def table(diff, dse, warning=False):
    return pd.DataFrame({"rank": [0, 1], "elpd_loo": [10.0, 10.0 - diff], "elpd_diff": [0.0, diff], "dse": [0.0, dse],
                         "weight": [0.8, 0.2], "warning": [warning, False]}, index=["beta per source", "shared beta"])


def test_the_verdict_reads_the_difference_against_its_standard_error():
    ok = {"shared beta": SimpleNamespace(converged=True), "beta per source": SimpleNamespace(converged=True)}
    assert sharing_verdict(table(5.0, 2.0), ok).startswith("The data prefer beta per source: ")
    assert "higher by 5.0 +- 2.0 (stacking weight 0.80)" in sharing_verdict(table(5.0, 2.0), ok)
    assert "do not tell the two apart" in sharing_verdict(table(3.9, 2.0), ok)
    assert "Pareto k > 0.7" in sharing_verdict(table(1.0, 2.0, warning=True), ok)
    stuck = dict(ok, **{"shared beta": SimpleNamespace(converged=False)})
    assert "Not converged: shared beta" in sharing_verdict(table(5.0, 2.0), stuck)


def test_sources_per_target_counts_sources_onto_one_target():
    two = grid({TEXT: 0.4, CODE: 0.4})
    assert sources_per_target(two) == 2
    one = simulate_grid(design_grid([1e5, 1e6], [1e5, 1e6], sources=("text",), target="python"), "transfer",
                        dict(KAPLAN, k=30.0, alpha=0.3, beta=0.38, omega=0.0))
    assert sources_per_target(one) == 1
