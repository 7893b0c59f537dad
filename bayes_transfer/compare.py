"""Questions a fit should answer rather than assume, answered by comparing models (PSIS-LOO)."""

from __future__ import annotations

import warnings

import arviz as az
import pandas as pd

from bayes_transfer.fit import Fit, fit
from bayes_transfer.grid import load_grid

# beta per source: a wide fixed spread (log scale) lets each pair's beta go its
# own way; with fewer than ~5 pairs a learnt spread would be its prior anyway
PER_SOURCE_SPREAD = 0.5


def compare_beta_sharing(grid, *, priors: dict | None = None, **fit_kwargs) -> tuple[pd.DataFrame, dict[str, Fit]]:
    """Is beta the same for every source? Fit the transfer law with beta shared and per
    source, and compare them by PSIS-LOO (ArviZ ``compare``).

    Returns the comparison table (rank, elpd_loo, its difference from the best and
    its standard error, stacking ``weight``, Pareto-k ``warning``) and the two fits.
    The per-source model wins when its elpd exceeds the shared one's by more than a
    couple of standard errors of the difference; the weights say how much the data
    prefer each. Where ``warning`` is True some runs are so influential that PSIS-LOO
    is unreliable for them; read the difference with that caution.
    """
    grid = load_grid(grid)
    if len(grid.pairs) < 2:
        raise ValueError(f"comparing beta across sources needs two or more pairs; the grid has {len(grid.pairs)}")
    base = dict(priors or {})
    fits = {}
    for name, spread in (("shared beta", 0.0), ("beta per source", PER_SOURCE_SPREAD)):
        fits[name] = fit(grid, "transfer", priors={**base, "tau_beta": spread}, **fit_kwargs)
    with warnings.catch_warnings():
        # ArviZ warns of high Pareto k (runs whose leave-one-out estimate is unreliable);
        # the table's `warning` column carries it
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        table = az.compare({name: f.idata for name, f in fits.items()}, ic="loo")
    return table, fits


def sources_per_target(grid) -> int:
    """The most sources fine-tuned onto one target: beta's sharing is a question from two."""
    tuned = grid.finetuned
    return int(tuned.groupby("target")["source"].nunique().max()) if len(tuned) else 0


def beta_sharing_of(fit: Fit, **overrides) -> tuple[pd.DataFrame, dict[str, Fit]]:
    """``compare_beta_sharing`` on a transfer fit's own grid, with its sampler settings and
    model options (priors the fit overrode are not carried: both models use the defaults)."""
    c = fit.config
    kw = dict(fit.refit_settings(), scratch_law=c["scratch_law"], ossification=bool(c["ossification"]))
    return compare_beta_sharing(fit.grid, **{**kw, **overrides})


def sharing_verdict(table: pd.DataFrame, fits: dict[str, Fit]) -> str:
    """One paragraph: which model the data prefer, by how much, and how far to trust it."""
    best, other = table.index[0], table.index[1]
    diff, dse = float(table.loc[other, "elpd_diff"]), float(table.loc[other, "dse"])
    weight = float(table.loc[best, "weight"])
    if diff > 2 * dse:
        text = (f"The data prefer {best}: its expected log predictive density (PSIS-LOO) is higher by "
                f"{diff:.1f} +- {dse:.1f} (stacking weight {weight:.2f}).")
    else:
        text = (f"The data do not tell the two apart: PSIS-LOO differs by {diff:.1f} +- {dse:.1f}, within two "
                f"standard errors (stacking weight of {best}: {weight:.2f}); a shared beta is not rejected.")
    if bool(table["warning"].any()):
        text += " Some runs have Pareto k > 0.7, so the leave-one-out estimate is unreliable for them."
    bad = [name for name, f in fits.items() if not f.converged]
    if bad:
        text += f" Not converged: {', '.join(bad)}; read the comparison as provisional."
    return text
